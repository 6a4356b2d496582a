"""Choose the activations to store as 16-bit codes from their predicted effect on the logits
(`--wide-activations auto`).

Rounding tensor t to its 8-bit codes adds an error e_t; rounding layer l's weights adds E_l. To first
order the logits z move by Σ_t J_t e_t + Σ_l J_l E_l, and over independent errors the expected logit
error power per sample is

    P = Σ_k Σ_i (JᵀJ)_{k,ii} e_{k,i}²     (k: a tensor t or a layer's weights W_l; i: its elements)

averaged over the calibration samples, where e_k is the actual rounding error: the calibration
batch rounded at t's calibrated 8-bit range, and the 8-bit per-channel weights. The diagonal of JᵀJ
comes from Hutchinson probes in logit space, weighted element by element by e² (one reverse pass
per probe gives every block at once: `dyadic.mixed.hessian.estimate_traces(logits=True, err2=...)`).
Weighting per element matters: a mean trace times ‖E_l‖² overstated the weights' term of
mobilenet_v2 about 2.7x (per-channel scales put the large errors where the logits feel little). A 16-bit code cuts
its term by 2^16, so a widened tensor's term is taken as 0. For small errors spread over K logits,
1 − cos(z, z + δ) ≈ ‖δ‖²(1 − 1/K) / (2‖z‖²), so the predicted cosine is 1 − P / (2S), S = mean ‖z‖².

The choice: the candidates (`widen_activations.wide_candidates(ALL)`) sorted by T_t‖e_t‖² / c_t,
where c_t is the work of t's readers that moves to the 16-bit rate (their MACs; elementwise readers
count their elements), are widened in that order until the activations' share of P is at most
`share` (default 0.1: the remaining logit error within 0.5 dB of the all-16-bit build's;
`--wide-share`). A chosen tensor read only by concats that stay 8-bit is then dropped (the concat
would round it back to 8 bits at once: ShuffleNet's branch outputs), and the predictions count it
as 8-bit. On AVX512-VNNI a
16-bit conv runs at about half its 8-bit rate, so the work widened is what the choice saves
against `ALL`. The result goes to `Graph.meta["wide"]`; the predictions to `meta["wide_choice"]`
(the compile's plan.json).

Limits: the estimate is first order (chaotic random-init networks amplify errors, but stay linear at
these sizes) and treats errors as independent; graphs with one float input only (the probes run the
float graph on it); the weights' term ignores AdaRound/GPTQ and bias correction, which only lower it.
"""
from __future__ import annotations

import numpy as np

from dyadic.core.calibrators import act_range
from dyadic.core.config import WideActivations
from dyadic.core.errors import ModelError
from dyadic.core.float_exec import execute
from dyadic.core.graph import Graph
from dyadic.core.weight_quant import WeightClip
from dyadic.mixed.hessian import estimate_traces
from dyadic.passes.estimate_sensitivity import activation_rounding_error, weight_rounding_error
from dyadic.passes.widen_activations import wide_candidates, with_wide
from dyadic.passes.widen_residual import moves, read_only_by


def _reader_work(graph: Graph, users, t: str, depth: int = 0) -> float:
    work = 0.0
    for u in users.get(t, []):
        if moves(u.op) and depth < 8:
            work += _reader_work(graph, users, u.output, depth + 1)
            continue
        out = [abs(int(d)) for d in graph.shapes.get(u.output, ())[1:] if d is not None]
        elems = float(np.prod(out)) if out else 1.0
        if u.op in ("conv", "dense", "linear") and "W" in u.params:
            w = u.params["W"]
            per_out = w.size / w.shape[0]  # Cin/g * kh * kw (conv) or Cin (dense)
            work += elems * per_out
        else:
            work += elems
    return work


def _useful(users, chosen: list[str]) -> list[str]:
    """`chosen` less the tensors whose every reader (through moves) is a concat whose output stays
    8-bit: it would round their 16-bit codes back to 8 bits straight away, so widening them removes
    no error."""
    wide = set(chosen)
    while True:  # dropping a concat's output can make its inputs useless too
        narrow_concat = lambda u: u.op == "concat" and u.output not in wide  # noqa: E731
        drop = {t for t in wide if read_only_by(users, t, narrow_concat)}
        if not drop:
            return [t for t in chosen if t in wide]
        wide -= drop


def choose_wide_activations(graph: Graph, kind: WideActivations = WideActivations.NONE, samples: int = 8,
                            share: float = 0.1, weight_clip: WeightClip = WeightClip.NONE,
                            quiet: bool = False) -> Graph:
    if kind is not WideActivations.AUTO:
        return graph
    floats = [t for t in graph.inputs if t not in graph.meta.get("int_inputs", ())]
    if len(graph.inputs) != 1 or len(floats) != 1:
        raise ModelError("--wide-activations auto: the graph has inputs "
                         f"{list(graph.inputs)}; the choice runs on graphs with one float input "
                         "(use --wide-activations all or tables)")
    cands = sorted(wide_candidates(graph, WideActivations.ALL))
    data = graph.meta["calib_data"]
    x = np.asarray(data[graph.inputs[0]][:samples], np.float32)
    acts: dict[str, np.ndarray] = {}
    want = set(cands)
    z = execute(graph, {graph.inputs[0]: x}, lambda t, v: acts.__setitem__(t, v) if t in want else None)[graph.outputs[0]]
    layers = [n for n in graph.weighted_nodes() if "W" in n.params]
    blocks: dict = {("act", t): np.zeros_like(acts[t]) for t in cands}
    blocks.update({n.name: n.params["W"] for n in layers})
    err2 = {("act", t): activation_rounding_error(acts[t].astype(np.float64), act_range(graph, t, 8), 8) ** 2
            for t in cands}
    err2.update({n.name: weight_rounding_error(n.params["W"], 8, weight_clip) ** 2 for n in layers})
    traces = estimate_traces(graph, x, blocks, rel_se=0.2, min_probes=16, max_probes=32,
                            quiet=quiet, logits=True, err2=err2)
    n = len(x)
    p_act = {t: traces[("act", t)].mean for t in cands}
    p_w = sum(traces[l.name].mean for l in layers)
    signal = float((z.reshape(n, -1).astype(np.float64) ** 2).sum(1).mean())
    users = graph.consumers()
    work = {t: max(_reader_work(graph, users, t), 1.0) for t in cands}
    order = sorted(cands, key=lambda t: p_act[t] / work[t], reverse=True)
    left, chosen = sum(p_act.values()), []
    for t in order:
        if left <= share * (left + p_w):
            break
        chosen.append(t)
        left -= p_act[t]
    chosen = _useful(users, chosen)
    left = sum(p_act.values()) - sum(p_act[t] for t in chosen)
    total_work = sum(work.values())
    cos = lambda p: 1.0 - p / (2 * signal) if signal > 0 else float("nan")  # noqa: E731
    info = {"method": "Hutchinson traces in logit space x measured 8-bit rounding errors", "samples": n,
            "probes": max((tr.probes for tr in traces.values()), default=0), "share": share,
            "candidates": len(cands), "widened": len(chosen),
            "work_widened": round(sum(work[t] for t in chosen) / total_work, 4) if total_work else 0.0,
            "predicted_cosine": {"8bit": cos(sum(p_act.values()) + p_w), "chosen": cos(left + p_w),
                                 "all16": cos(p_w)}}
    if not quiet:
        pc = info["predicted_cosine"]
        print(f"  wide activations (auto): {len(chosen)} of {len(cands)} tensors, "
              f"{100 * info['work_widened']:.0f} % of their readers' work; predicted logit cosine "
              f"{pc['8bit']:.4f} (8-bit) -> {pc['chosen']:.4f} (all 16-bit: {pc['all16']:.4f})")
    out = with_wide(graph, set(chosen))
    return out.replace(meta={**out.meta, "wide_choice": info})
