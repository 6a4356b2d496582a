"""Per-channel affine maps and products, sums, maxima of two activations, all as dyadic requants.

`affine` (float): y = A[c] x + B[c] along one axis, `attrs["axis"]` (1 when absent: a
BatchNormalization that no conv precedes, or Mul/Add/Sub/Div by a per-channel or scalar constant;
the last axis: LayerNorm's gamma/beta or a bias of a [N, T, C] tensor). With `attrs["bshape"]`
(the constant's broadcast shape without the batch axis) A and B hold one value per element of that
shape instead (a position embedding [1, T, C], an attention mask [1, 1, T, T]). `passes/fold_batchnorm` folds it into the conv
or dense layer before it where it can; the rest quantize to `qaffine`: with r[c] = A[c] s_x / s_y
and (M[c], S[c]) = dyadic(|r[c]|), G[c] = sign(r[c]), K[c] = round(B[c] / s_y * 2^S[c]),

    q_y = clip((G[c] q_x M[c] + K[c] + 2^(S[c]-1)) >> S[c], lo, hi)

in int64 (|q_x| < 2^16 and M < 2^31 keep the product below 2^47; |K| is bounded by the verifier).

`mul` (two activations, numpy broadcasting, e.g. a squeeze-excite gate [N,C,H,W] * [N,C,1,1]):
q_y = clip((q_a q_b M + 2^(S-1)) >> S) with M / 2^S ≈ s_a s_b / s_y.

`binary` (two activations: sub, max, min): both operands are rescaled to one shift,
u = q_a M_a, v = q_b M_b with M_a / 2^S ≈ s_a / s_y and M_b / 2^S ≈ s_b / s_y, then
q_y = clip((u - v + 2^(S-1)) >> S) for sub, and max/min of u, v before the shift (the shift is
monotone, so max((u+r)>>S, (v+r)>>S) = (max(u, v)+r)>>S).
"""
from __future__ import annotations

import numpy as np

from dyadic.core.arith import dyadic, dyadic_shared, requantize, rounding_term
from dyadic.ops.base import IntOpDef, OpDef, register_float, register_int


def channel_shape(ndim: int, axis: int = 1) -> tuple[int, ...]:
    return tuple(-1 if d == axis else 1 for d in range(ndim))


def affine_shape(node, ndim: int) -> tuple[int, ...]:
    """The broadcast shape of an affine node's (raveled) parameters against its rank-`ndim` input."""
    if "bshape" in node.attrs:
        return (1,) + tuple(node.attrs["bshape"])
    return channel_shape(ndim, node.attrs.get("axis", 1))


def affine_axis(node) -> int | None:
    """The one axis an affine node's parameters vary along (1 by default), None for a `bshape` one."""
    return None if "bshape" in node.attrs else node.attrs.get("axis", 1)


# --------------------------------------------------------------------------- affine
def _affine_float(node, xs):
    x = xs[0]
    bc = affine_shape(node, x.ndim)
    y = (x * node.params["A"].reshape(bc) + node.params["B"].reshape(bc)).astype(x.dtype, copy=False)
    if "act" in node.attrs:  # a fused Relu / Clip (`passes/fuse_activations`)
        y = np.clip(y, *node.attrs["act"]).astype(x.dtype, copy=False)
    return y


def _quantize_affine(ctx, node):
    from dyadic.core.graph import Node

    x = node.inputs[0]
    qx = ctx.qp[x]
    q = ctx.qp[node.output] = ctx.out_q(node.output)
    r = node.params["A"].astype(np.float64) * qx.scale / q.scale
    g = np.sign(r).astype(np.int64)
    ms = [dyadic(abs(float(v))) if v != 0 else (1, 1) for v in r]
    m = np.array([p[0] for p in ms], np.int64)
    s = np.array([p[1] for p in ms], np.int64)
    k = np.rint(node.params["B"].astype(np.float64) / q.scale * np.exp2(s.astype(np.float64)))
    k = np.clip(k, -(2.0 ** 62), 2.0 ** 62).astype(np.int64)
    layout = {k: node.attrs[k] for k in ("axis", "bshape") if k in node.attrs}
    ctx.nodes.append(Node("qaffine", node.name, node.inputs, node.outputs,
                          {**layout, **ctx.clip_bounds(q, node.attrs.get("act"))}, {"M": m, "S": s, "G": g, "K": k}))


def _qaffine_ref(node, xs, out_shape):
    p, a = node.params, node.attrs
    bc = affine_shape(node, xs[0].ndim)
    acc = xs[0].astype(np.int64) * p["G"].reshape(bc) * p["M"].reshape(bc) + p["K"].reshape(bc)
    return np.clip((acc + rounding_term(p["S"].reshape(bc))) >> p["S"].reshape(bc), a["lo"], a["hi"])


def _qaffine_lower(L, node, xs):
    from tvm import relax

    p, a = node.params, node.attrs
    bc = affine_shape(node, len(L.g.shapes[node.inputs[0]]))
    c = lambda v: relax.const(np.ascontiguousarray(v.reshape(bc).astype(np.int64)), "int64")  # noqa: E731
    y = L.emit(relax.op.astype(xs[0], "int64"))
    y = L.emit(relax.op.multiply(y, c(p["G"] * p["M"])))
    y = L.emit(relax.op.add(y, c(p["K"])))
    return L.shift_clip(y, p["S"].reshape(bc), a["lo"], a["hi"], L.g.dtypes[node.output])


register_float(OpDef("affine", _affine_float, _quantize_affine))
register_int(IntOpDef("qaffine", _qaffine_ref, _qaffine_lower))


# --------------------------------------------------------------------------- mul
def _mul_float(node, xs):
    return (xs[0] * xs[1]).astype(xs[0].dtype, copy=False)


def _quantize_mul(ctx, node):
    from dyadic.core.graph import Node

    a, b = (ctx.qp[t] for t in node.inputs)
    q = ctx.qp[node.output] = ctx.out_q(node.output)
    m, s = dyadic(a.scale * b.scale / q.scale)
    ctx.nodes.append(Node("qmul", node.name, node.inputs, node.outputs, ctx.clip_bounds(q, node.attrs.get("act")),
                          {"M": np.array(m, np.int64), "S": np.array(s, np.int64)}))


def _qmul_ref(node, xs, out_shape):
    acc = xs[0].astype(np.int64) * xs[1].astype(np.int64)
    return requantize(acc, node.params["M"], node.params["S"], node.attrs["lo"], node.attrs["hi"])


def _qmul_lower(L, node, xs):
    from tvm import relax

    a = L.emit(relax.op.astype(xs[0], "int64"))
    b = L.emit(relax.op.astype(xs[1], "int64"))
    y = L.emit(relax.op.multiply(a, b))
    y = L.emit(relax.op.multiply(y, relax.const(np.int64(node.params["M"]), "int64")))
    return L.shift_clip(y, node.params["S"], node.attrs["lo"], node.attrs["hi"], L.g.dtypes[node.output])


register_float(OpDef("mul", _mul_float, _quantize_mul))
register_int(IntOpDef("qmul", _qmul_ref, _qmul_lower))


# --------------------------------------------------------------------------- sub / max / min
_FLOAT_BIN = {"sub": np.subtract, "max": np.maximum, "min": np.minimum, "add": np.add}


def _binary_float(node, xs):
    return _FLOAT_BIN[node.attrs["fn"]](xs[0], xs[1]).astype(xs[0].dtype, copy=False)


def _quantize_binary(ctx, node):
    from dyadic.core.graph import Node

    if node.attrs["fn"] not in ("sub", "add", "max", "min"):
        from dyadic.core.errors import ModelError

        raise ModelError(f"{node.name}: {node.attrs['fn']} of two different activations is not supported "
                         f"(only inside a chain that reads one tensor)")
    q = ctx.qp[node.output] = ctx.out_q(node.output)
    ms, s = dyadic_shared([ctx.qp[t].scale / q.scale for t in node.inputs])
    ctx.nodes.append(Node("qbinary", node.name, node.inputs, node.outputs,
                          {"fn": node.attrs["fn"], **ctx.clip_bounds(q, node.attrs.get("act"))},
                          {"M": np.array(ms, np.int64), "S": np.array(s, np.int64)}))


def _combine(fn: str, u, v, xp):
    return {"sub": lambda: u - v, "add": lambda: u + v, "max": lambda: xp.maximum(u, v),
            "min": lambda: xp.minimum(u, v)}[fn]()


def _qbinary_ref(node, xs, out_shape):
    p, a = node.params, node.attrs
    u = xs[0].astype(np.int64) * p["M"][0]
    v = xs[1].astype(np.int64) * p["M"][1]
    acc = _combine(a["fn"], u, v, np)
    return np.clip((acc + rounding_term(p["S"])) >> p["S"], a["lo"], a["hi"])


def _qbinary_lower(L, node, xs):
    from tvm import relax

    p, a = node.params, node.attrs
    u = L.emit(relax.op.multiply(L.emit(relax.op.astype(xs[0], "int64")), relax.const(np.int64(p["M"][0]), "int64")))
    v = L.emit(relax.op.multiply(L.emit(relax.op.astype(xs[1], "int64")), relax.const(np.int64(p["M"][1]), "int64")))
    fns = {"sub": relax.op.subtract, "add": relax.op.add, "max": relax.op.maximum, "min": relax.op.minimum}
    return L.shift_clip(L.emit(fns[a["fn"]](u, v)), p["S"], a["lo"], a["hi"], L.g.dtypes[node.output])


register_float(OpDef("binary", _binary_float, _quantize_binary))
register_int(IntOpDef("qbinary", _qbinary_ref, _qbinary_lower))
