"""Choose every layer's integer weights, weight scales and bias before `quantize_graph`.

Runs after `assign_bitwidths` (the weight width of each layer is known). Per layer (math in
`dyadic.weight_quant`):

* scales: max-abs per output channel, or the MSE-optimal clipped scales (`weight_clip`: at 4 bits,
  at every width, or never);
* integers: round to nearest, or AdaRound / GPTQ (`rounding="adaround"|"gptq"`) on the layer's
  reconstruction;
* bias: plus the expected output shift on the calibration data (`bias_correction`).

The data-aware steps walk the graph once in topological order with two copies of every tensor over
the calibration images: x (fp32) and x̃ (a float simulation of the integer graph: the chosen
integer weights and corrected bias, every tensor fake-quantized to the scale and width
`quantize_graph` will give it). At each layer the statistics of its im2col columns (means, and for
AdaRound and GPTQ the Gram matrices A, B, C of x̃, x; GPTQ's rounding uses A) are accumulated, the weights are chosen, and the
layer's quantized output is computed from them, so later layers see the error of earlier ones
(AdaRound's asymmetric reconstruction). The reconstruction is of the pre-activation output
(the fused ReLU is not in the loss). The result: node params `W_int` (int8; int16 above 8 bits), `W_scale` (float64
per channel) and the corrected `B`, which `quantize_graph` turns into the usual integer layer, plus
`Graph.meta["weight_quant"]` (per layer: mean clip ratio, losses, bias shift), recorded in model.json.
"""
from __future__ import annotations

import time
import numpy as np

from dyadic.core import npops, weight_quant as wq
from dyadic.core.arith import channel_scales
from dyadic.core.weight_quant import Rounding, WeightClip
from dyadic.core.calibrators import act_range
from dyadic.core.float_exec import run_node, static_chunks
from dyadic.core.graph import PASSTHROUGH_OPS, Graph, Node, QParams
from dyadic.core.progress import Progress

CHUNK = 64


def round_weights(graph: Graph, rounding: Rounding = Rounding.NEAREST, weight_clip: WeightClip = WeightClip.W4,
                  bias_correction: bool = True, iters: int = 1000, samples: int | None = None,
                  quiet: bool = False) -> Graph:
    t0 = time.perf_counter()
    data = graph.meta.get("calib_data")
    # the float simulation walks one float input at any batch; other graphs (token ids + mask inputs,
    # a static-batch transformer) keep nearest rounding and their trained biases
    simple = len(graph.inputs) == 1 and not graph.meta.get("static_batch")
    if rounding is not Rounding.NEAREST and not simple:
        from dyadic.core.errors import ModelError

        raise ModelError(f"--rounding {rounding.value} needs a graph with one float input and a dynamic batch")
    data_aware = (rounding is not Rounding.NEAREST or bias_correction) and data is not None and simple
    scales = {n.name: wq.weight_scales(n.params["W"], graph.bits[n.name][0], _clips(weight_clip, graph.bits[n.name][0]))
              for n in graph.weighted_nodes()}
    info: dict[str, dict] = {}
    if data_aware:
        x = np.asarray(data[graph.inputs[0]][:samples], np.float32)
        chosen = _walk(graph, x, scales, rounding, bias_correction, iters, info, quiet)
    else:
        chosen = {}
        for n in graph.weighted_nodes():
            chosen[n.name] = (wq.round_nearest(n.params["W"], scales[n.name], graph.bits[n.name][0]), n.params["B"])
    nodes = []
    for n in graph.nodes:
        if n.name in chosen:
            q, b = chosen[n.name]
            base = channel_scales(n.params["W"], graph.bits[n.name][0])
            info.setdefault(n.name, {})["clip_ratio_mean"] = float(np.mean(scales[n.name] / base))
            n = n.replace(params={**n.params, "B": np.asarray(b, np.float32), "W_int": q, "W_scale": scales[n.name]})
        nodes.append(n)
    meta = {k: v for k, v in graph.meta.items() if k != "calib_data"}
    meta["weight_quant"] = {"rounding": rounding.value, "clip": weight_clip.value,
                            "bias_correction": bool(bias_correction and data_aware), "iters": iters,
                            "samples": 0 if not data_aware else len(x), "seconds": round(time.perf_counter() - t0, 2),
                            "layers": info}
    return graph.replace(nodes=tuple(nodes), meta=meta)


def _clips(mode: WeightClip, bits: int) -> bool:
    return mode is WeightClip.ALL or (mode is WeightClip.W4 and bits == 4)


def sim_qparams(graph: Graph) -> dict[str, QParams]:
    """The per-tensor quantization `quantize_graph` will choose (for the float simulation)."""
    from dyadic.passes.quantize_graph import OUTPUT_BITS, _a4_tensors, activation_qparams, wide_tensors

    wide, a4 = wide_tensors(graph), _a4_tensors(graph)
    out = {}
    for t in graph.inputs:  # as `quantize_graph.out_q`
        out[t] = (activation_qparams(graph.ranges[t], OUTPUT_BITS, True) if t in wide
                  else activation_qparams(act_range(graph, t, 8), 8))
    for n in graph.nodes:
        t = n.output
        if n.op in PASSTHROUGH_OPS and n.op != "concat":
            out[t] = out.get(n.inputs[0])
            continue
        bits = OUTPUT_BITS if t in wide else 4 if t in a4 else 8
        out[t] = activation_qparams(act_range(graph, t, bits) if bits != OUTPUT_BITS else graph.ranges[t], bits,
                                    True if bits == OUTPUT_BITS else None)
    return out


def fq(v: np.ndarray, q: QParams | None) -> np.ndarray:
    if q is None:
        return v
    return (np.clip(np.rint(v / q.scale), q.lo, q.hi) * q.scale).astype(np.float32)


def _run(graph: Graph, n: Node, xs: list[np.ndarray]) -> np.ndarray:
    if n.op == "reshape":
        return npops.reshape_batch(xs[0], graph.shapes[n.output])
    outs = [run_node(n, [x[i:i + CHUNK] for x in xs]).astype(np.float32, copy=False) for i in range(0, len(xs[0]), CHUNK)]
    return np.concatenate(outs)


def _columns(n: Node, x: np.ndarray) -> np.ndarray:
    """[P, G, K] im2col columns of a conv (per group) or dense layer's input."""
    if n.op == "dense":
        return x.reshape(len(x), 1, -1)
    a, (o, cg, kh, kw) = n.attrs, n.params["W"].shape
    g = a["group"]
    win = npops.windows(npops.pad_hw(x, a["pads"]), (kh, kw), a["strides"], a["dilations"])
    nb, c, ho, wo = win.shape[:4]
    return win.reshape(nb, g, cg, ho, wo, kh, kw).transpose(0, 3, 4, 1, 2, 5, 6).reshape(-1, g, cg * kh * kw)


def _column_sums(n: Node, x: np.ndarray) -> np.ndarray:
    """Σ over samples and positions of the im2col columns, [G, K], without forming them."""
    if n.op == "dense":
        return x.reshape(len(x), -1).sum(0, dtype=np.float64)[None]
    a, (o, cg, kh, kw) = n.attrs, n.params["W"].shape
    xp = npops.pad_hw(x, a["pads"])
    (sh, sw), (dh, dw) = a["strides"], a["dilations"]
    ho, wo = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1, (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    out = np.empty((xp.shape[1], kh, kw))
    for i in range(kh):
        for j in range(kw):
            sl = xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            out[:, i, j] = sl.sum(axis=(0, 2, 3), dtype=np.float64)
    return out.reshape(a["group"], cg * kh * kw)


def _positions(n: Node, x: np.ndarray) -> int:
    return len(x) if n.op == "dense" else len(x) * int(np.prod(_columns(n, x[:1]).shape[0]))


def _stats(n: Node, xq: np.ndarray, xf: np.ndarray, grams: bool) -> dict:
    if not grams:  # bias correction only needs the column means
        return {"P": _positions(n, xq), "sq": _column_sums(n, xq), "sf": _column_sums(n, xf)}
    st: dict = {"P": 0}
    for i in range(0, len(xq), CHUNK):
        cq, cf = _columns(n, xq[i:i + CHUNK]), _columns(n, xf[i:i + CHUNK])
        tq, tf = cq.transpose(1, 2, 0), cf.transpose(1, 2, 0)  # [G, K, P]
        parts = {"sq": cq.sum(0, dtype=np.float64), "sf": cf.sum(0, dtype=np.float64),
                 "aqq": np.matmul(tq, tq.transpose(0, 2, 1)), "aqf": np.matmul(tq, tf.transpose(0, 2, 1)),
                 "aff": np.matmul(tf, tf.transpose(0, 2, 1))}
        for k, v in parts.items():
            st[k] = st[k] + v.astype(np.float64) if k in st else v.astype(np.float64)
        st["P"] += len(cq)
    return st


def simulate(graph: Graph, x: np.ndarray, weight_clip: WeightClip = WeightClip.W4,
             bias_correction: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Output -> (float value, its float simulation of the integer graph) on x: the walk below with
    nearest rounding at `graph.bits`, every tensor fake-quantized as `quantize_graph` will quantize it
    (`--wide-activations auto --wide-cosine` measures its choice with it)."""
    scales = {n.name: wq.weight_scales(n.params["W"], graph.bits[n.name][0], _clips(weight_clip, graph.bits[n.name][0]))
              for n in graph.weighted_nodes()}
    # a static-batch graph runs one batch at a time, and then without bias correction, as `round_weights` builds it
    bias_correction = bias_correction and not graph.meta.get("static_batch")
    parts: list[dict] = []
    for xb in static_chunks(graph, np.asarray(x, np.float32)):
        parts.append({})
        _walk(graph, xb, scales, Rounding.NEAREST, bias_correction, 0, {}, True, parts[-1])
    return {o: tuple(np.concatenate([p[o][i] for p in parts]) for i in (0, 1)) for o in parts[0]}


def _walk(graph, x, scales, rounding, bias_correction, iters, info, quiet, outputs: dict | None = None) -> dict:
    qp = sim_qparams(graph)
    uses: dict[str, int] = {}
    for n in graph.nodes:
        for i in n.inputs:
            uses[i] = uses.get(i, 0) + 1
    xin = graph.inputs[0]
    ef, eq = {xin: x}, {xin: fq(x, qp[xin])}
    chosen = {}
    layers = graph.weighted_nodes()
    with Progress(f"round weights ({rounding.value})", len(layers), quiet=quiet) as bar:
        for n in graph.nodes:
            xf_in, xq_in = [ef[i] for i in n.inputs], [eq[i] for i in n.inputs]
            if n.op in ("conv", "dense"):
                wb, ab = graph.bits[n.name]
                if ab == 4 and getattr(qp.get(n.inputs[0]), "bits", 8) != 4:  # the A4 copy quantize_graph makes
                    r = act_range(graph, n.inputs[0], 4)
                    from dyadic.passes.quantize_graph import activation_qparams

                    xq_in = [fq(xq_in[0], activation_qparams(r, 4, r[0] < 0))]
                q, b = _choose(n, xq_in[0], xf_in[0], scales[n.name], wb, rounding, bias_correction, iters,
                               info.setdefault(n.name, {}))
                chosen[n.name] = (q, b)
                qn = n.replace(params={"W": q.astype(np.float32) * scales[n.name].reshape((-1,) + (1,) * (q.ndim - 1))
                                            .astype(np.float32), "B": b})
                yq = _run(graph, qn, xq_in)
                bar.advance()
            else:
                yq = _run(graph, n, xq_in)
            ef[n.output] = _run(graph, n, xf_in)
            eq[n.output] = fq(yq, qp.get(n.output)) if n.op not in PASSTHROUGH_OPS or n.op == "concat" else yq
            if outputs is not None and n.output in graph.outputs:
                outputs[n.output] = (ef[n.output], eq[n.output])
            for i in n.inputs:
                uses[i] -= 1
                if uses[i] == 0:
                    ef.pop(i, None), eq.pop(i, None)
    return chosen


def _choose(n: Node, xq, xf, scale, bits, rounding, bias_correction, iters, rec: dict):
    w = n.params["W"].astype(np.float64)
    st = _stats(n, xq, xf, grams=rounding is not Rounding.NEAREST)
    P = st["P"]
    mq, mf = st["sq"] / P, st["sf"] / P  # [G, K]
    g = mq.shape[0]
    wg = w.reshape(g, w.shape[0] // g, -1)
    sg = scale.reshape(g, -1)
    if rounding is not Rounding.NEAREST:
        center = bias_correction
        A = st["aqq"] / P - (np.einsum("gk,gl->gkl", mq, mq) if center else 0)
        B = st["aqf"] / P - (np.einsum("gk,gl->gkl", mq, mf) if center else 0)
        C = st["aff"] / P - (np.einsum("gk,gl->gkl", mf, mf) if center else 0)
        qg, r = (wq.adaround(wg, sg, bits, A, B, C, iters=iters) if rounding is Rounding.ADAROUND
                 else wq.gptq(wg, sg, bits, A, B, C))
        rec.update(r)
    else:
        qg = wq.round_nearest(wg.reshape(-1, wg.shape[-1]), sg.reshape(-1), bits).reshape(wg.shape)
    b = n.params["B"].astype(np.float64)
    if bias_correction:
        shift = (np.einsum("gok,gk->go", wg, mf) - np.einsum("gok,gk->go", qg * sg[..., None], mq)).ravel()
        rec["bias_shift_max"] = float(np.abs(shift).max())
        b = b + shift
    return qg.reshape(n.params["W"].shape), b.astype(np.float32)
