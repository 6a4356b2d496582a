"""Integer-only LRN (local response normalization across channels, AlexNet / GoogLeNet / ZFNet).

ONNX: y[c] = x[c] / (bias + alpha / size * Σ_{i in W(c)} x[i]^2)^beta, with the channel window
W(c) = [c - floor((size-1)/2), c + ceil((size-1)/2)] clipped to the channels.

With x = s_x q (q in [lo, hi], A = max(|lo|, |hi|)) the denominator depends on x only through the
integer sum of squares Q[c] = Σ_{i in W(c)} q[i]^2 in [0, size A^2] (int64). So

    y = s_x q / d(Q),   d(Q) = (bias + alpha / size * s_x^2 Q)^beta,

and y / s_y = q g(Q) with g(Q) = s_x / (s_y d(Q)): a function of one integer, tabulated at compile
time. Q is bucketed to at most 2^12 entries, i = Q >> h (h = 0 when size A^2 < 2^12, else the
smallest shift that fits), and the entry is g at the bucket's middle, as an F-bit fixed point:

    G[i] = round(2^F g((i + 1/2) 2^h))   (G[i] = round(2^F g(i)) when h = 0),  G[0] < 2^31,
    q_y  = clip((q G[Q >> h] + 2^(F-1)) >> F, lo_y, hi_y)

in int64 (|q| G < 2^16 2^31). Error, beyond the input's quantization: the final shift rounds to
half an output LSB; G's rounding adds |q| 2^-F <= |q| g / 2^30 (relative 2^-30); the bucketing
replaces Q by a value within 2^(h-1) of it, which moves d by a relative
beta (alpha / size) s_x^2 2^(h-1) / (bias + alpha / size s_x^2 Q) at most (with the usual
bias >= 1, alpha = 1e-4: below 1e-4 relative for 8-bit inputs whose s_x^2 2^h / size < 2).
"""
from __future__ import annotations

import math

import numpy as np

from dyadic.core.arith import rounding_term
from dyadic.ops.base import IntOpDef, OpDef, importer, register_float, register_int

TABLE_BITS = 12


def _window(size: int) -> tuple[int, int]:
    return (size - 1) // 2, size - 1 - (size - 1) // 2


def _sumsq(x: np.ndarray, size: int) -> np.ndarray:
    before, after = _window(size)
    sq = np.square(x)
    pad = [(0, 0)] * x.ndim
    pad[1] = (before, after)
    sq = np.pad(sq, pad)
    c = x.shape[1]
    return sum(sq[:, i:i + c] for i in range(size))


def _lrn_float(node, xs):
    a = node.attrs
    x = xs[0].astype(np.float64)
    d = (a["bias"] + a["alpha"] / a["size"] * _sumsq(x, a["size"])) ** a["beta"]
    return (x / d).astype(xs[0].dtype, copy=False)


def _quantize_lrn(ctx, node):
    from dyadic.core.graph import Node

    a = node.attrs
    qx = ctx.qp[node.inputs[0]]
    q = ctx.qp[node.output] = ctx.out_q(node.output, qx.signed)
    amax = max(abs(qx.lo), abs(qx.hi))
    qmax = a["size"] * amax * amax
    h = max(0, math.ceil(math.log2((qmax + 1) / (1 << TABLE_BITS))))
    n = (qmax >> h) + 1
    mid = np.arange(n, dtype=np.float64) * (1 << h) + ((1 << h) / 2 if h else 0.0)
    g = qx.scale / (q.scale * (a["bias"] + a["alpha"] / a["size"] * qx.scale ** 2 * mid) ** a["beta"])
    f = min(62, 30 - math.floor(math.log2(float(g.max()))))
    if f < 1:
        raise ValueError(f"LRN gain {g.max():.3g} is too large for a 31-bit fixed-point table")
    table = np.rint(g * 2.0 ** f).astype(np.int64)
    ctx.nodes.append(Node("qlrn", node.name, node.inputs, node.outputs,
                          {"size": a["size"], "h": h, "F": f, **ctx.clip_bounds(q)}, {"G": table.astype(np.int32)}))


def _qlrn_ref(node, xs, out_shape):
    a = node.attrs
    x = xs[0].astype(np.int64)
    idx = np.minimum(_sumsq(x, a["size"]) >> a["h"], len(node.params["G"]) - 1)
    acc = x * node.params["G"].astype(np.int64)[idx]
    return np.clip((acc + rounding_term(a["F"])) >> a["F"], a["lo"], a["hi"])


def _qlrn_lower(L, node, xs):
    from tvm import relax

    a = node.attrs
    shape = L.g.shapes[node.inputs[0]]
    c, nd = shape[1], len(shape)
    before, after = _window(a["size"])
    x = L.emit(relax.op.astype(xs[0], "int64"))
    sq = L.emit(relax.op.multiply(x, x))
    width = [0, 0] * nd
    width[2], width[3] = before, after
    sq = L.emit(relax.op.nn.pad(sq, width))
    acc = None
    for i in range(a["size"]):
        part = L.emit(relax.op.strided_slice(sq, [1], [i], [i + c]))
        acc = part if acc is None else L.emit(relax.op.add(acc, part))
    idx = L.emit(relax.op.right_shift(acc, relax.const(np.int64(a["h"]), "int64"))) if a["h"] else acc
    table = relax.const(np.ascontiguousarray(node.params["G"]), "int32")
    gain = L.emit(relax.op.astype(L.emit(relax.op.take(table, idx, axis=0, mode="clip")), "int64"))
    y = L.emit(relax.op.multiply(x, gain))
    return L.shift_clip(y, np.array(a["F"], np.int64), a["lo"], a["hi"], L.g.dtypes[node.output])


register_float(OpDef("lrn", _lrn_float, _quantize_lrn))
register_int(IntOpDef("qlrn", _qlrn_ref, _qlrn_lower))


@importer("LRN", doc="integer sum of squares over the channel window, gain from a compile-time table, "
                     "dyadic requant")
def _import_lrn(c):
    from dyadic.core.graph import Node

    size = int(c.attrs["size"])
    if size < 1:
        c.fail(f"size {size} must be positive")
    if c.rank() < 3:
        c.fail(f"LRN needs a channel axis and at least one spatial axis (rank {c.rank()})")
    attrs = {"size": size, "alpha": float(c.attrs.get("alpha", 1e-4)), "beta": float(c.attrs.get("beta", 0.75)),
             "bias": float(c.attrs.get("bias", 1.0))}
    if attrs["bias"] <= 0:
        c.fail(f"bias {attrs['bias']} must be positive")
    return [Node("lrn", c.name, (c.inputs[0],), (c.outputs[0],), attrs)]
