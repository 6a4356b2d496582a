"""Float graph (BN folded, activations fused, ranges calibrated, bits assigned) -> integer graph.

Tensors: x ≈ scale * q with zero-point 0 (HAWQ-V3's symmetric scheme). A tensor whose calibrated
min is >= 0 is unsigned, q in [0, 2^b - 1], scale = max / (2^b - 1); otherwise signed,
q in [-2^(b-1), 2^(b-1) - 1], scale = absmax / (2^(b-1) - 1). The graph outputs (logits) are kept
at 16 bits (stored in int32) so that the final argmax is not decided by int8 rounding.

Layers, with s_x, s_w[c], s_y the input, per-channel weight and output scales:
  conv/dense: W_q = round(W / s_w[c]) (symmetric per output channel), B_q = round(B / (s_x s_w[c]))
              in int32, y = requant(W_q * x + B_q, dyadic(s_x s_w[c] / s_y)), fused ReLU/ReLU6 as
              the clip bounds of the requant.
  add:        y = clip((a m_a + b m_b + 2^(s-1)) >> s) with m_a / 2^s ≈ s_a / s_y, m_b / 2^s ≈ s_b / s_y.
  avgpool:    integer window sum, then requant by dyadic(s_x / (count s_y)); count is k_h k_w,
              or the per-position count of real inputs when padding is excluded.
  mean_hw:    integer sum over H, W, then requant by dyadic(s_x / (H W s_y)).
  concat:     inputs whose scale differs from the output's get a `requant` node first.
  maxpool, pad (value 0), slice, reshape: the same op on integers; the output keeps the input's scale.

4-bit: weights of a W4 layer are in [-7, 7] (stored packed by the lowering). The input of an A4
layer is 4-bit ([0, 15] unsigned after ReLU, else [-8, 7]): its producer writes 4 bits directly
when every reader is A4, otherwise a `requant` node makes a 4-bit copy for the A4 reader.
"""
from __future__ import annotations

import math

import numpy as np

from dyadic.core import npops
from dyadic.core.arith import dyadic_array, dyadic_shared, quantize_weight
from dyadic.core.errors import VerificationError
from dyadic.core.graph import PASSTHROUGH_OPS, Graph, Node, QParams
from dyadic.ops import FLOAT, QuantContext
from dyadic.ops.matmul import narrow_input, widest_input_bits
from dyadic.core.calibrators import act_range

OUTPUT_BITS = 16


def activation_qparams(rng: tuple[float, float], bits: int, signed: bool | None = None) -> QParams:
    """Per-tensor symmetric (signed) or zero-based (unsigned) quantization of a calibrated range
    [lo, hi] to `bits`; unsigned when the range is non-negative unless `signed` says otherwise.
    Also used by the sensitivity and cost passes to quantize exactly as this pass will."""
    lo, hi = rng
    if signed is None:
        signed = lo < 0
    qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    amax = max(abs(lo), abs(hi)) if signed else hi
    if not math.isfinite(amax):
        from dyadic.core.errors import DataRangeError
        raise DataRangeError(f"calibrated range [{lo}, {hi}] is not usable: ranges must be finite (a tensor that "
                             "is identically 0 gets scale 1, which represents it exactly)")
    return QParams(scale=float(amax / qmax) if amax > 0 else 1.0, bits=bits, signed=signed)


_clip_bounds = QuantContext.clip_bounds  # one definition, shared with the op table's quantize rules


def _scalar(v: int) -> np.ndarray:
    return np.array(v, np.int64)


def wide_tensors(graph: Graph) -> set[str]:
    """Graph outputs and the tensors they are reshaped/sliced from: these stay 16-bit."""
    wide = set(graph.outputs) | set(graph.meta.get("wide", ()))  # + a 16-bit residual stream (`widen_residual`)
    for n in reversed(graph.nodes):
        if n.output in wide and (n.op in PASSTHROUGH_OPS and n.op != "concat"
                                 or n.op in FLOAT and FLOAT[n.op].passthrough):
            wide.add(n.inputs[0])
    return wide


def _a4_tensors(graph: Graph) -> set[str]:
    """Tensors stored as 4-bit: every reader is a layer that wants 4-bit input activations and the
    producer sets its own scale (not an input, output or pass-through op)."""
    producers = graph.producers()
    a4 = set()
    for t, users in graph.consumers().items():
        src = producers.get(t)
        if users and src is not None and src.op not in PASSTHROUGH_OPS and t not in graph.outputs \
                and not (src.op in FLOAT and FLOAT[src.op].passthrough) \
                and all(u.op in ("conv", "dense") and graph.bits[u.name][1] == 4 for u in users):
            a4.add(t)
    return a4


def quantize_graph(graph: Graph) -> Graph:
    missing = [n.name for n in graph.weighted_nodes() if n.name not in graph.bits]
    if missing or not graph.ranges:
        raise VerificationError(f"quantize_graph needs calibrated ranges and bits for every layer; missing {missing}")
    wide, a4 = wide_tensors(graph), _a4_tensors(graph)
    qp: dict[str, QParams] = {}

    def out_q(t: str, signed: bool | None = None) -> QParams:
        if t in wide:
            return activation_qparams(graph.ranges[t], OUTPUT_BITS, True)
        return activation_qparams(act_range(graph, t, 4 if t in a4 else 8), 4 if t in a4 else 8, signed)

    from dyadic.ops.embedding import IDS_QPARAMS  # integer (token id) inputs pass through, not quantized

    for t in graph.inputs:
        qp[t] = IDS_QPARAMS if t in graph.meta.get("int_inputs", ()) else out_q(t)
    nodes: list[Node] = []
    for n in graph.nodes:
        try:
            _quantize_node(graph, n, qp, out_q, nodes)
        except ValueError as e:  # a rescale factor no 31-bit dyadic number can represent
            raise VerificationError(f"quantize_graph: layer {n.name}: {e}") from None
    shapes = dict(graph.shapes)
    for n in nodes:
        if n.op == "requant" and n.output not in shapes:
            shapes[n.output] = shapes[n.inputs[0]]
    dtypes = {t: q.dtype for t, q in qp.items()}
    return graph.replace(nodes=tuple(nodes), qparams=qp, dtypes=dtypes, shapes=shapes)


BIAS_LIMIT = 2 ** 29  # |B_q| at most this: the accumulator keeps 2^31 - 2^29 of int32 for W x


def _fit_bias(w, w_q, s_w, b, s_x: float, bits: int):
    """Channels whose bias would not fit int32 at s_x * s_w[c] (a near-dead channel: weights ~0,
    bias not; or a very fine 16-bit input scale) get the coarser weight scale
    s_w[c] = |B[c]| / (s_x BIAS_LIMIT), and their weights are re-rounded at it: they are then
    small integers (or 0) beside a bias that dominates the channel anyway."""
    need = np.abs(np.asarray(b, np.float64)) / (s_x * BIAS_LIMIT)
    bad = need > s_w
    if not bad.any():
        return w_q, s_w
    s_w, w_q = s_w.copy(), w_q.copy()
    s_w[bad] = need[bad]
    L = (1 << (bits - 1)) - 1
    w2 = np.asarray(w, np.float64).reshape(len(s_w), -1)
    w_q.reshape(len(s_w), -1)[bad] = np.clip(np.rint(w2[bad] / s_w[bad, None]), -L, L).astype(w_q.dtype)
    return w_q, s_w


def _quantize_node(graph: Graph, n: Node, qp: dict[str, QParams], out_q, nodes: list[Node]) -> None:
    x = n.inputs[0]
    if n.op in FLOAT:  # an op-table entry (`dyadic.ops`)
        if FLOAT[n.op].passthrough:
            qp[n.output] = qp[x]
            nodes.append(n)
        else:
            FLOAT[n.op].quantize(QuantContext(graph, qp, out_q, nodes), n)
        return
    if n.op in ("conv", "dense"):
        wb, ab = graph.bits[n.name]
        if ab == 4 and qp[x].bits != 4:  # the input is shared with 8-bit readers: requantize a copy
            name = f"{n.name}/a4"
            q4 = qp[name] = activation_qparams(act_range(graph, x, 4), 4, qp[x].signed)
            m, s = dyadic_array(np.array(qp[x].scale / q4.scale))
            nodes.append(Node("requant", name, (x,), (name,), _clip_bounds(q4, None), {"M": m, "S": s}))
            n, x = n.replace(inputs=(name,)), name
        q = qp[n.output] = out_q(n.output)
        w_q, s_w = ((n.params["W_int"], n.params["W_scale"]) if "W_int" in n.params  # passes/round_weights.py
                    else quantize_weight(n.params["W"], wb))
        if qp[x].bits > 8:  # a 16-bit input (passes/widen_activations): the widest that keeps int32
            ctx = QuantContext(graph, qp, out_q, nodes)
            x = narrow_input(ctx, n, 0, widest_input_bits(ctx, x, w_q, s_w, n.params["B"]))
            n = n.replace(inputs=(x,))
        w_q, s_w = _fit_bias(n.params["W"], w_q, s_w, n.params["B"], qp[x].scale, wb)
        s_acc = qp[x].scale * s_w
        b_q = np.rint(n.params["B"].astype(np.float64) / s_acc)
        if np.abs(b_q).max(initial=0) >= 2 ** 31:
            raise VerificationError(f"{n.name}: bias does not fit int32 at scale {s_acc.min():.3g}")
        m, s = dyadic_array(s_acc / q.scale)
        attrs = {k: v for k, v in n.attrs.items() if k != "act"}
        attrs.update(_clip_bounds(q, n.attrs.get("act")), w_bits=wb, a_bits=ab)
        nodes.append(Node("q" + n.op, n.name, n.inputs, n.outputs, attrs,
                          {"W": w_q, "B": b_q.astype(np.int32), "M": m, "S": s}))
    elif n.op == "add":
        q = qp[n.output] = out_q(n.output)
        ms, s = dyadic_shared([qp[i].scale / q.scale for i in n.inputs])
        nodes.append(Node("qadd", n.name, n.inputs, n.outputs, _clip_bounds(q, n.attrs.get("act")),
                          {"M": np.array(ms, np.int64), "S": _scalar(s)}))
    elif n.op in ("relu", "clip"):
        q = qp[n.output] = out_q(n.output)
        act = (0.0, math.inf) if n.op == "relu" else (n.attrs["lo"], n.attrs["hi"])
        m, s = dyadic_array(np.array(qp[x].scale / q.scale))
        nodes.append(Node("requant", n.name, n.inputs, n.outputs, _clip_bounds(q, act), {"M": m, "S": s}))
    elif n.op == "avgpool":
        q = qp[n.output] = out_q(n.output, qp[x].signed)
        a = n.attrs
        if a["count_include_pad"] or not any(a["pads"]):
            counts = np.array(a["kernel"][0] * a["kernel"][1])
        else:
            counts = npops.window_counts(graph.shapes[x][2:], a["kernel"], a["strides"], a["pads"])
        ms, s = dyadic_shared(list((qp[x].scale / (counts * q.scale)).ravel()))
        nodes.append(Node("qavgpool", n.name, n.inputs, n.outputs, {**a, **_clip_bounds(q, None)},
                          {"M": np.array(ms, np.int64).reshape(counts.shape), "S": _scalar(s)}))
    elif n.op == "mean_hw":
        q = qp[n.output] = out_q(n.output, qp[x].signed)
        h, w = graph.shapes[x][2:]
        m, s = dyadic_array(np.array(qp[x].scale / (h * w * q.scale)))
        nodes.append(Node("qmean_hw", n.name, n.inputs, n.outputs, {**n.attrs, **_clip_bounds(q, None)},
                          {"M": m, "S": s}))
    elif n.op == "concat":
        ins = [qp[i] for i in n.inputs]
        # equal inputs pass through, unless the output has a wider rule of its own (a 16-bit graph output)
        if all(i == ins[0] for i in ins) and out_q(n.output, ins[0].signed).bits == ins[0].bits:
            qp[n.output] = ins[0]
            nodes.append(n)
            return
        q = qp[n.output] = out_q(n.output, any(i.signed for i in ins))
        aligned = []
        for i, t in enumerate(n.inputs):
            if qp[t] == q:
                aligned.append(t)
                continue
            name = f"{n.name}/align{i}"
            m, s = dyadic_array(np.array(qp[t].scale / q.scale))
            nodes.append(Node("requant", name, (t,), (name,), _clip_bounds(q, None), {"M": m, "S": s}))
            qp[name] = q
            aligned.append(name)
        nodes.append(n.replace(inputs=tuple(aligned)))
    elif n.op in PASSTHROUGH_OPS:
        qp[n.output] = qp[x]
        nodes.append(n)
    else:
        raise VerificationError(f"quantize_graph: no integer form for op {n.op} ({n.name})")
