"""CPU integer convolution (dense as a 1x1 one; depthwise) with the requantization fused: x86
(`vpdpbusd`) and aarch64 (`sdot`/`usdot`, `arm_intrin`) share these loop nests and layouts.

Layout. Activations between fast kernels are *packed*: [N, ceil(C/16), H, W, 16] (NCHW16c; padded
channels hold values no consumer reads: their weights are zero). A kernel reads packed or NCHW
input; a first stage copies it to the padded operand layout (spatial zero padding, and for signed
input the +128 offset below); unsigned packed input that needs no padding is read in place.
Weights are packed at compile time into the instruction's operand layout (`packing`).

Arithmetic. `vpdpbusd` (AVX512-VNNI): per int32 lane j of 16, acc[j] += sum_{i<4} a[i] * b[j, i],
a unsigned and b signed 8-bit. Three ways to feed it:
  * conv: a = 4 input channels of one pixel (broadcast), b = 16 output x 4 input channels
    (weights [O/16, C/cb, KH, KW, cb/4, 16, 4]);
  * `rowtaps` (few-channel NCHW input, a first layer): a = 4 horizontal taps of one channel,
    contiguous in an NCHW row, so the input needs no channel blocking;
  * depthwise (`dw_vnni`): a = 4 horizontal taps x 16 channels (64 contiguous bytes, byte-shuffled
    to channel-major), b = those taps' weights: one instruction per 4 taps of 16 channels; 16-bit
    codes (`dw_pairs`, AVX512-VNNI): 2 taps x 16 int16 channels word-shuffled, one `vpdpwssd`.
Signed int8 input x is fed as u = x + 128 (pad value 128, the offset image of 0) and the row-sum
correction is folded into the bias: sum u*w = sum x*w + 128 * sum w, B' = B - 128 * sum_k w. No
intermediate wraps: |acc| <= 255 * 127 * K < 2^31 for K < 66,000.

Grouped convs with square groups (`ConvSpec.gcb`, ResNeXt, RegNet): the output blocks of one
super-group of max(16, C/g) channels reduce over that super-group's gcb input blocks only, with the
weights widened to it (`packing.group_weight`: block-diagonal where groups are narrower than 16, so
4- and 8-channel groups do 4x / 2x the MACs, still on the dot-product step).

Schedule (direct convolution, register-blocked implicit GEMM). Loops n, O/16/ocbi, OH/ohi are fused
and run in parallel; per tile of ocbi x 16 channels x ohi x owi pixels, the reduction loops wrap a
fully unrolled block of `vpdpbusd`s whose int32 accumulators stay in registers (`spec.choose_tile`).
The epilogue runs per pixel of the tile: + bias, requant (`intrin.REQUANT_INTRIN` in int32 when
every shift >= 33, or after shifting acc + bias left where it has room, `packing.hi32_preshift`; else
clip((acc * m + 2^(s-1)) >> s, lo, hi) in int64 as `dyadic.arith`), and a
fused residual add (`epilogue`); the accumulators never go to memory. Width and height are padded
up to whole tiles (extra pixels are computed on padding, not stored).

aarch64: the same 16 x 4 step is four 128-bit `sdot`/`usdot` (`arm_intrin`); `sdot` takes a signed
activation operand, so there uint8 input is fed as x - 128 (pad value -128) and B' = B + 128 sum_k w.
4-bit weights (`ConvSpec.w4`, either ISA): each 16 x 4 (usmmla: 16 x 8) operand is stored as half
as many bytes and unpacked in registers right before its instructions (`packing.nibbles`).

AVX2 (no AVX-512): conv, `rowtaps` and dense run the same 16 x 4 step as four `vpmaddwd` (`intrin_avx2`,
`ConvSpec.pmadd`; exact: s16 x s8 pair sums fit s32), two ymm per 16-lane accumulator. Their first
stage always copies: it widens the input to int16 (8-bit codes as they are, no offset; 16-bit codes
read as they are, or narrowed from int32 storage), so the step broadcasts int16 pairs straight from memory.
Depthwise on AVX2 keeps the 16 channels as int32 lanes with one `vpmaddwd` per tap of 8 channels
(`ConvSpec.dw_pmadd`, `intrin_avx2.DW_PMADD_INTRIN`; 16-bit codes narrowed to int16 by the copy). AVX-512
without VNNI runs the same loop nests with int32 multiply-adds: slower, exact. Depthwise with width dilation too.
"""
from __future__ import annotations

import tvm
from tvm import te, tirx

from dyadic.backend.kernels import arm_intrin, epilogue
from dyadic.backend.kernels.intrin import (DW_INTRIN, VNNI_INTRIN, register_dw, register_requant,
                                   register_vnni)
from dyadic.backend.kernels.intrin_avx2 import register_dw_pairs, register_dw_pmadd, register_pmadd
from dyadic.backend.kernels.spec import ConvSpec, ceil_div


def conv_func(sp: ConvSpec) -> tirx.PrimFunc:
    """The scheduled PrimFunc (x, w, b, m, r, s, [res, q], out) of one fused conv + requant."""
    n = tirx.Var("n", "int32")
    cb, icb, ocb = sp.cb, sp.icb, sp.ocb
    (oh, ow), (sh, sw), (dh, dw) = sp.out_hw, sp.stride, sp.dil
    ocbi, ohi, owi = sp.tile
    ohp, owp = ceil_div(oh, ohi) * ohi, ceil_div(ow, owi) * owi
    t, l, b_, r_ = sp.pads
    hp = max(sp.h + t + b_, (ohp - 1) * sh + (sp.kh - 1) * dh + 1)
    wp = max(sp.w + l + r_, (owp - 1) * sw + (sp.kwp - 1) * dw + 1)
    xshape = (n, icb, sp.h, sp.w, 16) if sp.packed_in else (n, sp.h, sp.w, sp.c) if sp.nhwc else (n, sp.c, sp.h, sp.w)
    x = te.placeholder(xshape, sp.in_dtype, "x")
    wshape = sp.weight_shape()
    kg = wshape[-1]  # inputs per operand row: 4 (dot products), 8 (usmmla)
    wt = wq = te.placeholder(wshape[:-2] + (8 * kg,) if sp.w4 else wshape, sp.w_dtype, "w")
    if sp.w4:  # one 16 x kg operand from 8 kg bytes (`packing.nibbles`); scheduled next to its use
        four = tirx.const(4, "int8")
        wt = te.compute(wshape, lambda *ix: tirx.Select(
            ix[-2] < 8, (wq[(*ix[:-2], (ix[-2] % 8) * kg + ix[-1])] << four) >> four,
            wq[(*ix[:-2], (ix[-2] % 8) * kg + ix[-1])] >> four), name="unpack4")
    bias = te.placeholder((ocb * 16,), "int32", "b")
    mul, rnd, shf = (te.placeholder((ocb * 16,), "int32" if sp.hi32 else "int64", nm) for nm in "mrs")
    off = sp.offset
    pdt = sp.in_dtype if sp.depthwise and not (sp.dw_vnni or sp.dw_pairs) else sp.operand_dtype
    if sp.dw_pmadd and sp.in_dtype == "int32":  # 16-bit codes in int32 storage: narrowed by the copy
        pdt = "int16"
    direct = sp.packed_in and not off and (hp, wp) == (sp.h, sp.w) and sp.in_dtype == pdt  # (16-bit codes: narrowed)

    if direct:
        dp = x
    elif sp.rowtaps:  # NCHW stays NCHW: only the spatial padding and the offset
        dp = te.compute((n, sp.c, hp, wp), lambda b, c, y, z: tirx.if_then_else(
            tirx.all(y >= t, y < sp.h + t, z >= l, z < sp.w + l),
            (x[b, c, tirx.min(tirx.max(y - t, 0), sp.h - 1), tirx.min(tirx.max(z - l, 0), sp.w - 1)].astype("int32")
             + off).astype(pdt), tirx.const(off, pdt)), name="pad")
    else:
        def pad_pack(b, i, y, z, c):
            ch = i * cb + c
            inside = tirx.all(y >= t, y < sp.h + t, z >= l, z < sp.w + l)
            yy, zz = tirx.min(tirx.max(y - t, 0), sp.h - 1), tirx.min(tirx.max(z - l, 0), sp.w - 1)
            if sp.packed_in:
                v = x[b, i, yy, zz, c]
            else:
                inside = tirx.all(inside, ch < sp.c)
                cc = tirx.min(ch, sp.c - 1)
                v = x[b, yy, zz, cc] if sp.nhwc else x[b, cc, yy, zz]
            u = (v.astype("int32") + off).astype(pdt) if off else v.astype(pdt)
            return tirx.if_then_else(inside, u, tirx.const(off, pdt))
        dp = te.compute((n, icb, hp, wp, cb), pad_pack, name="pad")
    ry = te.reduce_axis((0, sp.kh), "ry")
    rx = te.reduce_axis((0, sp.kw), "rx")
    # the input block of output block o's reduction step rk: its super-group's for a grouped conv
    gin = (lambda o, rk: (o // sp.gcb) * sp.gcb + rk) if sp.gcb else (lambda o, rk: rk)  # noqa: E731
    if sp.rowtaps and sp.pmadd:  # 4 taps of a step as (pair r2, tap r1), the layout of `intrin_avx2`
        rc, rg = te.reduce_axis((0, sp.c), "rc"), te.reduce_axis((0, sp.kwp // 4), "rg")
        r2, r1 = te.reduce_axis((0, 2), "r2"), te.reduce_axis((0, 2), "r1")
        acc = te.compute((n, ocb, ohp, owp, 16), lambda b, o, y, z, j: te.sum(
            dp[b, rc, y * sh + ry * dh, z * sw + rg * 4 + r2 * 2 + r1].astype("int32")
            * wt[o, rc, ry, rg, r2, j, r1].astype("int32"), axis=[rc, ry, rg, r2, r1]), name="acc")
    elif sp.rowtaps:
        rc, rg, rt = te.reduce_axis((0, sp.c), "rc"), te.reduce_axis((0, sp.kwp // 4), "rg"), te.reduce_axis((0, 4), "rt")
        acc = te.compute((n, ocb, ohp, owp, 16), lambda b, o, y, z, j: te.sum(
            dp[b, rc, y * sh + ry * dh, z * sw + rg * 4 + rt].astype("int32")
            * wt[o, rc, ry, rg, j, rt].astype("int32"), axis=[rc, ry, rg, rt]), name="acc")
    elif sp.dw_vnni or sp.dw_pairs:
        g = sp.taps
        rg, rt = te.reduce_axis((0, sp.kwp // g), "rg"), te.reduce_axis((0, g), "rt")
        acc = te.compute((n, ocb, ohp, owp, 16), lambda b, o, y, z, j: te.sum(
            dp[b, o, y * sh + ry * dh, z * sw + rg * g + rt, j].astype("int32")
            * wt[o, ry, rg, j, rt].astype("int32"), axis=[ry, rg, rt]), name="acc")
    elif sp.depthwise:
        acc = te.compute((n, ocb, ohp, owp, 16), lambda b, o, y, z, j: te.sum(
            dp[b, o, y * sh + ry * dh, z * sw + rx * dw, j].astype("int32") * wt[o, ry, rx, j].astype("int32"),
            axis=[ry, rx]), name="acc")
    elif sp.mmla:  # accumulators in the instruction's 2x2 tile order, un-permuted per finished tile
        rk, r8, ri = te.reduce_axis((0, icb), "rk"), te.reduce_axis((0, cb // 8), "r8"), te.reduce_axis((0, 8), "ri")
        accp = te.compute((n, ocb, ohp, owp // 2, 8, 4), lambda b, o, y, zp, qq, e: te.sum(
            dp[b, rk, y * sh + ry * dh, (zp * 2 + e // 2) * sw + rx * dw, r8 * 8 + ri].astype("int32")
            * wt[o // ocbi, rk, ry, rx, r8, o % ocbi, qq * 2 + e % 2, ri].astype("int32"),
            axis=[rk, ry, rx, r8, ri]), name="acc")
        acc = te.compute((n, ocb, ohp, owp, 16), lambda b, o, y, z, j: accp[b, o, y, z // 2, j // 2, (z % 2) * 2 + j % 2],
                         name="unperm")
    elif sp.pmadd:  # the 4 inputs of a step as (pair r2, input r1): the layout of `intrin_avx2`
        rk, r4 = te.reduce_axis((0, sp.rcb), "rk"), te.reduce_axis((0, cb // 4), "r4")
        r2, r1 = te.reduce_axis((0, 2), "r2"), te.reduce_axis((0, 2), "r1")
        acc = te.compute((n, ocb, ohp, owp, 16), lambda b, o, y, z, j: te.sum(
            dp[b, gin(o, rk), y * sh + ry * dh, z * sw + rx * dw, r4 * 4 + r2 * 2 + r1].astype("int32")
            * wt[o // ocbi, rk, ry, rx, r4, o % ocbi, r2, j, r1].astype("int32"), axis=[rk, ry, rx, r4, r2, r1]),
            name="acc")
    else:
        rk = te.reduce_axis((0, sp.rcb), "rk")
        r4 = te.reduce_axis((0, cb // 4), "r4")
        ri = te.reduce_axis((0, 4), "ri")
        acc = te.compute((n, ocb, ohp, owp, 16), lambda b, o, y, z, j: te.sum(
            dp[b, gin(o, rk), y * sh + ry * dh, z * sw + rx * dw, r4 * 4 + ri].astype("int32")
            * wt[o // ocbi, rk, ry, rx, r4, o % ocbi, j, ri].astype("int32"), axis=[rk, ry, rx, r4, ri]),
            name="acc")
    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731
    args = [x, wq, bias, mul, rnd, shf]
    if sp.residual:
        res = te.placeholder((n, ocb, oh, ow, 16), sp.residual[0], "res")
        q = te.placeholder((6,) if sp.residual[3] else (4,), "int32" if sp.residual[3] else "int64", "q")
        args += [res, q]

    if sp.hi32:  # see intrin.REQUANT_INTRIN; the form of this expression is the intrinsic's
        def total(b, o, y, z, j):  # acc + bias, shifted left by `pre` (`packing.hi32_preshift`)
            v = acc[b, o, y, z, j] + bias[o * 16 + j]
            return tirx.shift_left(v, tirx.const(sp.pre, "int32")) if sp.pre else v
        rq = te.compute((n, ocb, ohp, owp, 16), lambda b, o, y, z, j: tirx.shift_right(tirx.Cast("int32", (
            total(b, o, y, z, j).astype("int64") * mul[o * 16 + j].astype("int64")) >> i64(32))
            + rnd[o * 16 + j], shf[o * 16 + j]), name="rq")

    def finish(b, o, y, z, j):
        c = o * 16 + j
        if sp.hi32:
            v = tirx.max(tirx.min(rq[b, o, y, z, j], sp.hi), sp.lo)
        else:
            v = (acc[b, o, y, z, j] + bias[c]).astype("int64") * mul[c] + rnd[c]
            v = tirx.max(tirx.min(v >> shf[c], i64(sp.hi)), i64(sp.lo))
        if sp.residual:  # this conv is the add's first operand (`epilogue.consts` orders q so)
            v = epilogue.add(v, res[b, o, y, z, j], q, sp.residual[1], sp.residual[2], sp.residual[3])
        if sp.post:  # a per-tensor requant of this output, fused (`ConvSpec.post`)
            v = epilogue.requant(v, sp.post)
        return v.astype(sp.out_dtype)
    if sp.nhwc:  # a linear's rows: written as [N, H, W, O16] (channels last), not blocked
        out = te.compute((n, oh, ow, ocb * 16), lambda b, y, z, c: finish(b, c // 16, y, z, c % 16), name="out")
    else:
        out = te.compute((n, ocb, oh, ow, 16), finish, name="out")
    func = te.create_prim_func(args + [out])
    return _schedule(func, sp, direct, pdt).with_attr("op_pattern", 8)


def _schedule(func: tirx.PrimFunc, sp: ConvSpec, direct: bool, pdt: str) -> tirx.PrimFunc:
    sch = tvm.s_tir.Schedule(func)
    ocbi, ohi, owi = sp.tile
    blk = sch.get_sblock("acc")
    if sp.mmla:  # (pixel pairs, channel pairs q, 2x2 tile e): the tensorized part is (q, e, ri)
        b, o, y, z, j, e, *red = sch.get_loops(blk)
    else:
        (b, o, y, z, j, *red), e = sch.get_loops(blk), None
    oo, oi = sch.split(o, [None, ocbi])
    yo, yi = sch.split(y, [None, ohi])
    zo, zi = sch.split(z, [None, owi // 2 if sp.mmla else owi])
    vnni = sp.dot and (sp.dw_vnni or not sp.depthwise) or sp.pmadd or sp.dw_pairs  # a dot-product step
    nin = 2 if sp.pmadd else 1  # reduction loops inside the step: (pair, input) for `vpmaddwd`
    if vnni:  # (C/cb, KH, KW, cb/4) outside, the 4 input channels (or 4 taps) of one `vpdpbusd` inside
        sch.reorder(b, oo, yo, zo, *red[:-nin], oi, yi, zi, j, *([e] if e is not None else []), *red[-nin:])
    else:
        sch.reorder(b, oo, yo, zo, *red, oi, yi, zi, j)
    sch.parallel(sch.fuse(b, oo, yo))
    # epilogue on the tile: per pixel, requant (+ residual add) of its 16 channels
    first = sch.get_sblock("rq" if sp.hi32 else "out")
    if sp.mmla:  # the finished tile to [pixel, 16 channels] first, then the epilogue as usual
        sch.reverse_compute_at(sch.get_sblock("unperm"), zo)
        for lp in sch.get_loops(sch.get_sblock("unperm"))[2:]:
            sch.unroll(lp)
    sch.reverse_compute_at(first, zo)
    tile = sch.get_loops(first)[2:]  # (ocbi, ohi, owi, 16) below (fused, zo)
    if sp.hi32:  # the store right after each pixel's requant keeps one vector live, not the tile
        sch.reverse_compute_at(sch.get_sblock("out"), tile[-2] if len(tile) > 1 else zo)
        sch.vectorize(sch.get_loops(sch.get_sblock("out"))[-1])
        sch.tensorize(tile[-1], register_requant(sp.isa, sp.pre))
    else:
        sch.vectorize(tile[-1])
    if not vnni:
        if not sp.depthwise:
            sch.unroll(red[-1])
        if not sp.dw_pmadd:
            sch.vectorize(j)
    init = sch.decompose_reduction(blk, red[0])
    if sp.dw_pmadd:
        sch.tensorize(j, register_dw_pmadd(pdt, sp.w_dtype))
    if sp.w4:  # unpack each reduction step's operands (ocbi x 16 kg bytes) right before their use
        up = sch.get_sblock("unpack4")
        sch.compute_at(up, red[-2])
        depth = [sch.get(lp).same_as(sch.get(red[-2])) for lp in sch.get_loops(blk)].index(True) + 1
        *outer, j16, i4 = sch.get_loops(up)[depth:]
        jh, jl = sch.split(j16, [2, 8])
        sch.vectorize(sch.fuse(jl, i4))
        for lp in [jh, *outer]:
            sch.unroll(lp)
    if vnni:
        if sp.dw_pairs:
            dot = dwi = register_dw_pairs(sp.w_dtype)
        elif sp.pmadd:
            dot = dwi = register_pmadd(sp.w_dtype, isa=sp.isa)
        elif sp.isa == "vnni":
            register_vnni()
            register_dw()
            dot, dwi = VNNI_INTRIN, DW_INTRIN
        else:
            dot, dwi = arm_intrin.register("usdot" if sp.isa == "usmmla" else sp.isa)
        sch.tensorize(j, arm_intrin.register_mmla() if sp.mmla else dwi if sp.dw_vnni or sp.dw_pairs else dot)
    for lp in [oi, yi, zi] + tile[:-1]:
        sch.unroll(lp)
    tl = sch.get_loops(init)[2:]
    sch.vectorize(tl[-1])
    for lp in tl[:-1]:
        sch.unroll(lp)
    if not direct:
        pl = sch.get_loops(sch.get_sblock("pad"))
        sch.parallel(sch.fuse(pl[0], pl[1], pl[2]))
        sch.vectorize(sch.split(pl[-1], [None, 16])[1] if sp.rowtaps else pl[-1])
    return sch.mod["main"]
