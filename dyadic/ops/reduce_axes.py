"""ReduceMean / ReduceSum over any non-batch axes, and ArgMax / ArgMin, on integers.

**reduce** (x = s_x q, R = the product of the reduced lengths):

    acc = Σ_axes q                        (int32 when R A < 2^31, else int64; A = max |q|)
    q_y = clip((acc M + 2^(S-1)) >> S, lo, hi),  M / 2^S ≈ s_x / (R s_y) (mean) or s_x / s_y (sum)

exact up to the one final rounding (half an output LSB, relative multiplier error 2^-31). The mean
over H, W of NCHW stays the `mean_hw` op (it has a packed CPU kernel).

**argmax / argmin** along one non-batch axis: the index of the largest (smallest) integer code,
the first one unless select_last_index. The output is an index, stored as int32 with scale 1 (so
`model.json` and the runtime's dequantization give the index itself as a float); it is meant for
graph outputs. Because max over codes is monotone in the value, the result is the float argmax of
the quantized input; two inputs closer than one input LSB may tie and then report the first.
"""
from __future__ import annotations

import numpy as np

from dyadic.core.arith import dyadic, requantize
from dyadic.core.graph import QParams
from dyadic.ops.base import IntOpDef, OpDef, importer, register_float, register_int


def _count(shape, axes) -> int:
    return int(np.prod([shape[a] for a in axes]))


def _reduce_float(node, xs):
    a = node.attrs
    f = np.mean if a["fn"] == "mean" else np.sum
    return f(xs[0], axis=tuple(a["axes"]), keepdims=bool(a["keepdims"])).astype(xs[0].dtype, copy=False)


def _quantize_reduce(ctx, node):
    from dyadic.core.graph import Node

    a = node.attrs
    qx = ctx.qp[node.inputs[0]]
    q = ctx.qp[node.output] = ctx.out_q(node.output, qx.signed)
    r = _count(ctx.graph.shapes[node.inputs[0]], a["axes"])
    amax = max(abs(qx.lo), abs(qx.hi))
    m, s = dyadic(qx.scale / (q.scale * (r if a["fn"] == "mean" else 1)))
    if r * amax * m >= 2 ** 62:
        raise ValueError(f"{r} terms of {amax} overflow the int64 requant product")
    ctx.nodes.append(Node("qreduce", node.name, node.inputs, node.outputs,
                          {"axes": tuple(a["axes"]), "keepdims": int(a["keepdims"]), "wide": r * amax >= 2 ** 31,
                           **ctx.clip_bounds(q)}, {"M": np.array(m, np.int64), "S": np.array(s, np.int64)}))


def qsum_requant_ref(node, xs, out_shape):
    """Integer sum over `axes`, then the dyadic requant: the reference of `qreduce` and of the
    LayerNorm room's `qmean`."""
    a = node.attrs
    acc = xs[0].astype(np.int64).sum(axis=tuple(a["axes"]), keepdims=bool(a["keepdims"]))
    return requantize(acc, node.params["M"], node.params["S"], a["lo"], a["hi"])


def qsum_requant_lower(L, node, xs):
    """Its lowering: the sum in int32 where `wide` is False (the bound allows it), else in int64."""
    from tvm import relax

    a = node.attrs
    x = L.emit(relax.op.astype(xs[0], "int64" if a.get("wide", True) else "int32"))
    acc = L.emit(relax.op.sum(x, axis=list(a["axes"]), keepdims=bool(a["keepdims"])))
    return L.requant(acc, node.params["M"], node.params["S"], a["lo"], a["hi"], L.g.dtypes[node.output])


register_float(OpDef("reduce", _reduce_float, _quantize_reduce))
register_int(IntOpDef("qreduce", qsum_requant_ref, qsum_requant_lower))


def _arg(node, xs, out_shape=None):
    a = node.attrs
    x = xs[0] if a["fn"] == "max" else -xs[0].astype(np.int64 if xs[0].dtype.kind != "f" else xs[0].dtype)
    ax = a["axis"]
    if a["last"]:
        idx = x.shape[ax] - 1 - np.argmax(np.flip(x, axis=ax), axis=ax)
    else:
        idx = np.argmax(x, axis=ax)
    return np.expand_dims(idx, ax) if a["keepdims"] else idx


def _quantize_arg(ctx, node):
    from dyadic.core.graph import Node

    ctx.qp[node.output] = QParams(1.0, 32, True)  # an index: int32 storage whatever the axis length
    ctx.nodes.append(Node("qarg", node.name, node.inputs, node.outputs, dict(node.attrs)))


def _qarg_lower(L, node, xs):
    from tvm import relax

    a = node.attrs
    ax = a["axis"]
    x = xs[0] if a["fn"] == "max" else L.emit(relax.op.negative(L.emit(relax.op.astype(xs[0], "int32"))))
    if a["last"]:
        n = L.g.shapes[node.inputs[0]][ax]
        i = L.emit(relax.op.argmax(L.emit(relax.op.flip(x, ax)), axis=ax, keepdims=bool(a["keepdims"])))
        i = L.emit(relax.op.subtract(relax.const(np.int64(n - 1), "int64"), i))
    else:
        i = L.emit(relax.op.argmax(x, axis=ax, keepdims=bool(a["keepdims"])))
    return L.emit(relax.op.astype(i, L.g.dtypes[node.output]))


register_float(OpDef("argmax", lambda n, xs: _arg(n, xs).astype(np.float32), _quantize_arg))
register_int(IntOpDef("qarg", _arg, _qarg_lower))


def _axes(c) -> list[int] | None:
    axes = c.attrs.get("axes")
    if axes is None and len(c.inputs) > 1 and c.inputs[1]:
        axes = c.const(1)
    if axes is None or np.size(axes) == 0:
        return None
    return sorted({int(a) % c.rank() for a in np.atleast_1d(axes)})


@importer("ReduceSum", doc="integer sum over any non-batch axes + dyadic requant")  # ReduceMean: ops.layernorm
def _import_reduce(c):
    from dyadic.core.graph import Node

    x, out = c.inputs[0], c.outputs[0]
    keep = int(c.attrs.get("keepdims", 1))
    axes = _axes(c)
    if axes is None:
        if int(c.attrs.get("noop_with_empty_axes", 0)):
            return [Node("reshape", c.name, (x,), (out,))]
        axes = list(range(c.rank()))
    if 0 in axes:
        c.fail("reducing over the batch axis is not supported")
    if c.op == "ReduceMean" and c.rank() == 4 and axes == [2, 3]:
        return [Node("mean_hw", c.name, (x,), (out,), {"keepdims": keep})]
    return [Node("reduce", c.name, (x,), (out,), {"fn": "mean" if c.op == "ReduceMean" else "sum",
                                                  "axes": tuple(axes), "keepdims": keep})]


@importer("ArgMax", "ArgMin", doc="integer argmax/argmin (index output: int32, scale 1)")
def _import_arg(c):
    from dyadic.core.graph import Node

    ax = c.axis(c.attrs.get("axis", 0))
    return [Node("argmax", c.name, (c.inputs[0],), (c.outputs[0],),
                 {"fn": "max" if c.op == "ArgMax" else "min", "axis": ax, "keepdims": int(c.attrs.get("keepdims", 1)),
                  "last": int(c.attrs.get("select_last_index", 0))})]
