"""Integer-only LogSoftmax along one axis: d s_x - log Σ exp, with an exp table and a log table.

With x = s_x q and d = q - max(q) <= 0 (integers), log_softmax(x) = s_x d - ln Σ exp(s_x d). As in
`dyadic.ops.softmax`, e = E[-d] with E[k] = round(2^15 exp(-k s_x)) (E[0] = 2^15) and Σ = Σ e
(int64, 2^15 <= Σ <= n 2^15). Then ln(Σ / 2^15) is taken apart in integers:

    k  = Σ_{j=16..J} [Σ >= 2^j]           (= floor(log2 Σ) - 15, J = 15 + ceil(log2 n); compares only)
    m  = Σ >> (k + 3)                     (12-bit mantissa, 4096 <= m < 8192)
    ln(Σ / 2^15) ≈ k ln 2 + ln((m + 1/2) / 4096)

and everything is an F-bit fixed point of output units, with (M, F) = dyadic(s_x / s_y),
C = round(2^F ln 2 / s_y) and the table T[m - 4096] = round(2^F ln((m + 1/2) / 4096) / s_y):

    q_y = clip((d M - k C - T[m - 4096] + 2^(F-1)) >> F, lo, hi)

The output is signed (all values <= 0): 8-bit inside the graph, 16-bit at a graph output.
Error, beyond the input's quantization: half an output LSB (the final shift), plus at most
1.3e-4 (the mantissa's bucket, |ln(1 + 1/8192)|) plus n 2^-16 (each exp entry within 2^-16 of
its value, over Σ >= 2^15) in the log term, plus |d| s_x 2^-31 (the multiplier).
"""
from __future__ import annotations

import math

import numpy as np

from dyadic.core.arith import dyadic, rounding_term
from dyadic.ops.base import IntOpDef, OpDef, importer, register_float, register_int

EXP_BITS, MANT_BITS = 15, 12


def _logsoftmax_float(node, xs):
    x = xs[0]
    ax = node.attrs["axis"]
    z = x - x.max(axis=ax, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=ax, keepdims=True))).astype(x.dtype, copy=False)


def _quantize_logsoftmax(ctx, node):
    from dyadic.core.graph import Node

    qx = ctx.qp[node.inputs[0]]
    q = ctx.qp[node.output] = ctx.out_q(node.output, True)
    n = ctx.graph.shapes[node.inputs[0]][node.attrs["axis"]]
    k = np.arange(qx.hi - qx.lo + 1, dtype=np.float64)
    e = np.rint(np.exp(-k * qx.scale) * (1 << EXP_BITS)).astype(np.int32)
    m, f = dyadic(qx.scale / q.scale)
    mant = np.arange(1 << MANT_BITS, 1 << (MANT_BITS + 1), dtype=np.float64)
    t = np.rint(np.log((mant + 0.5) / (1 << MANT_BITS)) / q.scale * 2.0 ** f).astype(np.int64)
    c = int(round(math.log(2) / q.scale * 2.0 ** f))
    jmax = EXP_BITS + max(1, math.ceil(math.log2(max(n, 2))))
    if (qx.hi - qx.lo) * m + (jmax - EXP_BITS) * c + int(t.max()) >= 2 ** 62:
        raise ValueError("LogSoftmax fixed point overflows int64")
    ctx.nodes.append(Node("qlogsoftmax", node.name, node.inputs, node.outputs,
                          {"axis": node.attrs["axis"], "J": jmax, "M": m, "F": f, "C": c, **ctx.clip_bounds(q)},
                          {"E": e, "T": t}))


def _qlogsoftmax_ref(node, xs, out_shape):
    a, p = node.attrs, node.params
    ax = a["axis"]
    x = xs[0].astype(np.int64)
    d = x - x.max(axis=ax, keepdims=True)
    s = p["E"].astype(np.int64)[-d].sum(axis=ax, keepdims=True)
    k = sum((s >= (1 << j)).astype(np.int64) for j in range(EXP_BITS + 1, a["J"] + 1))
    mant = (s >> (k + EXP_BITS - MANT_BITS)) - (1 << MANT_BITS)
    acc = d * a["M"] - k * a["C"] - p["T"][mant]
    return np.clip((acc + rounding_term(a["F"])) >> a["F"], a["lo"], a["hi"])


def _qlogsoftmax_lower(L, node, xs):
    from tvm import relax

    a, p = node.attrs, node.params
    ax = a["axis"]
    i64 = lambda v: relax.const(np.int64(v), "int64")  # noqa: E731
    x = L.emit(relax.op.astype(xs[0], "int32"))
    d = L.emit(relax.op.subtract(x, L.emit(relax.op.max(x, axis=[ax], keepdims=True))))
    e = L.emit(relax.op.take(relax.const(p["E"], "int32"), L.emit(relax.op.negative(d)), axis=0, mode="clip"))
    s = L.emit(relax.op.sum(L.emit(relax.op.astype(e, "int64")), axis=[ax], keepdims=True))
    k = None
    for j in range(EXP_BITS + 1, a["J"] + 1):
        bit = L.emit(relax.op.astype(L.emit(relax.op.greater_equal(s, i64(1 << j))), "int64"))
        k = bit if k is None else L.emit(relax.op.add(k, bit))
    mant = L.emit(relax.op.right_shift(s, L.emit(relax.op.add(k, i64(EXP_BITS - MANT_BITS)))))
    mant = L.emit(relax.op.subtract(mant, i64(1 << MANT_BITS)))
    t = L.emit(relax.op.take(relax.const(p["T"], "int64"), mant, axis=0, mode="clip"))
    acc = L.emit(relax.op.multiply(L.emit(relax.op.astype(d, "int64")), i64(a["M"])))
    acc = L.emit(relax.op.subtract(acc, L.emit(relax.op.add(L.emit(relax.op.multiply(k, i64(a["C"]))), t))))
    return L.shift_clip(acc, np.array(a["F"], np.int64), a["lo"], a["hi"], L.g.dtypes[node.output])


register_float(OpDef("logsoftmax", _logsoftmax_float, _quantize_logsoftmax))
register_int(IntOpDef("qlogsoftmax", _qlogsoftmax_ref, _qlogsoftmax_lower))


@importer("LogSoftmax", doc="integer exp table, integer sum, log by leading-bit count + 12-bit mantissa "
                            "table (16-bit at an output)")
def _import_logsoftmax(c):
    from dyadic.core.graph import Node

    ax = c.axis(c.attrs.get("axis", -1))
    return [Node("logsoftmax", c.name, (c.inputs[0],), (c.outputs[0],), {"axis": ax})]
