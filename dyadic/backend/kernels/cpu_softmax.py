"""Integer Softmax along the last axis as one CPU kernel (`qsoftmax`, `dyadic.ops.softmax`).

The integers are the reference's: with q the input codes (plus the folded bias B_q and the mask
term of `ops/softmax`, broadcast as numpy does),

    t = q + B_q + (m != 0 ? B1 : B0),   d = max_row t - t,   e = E[min(d, len E - 1)],
    Σ = Σ_row e,   y = (e Q + floor(Σ / 2)) // Σ.

Bounds: e <= E[0] = 2^15 and Σ <= n 2^15, so where n 2^15 < 2^31 and E[0] Q + Σ / 2 < 2^31
(`fits_int32`, checked per node: every row shorter than 2^16, for Q = 255 and Q = 32767 alike)
every value is an int32. The division is the exact per-row reciprocal of `ops/intdiv`:
r = floor(2^k / Σ) once per row, q0 = (num r) >> k (one 32 x 32 -> 64 multiply per element:
num < 2^k <= 2^31 and r <= 2^(k-15)), q = q0 + [num - q0 Σ >= Σ] = floor(num / Σ) exactly.

The generic lowering computes the same in int64 Relax ops, each a pass over the whole [N, H, S, S]
tensor (AVX2 has no 64-bit multiply, and the row max/sum go through memory). Here every row's
steps (bias and max, table, sum, divide) run inside one parallel loop over rows, the row in cache.
"""
from __future__ import annotations

import tvm
from tvm import te, tirx

from dyadic.backend.kernels import epilogue
from dyadic.backend.kernels.cpu_ops import any_dims
from dyadic.ops.intdiv import row_shift

_I32_MAX = (1 << 31) - 1


def fits_int32(n: int, e0: int, q: int) -> bool:
    """Whether every intermediate of a row of n terms fits int32 (module docstring)."""
    return n * e0 <= _I32_MAX and e0 * q + (n * e0) // 2 <= _I32_MAX


def _bcast(shape, dims):
    """Index map of a numpy-broadcast operand of `shape` against the full index of `dims`."""
    off = len(dims) - len(shape)

    def idx(i):
        return tuple(0 if s == 1 else i[off + a] for a, s in enumerate(shape))
    return idx


def softmax_func(shape: tuple, in_dtype: str, table_len: int, e0: int, q: int, out_dtype: str,
                 bias_shape: tuple | None = None, mask: tuple | None = None,
                 requant: tuple | None = None) -> tirx.PrimFunc:
    """The PrimFunc (x, [bias], [mask], table, out); `shape` holds ints and None for symbolic dims,
    the last one (the row) an int; bias_shape the static shape of B_q (int32); mask =
    (shape, dtype, B0, B1) of the mask input (its dims of size 1 broadcast, the others x's);
    requant = (M, S, lo, hi): the per-tensor `requant` that is the softmax's only reader, fused into
    the last step (clip((y M + 2^(S-1)) >> S) in int64, as `dyadic.arith`: a 16-bit softmax narrowed
    for the P·V product in the same pass)."""
    dims = any_dims(shape)
    n = int(shape[-1])
    k = row_shift(e0 * q + n * e0 // 2, e0)
    x = te.placeholder(dims, in_dtype, "x")
    args = [x]
    terms = []
    if bias_shape is not None:
        bq = te.placeholder(bias_shape, "int32", "bq")
        bi = _bcast(bias_shape, dims)
        args.append(bq)
        terms.append(lambda i: bq[bi(i)])
    if mask is not None:
        mshape, mdtype, b0, b1 = mask
        mdims = [dims[len(dims) - len(mshape) + a] if s != 1 else 1 for a, s in enumerate(mshape)]
        m = te.placeholder(mdims, mdtype, "m")
        mi = _bcast(mshape, dims)
        args.append(m)
        terms.append(lambda i: tirx.Select(m[mi(i)] != tirx.const(0, mdtype), tirx.const(b1, "int32"),
                                           tirx.const(b0, "int32")))
    table = te.placeholder((table_len,), "int32", "table")
    args.append(table)

    def tval(*i):
        v = x[i].astype("int32")
        for f in terms:
            v = v + f(i)
        return v
    t = te.compute(dims, tval, name="t")
    r1 = te.reduce_axis((0, n), "r1")
    mx = te.compute(dims[:-1], lambda *r: te.max(t[(*r, r1)], axis=r1), name="mx")
    e = te.compute(dims, lambda *i: table[tirx.min(mx[i[:-1]] - t[i], table_len - 1)], name="e")
    r2 = te.reduce_axis((0, n), "r2")
    s = te.compute(dims[:-1], lambda *r: te.sum(e[(*r, r2)], axis=r2), name="s")
    rec = te.compute(dims[:-1], lambda *r: tirx.Cast("int32", tirx.truncdiv(tirx.const(1 << k, "int64"),
                                                                           s[r].astype("int64"))), name="rec")

    def yval(*i):
        row = i[:-1]
        num = e[i] * tirx.const(q, "int32") + (s[row] >> tirx.const(1, "int32"))
        q0 = tirx.Cast("int32", (num.astype("int64") * rec[row].astype("int64")) >> tirx.const(k, "int64"))
        y = q0 + tirx.Select(num - q0 * s[row] >= s[row], tirx.const(1, "int32"), tirx.const(0, "int32"))
        return (y if requant is None else epilogue.requant(y, requant)).astype(out_dtype)
    out = te.compute(dims, yval, name="out")
    args.append(out)

    sch = tvm.s_tir.Schedule(te.create_prim_func(args))
    loops = sch.get_loops(sch.get_sblock("out"))
    row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    sch.parallel(row)
    for name in ("rec", "s", "e", "mx", "t"):
        sch.compute_at(sch.get_sblock(name), row)
    if n % 8 == 0:
        for name in ("t", "e", "out"):
            sch.vectorize(sch.split(sch.get_loops(sch.get_sblock(name))[-1], [None, 8])[1])
    return sch.mod["main"].with_attr("op_pattern", 8)

