"""PRelu: a scalar slope as a lookup table, per-channel slopes as a two-sided per-channel requant.

A scalar slope a makes an `ew` step (`dyadic.ops.elementwise`: one table; it also fuses into
chains). Per-channel slopes a[c] (shape [C], [C, 1, 1] or [1, C, 1, 1]) make a `prelu` node that
quantizes to `qprelu`: with x = s_x q, y = s_y q_y and, per channel, one shift S[c] shared by the
two sides, (MP[c], MN[c]) / 2^S[c] ≈ (s_x / s_y, |a[c]| s_x / s_y) and G[c] = sign(a[c]):

    q_y = clip(((q >= 0 ? q MP[c] : G[c] q MN[c]) + 2^(S[c]-1)) >> S[c], lo, hi)     (int64)

exact up to the final rounding (half an output LSB) and the multipliers' relative 2^-31. A zero
slope gives MN = 0 (the negative side is 0).
"""
from __future__ import annotations

import numpy as np

from dyadic.core.arith import dyadic_shared, rounding_term
from dyadic.ops.arith_ops import channel_shape
from dyadic.ops.base import IntOpDef, OpDef, importer, register_float, register_int


def _prelu_float(node, xs):
    x = xs[0]
    a = node.params["A"].reshape(channel_shape(x.ndim))
    return np.where(x >= 0, x, a * x).astype(x.dtype, copy=False)


def _quantize_prelu(ctx, node):
    from dyadic.core.graph import Node

    qx = ctx.qp[node.inputs[0]]
    q = ctx.qp[node.output] = ctx.out_q(node.output)
    r = qx.scale / q.scale
    rows = [dyadic_shared([r, abs(float(a)) * r]) for a in node.params["A"]]
    mp = np.array([ms[0] for ms, _ in rows], np.int64)
    mn = np.array([ms[1] for ms, _ in rows], np.int64)
    s = np.array([sh for _, sh in rows], np.int64)
    g = np.sign(node.params["A"]).astype(np.int64)
    ctx.nodes.append(Node("qprelu", node.name, node.inputs, node.outputs, ctx.clip_bounds(q),
                          {"MP": mp, "MN": mn * g, "S": s}))


def _qprelu_ref(node, xs, out_shape):
    p, a = node.params, node.attrs
    bc = channel_shape(xs[0].ndim)
    x = xs[0].astype(np.int64)
    acc = np.where(x >= 0, x * p["MP"].reshape(bc), x * p["MN"].reshape(bc))
    s = p["S"].reshape(bc)
    return np.clip((acc + rounding_term(s)) >> s, a["lo"], a["hi"])


def _qprelu_lower(L, node, xs):
    from tvm import relax

    p, a = node.params, node.attrs
    bc = channel_shape(len(L.g.shapes[node.inputs[0]]))
    c = lambda v: relax.const(np.ascontiguousarray(v.reshape(bc).astype(np.int64)), "int64")  # noqa: E731
    x = L.emit(relax.op.astype(xs[0], "int64"))
    pos = L.emit(relax.op.multiply(x, c(p["MP"])))
    neg = L.emit(relax.op.multiply(x, c(p["MN"])))
    y = L.emit(relax.op.where(L.emit(relax.op.greater_equal(x, relax.const(np.int64(0), "int64"))), pos, neg))
    return L.shift_clip(y, p["S"].reshape(bc), a["lo"], a["hi"], L.g.dtypes[node.output])


register_float(OpDef("prelu", _prelu_float, _quantize_prelu))
register_int(IntOpDef("qprelu", _qprelu_ref, _qprelu_lower))


@importer("PRelu", doc="scalar slope: integer lookup table; per-channel slopes: two-sided per-channel "
                       "dyadic requant")
def _import_prelu(c):
    from dyadic.core.graph import Node

    slope = np.asarray(c.const(1), np.float64)
    x = c.inputs[0]
    if slope.size == 1:
        return [Node("ew", c.name, (x,), (c.outputs[0],), {"fn": "prelu", "params": (("slope", float(slope.ravel()[0])),)})]
    rank = c.rank(x)
    aligned = (1,) * (rank - slope.ndim) + tuple(slope.shape)
    ch = c.shapes[x][1]
    if len(aligned) != rank or [d for d, s in enumerate(aligned) if s != 1] != [1] or aligned[1] != ch:
        c.fail(f"slope of shape {list(slope.shape)} is neither a scalar nor per-channel (axis 1, {ch} channels)")
    return [Node("prelu", c.name, (x,), (c.outputs[0],), {}, {"A": slope.reshape(-1).astype(np.float32)})]
