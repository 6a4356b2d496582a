"""Choose (weight bits, activation bits) for every weighted layer; the result goes to `Graph.bits`.

Candidates per layer are W8A8, W4A8 and W4A4 (`CANDIDATES`). The first and last weighted layers
are pinned to W8A8 unless `pin_first_last` is False.

* Uniform modes give every free layer the same candidate (`--bits 8`, `--bits 4` = W4A4,
  `--bits w4a8`).
* Mixed mode (`--bits mixed`) solves the ILP of `dyadic.mixed.ilp` over the per-layer sensitivities and
  costs that `estimate_sensitivity` and `measure_costs` stored in `Graph.meta`.
"""
from __future__ import annotations

from dyadic.core.config import CANDIDATES, BitMode, Budgets
from dyadic.core.errors import DyadicError
from dyadic.core.graph import Graph

_UNIFORM = {BitMode.INT8: (8, 8), BitMode.W4A8: (4, 8), BitMode.INT4: (4, 4)}


def pinned_layers(graph: Graph, pin_first_last: bool = True) -> set[str]:
    layers = graph.weighted_nodes()
    return {layers[0].name, layers[-1].name} if pin_first_last and layers else set()


def assign_bitwidths(graph: Graph, mode: BitMode = BitMode.INT8, pin_first_last: bool = True,
                     budgets: Budgets | None = None, layer_bits: tuple = ()) -> Graph:
    """`layer_bits`: ((layer, w_bits, a_bits), ...) overriding the mode's choice for those layers."""
    pinned = pinned_layers(graph, pin_first_last)
    meta = dict(graph.meta)
    if mode is BitMode.MIXED:
        from dyadic.mixed.ilp import solve_bitwidths

        bits, meta["ilp"] = solve_bitwidths(graph, pinned, budgets or Budgets())
    else:
        bits = {n.name: ((8, 8) if n.name in pinned else _UNIFORM[mode]) for n in graph.weighted_nodes()}
    for name, wb, ab in layer_bits:
        if name not in bits or (wb, ab) not in CANDIDATES:
            raise DyadicError(f"layer bits {name}=W{wb}A{ab}: no such weighted layer or not one of "
                              f"W8A8, W4A8, W4A4")
        bits[name] = (wb, ab)
    return graph.replace(bits=bits, meta=meta)
