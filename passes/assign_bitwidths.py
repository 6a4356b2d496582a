"""Choose (weight bits, activation bits) for every weighted layer.

The uniform policy gives every layer the same bit-widths (W8A8 by default). The graph records the
choice in `Graph.bits`; `quantize_graph` reads it. The Hessian-weighted ILP policy (mixed precision)
plugs in here with the same output.
"""
from __future__ import annotations

from dyadic.graph import Graph


def assign_bitwidths(graph: Graph, weight_bits: int = 8, act_bits: int = 8) -> Graph:
    if (weight_bits, act_bits) != (8, 8):
        raise NotImplementedError(f"W{weight_bits}A{act_bits}: only W8A8 is implemented so far")
    bits = {n.name: (weight_bits, act_bits) for n in graph.weighted_nodes()}
    return graph.replace(bits=bits)
