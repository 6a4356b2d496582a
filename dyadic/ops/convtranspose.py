"""ConvTranspose (2-D, grouped too) as a zero-insertion followed by an ordinary integer convolution.

ONNX ConvTranspose with input x [N, C, H, W], weights W [C, M/g, kh, kw], strides (sh, sw),
dilations (dh, dw), pads (t, l, b, r), output_padding (oph, opw), group g computes

    y[n, o, :, :] = Σ_c  x[n, c] ⊛^T W[c, o]    (output height (H-1) sh + op_h + (kh-1) dh + 1 - t - b)

which equals a stride-1 convolution of the zero-inserted, padded input with the spatially flipped,
in/out-transposed weights:

    z = zero_insert(x): z[:, :, sh i + P_t, sw j + P_l] = x[:, :, i, j], zeros elsewhere,
        P_t = dh (kh-1) - t, P_b = dh (kh-1) - b + op_h (likewise P_l, P_r for the width)
    W'[g M_g + m, c, i, j] = W[g C_g + c, m, kh-1-i, kw-1-j]
    y = conv(z, W', stride 1, pads 0, dilations (dh, dw), group g) + B

`zero_insert` only moves integers and writes zeros (exact at any scale: a pass-through op), and
the convolution is the ordinary `conv`: per-output-channel int8 weights, int32 accumulation,
dyadic requant, a fused ReLU, a BatchNormalization after it folded in (`passes/fold_batchnorm`),
and the CPU kernels' fast path. So the integer result is exact with respect to the quantized
weights and input, like any conv. Cost: the convolution also multiplies the inserted zeros
(sh sw times the MACs of a direct transposed convolution). Pads larger than dh (kh-1) (which
would crop), auto_pad and output_shape are refused.
"""
from __future__ import annotations

import numpy as np

from dyadic.ops.base import IntOpDef, OpDef, importer, register_float, register_int


def zero_insert(x: np.ndarray, strides, pads) -> np.ndarray:
    (sh, sw), (t, l, b, r) = strides, pads
    n, c, h, w = x.shape
    y = np.zeros((n, c, (h - 1) * sh + 1 + t + b, (w - 1) * sw + 1 + l + r), x.dtype)
    y[:, :, t:t + (h - 1) * sh + 1:sh, l:l + (w - 1) * sw + 1:sw] = x
    return y


def conv_weights(w: np.ndarray, group: int) -> np.ndarray:
    """[C, M/g, kh, kw] transposed-conv weights -> [M, C/g, kh, kw] conv weights (flipped)."""
    c, mg, kh, kw = w.shape
    cg = c // group
    w = w.reshape(group, cg, mg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    return np.ascontiguousarray(w.reshape(group * mg, cg, kh, kw))


def _zi(node, xs, out_shape=None):
    return zero_insert(xs[0], node.attrs["strides"], node.attrs["pads"])


def lower_zero_insert(L, node, x, packed: bool = False):
    """Zero insertion of x: NCHW, or the packed CPU layout [N, C/16, H, W, 16] (`packed`)."""
    from tvm import relax

    (sh, sw), (t, l, b, r) = node.attrs["strides"], node.attrs["pads"]
    _, c, h, w = L.g.shapes[node.inputs[0]]
    c, lane = ((c + 15) // 16, [16]) if packed else (c, [])
    tail = [0, 0] * len(lane)
    if (sh, sw) != (1, 1):
        x = L.emit(relax.op.reshape(x, [L.batch, c, h, 1, w, 1] + lane))
        x = L.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 0, 0, 0, sh - 1, 0, 0, 0, sw - 1] + tail))
        x = L.emit(relax.op.reshape(x, [L.batch, c, h * sh, w * sw] + lane))
        x = L.emit(relax.op.strided_slice(x, [2, 3], [0, 0], [(h - 1) * sh + 1, (w - 1) * sw + 1]))
    if any((t, l, b, r)):
        x = L.emit(relax.op.nn.pad(x, [0, 0, 0, 0, t, b, l, r] + tail))
    return x


register_float(OpDef("zero_insert", lambda n, xs: _zi(n, xs), None, passthrough=True))
register_int(IntOpDef("zero_insert", _zi, lambda L, n, xs: lower_zero_insert(L, n, xs[0])))


@importer("ConvTranspose", doc="zero insertion (integers moved) + integer conv with flipped weights "
                               "(per-channel int8, BN folded, dyadic requant)")
def _import_convtranspose(c):
    from dyadic.core.graph import Node

    if c.rank() != 4:
        c.fail(f"only 2-D transposed convolutions (rank-4 input) are supported (rank {c.rank()})")
    if c.attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        c.fail("auto_pad SAME_* (export with explicit pads)")
    if c.attrs.get("output_shape") is not None:
        c.fail("output_shape (export with explicit pads and output_padding)")
    w = np.asarray(c.const(1), np.float32)
    g = int(c.attrs.get("group", 1))
    cin, mg, kh, kw = w.shape
    if cin % g or c.shapes[c.inputs[0]][1] != cin:
        c.fail(f"weights {list(w.shape)} do not fit input channels {c.shapes[c.inputs[0]][1]} in {g} groups")
    k = (kh, kw)
    st = tuple(int(v) for v in c.attrs.get("strides", (1, 1)))
    dl = tuple(int(v) for v in c.attrs.get("dilations", (1, 1)))
    pads = tuple(int(v) for v in c.attrs.get("pads", (0, 0, 0, 0)))
    op = tuple(int(v) for v in c.attrs.get("output_padding", (0, 0)))
    ext = [d * (kk - 1) for d, kk in zip(dl, k)]
    zp = (ext[0] - pads[0], ext[1] - pads[1], ext[0] - pads[2] + op[0], ext[1] - pads[3] + op[1])
    if min(zp) < 0:
        c.fail(f"pads {list(pads)} larger than the dilated kernel extent {ext} (cropping)")
    b = np.asarray(c.const(2, np.zeros(mg * g, np.float32)), np.float32)
    x, out = c.inputs[0], c.outputs[0]
    mid = f"{out}/zero_insert"
    n, ch, h, wd = c.shapes[x]
    c.shapes[mid] = (n, ch, (h - 1) * st[0] + 1 + zp[0] + zp[2], (wd - 1) * st[1] + 1 + zp[1] + zp[3])
    return [Node("zero_insert", f"{c.name}/zero_insert", (x,), (mid,), {"strides": st, "pads": zp}),
            Node("conv", c.name, (mid,), (out,), {"kernel": k, "strides": (1, 1), "pads": (0, 0, 0, 0),
                                                  "dilations": dl, "group": g},
                 {"W": conv_weights(w, g), "B": b})]
