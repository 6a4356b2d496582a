"""CPU kernels besides the convolution (x86 and aarch64), on the packed layout [N, C/16, H, W, 16] of `cpu_conv`.

* residual add (when not fused into the conv before it), max-pool, average pool (window sum then
  requant by a per-output-position or single multiplier, as `reference`), global mean (sum then requant;
  writes the plain [N, C] / [N, C, 1, 1] layout), and the conversions packed <-> NCHW between the
  fast kernels and the generic Relax ops.
All integer formulas are those of `dyadic.arith` / `dyadic.reference`; loops over (batch, channel
block, row) run in parallel, the 16 channels of a block are vectorized.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx

from dyadic.backend.kernels import epilogue
from dyadic.backend.kernels.spec import ceil_div


def _i64(v: int):
    return tirx.const(v, "int64")


def _clip(v, lo: int, hi: int):
    return tirx.max(tirx.min(v, _i64(hi)), _i64(lo))


def _finish(sch: tvm.s_tir.Schedule, block: str, par: int) -> None:
    """Parallel over the first `par` loops (fused), vectorize the innermost."""
    loops = sch.get_loops(sch.get_sblock(block))
    sch.vectorize(loops[-1])
    sch.parallel(sch.fuse(*loops[:par]) if par > 1 else loops[0])


def _func(args, sch_fn) -> tirx.PrimFunc:
    sch = tvm.s_tir.Schedule(te.create_prim_func(args))
    sch_fn(sch)
    return sch.mod["main"].with_attr("op_pattern", 8)


def add_func(cb: int, h: int, w: int, da: str, db: str, out_dtype: str, lo: int, hi: int,
             int32: bool) -> tirx.PrimFunc:
    """The residual add elementwise, with the constants q of `epilogue.consts`."""
    n = tirx.Var("n", "int32")
    a = te.placeholder((n, cb, h, w, 16), da, "a")
    b = te.placeholder((n, cb, h, w, 16), db, "b")
    q = te.placeholder((6,) if int32 else (4,), "int32" if int32 else "int64", "q")
    out = te.compute((n, cb, h, w, 16), lambda *i: epilogue.add(a[i], b[i], q, lo, hi, int32).astype(out_dtype),
                     name="out")
    return _func([a, b, q, out], lambda sch: _finish(sch, "out", 3))


def _taps(x, h: int, w: int, kernel, stride, pads, pad_value):
    """(ry, rx, tap): reduce axes over the window and the padded read of x at (b, i, y, z, j)."""
    (kh, kw), (sh, sw), (t, l) = kernel, stride, pads[:2]
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

    def tap(b, i, y, z, j):
        yy, zz = y * sh + ry - t, z * sw + rx - l
        inside = tirx.all(yy >= 0, yy < h, zz >= 0, zz < w)
        return tirx.if_then_else(inside, x[b, i, tirx.min(tirx.max(yy, 0), h - 1),
                                           tirx.min(tirx.max(zz, 0), w - 1), j], pad_value)
    return ry, rx, tap


def _pool_hw(h: int, w: int, kernel, stride, pads) -> tuple[int, int]:
    (kh, kw), (sh, sw), (t, l, b_, r_) = kernel, stride, pads
    return (h + t + b_ - kh) // sh + 1, (w + l + r_ - kw) // sw + 1


def _window_sched(sch, blk_name: str):
    blk = sch.get_sblock(blk_name)
    b, i, y, z, j, ry_, rx_ = sch.get_loops(blk)
    sch.reorder(b, i, y, z, ry_, rx_, j)
    sch.vectorize(j)
    sch.parallel(sch.fuse(b, i, y))
    sch.decompose_reduction(blk, ry_)
    return z


def maxpool_func(cb: int, h: int, w: int, kernel, stride, pads, dtype: str) -> tirx.PrimFunc:
    n = tirx.Var("n", "int32")
    oh, ow = _pool_hw(h, w, kernel, stride, pads)
    x = te.placeholder((n, cb, h, w, 16), dtype, "x")
    ry, rx, tap = _taps(x, h, w, kernel, stride, pads, tirx.const(tvm.tirx.min_value(dtype).value, dtype))
    out = te.compute((n, cb, oh, ow, 16), lambda b, i, y, z, j: te.max(tap(b, i, y, z, j), axis=[ry, rx]),
                     name="out")
    return _func([x, out], lambda sch: _window_sched(sch, "out"))


def avgpool_func(cb: int, h: int, w: int, kernel, stride, pads, in_dtype: str, out_dtype: str, lo: int, hi: int,
                 per_position: bool) -> tirx.PrimFunc:
    """clip((window sum * M + 2^(s-1)) >> s): args x, M ([OH, OW] per output position, or [1]),
    q = [2^(s-1), s] (int64); padding contributes zeros (the count is in M)."""
    n = tirx.Var("n", "int32")
    oh, ow = _pool_hw(h, w, kernel, stride, pads)
    x = te.placeholder((n, cb, h, w, 16), in_dtype, "x")
    m = te.placeholder((oh, ow) if per_position else (1,), "int64", "m")
    q = te.placeholder((2,), "int64", "q")
    ry, rx, tap = _taps(x, h, w, kernel, stride, pads, tirx.const(0, in_dtype))
    sm = te.compute((n, cb, oh, ow, 16), lambda b, i, y, z, j: te.sum(tap(b, i, y, z, j).astype("int32"),
                                                                     axis=[ry, rx]), name="sum")
    out = te.compute((n, cb, oh, ow, 16), lambda b, i, y, z, j: _clip(
        (sm[b, i, y, z, j].astype("int64") * (m[y, z] if per_position else m[0]) + q[0]) >> q[1], lo, hi)
        .astype(out_dtype), name="out")

    def sched(sch):
        z = _window_sched(sch, "sum")
        sch.reverse_compute_at(sch.get_sblock("out"), z)
        sch.vectorize(sch.get_loops(sch.get_sblock("out"))[-1])
    return _func([x, m, q, out], sched)


def mean_func(c: int, h: int, w: int, in_dtype: str, out_dtype: str, lo: int, hi: int, keepdims: bool):
    """requant(sum over H, W) per channel; writes [N, C] (or [N, C, 1, 1]); q = [m, 2^(s-1), s]."""
    n = tirx.Var("n", "int32")
    cb = ceil_div(c, 16)
    x = te.placeholder((n, cb, h, w, 16), in_dtype, "x")
    q = te.placeholder((3,), "int64", "q")
    ry, rx = te.reduce_axis((0, h), "ry"), te.reduce_axis((0, w), "rx")
    sm = te.compute((n, cb, 16), lambda b, i, j: te.sum(x[b, i, ry, rx, j].astype("int32"), axis=[ry, rx]),
                    name="sum")

    def rq(b, ch):
        return _clip((sm[b, ch // 16, ch % 16].astype("int64") * q[0] + q[1]) >> q[2], lo, hi).astype(out_dtype)
    shape = (n, c, 1, 1) if keepdims else (n, c)
    out = te.compute(shape, (lambda b, ch, u, v: rq(b, ch)) if keepdims else rq, name="out")

    def sched(sch):
        blk = sch.get_sblock("sum")
        b, i, j, ry_, rx_ = sch.get_loops(blk)
        sch.reorder(b, i, ry_, rx_, j)
        sch.vectorize(j)
        sch.parallel(sch.fuse(b, i))
        sch.decompose_reduction(blk, ry_)
    return _func([x, q, out], sched)


def unpack_func(c: int, h: int, w: int, dtype: str) -> tirx.PrimFunc:
    """[N, C/16, H, W, 16] -> [N, C, H, W]."""
    n = tirx.Var("n", "int32")
    x = te.placeholder((n, ceil_div(c, 16), h, w, 16), dtype, "x")
    out = te.compute((n, c, h, w), lambda b, ch, y, z: x[b, ch // 16, y, z, ch % 16], name="out")
    return _func([x, out], lambda sch: _finish(sch, "out", 2))


def pack_func(c: int, h: int, w: int, dtype: str) -> tirx.PrimFunc:
    """[N, C, H, W] -> [N, C/16, H, W, 16] (zero channels appended)."""
    n = tirx.Var("n", "int32")
    x = te.placeholder((n, c, h, w), dtype, "x")
    out = te.compute((n, ceil_div(c, 16), h, w, 16), lambda b, i, y, z, j: tirx.if_then_else(
        i * 16 + j < c, x[b, tirx.min(i * 16 + j, c - 1), y, z], tirx.const(0, dtype)), name="out")
    return _func([x, out], lambda sch: _finish(sch, "out", 3))


def any_dims(shape: tuple) -> list:
    """TE dims of a tensor of any layout: ints as they are, a fresh int64 Var for each None (symbolic)."""
    return [tirx.Var(f"d{i}", "int64") if d is None else d for i, d in enumerate(shape)]


def _flat(lanes: int, vector: bool):
    """Schedule of an elementwise "out" over any dims: all loops fused, parallel chunks of 1024, the
    innermost `lanes` vectorized (or unrolled, for a gather)."""
    def sched(sch):
        flat = sch.fuse(*sch.get_loops(sch.get_sblock("out")))
        outer, inner = sch.split(flat, [None, 1024])
        sch.parallel(outer)
        inner = sch.split(inner, [None, lanes])[1]
        sch.vectorize(inner) if vector else sch.unroll(inner)
    return sched


def lut_func(shape: tuple, in_dtype: str, table_len: int, in_lo: int, out_dtype: str) -> tirx.PrimFunc:
    """A lookup table (`qlut`) on a tensor of any layout: out = T[clamp(x - in_lo, 0, len - 1)], the
    table T an argument; `shape` holds ints and None for symbolic dims (the batch). The clamp keeps
    every read inside T whatever the input holds (in-range codes never reach it); one pass, no int32
    index tensor (the generic lowering writes one, then gathers from it)."""
    dims = any_dims(shape)
    x = te.placeholder(dims, in_dtype, "x")
    t = te.placeholder((table_len,), out_dtype, "t")
    out = te.compute(dims, lambda *i: t[tirx.max(tirx.min(x[i].astype("int32") - in_lo, table_len - 1), 0)],
                     name="out")
    return _func([x, t, out], _flat(16, vector=False))


def lut_rows_func(m: int, in_dtype: str, table_len: int, in_lo: int, out_dtype: str) -> tirx.PrimFunc:
    """`lut_func` over [N, m] codes (N symbolic; any tensor with m elements per sample, viewed flat):
    parallel chunks of whole runs of 16 codes, each run unrolled, all indices affine. The fused loops of
    `lut_func` over a 5-d packed tensor recompute each code's 5 indices from the flat one (divisions by
    constants: as many instructions per run as its 16 lookups take). m must be a multiple of 16."""
    if m % 16:
        raise ValueError(f"lut_rows_func needs a multiple of 16 codes per sample, got {m}")
    n = tirx.Var("n", "int32")
    x = te.placeholder((n, m), in_dtype, "x")
    t = te.placeholder((table_len,), out_dtype, "t")
    out = te.compute((n, m), lambda b, i: t[tirx.max(tirx.min(x[b, i].astype("int32") - in_lo, table_len - 1), 0)],
                     name="out")
    runs = m // 16
    chunk = 16 * max(g for g in range(1, 129) if runs % g == 0)  # at most 2,048 codes: no tail, no guard

    def sched(sch):
        b, i = sch.get_loops(sch.get_sblock("out"))
        io, ii = sch.split(i, [None, chunk])
        sch.parallel(sch.fuse(b, io))
        sch.unroll(sch.split(ii, [None, 16])[1])
    return _func([x, t, out], sched)


def qmul_func(cb: int, h: int, w: int, gate: bool, da: str, db: str, out_dtype: str, m: int, s: int,
              lo: int, hi: int) -> tirx.PrimFunc:
    """`qmul` on the packed layout: clip((a b M + 2^(S-1)) >> S) with per-tensor M, S baked in; b the
    same shape as a, or a per-channel gate [N, C/16, 1, 1, 16] (squeeze-excite). a b fits int32
    (|a b| <= 2^30 for 16-bit codes); where S >= 33 and M < 2^31 the requant is the int32 form of
    `intrin.REQUANT_INTRIN`, ((a b M) >> 32 + 2^(S-33)) >> (S-32), the same integers (floor division
    nests: floor((floor(v / 2^32) + c) / 2^k) = floor((v + c 2^32) / 2^(32+k)) for integer c), with
    one 32 x 32 -> 64 multiply per lane instead of int64 arithmetic, which AVX2 lacks."""
    n = tirx.Var("n", "int32")
    a = te.placeholder((n, cb, h, w, 16), da, "a")
    b = te.placeholder((n, cb, 1, 1, 16) if gate else (n, cb, h, w, 16), db, "b")

    def f(bb, i, y, z, j):
        p = a[bb, i, y, z, j].astype("int32") * (b[bb, i, 0, 0, j] if gate else b[bb, i, y, z, j]).astype("int32")
        return _requant32(p, m, s, lo, hi).astype(out_dtype)
    out = te.compute((n, cb, h, w, 16), f, name="out")
    return _func([a, b, out], lambda sch: _finish(sch, "out", 3))


def _requant32(p, m: int, s: int, lo: int, hi: int):
    """clip((p M + 2^(S-1)) >> S) of an int32 value p with compile-time M, S: the int32 form of
    `qmul_func`'s docstring where S >= 33 and M < 2^31, else the int64 one (`epilogue.requant`)."""
    if s >= 33 and m < 1 << 31:
        v = tirx.shift_right(tirx.Cast("int32", (p.astype("int64") * _i64(m)) >> _i64(32))
                             + tirx.const(1 << (s - 33), "int32"), tirx.const(s - 32, "int32"))
        return tirx.max(tirx.min(v, tirx.const(hi, "int32")), tirx.const(lo, "int32"))
    return epilogue.requant(p, (m, s, lo, hi))


def add_any_func(shape: tuple, da: str, db: str, out_dtype: str, ma: int, mb: int, s: int, lo: int,
                 hi: int) -> tirx.PrimFunc:
    """`qadd` of two same-shape tensors of any layout (a transformer's residual stream), M and S baked
    in: clip((a m_a + b m_b + 2^(s-1)) >> s), the reference's int64 formula. With the multipliers
    compile-time constants below 2^31 and a, b int32, each product is one 32 x 32 -> 64 multiply per
    lane (the generic lowering multiplies by int64 tensors, a full 64-bit product)."""
    from dyadic.core.arith import rounding_term

    dims = any_dims(shape)
    a = te.placeholder(dims, da, "a")
    b = te.placeholder(dims, db, "b")
    r = int(rounding_term(np.int64(s)))
    out = te.compute(dims, lambda *i: _clip((a[i].astype("int64") * _i64(ma) + b[i].astype("int64") * _i64(mb)
                                             + _i64(r)) >> _i64(s), lo, hi).astype(out_dtype), name="out")
    return _func([a, b, out], _flat(8, vector=True))


def concat_func(blocks: tuple[int, ...], h: int, w: int, dtype: str) -> tirx.PrimFunc:
    """Channel concat of packed tensors whose channel counts are whole blocks of 16 (`blocks`: each
    input's C/16): a copy, the input chosen per output block (the choice is loop-invariant below the
    parallel (batch, block) loop, so each 16-byte vector is one load and one store)."""
    n = tirx.Var("n", "int32")
    xs = [te.placeholder((n, cb, h, w, 16), dtype, f"x{i}") for i, cb in enumerate(blocks)]
    offs = np.cumsum((0,) + tuple(blocks)).tolist()

    def pick(i, b, c, y, z, j):
        if i == len(xs) - 1:
            return xs[i][b, c - offs[i], y, z, j]
        return tirx.if_then_else(c < offs[i + 1], xs[i][b, tirx.max(c - offs[i], 0), y, z, j],
                                 pick(i + 1, b, c, y, z, j))
    out = te.compute((n, offs[-1], h, w, 16), lambda *ix: pick(0, *ix), name="out")
    return _func([*xs, out], lambda sch: _finish(sch, "out", 2))


def affine_func(cb: int, h: int, w: int, din: str, dout: str, lo: int, hi: int) -> tirx.PrimFunc:
    """`qaffine` per channel on the packed layout (a BatchNorm not after a conv): clip((x G M + K +
    2^(S-1)) >> S) in int64 as `ops/arith_ops`, the per-channel G M, K, 2^(S-1), S arguments of
    length C/16 * 16; one pass, 16 lanes vectorized (the generic form was a scalar int64 loop)."""
    n = tirx.Var("n", "int32")
    x = te.placeholder((n, cb, h, w, 16), din, "x")
    gm, k, r, s = (te.placeholder((cb * 16,), "int64", nm) for nm in ("gm", "k", "r", "s"))

    def f(b, i, y, z, j):
        c = i * 16 + j
        return _clip((x[b, i, y, z, j].astype("int64") * gm[c] + k[c] + r[c]) >> s[c], lo, hi).astype(dout)
    out = te.compute((n, cb, h, w, 16), f, name="out")
    return _func([x, gm, k, r, s, out], lambda sch: _finish(sch, "out", 3))


def requant_func(shape: tuple, din: str, dout: str, m: int, s: int, lo: int, hi: int) -> tirx.PrimFunc:
    """A per-tensor `requant` on any layout (M, S baked in): clip((x M + 2^(S-1)) >> S) as `dyadic.arith`,
    in the int32 form of `qmul_func` where S >= 33 and M < 2^31, else int64; one vectorized pass."""
    dims = any_dims(shape)
    x = te.placeholder(dims, din, "x")

    out = te.compute(dims, lambda *i: _requant32(x[i].astype("int32"), m, s, lo, hi).astype(dout), name="out")
    return _func([x, out], _flat(16, vector=True))
