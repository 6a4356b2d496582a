"""Integer-only LayerNorm (I-BERT style), and the integer mean over any axes.

`layernorm` (float): y = gamma[c] (x - mean) / sqrt(var + eps) + beta[c] over one axis (the last
axis: ONNX LayerNormalization, a transformer's LN; axis 1 of NCHW: ConvNeXt's channel LN, which
`passes/fuse_layernorm` recognizes in its decomposed ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div
form). `passes/fold_batchnorm` folds a following per-axis Mul/Add (gamma, beta) into it.

Integer form (`qlayernorm`), x = s_x q over a row of n codes q_i in [lo, hi], all in int64:

    S  = Σ q_i                       d_i = n q_i - S             (= n (q_i - mean), exact)
    V  = Σ d_i²                      (= n³ var_q, exact; |d_i| <= n (hi - lo), V <= n³ (hi - lo)²)
    D  = (V << 2k) + E               E = max(1, round(eps n³ 4^k / s_x²))   (eps in code units)
    R  = isqrt(D)                    exact floor square root, bit by bit (ceil(bits(D_max) / 2) steps)
    I  = floor(2^61 / R)             one integer division per row (R >= 1: E >= 1)
    z_i = (d_i I + 2^(60-F)) >> (61 - F)                (≈ d_i 2^F / R, rounded; no per-element division)
    q_y = clip((z_i G[c] M[c] + K[c] + 2^(S[c]-1)) >> S[c], lo_y, hi_y)

with k the largest shift keeping D < 2^62 (so eps keeps 2k extra bits), F = k + P and
P = min(62 - bits(n (hi - lo)) - k, 30), lowered where needed so that K below stays under 2^60
with the largest gamma still getting a 31-bit multiplier (the shift S is capped accordingly),
so z_i ≈ 2^P d_i / sqrt(V + E 4^-k) and |z_i| <= 2^P + 1 (|d_i| <= sqrt(V)). The normalized value is
u_i = (x_i - mean) / sqrt(var + eps) = sqrt(n) d_i / sqrt(V + E 4^-k), hence
M[c] / 2^S[c] ≈ |gamma[c]| sqrt(n) / (s_y 2^P), G[c] = sign(gamma[c]), K[c] = round(beta[c] 2^S[c] / s_y).

Why the reciprocal is exact enough: I = 2^61 / R − δ with 0 <= δ < 1, and |d_i| 2^k <= sqrt(V 4^k) <= sqrt(D)
< R + 1, so |d_i I| <= 2^61 (R + 1) / R <= 2^62 (no int64 overflow with the rounding term 2^(60-F)
< 2^60, F <= 60) and the reciprocal's error in z is |d_i| δ 2^(F-61) <= (R + 1) 2^(P-61) < 2^(P-30)
(R < 2^31 as D < 2^62): a relative error of the normalized value below 2^-30. (A per-element int64
division, z_i = floor(((d_i << F) + R/2) / R), gave the same bound less this term and was the
LayerNorm's whole cost: scalar `idiv` per element.)

Error bound (with respect to the float LayerNorm of the dequantized input s_x q, eps included):
the floor square root gives R <= sqrt(D) < R + 1, a relative error below 1/R <= 1/sqrt(E);
z is within 1/2 + 2^(P-30) of d_i 2^F / R (rounding, reciprocal); E is within 1 of eps n³ 4^k / s_x² (1/2 from rounding, or
the clamp to 1), which is a relative error of D below 1 / (n (n - 1) 4^k) for any row that is not
constant (V >= n (n - 1) then; a constant row gives d = 0 and exactly beta); the dyadic multiplier
has relative error <= 2^-31 (or 2^-(bits of M) where the shift cap shortens M). So

    |q_y - y / s_y| <= 1/2 + (|gamma[c]| sqrt(n) / s_y) (1.5 2^-P + 2^-30 + 1 / R_min)
                       + |y / s_y| (2^-30 + 1 / (n (n - 1) 4^k))

(1/2 from the final rounding; |u| <= sqrt(n); R_min = isqrt(E)). With 8-bit inputs and
n = 768 (P = 30, k = 8) the terms after 1/2 are below 1e-5 of an output step: the integer LN is
within one output LSB of the float LN of the same quantized input. Verifier: D_max < 2^62, F <= 60,
and the int64 requant product (2^P + 2) M[c] + |K[c]| + 2^61 < 2^63 (|z_i| <= 2^P + 2).

`mean` (float): ReduceMean over axes other than the batch (the H, W mean of NCHW stays `mean_hw`).
Integer form (`qmean`): the int64 sum of the codes over the axes, then a requant by
dyadic(s_x / (count s_y)).
"""
from __future__ import annotations

import math

import numpy as np

from dyadic.core.arith import dyadic, rounding_term
from dyadic.ops.arith_ops import channel_shape
from dyadic.ops.base import IntOpDef, OpDef, importer, register_float, register_int
from dyadic.ops.reduce_axes import qsum_requant_lower, qsum_requant_ref

INT64_LIMIT = 2 ** 63
D_LIMIT = 2 ** 62


# --------------------------------------------------------------------------- layernorm
def _ln_float(node, xs):
    x = xs[0]
    ax = node.attrs["axis"]
    dt = np.float64 if x.dtype == np.float64 else np.float32
    x = x.astype(dt, copy=False)
    mu = x.mean(axis=ax, keepdims=True)
    d = x - mu
    var = (d * d).mean(axis=ax, keepdims=True)
    bc = channel_shape(x.ndim, ax)
    y = d / np.sqrt(var + dt(node.attrs["eps"]))
    return y * node.params["gamma"].astype(dt).reshape(bc) + node.params["beta"].astype(dt).reshape(bc)


def ln_constants(n: int, span: int, s_x: float, eps: float) -> dict:
    """E, k, F, P and the isqrt step count for rows of n codes spanning `span` = hi - lo."""
    dmax = n * span
    vmax = n * dmax * dmax
    e_real = eps * n ** 3 / (s_x * s_x)
    base = vmax + math.ceil(e_real) + 1
    if base >= D_LIMIT:
        raise ValueError(f"LayerNorm row of {n} codes spanning {span} (eps {eps:g} at input scale {s_x:g}): "
                         f"the variance sum needs more than 62 bits")
    k = max(0, (62 - base.bit_length()) // 2)
    e = max(1, int(round(e_real * 4.0 ** k)))
    dtot = (vmax << 2 * k) + e
    f = min(62 - dmax.bit_length(), k + 30)
    return {"n": n, "E": e, "k": k, "F": f, "P": f - k, "steps": (dtot.bit_length() + 1) // 2}


def _quantize_ln(ctx, node):
    from dyadic.core.graph import Node

    x = node.inputs[0]
    qx = ctx.qp[x]
    q = ctx.qp[node.output] = ctx.out_q(node.output)
    ax = node.attrs["axis"]
    n = int(ctx.graph.shapes[x][ax])
    c = ln_constants(n, qx.hi - qx.lo, qx.scale, node.attrs["eps"])
    gamma = node.params["gamma"].astype(np.float64).reshape(-1)
    beta = node.params["beta"].astype(np.float64).reshape(-1)
    # K = beta 2^S / s_y must stay below 2^60: cap the shift, and lower P so the largest gamma
    # still gets a full 31-bit multiplier under that cap
    s_max = 60 - max(0, math.ceil(math.log2(float(np.abs(beta).max(initial=0.0)) / q.scale + 1)))
    gmax = float(np.abs(gamma).max(initial=0.0)) * math.sqrt(n) / q.scale
    if gmax > 0:
        p = min(c["P"], s_max - 30 + math.floor(math.log2(gmax)))
        if p < 12:
            raise ValueError(f"LayerNorm {node.name}: gamma/beta ranges leave {p} bits for the normalized value")
        c.update(P=p, F=c["k"] + p)
    r = gamma * math.sqrt(n) / (q.scale * 2.0 ** c["P"])
    m = np.zeros(n, np.int64)
    s = np.ones(n, np.int64)
    for i, v in enumerate(np.abs(r)):
        if v == 0:
            continue
        mi, si = dyadic(float(v)) if 30 - math.floor(math.log2(v)) <= s_max else (int(round(v * 2.0 ** s_max)), s_max)
        m[i], s[i] = (mi, si) if mi > 0 else (0, 1)
    g = np.where(m > 0, np.sign(r), 0).astype(np.int64)
    m = np.where(m > 0, m, 1)
    k = np.rint(beta / q.scale * np.exp2(s.astype(np.float64)))
    k = np.clip(k, -(2.0 ** 61), 2.0 ** 61).astype(np.int64)
    ctx.nodes.append(Node("qlayernorm", node.name, node.inputs, node.outputs,
                          {"axis": ax, **c, **ctx.clip_bounds(q, node.attrs.get("act"))},
                          {"M": m, "S": s, "G": g, "K": k}))


def isqrt_np(v: np.ndarray) -> np.ndarray:
    """Exact floor square root of non-negative int64 values below 2^62."""
    v = np.asarray(v, np.int64)
    r = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    for _ in range(3):  # float64 is within one of the answer; fix both ways
        r = np.where(r * r > v, r - 1, r)
        r = np.where((r + 1) * (r + 1) <= v, r + 1, r)
    return r


def _qln_ref(node, xs, out_shape):
    a, p = node.attrs, node.params
    ax = a["axis"]
    x = xs[0].astype(np.int64)
    d = a["n"] * x - x.sum(axis=ax, keepdims=True)
    big = ((d * d).sum(axis=ax, keepdims=True) << (2 * a["k"])) + a["E"]
    r = isqrt_np(big)
    z = (d * ((1 << 61) // r) + (1 << (60 - a["F"]))) >> (61 - a["F"])
    bc = channel_shape(x.ndim, ax)
    acc = z * (p["G"] * p["M"]).reshape(bc) + p["K"].reshape(bc)
    return np.clip((acc + rounding_term(p["S"].reshape(bc))) >> p["S"].reshape(bc), a["lo"], a["hi"])


def isqrt_relax(L, v, steps: int):
    """Exact floor sqrt of an int64 Relax tensor with values < 4^steps (bit by bit, `steps` rounds)."""
    from tvm import relax

    i64 = lambda c: relax.const(np.int64(c), "int64")  # noqa: E731
    num, res = v, L.emit(relax.op.zeros_like(v))
    for i in range(steps - 1, -1, -1):
        bit = i64(1 << (2 * i))
        t = L.emit(relax.op.add(res, bit))
        ge = L.emit(relax.op.greater_equal(num, t))
        num = L.emit(relax.op.where(ge, L.emit(relax.op.subtract(num, t)), num))
        half = L.emit(relax.op.right_shift(res, i64(1)))
        res = L.emit(relax.op.where(ge, L.emit(relax.op.add(half, bit)), half))
        if i:  # each round reads num and res three times: a schedule that inlines the rounds doubles per round
            num, res = L.chain_barrier(num), L.chain_barrier(res)
    return res


def _qln_lower(L, node, xs):
    from tvm import relax

    a, p = node.attrs, node.params
    ax = a["axis"]
    i64 = lambda c: relax.const(np.int64(c), "int64")  # noqa: E731
    bc = channel_shape(len(L.g.shapes[node.inputs[0]]), ax)
    c = lambda v: relax.const(np.ascontiguousarray(v.reshape(bc).astype(np.int64)), "int64")  # noqa: E731
    x = L.emit(relax.op.astype(xs[0], "int64"))
    s1 = L.emit(relax.op.sum(x, axis=[ax], keepdims=True))
    d = L.emit(relax.op.subtract(L.emit(relax.op.multiply(x, i64(a["n"]))), s1))
    v = L.emit(relax.op.sum(L.emit(relax.op.multiply(d, d)), axis=[ax], keepdims=True))
    big = L.emit(relax.op.add(L.emit(relax.op.left_shift(v, i64(2 * a["k"]))), i64(a["E"])))
    r = L.materialize(isqrt_relax(L, big, a["steps"]))
    inv = L.materialize(L.emit(relax.op.floor_divide(i64(1 << 61), r)))  # per row, not inlined per element
    z = L.emit(relax.op.right_shift(L.emit(relax.op.add(L.emit(relax.op.multiply(d, inv)), i64(1 << (60 - a["F"])))),
                                    i64(61 - a["F"])))
    y = L.emit(relax.op.add(L.emit(relax.op.multiply(z, c(p["G"] * p["M"]))), c(p["K"])))
    return L.shift_clip(y, p["S"].reshape(bc), a["lo"], a["hi"], L.g.dtypes[node.output])


def _qln_verify(graph, n) -> list[str]:
    a, p = n.attrs, n.params
    q = graph.qparams[n.inputs[0]]
    out = []
    span, rows = q.hi - q.lo, a["n"]
    if a["n"] != graph.shapes[n.inputs[0]][a["axis"]]:
        out.append(f"{n.name}: row length {a['n']} is not the axis length")
    dmax = rows * span
    if ((rows * dmax * dmax) << (2 * a["k"])) + a["E"] >= D_LIMIT:
        out.append(f"{n.name}: the int64 variance sum can overflow")
    if a["F"] > 60:
        out.append(f"{n.name}: the reciprocal product d 2^61 / R needs F <= 60")
    bound = ((1 << a["P"]) + 2) * int(p["M"].max()) + int(np.abs(p["K"]).max()) + (1 << 61)
    if bound >= INT64_LIMIT:
        out.append(f"{n.name}: the int64 requant product can overflow")
    return out


register_float(OpDef("layernorm", _ln_float, _quantize_ln))
register_int(IntOpDef("qlayernorm", _qln_ref, _qln_lower, verify=_qln_verify))


# --------------------------------------------------------------------------- mean
def _mean_float(node, xs):
    return xs[0].mean(axis=tuple(node.attrs["axes"]), keepdims=bool(node.attrs["keepdims"]))


def _quantize_mean(ctx, node):
    from dyadic.core.graph import Node

    x = node.inputs[0]
    qx = ctx.qp[x]
    q = ctx.qp[node.output] = ctx.out_q(node.output, qx.signed)
    count = int(np.prod([ctx.graph.shapes[x][a] for a in node.attrs["axes"]]))
    m, s = dyadic(qx.scale / (count * q.scale))
    ctx.nodes.append(Node("qmean", node.name, node.inputs, node.outputs,
                          {**node.attrs, **ctx.clip_bounds(q, None)},
                          {"M": np.array(m, np.int64), "S": np.array(s, np.int64)}))


def _qmean_verify(graph, n) -> list[str]:
    q = graph.qparams[n.inputs[0]]
    count = int(np.prod([graph.shapes[n.inputs[0]][a] for a in n.attrs["axes"]]))
    if max(abs(q.lo), abs(q.hi)) * count * int(n.params["M"]) + (1 << 61) >= INT64_LIMIT:
        return [f"{n.name}: int64 mean product can overflow"]
    return []


register_float(OpDef("mean", _mean_float, _quantize_mean))
register_int(IntOpDef("qmean", qsum_requant_ref, qsum_requant_lower, verify=_qmean_verify))


# --------------------------------------------------------------------------- import
@importer("LayerNormalization", doc="integer mean and variance (int64), exact integer square root, one integer "
                                    "reciprocal per row, per-channel dyadic gamma/beta")
def _import_layernorm(c):
    from dyadic.core.graph import Node

    x = c.inputs[0]
    r = c.rank(x)
    ax = c.axis(c.attrs.get("axis", -1), x)
    shp = c.shapes[x]
    if any(int(d) != 1 for d in shp[ax + 1:]):
        c.fail(f"normalizing over several axes ({list(range(ax, r))}) is not supported, only one")
    n = int(shp[ax])
    gamma = np.broadcast_to(np.asarray(c.const(1), np.float32).reshape(-1), (n,)).copy()
    beta = c.const(2)
    beta = np.zeros(n, np.float32) if beta is None else np.broadcast_to(
        np.asarray(beta, np.float32).reshape(-1), (n,)).copy()
    return [Node("layernorm", c.name, (x,), (c.outputs[0],),
                 {"axis": ax, "eps": float(c.attrs.get("epsilon", 1e-5))}, {"gamma": gamma, "beta": beta})]


@importer("ReduceMean", doc="integer sum over the axes + dyadic requant (H, W of NCHW: the pooling kernels)")
def _import_reduce_mean(c):
    from dyadic.core.graph import Node

    x = c.inputs[0]
    r = c.rank(x)
    axes = c.attrs.get("axes")
    if axes is None:
        axes = c.const(1, None)
    if axes is None:
        axes = range(r)
    axes = tuple(sorted({int(a) % r for a in np.atleast_1d(axes)}))
    if 0 in axes:
        c.fail("a mean over the batch axis is not supported")
    keep = int(c.attrs.get("keepdims", 1))
    if r == 4 and axes == (2, 3):
        return [Node("mean_hw", c.name, (x,), (c.outputs[0],), {"keepdims": keep})]
    return [Node("mean", c.name, (x,), (c.outputs[0],), {"axes": axes, "keepdims": keep})]
