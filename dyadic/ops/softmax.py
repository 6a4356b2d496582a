"""Integer-only Softmax along one axis (exp by table, integer sum, integer division).

With the input x = s_x q (q an integer code in [lo, hi]) and d = q - max(q) in [-(hi - lo), 0]:

    E[k] = round(2^15 exp(-k s_x))        k = 0 .. hi - lo   (a compile-time table, E[0] = 2^15)
    e    = E[-d],   Σ = sum of e along the axis (int64),
    q_y  = (e Q + floor(Σ / 2)) // Σ      (integer division, round half up; lowered with one
                                          reciprocal per row, exactly: `ops/intdiv`)

so q_y / Q ≈ exp(x - max x) / Σ exp(x - max x) = softmax(x), with Q = 255 (uint8 output, scale
1/255) or Q = 32767 at a 16-bit graph output. Each table entry is off by at most 1/2 in units of
2^-15, and Σ >= 2^15 (the max term), so for n terms

    |q_y / Q - softmax(x)| <= 1 / (2 Q) + (n / 2 + 1 / 2) 2^-15

beyond the input's own quantization: 8-bit output error is dominated by its LSB (1/510) for
n < ~60; long rows (attention over 128 tokens) add at most 0.002. LogSoftmax is not implemented.

Additive bias (an attention mask, a relative-position bias): `passes/fuse_softmax_bias` folds a
constant added to the softmax input into the op (`params["bias"]`, broadcast against the input),
so the input's scale is calibrated on the scores alone. In integers the bias is added in the
input's code units, B_q = clip(round(bias / s_x), ±2^20), t = q + B_q (int32), d = max(t) - t,
and the table is extended to cover d (up to the point where it is 0: a masked entry, -1e4 or
-inf, gets exp = 0 exactly). The error bound above holds for the biased input, plus the rounding
of the bias to half an input step.

Input mask (BERT's `attention_mask`, int64 0/1 ids): the same pass folds scores + (A m + B) (the
exporters' `(1 - mask) * finfo.min`, a scalar affine of the reshaped mask) into a second softmax
input m with `attrs["mask_affine"] = (A, B)`; in integers t = q + (m != 0 ? B1 : B0) with
B0 = round(B / s_x), B1 = round((A + B) / s_x) (clipped to ±2^20), so masked keys get exp = 0.
"""
from __future__ import annotations

import math

import numpy as np

from dyadic.core.graph import QParams
from dyadic.ops.base import IntOpDef, OpDef, importer, register_float, register_int
from dyadic.ops.intdiv import row_divide

EXP_BITS = 15
BIAS_CAP = 1 << 20


def _softmax_float(node, xs):
    x = xs[0]
    ax = node.attrs["axis"]
    if "bias" in node.params:
        x = x + node.params["bias"].astype(x.dtype)
    if len(xs) > 1:  # an input mask m: x + A m + B
        a, b = node.attrs["mask_affine"]
        x = x + (xs[1].astype(x.dtype) * x.dtype.type(a) + x.dtype.type(b))
    e = np.exp(x - x.max(axis=ax, keepdims=True))
    return (e / e.sum(axis=ax, keepdims=True)).astype(x.dtype, copy=False)


def _quantize_softmax(ctx, node):
    from dyadic.core.graph import Node

    qx = ctx.qp[node.inputs[0]]
    wide = ctx.out_q(node.output).bits > 8
    q = ctx.qp[node.output] = QParams(1 / 32767, 16, True) if wide else QParams(1 / 255, 8, False)
    span, params = qx.hi - qx.lo, {}
    if "bias" in node.params:
        with np.errstate(invalid="ignore", over="ignore"):
            bq = np.nan_to_num(np.asarray(node.params["bias"], np.float64) / qx.scale, nan=0.0,
                               posinf=BIAS_CAP, neginf=-BIAS_CAP)
        bq = np.clip(np.rint(bq), -BIAS_CAP, BIAS_CAP).astype(np.int32)
        params["BQ"] = bq
        zero_at = int(math.floor(16 * math.log(2) / qx.scale)) + 2  # E[k] rounds to 0 from here on
        span = min(span + int(bq.max()) - int(bq.min()), max(zero_at, qx.hi - qx.lo))
    attrs = {}
    if len(node.inputs) > 1:
        a, b = node.attrs["mask_affine"]
        b0, b1 = (int(np.clip(np.rint(np.nan_to_num(v / qx.scale, posinf=BIAS_CAP, neginf=-BIAS_CAP)), -BIAS_CAP,
                                      BIAS_CAP)) for v in (b, a + b))
        attrs = {"B0": b0, "B1": b1}
        zero_at = int(math.floor(16 * math.log(2) / qx.scale)) + 2
        span = min(span + abs(b1 - b0), max(zero_at, span))
    k = np.arange(span + 1, dtype=np.float64)
    table = np.rint(np.exp(-k * qx.scale) * (1 << EXP_BITS)).astype(np.int32)
    ctx.nodes.append(Node("qsoftmax", node.name, node.inputs, node.outputs,
                          {"axis": node.attrs["axis"], "Q": int(q.hi), "lo": 0, "hi": int(q.hi), **attrs},
                          {"E": table, **params}))


def _qsoftmax_ref(node, xs, out_shape):
    ax, Q = node.attrs["axis"], node.attrs["Q"]
    x = xs[0].astype(np.int64)
    if "BQ" in node.params:
        x = x + node.params["BQ"].astype(np.int64)
    if len(xs) > 1:
        x = x + np.where(xs[1] != 0, node.attrs["B1"], node.attrs["B0"]).astype(np.int64)
    table = node.params["E"].astype(np.int64)
    e = table[np.minimum(x.max(axis=ax, keepdims=True) - x, len(table) - 1)]
    s = e.sum(axis=ax, keepdims=True)
    return (e * Q + s // 2) // s


def _qsoftmax_lower(L, node, xs):
    from tvm import relax

    ax, Q = node.attrs["axis"], node.attrs["Q"]
    i64 = lambda v: relax.const(np.int64(v), "int64")  # noqa: E731
    x = L.emit(relax.op.astype(xs[0], "int32"))
    if "BQ" in node.params:
        x = L.emit(relax.op.add(x, relax.const(np.ascontiguousarray(node.params["BQ"]), "int32")))
    if len(xs) > 1:
        i32 = lambda v: relax.const(np.int32(v), "int32")  # noqa: E731
        m = L.emit(relax.op.not_equal(xs[1], relax.const(np.array(0, L.g.dtypes[node.inputs[1]]))))
        x = L.emit(relax.op.add(x, L.emit(relax.op.where(m, i32(node.attrs["B1"]), i32(node.attrs["B0"])))))
    d = L.emit(relax.op.subtract(L.emit(relax.op.max(x, axis=[ax], keepdims=True)), x))
    e = L.emit(relax.op.astype(L.emit(relax.op.take(relax.const(node.params["E"], "int32"), d, axis=0, mode="clip")), "int64"))
    s = L.emit(relax.op.sum(e, axis=[ax], keepdims=True))
    num = L.emit(relax.op.add(L.emit(relax.op.multiply(e, i64(Q))), L.emit(relax.op.right_shift(s, i64(1)))))  # Σ >= 0
    n = int(L.g.shapes[node.inputs[0]][ax])  # Σ >= E[0] (the row max's term), Σ <= n E[0]
    e0 = int(node.params["E"].max())
    y = row_divide(L, num, s, e0 * Q + n * e0 // 2, e0)
    return L.emit(relax.op.astype(y, L.g.dtypes[node.output]))


register_float(OpDef("softmax", _softmax_float, _quantize_softmax))
register_int(IntOpDef("qsoftmax", _qsoftmax_ref, _qsoftmax_lower))


@importer("Softmax", doc="integer exp table, integer sum and division (uint8, or 16-bit at an output)")
def _import_softmax(c):
    from dyadic.core.graph import Node

    ax = c.axis(c.attrs.get("axis", -1))  # opset >= 13 semantics (the frontend upgrades older models)
    return [Node("softmax", c.name, (c.inputs[0],), (c.outputs[0],), {"axis": ax})]
