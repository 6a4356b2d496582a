"""Matrix products of transformers: constant weights on the last axis, and two activations.

`linear` (float): y = x W^T + B over the last axis of x [N, ..., K] -> [N, ..., O] (an ONNX MatMul
with a constant [K, O] right operand on a rank >= 3 input; rank 2 stays the legacy `dense`, which
has the CPU kernels and the mixed-precision choice). Quantized like `dense`: W_q = round(W / s_w[o])
int8 per output channel, B_q = round(B / (s_x s_w[o])) int32, acc = x_q W_q^T + B_q in int32, and
y = clip((acc M[o] + 2^(S[o]-1)) >> S[o]) with M[o] / 2^S[o] ≈ s_x s_w[o] / s_y (`qlinear`).
Wide inputs: a 16-bit input (a transformer's LayerNorm or GELU output, `passes/widen_residual`) is
read as it is when the int32 accumulator bound below holds at 16 bits; otherwise it is first
requantized to the widest b in [8, 16) for which it holds, 2^(b-1) max_o Σ_k |W_q[o, k]| +
max|B_q| < 2^31 (B_q computed at that input scale). BERT's LN and GELU outputs have a few outlier
channels (MiniLM: 10-30x the median channel range), so 8 bits leave most channels a handful of
levels; at 16 bits every channel keeps ~256x finer steps. On x86, 16-bit inputs run on the CPU kernels'
int16 GEMM step (`kernels/matmul_lowering`: int16 pairs x int8 weights widened to int16; `vpdpwssd` on
AVX512-VNNI, AVX2 `vpmaddwd` elsewhere), 8-bit ones on the isa's int8 GEMM;
elsewhere (arm, cuda) 16-bit inputs take the generic Relax matmul (int32 x int8 -> int32).
With `--wide-weights auto` a 16-bit input's linear gets 9-12-bit weights (int16; `wide_weight_bits`).
Verifier: max|x_q| Σ_k |W_q[o, k]| + |B_q[o]| < 2^31 for every o.

`matmul` (float): y = alpha (a @ b) of two activations with numpy batching ([N, H, T, D] x
[N, H, D, T]: Q·Kᵀ, attn·V); `passes/fold_batchnorm` folds a positive scalar factor (1/√d) into
alpha. Quantized (`qmatmul`): integer codes of the widest widths (b_a, b_b) for which the int32
bound below holds, found by narrowing the wider operand one bit at a time from the operands' own
widths (`passes/widen_residual` makes queries, keys, values and probabilities 16-bit; MiniLM's
head dim 32 gives Q·Kᵀ 14 x 13 bits, P·V over 128 keys would be 13 x 12 bits but for the row-sum
bound below; 8-bit operands stay 8-bit),
acc = a_q @ b_q in int32, y = clip((acc M + 2^(S-1)) >> S) with M / 2^S ≈ alpha s_a s_b / s_y; on x86
it runs on the kernels' batched int16-step matmul (`kernels/cpu_bmm`: `vpdpwssd` on AVX512-VNNI,
`vpmaddwd` elsewhere).
Verifier: K max|a_q| max|b_q| < 2^31 (K the contracted length).
Probabilities (a = a Softmax output over the contracted axis, at its own 16-bit codes, P·V): the
codes are >= 0 and each row sums to at most Q + n/2 (`ops/softmax`: q_y <= e Q / Σ + 1/2 per term), so
|Σ_k a_k b_k| <= (Q + n/2) max|b_q|, and so is every partial sum in any order (no term is negative
on the a side). That bound replaces K max|a_q|: with Q = 32767, n = 128 and 16-bit values it is
32832 x 32768 < 2^31, so P and V stay 16-bit instead of 13 x 12 bits (attrs["a_rowsum"]; the
verifier checks it against the producing qsoftmax). The kernels' int16 steps stay exact too: a pair
sum a0 b0 + a1 b1 <= (a0 + a1) max|b| is below the same bound.

The int64 references compute the products in float64, which is exact: every partial sum is an
integer below 2^31 (the verifier's bound), far below 2^53.
"""
from __future__ import annotations

import numpy as np

from dyadic.core.arith import dyadic, dyadic_array, quantize_weight, requantize
from dyadic.ops.base import IntOpDef, OpDef, importer, register_float, register_int

INT32_LIMIT = 2 ** 31
WIDE_INPUT_BITS = 16  #: the widest input a `qlinear` reads without requantizing it first


def _amax(graph, t: str) -> int:
    q = graph.qparams[t]
    return max(abs(q.lo), abs(q.hi))


def narrowed_qparams(ctx, t: str, bits: int):
    """The QParams of tensor t (min/max range) re-quantized at `bits` (as `activation_qparams`);
    t's own QParams at its own width."""
    from dyadic.core.graph import QParams

    q = ctx.qp[t]
    if bits == q.bits:
        return q
    lo, hi = ctx.graph.ranges[t]
    amax = max(abs(lo), abs(hi)) if q.signed else hi
    levels = (1 << (bits - 1)) - 1 if q.signed else (1 << bits) - 1
    return QParams(float(amax / levels) if amax > 0 else 1.0, bits, q.signed)


def narrow_input(ctx, node, i: int, bits: int = 8) -> str:
    """Input i of `node`, requantized to `bits` if it is wider (a `requant` node is emitted once)."""
    from dyadic.core.graph import Node

    t = node.inputs[i]
    q = ctx.qp[t]
    if q.bits <= bits:
        return t
    name = f"{t}/a{bits}"
    if name not in ctx.qp:
        qn = ctx.qp[name] = narrowed_qparams(ctx, t, bits)
        m, s = dyadic_array(np.array(q.scale / qn.scale))
        ctx.nodes.append(Node("requant", name, (t,), (name,), {"lo": qn.lo, "hi": qn.hi}, {"M": m, "S": s}))
    return name


def widest_input_bits(ctx, x: str, w_q: np.ndarray, s_w: np.ndarray, bias: np.ndarray) -> int:
    """The widest input width in [8, min(bits of x, 16)] at which a layer with integer weights w_q
    (output channel first) keeps its int32 accumulator: max|x_q| max_o Σ|W_q[o]| + max|B_q| < 2^31."""
    bits = min(ctx.qp[x].bits, WIDE_INPUT_BITS)
    row_sum = int(np.abs(w_q.astype(np.int64)).reshape(len(w_q), -1).sum(axis=1).max(initial=0))
    while bits > 8:
        qx = narrowed_qparams(ctx, x, bits)
        b_q = np.rint(np.asarray(bias, np.float64) / (qx.scale * s_w))
        if max(abs(qx.lo), abs(qx.hi)) * row_sum + np.abs(b_q).max(initial=0) < INT32_LIMIT:
            break
        bits -= 1
    return bits


WIDE_WEIGHT_BITS = 12  #: the widest weights `--wide-weights auto` gives (`passes/widen_weights`)
WIDE_WEIGHT_MARGIN = 2  #: the bits an input keeps over its layer's wider weights


def wide_weight_bits(ctx, x: str, w: np.ndarray, bias: np.ndarray) -> int:
    """The widest weight width in (8, WIDE_WEIGHT_BITS] for a layer reading 16-bit codes x at which
    `widest_input_bits` still leaves x WIDE_WEIGHT_MARGIN more bits; 8 for 8-bit x or where none fits
    (the choice and its reasons: `passes/widen_weights`)."""
    if ctx.qp[x].bits <= 8:
        return 8
    for wb in range(WIDE_WEIGHT_BITS, 8, -1):
        w_q, s_w = quantize_weight(w, wb)
        if widest_input_bits(ctx, x, w_q, s_w, bias) >= wb + WIDE_WEIGHT_MARGIN:
            return wb
    return 8


# --------------------------------------------------------------------------- linear
def _linear_float(node, xs):
    x = xs[0]
    dt = np.float64 if x.dtype == np.float64 else np.float32
    y = x.astype(dt, copy=False) @ node.params["W"].astype(dt).T + node.params["B"].astype(dt)
    lo, hi = node.attrs.get("act", (-np.inf, np.inf))
    return np.clip(y, lo, hi) if (lo, hi) != (-np.inf, np.inf) else y


def _quantize_linear(ctx, node):
    from dyadic.core.errors import VerificationError
    from dyadic.core.graph import Node

    wb = (wide_weight_bits(ctx, node.inputs[0], node.params["W"], node.params["B"])
          if ctx.graph.meta.get("wide_weights") else 8)  # `passes/widen_weights`
    w_q, s_w = quantize_weight(node.params["W"], wb)
    x = narrow_input(ctx, node, 0, widest_input_bits(ctx, node.inputs[0], w_q, s_w, node.params["B"]))
    q = ctx.qp[node.output] = ctx.out_q(node.output)
    s_acc = ctx.qp[x].scale * s_w
    b_q = np.rint(node.params["B"].astype(np.float64) / s_acc)
    if np.abs(b_q).max(initial=0) >= INT32_LIMIT:
        raise VerificationError(f"{node.name}: bias does not fit int32 at scale {s_acc.min():.3g}")
    m, s = dyadic_array(s_acc / q.scale)
    ctx.nodes.append(Node("qlinear", node.name, (x,), node.outputs, ctx.clip_bounds(q, node.attrs.get("act")),
                          {"W": w_q, "B": b_q.astype(np.int32), "M": m, "S": s}))


def _qlinear_ref(node, xs, out_shape):
    p, a = node.params, node.attrs
    acc = np.rint(xs[0].astype(np.float64) @ p["W"].astype(np.float64).T).astype(np.int64) + p["B"].astype(np.int64)
    return requantize(acc, p["M"], p["S"], a["lo"], a["hi"])


def _qlinear_lower(L, node, xs):
    from tvm import relax

    p, a = node.params, node.attrs
    w = relax.const(np.ascontiguousarray(p["W"].T), str(p["W"].dtype))
    acc = L.emit(relax.op.matmul(xs[0], w, out_dtype="int32"))
    acc = L.emit(relax.op.add(acc, relax.const(np.ascontiguousarray(p["B"].astype(np.int32)), "int32")))
    return L.requant(acc, p["M"], p["S"], a["lo"], a["hi"], L.g.dtypes[node.output])


def _qlinear_verify(graph, n) -> list[str]:
    p = n.params
    out = []
    w = p["W"].astype(np.int64)
    limit = {np.dtype(np.int8): 127, np.dtype(np.int16): (1 << (WIDE_WEIGHT_BITS - 1)) - 1}.get(p["W"].dtype, -1)
    if np.abs(w).max(initial=0) > limit:
        out.append(f"{n.name}: weights ({p['W'].dtype}) exceed {8 if limit <= 127 else WIDE_WEIGHT_BITS} bits")
    if graph.qparams[n.inputs[0]].bits > WIDE_INPUT_BITS:
        out.append(f"{n.name}: reads a {graph.qparams[n.inputs[0]].bits}-bit input ({WIDE_INPUT_BITS} bits at most)")
    acc = _amax(graph, n.inputs[0]) * np.abs(w).sum(axis=1) + np.abs(p["B"].astype(np.int64))
    if acc.max(initial=0) >= INT32_LIMIT:
        out.append(f"{n.name}: int32 accumulator can overflow (bound {int(acc.max())})")
    return out


register_float(OpDef("linear", _linear_float, _quantize_linear))
register_int(IntOpDef("qlinear", _qlinear_ref, _qlinear_lower, verify=_qlinear_verify))


# --------------------------------------------------------------------------- matmul of two activations
def _matmul_float(node, xs):
    y = np.matmul(xs[0], xs[1])
    alpha = node.attrs.get("alpha", 1.0)
    return (y * y.dtype.type(alpha) if alpha != 1.0 else y).astype(xs[0].dtype, copy=False)


def softmax_rowsum(q_hi: int, n: int) -> int:
    """The largest row sum of a qsoftmax's codes (output bound Q = q_hi, n terms per row): Q + n/2."""
    return q_hi + n // 2 + 1


def _probabilities(graph, t: str) -> bool:
    """Whether t is a (float) softmax output over its last axis: a P of P·V."""
    p = graph.producers().get(t)
    return p is not None and p.op == "softmax" and p.attrs["axis"] == len(graph.shapes[t]) - 1


def _quantize_matmul(ctx, node):
    from dyadic.core.graph import Node

    a, b = node.inputs
    k = int(ctx.graph.shapes[a][-1])
    ba, bb = ctx.qp[a].bits, ctx.qp[b].bits
    own_a = ba
    rowsum = softmax_rowsum(ctx.qp[a].hi, k) if _probabilities(ctx.graph, a) else None

    def amax(t: str, bits: int) -> int:
        q = narrowed_qparams(ctx, t, bits)
        return max(abs(q.lo), abs(q.hi))

    def bound(ba: int, bb: int) -> int:  # the row-sum bound holds for the softmax's own codes only
        return (rowsum if rowsum is not None and ba == own_a else k * amax(a, ba)) * amax(b, bb)
    while bound(ba, bb) >= INT32_LIMIT and max(ba, bb) > 8:  # narrow the wider one first
        if bb >= ba:
            bb -= 1
        else:
            ba -= 1
    attrs = {"a_rowsum": rowsum} if rowsum is not None and ba == own_a else {}
    a, b = narrow_input(ctx, node, 0, ba), narrow_input(ctx, node, 1, bb)
    q = ctx.qp[node.output] = ctx.out_q(node.output)
    m, s = dyadic(node.attrs.get("alpha", 1.0) * ctx.qp[a].scale * ctx.qp[b].scale / q.scale)
    ctx.nodes.append(Node("qmatmul", node.name, (a, b), node.outputs,
                          {**ctx.clip_bounds(q, node.attrs.get("act")), **attrs},
                          {"M": np.array(m, np.int64), "S": np.array(s, np.int64)}))


def _qmatmul_ref(node, xs, out_shape):
    acc = np.rint(np.matmul(xs[0].astype(np.float64), xs[1].astype(np.float64))).astype(np.int64)
    return requantize(acc, node.params["M"], node.params["S"], node.attrs["lo"], node.attrs["hi"])


def _qmatmul_lower(L, node, xs):
    from tvm import relax

    a, b = xs  # uint8 x int8 (probabilities x values) is legal: the legalized loop widens both
    acc = L.emit(relax.op.matmul(a, b, out_dtype="int32"))
    return L.requant(acc, node.params["M"], node.params["S"], node.attrs["lo"], node.attrs["hi"],
                     L.g.dtypes[node.output])


def _qmatmul_verify(graph, n) -> list[str]:
    a, b = n.inputs
    k = graph.shapes[a][-1]
    out = []
    rowsum = n.attrs.get("a_rowsum")
    if rowsum is not None:  # a claimed probability row sum: a must be a qsoftmax's own codes, last axis
        p = graph.producers().get(a)
        ok = (p is not None and p.op == "qsoftmax" and p.attrs["axis"] == len(graph.shapes[a]) - 1
              and p.attrs["lo"] >= 0 and softmax_rowsum(p.attrs["Q"], k) <= rowsum)
        if not ok:
            out.append(f"{n.name}: a_rowsum {rowsum} claimed, but input {a} is not a last-axis qsoftmax output "
                       f"with row sums below it")
        bound, what = rowsum * _amax(graph, b), f"row sum {rowsum} x {_amax(graph, b)}"
    else:
        bound, what = k * _amax(graph, a) * _amax(graph, b), f"K {k} x {_amax(graph, a)} x {_amax(graph, b)}"
    if bound >= INT32_LIMIT:
        out.append(f"{n.name}: int32 accumulator can overflow ({what} = {bound})")
    return out


register_float(OpDef("matmul", _matmul_float, _quantize_matmul))
register_int(IntOpDef("qmatmul", _qmatmul_ref, _qmatmul_lower, verify=_qmatmul_verify))


# --------------------------------------------------------------------------- import
@importer("MatMul", doc="constant weights: int8 per-output-channel weights, int32 accumulation, dyadic "
                        "requant (any leading dims); two activations: codes up to 16 bits, each at the widest width "
                        "whose int32 sum stays exact -> dyadic requant")
def _import_matmul(c):
    from dyadic.core.graph import Node

    a, b = c.inputs[0], c.inputs[1]
    out = (c.outputs[0],)
    if c.is_const(0):
        c.fail("a constant left operand is not supported")
    if not c.is_const(1):
        ra, rb = c.rank(a), c.rank(b)
        if ra < 3 or rb < 3:
            c.fail(f"a product of two activations needs rank >= 3 operands (batch, ..., rows, cols), got "
                   f"ranks {ra} and {rb}")
        return [Node("matmul", c.name, (a, b), out)]
    w = np.asarray(c.consts[b], np.float32)
    if w.ndim != 2:
        c.fail(f"constant right operand of shape {list(w.shape)}: only a [K, O] matrix is supported")
    w = np.ascontiguousarray(w.T)
    bias = np.zeros(w.shape[0], np.float32)
    if c.rank(a) == 2:
        return [Node("dense", c.name, (a,), out, {}, {"W": w, "B": bias})]
    return [Node("linear", c.name, (a,), out, {}, {"W": w, "B": bias})]
