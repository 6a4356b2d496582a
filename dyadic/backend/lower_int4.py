"""Generic TE kernels that read 4-bit weights packed two per byte, unpacking inside the reduction.

The fallback for W4 layers no kernel family takes (grouped non-depthwise convs, CPUs without a
dot-product instruction, dense layers on 16-bit input): `dyadic.backend.kernels` run W4 layers on the
int8 dot-product / MMA instructions with their own nibble layouts. This plain loop nest is slow.

Unpacking in a separate Relax op would be undone by constant folding (the weights are constants),
leaving an int8 copy in the library; reading the packed bytes inside the conv/dense keeps the
library's weights at half a byte each. Nibble k of row o: byte = Wp[o, k // 2];
value = (byte << 4) >> 4 for even k, byte >> 4 for odd k (arithmetic shifts on int8).
"""
from __future__ import annotations

from tvm import te, tirx


def _nibble(wp, o, k):
    byte = wp[o, k // 2]
    four = tirx.const(4, "int8")
    return tirx.Select(k % 2 == 0, (byte << four) >> four, byte >> four).astype("int32")


def conv2d_int4(x, wp, wshape, strides, pads, dilations, group):
    """NCHW conv, int32 out. `wp`: [O, ceil(Cg*kh*kw / 2)] packed int8; `wshape` = (O, Cg, kh, kw)."""
    o_ch, cg, kh, kw = wshape
    n, c, h, w = x.shape
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilations, pads
    ho = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    wo = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    padded = te.compute(
        (n, c, h + pt + pb, w + pl + pr),
        lambda b, ci, y, z: tirx.if_then_else(
            tirx.all(y >= pt, y < h + pt, z >= pl, z < w + pl), x[b, ci, y - pt, z - pl],
            tirx.const(0, x.dtype)),
        name="pad")
    rc, ry, rx = te.reduce_axis((0, cg), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    og = o_ch // group
    return te.compute(
        (n, o_ch, ho, wo),
        lambda b, o, y, z: te.sum(
            padded[b, (o // og) * cg + rc, y * sh + ry * dh, z * sw + rx * dw].astype("int32")
            * _nibble(wp, o, (rc * kh + ry) * kw + rx), axis=[rc, ry, rx]),
        name="conv_int4")


def dense_int4(x, wp, wshape):
    """[N, K] x packed [O, ceil(K/2)] -> [N, O] int32."""
    o_ch, k = wshape
    rk = te.reduce_axis((0, k), "rk")
    return te.compute((x.shape[0], o_ch),
                      lambda b, o: te.sum(x[b, rk].astype("int32") * _nibble(wp, o, rk), axis=rk),
                      name="dense_int4")
