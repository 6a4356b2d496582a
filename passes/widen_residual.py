"""Keep a transformer's residual stream, LayerNorm outputs and MLP activations at 16 bits.

HAWQ-V3 keeps post-add activations wider; BERT-style encoders need more (Bondarenko et al., 2021:
a few hidden channels of the LN outputs carry 10-30x the range of the others, so one 8-bit scale
leaves most channels a handful of levels). In a graph with LayerNorms this pass marks, in
`Graph.meta["wide"]`, the tensors that `quantize_graph` stores as 16-bit (int32) codes:

* the output of an `add` of two activations or an elementwise `affine` (a position embedding),
  a `layernorm`, or a lookup-table nonlinearity (`unary`/`ew`: GELU), whose readers are only
  adds, affines, LayerNorms, `linear`s, lookup tables and value-preserving moves (`ok` below);
* the output of a `linear` read only by residual adds or by lookup tables (the GELU input: its
  table then has 2^16 entries, exact at every input code as at 8 bits);
* attention probabilities (a Softmax read by attn·V, while K * 32767 * 128 < 2^31);
* a Softmax's input: attention scores, and a head's logits (a `linear` read only by a Softmax).

"Read by" looks through value-preserving moves (reshape, transpose, slice: PaddleOCR's SVTR slices
one fused QKV projection into queries, keys and values and flattens the scores before its Softmax),
and a query's scale (an `affine` between the projection and Q·Kᵀ) is 16-bit with it.

Their readers handle the width: `qadd`/`qaffine` in int64 (bounded by the verifier),
`qlayernorm` with its 62-bit variance sum bound, `qlut` with a 65,536-entry table, `qlinear`
reads 16 bits directly where max|x_q| max_o Σ|W_q[o]| + max|B_q| < 2^31 (else it requantizes
to the widest width that fits, `dyadic/ops/matmul.py`), and a `matmul` of two activations
narrows its operands as below. Also 16-bit: the attention scores (Q·Kᵀ, read
by the Softmax, whose exp table then spans 2^16 codes) and the context attn·V read by the output
projection. Queries, keys and values are 16-bit too (a `linear` read only by products of two
activations); each product narrows its operands to the widest widths that keep its int32 sum
exact (MiniLM: Q·Kᵀ at 14 x 13 bits, P·V at 13 x 12; with 8-bit Q, K and V its nearest-neighbour
agreement with fp32 was 94.2 %, with 16-bit Q only 94.6 %, with these 95.1 %).
Graphs without a LayerNorm are left unchanged.
"""
from __future__ import annotations

from dyadic.core.graph import PASSTHROUGH_OPS, Graph
from dyadic.ops import FLOAT

_READERS = ("add", "affine", "layernorm", "linear", "unary", "ew")
_LUT = ("unary", "ew")


def moves(op: str) -> bool:
    return (op in PASSTHROUGH_OPS and op != "concat") or (op in FLOAT and FLOAT[op].passthrough)


def read_only_by(users, t: str, ops, depth: int = 0) -> bool:
    """t has readers, and every one of them, through value-preserving moves, is one of `ops` (a tuple
    of op names, or a predicate on the reading node)."""
    us = users.get(t, [])
    ok = ops if callable(ops) else (lambda u: u.op in ops)
    return bool(us) and depth < 8 and all(ok(u) or (moves(u.op) and read_only_by(users, u.output, ok, depth + 1))
                                          for u in us)


def _reads(users, t: str, op: str) -> bool:
    return read_only_by(users, t, (op,))


def _final_readers(users, t: str, depth: int = 0) -> list[tuple[str, object]]:
    """(the tensor it reads, node) for every reader of t past value-preserving moves."""
    out = []
    for u in users.get(t, []):
        if moves(u.op) and depth < 8:
            out += _final_readers(users, u.output, depth + 1)
        else:
            out.append((t, u))
    return out


def _read_as(users, t: str, ok) -> bool:
    """t has readers past value-preserving moves, and ok(tensor read, node) holds for each of them."""
    readers = _final_readers(users, t)
    return bool(readers) and all(ok(r, u) for r, u in readers)


def _source(prod, t: str) -> str:
    """The tensor t is a moved copy of (itself if its producer is not a single-input move)."""
    while t in prod and moves(prod[t].op) and len(prod[t].inputs) == 1:
        t = prod[t].inputs[0]
    return t


def widen_residual(graph: Graph) -> Graph:
    if not any(n.op == "layernorm" for n in graph.nodes):
        return graph
    users = graph.consumers()
    ok = lambda t: read_only_by(users, t, _READERS)  # noqa: E731

    wide = {n.output for n in graph.nodes if n.op in ("add", "affine", "layernorm", *_LUT) and ok(n.output)}
    # the branch that a residual add sums in (a projection's output), and a GELU's input, too
    wide |= {n.output for n in graph.nodes if n.op == "linear" and ok(n.output)
             and (all(u.op == "add" for u in users.get(n.output, []))
                  or all(u.op in _LUT for u in users.get(n.output, [])))}
    # attention scores (Q·Kᵀ, the Softmax input: its exp table then spans 2^16 codes), a classifier's
    # logits read by a Softmax (PP-OCR's CTC head: an 8-bit step of 0.34 over its [-43, 25] logits
    # moves each probability by up to 17 %), and the context attn·V read by the output projection: a
    # `matmul` (or `linear`) output read only by Softmaxes, or a `matmul` output read by `linear`s
    wide |= {n.output for n in graph.nodes if n.op in ("matmul", "linear") and read_only_by(users, n.output, ("softmax",)) or
             n.op == "matmul" and ok(n.output) and _reads(users, n.output, "linear")}
    # attention probabilities read by attn·V: 16-bit (1/255 steps are coarse over a long row); the
    # product stays in int32 while K * 32767 * 128 < 2^31 (K <= 511 keys), else `qmatmul` narrows them
    wide |= {n.output for n in graph.nodes if n.op == "softmax" and _read_as(
        users, n.output, lambda t, u: u.op == "matmul" and u.inputs[0] == t and graph.shapes[t][-1] * 32767 * 128 < 2 ** 31)}
    # queries, keys and values: a projection read (through moves: the slices of a fused QKV projection)
    # only by products of two activations, or by the query's scale on its way to one, which narrow each
    # operand to the widest width their int32 bound allows (`ops/matmul`)
    scaled = {n.output for n in graph.nodes if n.op == "affine" and _reads(users, n.output, "matmul")}
    wide |= {n.output for n in graph.nodes if n.op == "linear"
             and _read_as(users, n.output, lambda _, u: u.op == "matmul" or u.output in scaled)}
    prod = graph.producers()
    wide |= {t for t in scaled if _source(prod, prod[t].inputs[0]) in wide}
    if not wide:
        return graph
    return graph.replace(meta={**graph.meta, "wide": tuple(sorted(wide))})
