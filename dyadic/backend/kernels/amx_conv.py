"""AMX conv / dense kernels (`tdpbusd` tiles) with the fused dyadic requant and residual add.

`conv_func(sp)` is a drop-in for `cpu_conv.conv_func`: the same arguments (x, w, b, m, r, s,
[res, q], out) and the packed output [N, O/16, OH, OW, 16], so the lowering can choose per layer.
The tile program, layouts and arithmetic are in `amx_layout` (its numpy model in `amx_model`); the instructions in `intrin_amx`.

Structure of the PrimFunc (written with TVM's IRBuilder: tile-register numbers are immediates, so
the register-blocked part is unrolled in Python):
  1. staging (parallel over image rows): xa[n, HX, WS, CP] uint8 from packed or NCHW input, spatial
     padding, channel padding to 64, +128 for signed input (a heap workspace, like `cpu_conv`'s pad);
     TAPS mode: plain NHWC with c bytes per pixel;
  2. tile loop, parallel over about `TASKS_PER_IMAGE` tasks per image (pixel group x output-channel
     group of nb blocks, pixel-group major so that a thread reads the rows it staged); each task runs
     `ldtilecfg` once (the configuration is per thread), then per macro tile (mb x 16 pixels x nb x 16
     channels): tilezero, for each reduction step (ry, rx, kb) mb A and nb B `tileloadd`s and mb nb
     `tdpbusd`s; every C tile `tilestored` into an int32 scratch on the stack; and the epilogue of
     the previous macro tile, issued after this one's tile products so that the vector units work
     while the AMX unit multiplies. Per 16-output row the epilogue is one vector expression (+ bias,
     requant on `vpmuldq` (`intrin.requant_hi32_x16`), clip, the residual add on `vpdpwssd`
     (`epilogue.add_pairs`), a 16-lane store) where every shift >= 33 and the add's multipliers
     split into signed 16-bit halves; else the int64 formula of `dyadic.arith` / the int32 split of
     `epilogue.add`. `tilerelease` at the end of the task.
  16-bit input (`wide`, `amx_layout`): the staging splits each code into its lo / hi byte planes,
  and every step loads both A tiles and runs `tdpbusd` on lo, `tdpbssd` on hi; the epilogue reads
  256 C_hi + C_lo.
  3. 4-bit weights: each B tile is unpacked (two shifts per byte) into an int8 scratch right before
     its `tileloadd`.
`emulate=True` builds the identical kernel with `intrin_amx`'s TIR emulation of the instructions
(tests on CPUs without AMX).
"""
from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.tirx.script.builder import ir as T

from dyadic.backend.kernels import epilogue
from dyadic.backend.kernels.amx_layout import B_TILE, ROW_BYTES, ROWS_MAX, AmxConvSpec
from dyadic.backend.kernels.intrin import requant_hi32_x16
from dyadic.backend.kernels.intrin_amx import TileOps
from dyadic.backend.kernels.spec import ceil_div

#: parallel tasks per image (channel groups x pixel groups), at least: each runs ldtilecfg once, and the
#: pixel tiles of one task reuse its channel group's B tiles from L1/L2 (ResNet-50 on a 2-core AMX Xeon,
#: 1 thread: 8 -> 6.8 ms, 32 per channel group -> 7.3 ms; 4 and 16 within 3 % of 8 at 1 and 2 threads)
TASKS_PER_IMAGE = 8


def _i64(v):
    return tirx.const(v, "int64")


def conv_func(sp: AmxConvSpec, emulate: bool = False) -> tirx.PrimFunc:
    n = tirx.Var("n", "int32")
    oh, ow = (1, 1) if sp.dense else sp.out_hw
    ocb = sp.ocb
    ops = TileOps(sp.m, sp.mb, sp.nb, emulate, sp.planes)
    wlen = ocb * sp.kh * sp.kws * sp.kb * sp.b_bytes
    cdt = "int32" if sp.hi32 else "int64"
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True})
            xshape = (n, ceil_div(sp.c, 16), sp.h, sp.w, 16) if sp.packed_in else (n, sp.c, sp.h, sp.w)
            names = ["x", "w", "b", "m", "r", "s"] + (["res", "q"] if sp.residual else []) + ["out"]
            hs = {nm: T.arg(nm, T.handle()) for nm in names}
            x = T.match_buffer(hs["x"], xshape, sp.in_dtype)
            wq = T.match_buffer(hs["w"], (wlen,), "int8")
            bias = T.match_buffer(hs["b"], (ocb * 16,), "int32")
            mul, rnd, shf = (T.match_buffer(hs[k], (ocb * 16,), cdt) for k in "mrs")
            if sp.residual:
                res = T.match_buffer(hs["res"], (n, ocb, oh, ow, 16), sp.residual[0])
                q = T.match_buffer(hs["q"], (6,) if sp.residual[3] and not sp.res_pairs else (4,),
                                   "int32" if sp.residual[3] else "int64")
            out = T.match_buffer(hs["out"], (n, ocb, oh, ow, 16), sp.out_dtype)
            img = sp.img_bytes
            xa = T.alloc_buffer(((n + ROWS_MAX - 1) // ROWS_MAX * ROWS_MAX * sp.pix_bytes,) if sp.dense
                                else (sp.staged_bytes(n),), "uint8")
            _stage(sp, n, x, xa)

            def epilogue_rows(t, ob, b, scratch, base, rq):
                """C tile rows (int32 [M, 16] at scratch[base:]) -> out: + bias, requant, clip, residual."""
                with T.serial(0, sp.m) as r:
                    if sp.dense:
                        bb, y, z = t * ROWS_MAX + r, 0, 0
                        ok = bb < n
                    else:
                        (y, z), bb = sp.out_pixel(t, r), b
                        ok = tirx.all(y < oh, z < ow)
                    with T.If(ok):
                        with T.Then():
                            if sp.hi32 and (not sp.residual or sp.res_pairs):  # one vector expression
                                v = _row_vector(sp, scratch, base + r * 16, ob, consts, res_row(bb, ob, y, z))
                                T.buffer_store(out, v, [bb, ob, y, z, tirx.Ramp(0, 1, 16)])
                            else:
                                _row_scalar(r, ob, bb, y, z, scratch, base, rq)

            def _row_scalar(r, ob, bb, y, z, scratch, base, rq):
                if sp.hi32:  # the requanted row as a vector, the residual add (int32 split) per lane
                    T.buffer_store(rq, _requant_row(sp, scratch, base + r * 16, ob, consts), [tirx.Ramp(0, 1, 16)])
                with T.vectorized(0, 16) as jj:
                    ch = ob * 16 + jj
                    if sp.hi32:
                        v = rq[jj]
                    else:
                        v = (_acc(sp, scratch, base + r * 16 + jj) + bias[ch]).astype("int64") * mul[ch] + rnd[ch]
                        v = tirx.max(tirx.min(v >> shf[ch], _i64(sp.hi)), _i64(sp.lo))
                    if sp.residual:
                        v = epilogue.add(v, res[bb, ob, y, z, jj], q, sp.residual[1], sp.residual[2],
                                         sp.residual[3])
                    T.buffer_store(out, v.astype(sp.out_dtype), [bb, ob, y, z, jj])

            consts = (bias, mul, rnd, shf, q if sp.residual else None)

            def res_row(bb, ob, y, z):
                return res.vload([bb, ob, y, z, 0], f"{sp.residual[0]}x16") if sp.residual else None

            def compute(t0, ob0, b, wsc):
                """The macro tile's C tiles (mb x 16 pixels x nb x 16 channels) over every reduction step."""
                for i in range(sp.mb):
                    for j in range(sp.nb):
                        ops.zero(ops.c(i, j))
                        for p in range(1, sp.planes):
                            ops.zero(ops.c(i, j, p))
                with T.serial(0, sp.kh) as ry, T.serial(0, sp.kws) as rx, T.serial(0, sp.kb) as kb:
                    for i in range(sp.mb):
                        for p in range(sp.planes):
                            base = (sp.dense_offset(t0 + i, kb, p) if sp.dense
                                    else b * img + sp.a_offset(t0 + i, ry, rx, kb, p))
                            ops.load(ops.a(i, p), xa, base, sp.a_stride)
                    for j in range(sp.nb):
                        off = sp.b_tile(ob0 + j, ry, rx, kb) * sp.b_bytes
                        if sp.w4:
                            _unpack4(wq, off, wsc, j * B_TILE)
                            ops.load(ops.b(j), wsc, j * B_TILE, ROW_BYTES)
                        else:
                            ops.load(ops.b(j), wq, off, ROW_BYTES)
                    for i in range(sp.mb):
                        for j in range(sp.nb):
                            for p in range(sp.planes):  # the hi plane (wide) is signed: `tdpbssd`
                                ops.dot(ops.c(i, j, p), ops.a(i, p), ops.b(j), signed=p == 1)

            def store(scratch):  # every C tile stored before any is read: the stores overlap
                for i in range(sp.mb):
                    for j in range(sp.nb):
                        for p in range(sp.planes):
                            ops.store(ops.c(i, j, p), scratch, ops.c(i, j, p) * 256)

            def finish(t0, ob0, b, scratch, rq):
                for i in range(sp.mb):
                    for j in range(sp.nb):
                        epilogue_rows(t0 + i, ob0 + j, b, scratch, ops.c(i, j) * 256, rq)

            og = ocb // sp.nb
            if sp.dense:  # one task per (16 samples, channel group)
                with T.parallel(0, (n + ROWS_MAX - 1) // ROWS_MAX * og) as task:
                    ops.begin()
                    scratch = T.alloc_buffer((sp.planes * sp.mb * sp.nb * 256,), "int32", scope="local")
                    rq = T.alloc_buffer((16,), "int32", scope="local")
                    wsc = T.alloc_buffer((sp.nb * B_TILE,), "int8", scope="local") if sp.w4 else None
                    compute(task // og, (task % og) * sp.nb, 0, wsc)
                    store(scratch)
                    finish(task // og, (task % og) * sp.nb, 0, scratch, rq)
                    ops.end()
            else:
                mt = sp.tiles // sp.mb
                gs = ceil_div(mt, ceil_div(TASKS_PER_IMAGE, og))
                pg = ceil_div(mt, gs)
                with T.parallel(0, n * og * pg) as task:
                    b, rest = task // (og * pg), task % (og * pg)
                    # pixel-group major: a thread's run of tasks reads the rows it staged, from its own L2
                    g, ob0 = rest // og, (rest % og) * sp.nb
                    ops.begin()
                    scratch = T.alloc_buffer((sp.planes * sp.mb * sp.nb * 256,), "int32", scope="local")
                    rq = T.alloc_buffer((16,), "int32", scope="local")
                    wsc = T.alloc_buffer((sp.nb * B_TILE,), "int8", scope="local") if sp.w4 else None
                    # software pipelined: the tiles of macro tile gi multiply (on the AMX unit) while the
                    # vector units run the epilogue of gi - 1 from the scratch
                    t0 = g * gs * sp.mb
                    compute(t0, ob0, b, wsc)
                    store(scratch)
                    with T.serial(1, tirx.min(gs, mt - g * gs)) as gi:
                        compute(t0 + gi * sp.mb, ob0, b, wsc)
                        finish(t0 + (gi - 1) * sp.mb, ob0, b, scratch, rq)
                        store(scratch)
                    finish(t0 + (tirx.min(gs, mt - g * gs) - 1) * sp.mb, ob0, b, scratch, rq)
                    ops.end()
    return ib.get().with_attr("op_pattern", 8)


def _row_vector(sp: AmxConvSpec, scratch, at, ob, consts, res_row):
    """One row of a C tile (16 int32 at scratch[at]) -> its 16 output codes, as one vector expression:
    + bias, requant on `vpmuldq` (`intrin.requant_hi32_x16`), clip, the residual add on `vpdpwssd`
    (`epilogue.add_pairs`)."""
    v = _requant_row(sp, scratch, at, ob, consts)
    if sp.residual:
        v = epilogue.add_pairs(v, res_row.astype("int32x16"), consts[4], sp.residual[1], sp.residual[2])
    return v.astype(f"{sp.out_dtype}x16")


def _requant_row(sp: AmxConvSpec, scratch, at, ob, consts):
    """clip(requant(C row + bias)) of 16 channels as an int32x16 expression (every shift >= 33)."""
    bias, mul, rnd, shf, _ = consts
    ld = lambda buf: buf.vload([ob * 16], "int32x16")  # noqa: E731
    v = requant_hi32_x16(_acc(sp, scratch, at, 16) + ld(bias), ld(mul), ld(rnd), ld(shf))
    return tirx.max(tirx.min(v, tirx.Broadcast(tirx.const(sp.hi, "int32"), 16)),
                    tirx.Broadcast(tirx.const(sp.lo, "int32"), 16))


def _acc(sp: AmxConvSpec, scratch, at, lanes: int = 1):
    """The accumulator(s) at scratch[at] (lanes > 1: a vector): 8-bit input, C; wide, 256 C_hi + C_lo
    (the hi plane's C tile is stored mb nb tiles later, `TileOps.c`)."""
    ld = (lambda a: scratch.vload([a], f"int32x{lanes}")) if lanes > 1 else (lambda a: scratch[a])  # noqa: E731
    if not sp.wide:
        return ld(at)
    eight = tirx.const(8, "int32") if lanes == 1 else tirx.Broadcast(tirx.const(8, "int32"), lanes)
    return (ld(at + sp.mb * sp.nb * 256) << eight) + ld(at)


def _unpack4(wq, off, wsc, dst) -> None:
    """One B tile of 4-bit weights (16 rows x 32 bytes, `packing.nibbles`) -> 16 x 64 int8 in wsc."""
    four = tirx.const(4, "int8")
    with T.serial(0, 16) as k:
        with T.vectorized(0, 32) as e:
            v = wq[off + k * 32 + e]
            T.buffer_store(wsc, (v << four) >> four, [dst + k * 64 + e])
            T.buffer_store(wsc, v >> four, [dst + k * 64 + 32 + e])


def _stage(sp: AmxConvSpec, n, x, xa) -> None:
    """xa <- the staged operand (`amx_model.stage`): padding, channel blocks of 64, + offset."""
    off = sp.offset
    pad = tirx.const(off, "uint8")

    def val(v, plane=0):
        if sp.wide:  # the code's low byte, or its high byte (signed, as a byte)
            v = v.astype("int32")
            return ((v >> tirx.const(8, "int32")) if plane else v).astype("uint8")
        return (v.astype("int32") + off).astype("uint8") if off else v.astype("uint8")

    if sp.dense:
        with T.parallel(0, (n + ROWS_MAX - 1) // ROWS_MAX * ROWS_MAX) as p:
            with T.serial(0, sp.cp) as c:
                v = x[tirx.min(p, n - 1), tirx.min(c, sp.c - 1), 0, 0]
                for pl in range(sp.planes):
                    T.buffer_store(xa, tirx.if_then_else(tirx.all(p < n, c < sp.c), val(v, pl), pad),
                                   [p * sp.pix_bytes + pl * sp.cp + c])
        return
    t, l, _, _ = sp.pads
    if sp.taps:  # plain NHWC, c bytes per pixel, then the slack; the padding columns and rows apart
        cc = sp.c
        with T.parallel(0, n * sp.hx) as by:
            b, yy = by // sp.hx, by % sp.hx
            row, iy = by * sp.ws * cc, yy - t
            with T.If(tirx.all(iy >= 0, iy < sp.h)):
                with T.Then():
                    with T.serial(0, l * cc) as e:
                        T.buffer_store(xa, pad, [row + e])
                    with T.serial(0, sp.w) as ix:
                        for c in range(cc):
                            v = x[b, c // 16, iy, ix, c % 16] if sp.packed_in else x[b, c, iy, ix]
                            T.buffer_store(xa, val(v), [row + (l + ix) * cc + c])
                    with T.serial(0, (sp.ws - l - sp.w) * cc) as e:
                        T.buffer_store(xa, pad, [row + (l + sp.w) * cc + e])
                with T.Else():
                    with T.serial(0, sp.ws * cc) as e:
                        T.buffer_store(xa, pad, [row + e])
        with T.serial(0, ROW_BYTES) as e:
            T.buffer_store(xa, pad, [n * sp.img_bytes + e])
        return
    with T.parallel(0, n * sp.hx) as by:
        b, yy = by // sp.hx, by % sp.hx
        with T.serial(0, sp.ws) as xx, T.serial(0, sp.cp // 16) as cb:
            with T.vectorized(0, 16) as ci:
                c = cb * 16 + ci
                iy, ix = yy * sp.sub[0] - t, xx * sp.sub[1] - l
                inside = tirx.all(iy >= 0, iy < sp.h, ix >= 0, ix < sp.w, c < sp.c)
                cy, cx = tirx.min(tirx.max(iy, 0), sp.h - 1), tirx.min(tirx.max(ix, 0), sp.w - 1)
                cc = tirx.min(c, sp.c - 1)
                v = x[b, cc // 16, cy, cx, cc % 16] if sp.packed_in else x[b, cc, cy, cx]
                for pl in range(sp.planes):
                    T.buffer_store(xa, tirx.if_then_else(inside, val(v, pl), pad),
                                   [((b * sp.hx + yy) * sp.ws + xx) * sp.pix_bytes + pl * sp.cp + c])
