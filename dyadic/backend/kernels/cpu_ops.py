"""CPU kernels besides the convolution (x86 and aarch64), on the packed layout [N, C/16, H, W, 16] of `cpu_conv`.

* residual add (when not fused into the conv before it), max-pool, average pool (window sum then
  requant by a per-output-position or single multiplier, as `reference`), global mean (sum then requant;
  writes the plain [N, C] / [N, C, 1, 1] layout), and the conversions packed <-> NCHW between the
  fast kernels and the generic Relax ops.
All integer formulas are those of `dyadic.arith` / `dyadic.reference`; loops over (batch, channel
block, row) run in parallel, the 16 channels of a block are vectorized.
"""
from __future__ import annotations

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
