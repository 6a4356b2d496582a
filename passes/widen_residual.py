"""Keep a transformer's residual stream at 16 bits (HAWQ-V3 keeps post-add activations wider).

In a graph with LayerNorms, the sum of a residual add carries every block's contribution; at 8
bits its few large outliers (the LN inputs of ViT/BERT) force a coarse scale on all values. This
pass marks, in `Graph.meta["wide"]`, every tensor produced by an `add` of two activations or an
elementwise `affine` (a position embedding) whose readers are only adds, affines, LayerNorms and
value-preserving moves, the output of a `linear` (a projection) read only by residual adds, and
attention probabilities (a Softmax read by attn·V, while K * 32767 * 128 < 2^31): `quantize_graph` stores these as 16-bit (int32) codes. Their readers
handle the width: `qadd`/`qaffine` in int64 (bounded by the verifier), `qlayernorm` with its
62-bit variance sum bound; a `linear`/`matmul` reading one requantizes to 8 bits first.
Graphs without a LayerNorm are left unchanged.
"""
from __future__ import annotations

from dyadic.core.graph import PASSTHROUGH_OPS, Graph
from dyadic.ops import FLOAT

_READERS = ("add", "affine", "layernorm")


def _moves(op: str) -> bool:
    return (op in PASSTHROUGH_OPS and op != "concat") or (op in FLOAT and FLOAT[op].passthrough)


def widen_residual(graph: Graph) -> Graph:
    if not any(n.op == "layernorm" for n in graph.nodes):
        return graph
    users = graph.consumers()

    def ok(t: str, depth: int = 0) -> bool:
        us = users.get(t, [])
        return bool(us) and depth < 8 and all(u.op in _READERS or (_moves(u.op) and ok(u.output, depth + 1))
                                              for u in us)

    wide = {n.output for n in graph.nodes if n.op in ("add", "affine") and ok(n.output)}
    # the branch that a residual add sums in (a projection's output) is kept wide too
    wide |= {n.output for n in graph.nodes if n.op == "linear" and ok(n.output)
             and all(u.op == "add" for u in users.get(n.output, []))}
    # attention probabilities read by attn·V: 16-bit (1/255 steps are coarse over a long row); the
    # product stays in int32 while K * 32767 * 128 < 2^31 (K <= 511 keys), else `qmatmul` narrows them
    wide |= {n.output for n in graph.nodes if n.op == "softmax" and users.get(n.output)
             and all(u.op == "matmul" and u.inputs[0] == n.output and graph.shapes[n.output][-1] * 32767 * 128 < 2 ** 31
                     for u in users[n.output])}
    if not wide:
        return graph
    return graph.replace(meta={**graph.meta, "wide": tuple(sorted(wide))})
