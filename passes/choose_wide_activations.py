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

The choice: the candidates (`widen_activations.wide_candidates(ALL)`) sorted by g_t / c_t, where c_t
is the work of t's readers that moves to the 16-bit rate (their MACs; elementwise readers count their
elements) and g_t the error power that widening t removes: its own term T_t‖e_t‖², plus, with
`--wide-weights auto`, the part of its readers' weight terms that their wider weights remove. A
layer that takes wide weights (dense, plain or depthwise conv: `widen_weights.takes_wide_weights`) reading t, directly or through single-input moves, gets w = 9..12-bit
weights (`ops.matmul.wide_weight_bits`, as `widen_weights` will choose them), which keep a 4^-(w-8) share
of its 8-bit weight term (depthwise convs too; without it, a tensor whose own rounding is harmless but whose reader's
8-bit weights are not, such as the input of a stem conv, looks useless to widen). They are widened in that order until one of:

* `share` (default 0.1, `--wide-share`): P - P_all <= share P, with P the predicted error power of the
  choice and P_all that of widening every candidate (the remaining excess within 10 log10(1/(1-share))
  dB of the best; 0.46 dB at 0.1). Without `--wide-weights` P_all is the 8-bit weights' term alone;
  with it, it is much lower, so the same share widens more;
* `cosine` (`--wide-cosine C`): the mean cosine against fp32 of the float simulation of the build
  (`simulated_cosine`) reaches C; the prefix is found by bisection over the ranked list. A network
  already at C with 8 bits widens nothing, which no share does: this is the criterion for "fast unless
  it needs 16 bits". `cosine_over` (`--wide-cosine-over`) says what one cosine compares: a sample's
  whole output (default), or each row of its last axis (`step`). A CTC recognizer's output is T steps
  of class probabilities, most of them sure (a blank at ~1.0): over the flattened output those steps
  dominate, so a sample-level 0.995 left the PP-OCRv4 recognizer at a per-step cosine of 0.992 and a
  12 % character error rate, while the unsure steps, where characters are decided, carry the error.

A chosen tensor read only by concats that stay 8-bit is then dropped (the concat
would round it back to 8 bits at once: ShuffleNet's branch outputs), and the predictions count it
as 8-bit. On AVX512-VNNI a
16-bit conv runs at about half its 8-bit rate, so the work widened is what the choice saves
against `ALL`. The result goes to `Graph.meta["wide"]`; the predictions to `meta["wide_choice"]`
(the compile's plan.json).

Several outputs (a detector's score and box heads): the logits z are all of them, flattened and
concatenated, for the traces and S, and the simulated cosine is that of the output furthest off, so
`--wide-cosine C` holds for every head.

Limits: the estimate is first order (chaotic random-init networks amplify errors, but stay linear at
these sizes) and treats errors as independent; graphs with one float input only (the probes run the
float graph on it); a static-batch graph runs its simulation and its probes one batch at a time, and
its simulation without bias correction, as `round_weights` builds it; the probes of a large graph run
on as many samples at a time as fit `TRACE_BYTES` (the PicoDet layout detector at 800x608: one); the weights' term ignores AdaRound/GPTQ and bias correction, which only lower it.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from dyadic.core.calibrators import act_range
from dyadic.core.config import CosineOver, WideActivations, WideWeights
from dyadic.core.errors import ModelError
from dyadic.core.fidelity import mean_cosine
from dyadic.core.float_exec import execute, static_chunks
from dyadic.core.graph import Graph
from dyadic.core.weight_quant import WeightClip
from dyadic.mixed.hessian import estimate_traces
from dyadic.ops.matmul import wide_weight_bits
from dyadic.passes.estimate_sensitivity import activation_rounding_error, weight_rounding_error
from dyadic.passes.widen_activations import wide_candidates, with_wide
from dyadic.passes.widen_residual import moves, read_only_by
from dyadic.passes.widen_weights import takes_wide_weights


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


def _tied_layers(graph: Graph, cands: list[str], layers) -> dict[str, list]:
    """For each candidate, the layers that take wide weights (dense, plain or depthwise conv) whose input it is, directly or
    through single-input moves: the layers `--wide-weights auto` widens once that candidate is 16-bit."""
    prod = graph.producers()
    cset, out = set(cands), {t: [] for t in cands}
    for n in layers:
        if not takes_wide_weights(n):
            continue
        t = n.inputs[0]
        while t not in cset and t in prod and moves(prod[t].op) and len(prod[t].inputs) == 1:
            t = prod[t].inputs[0]
        if t in cset:
            out[t].append(n)
    return out


def _weight_factors(graph: Graph, cands: list[str], tied: dict[str, list]) -> dict[str, float]:
    """Layer -> the factor its weights' error power keeps once its input is 16-bit: 4^-(w - 8) at the
    width w `widen_weights` will give it (`ops.matmul.wide_weight_bits`, the int32 bound included)."""
    from dyadic.passes.round_weights import sim_qparams

    g = with_wide(graph, set(cands))
    g = g.replace(bits={n.name: (8, 8) for n in g.weighted_nodes()} | dict(g.bits))  # before assign_bitwidths
    ctx = SimpleNamespace(graph=g, qp=sim_qparams(g))
    return {n.name: 4.0 ** -(wide_weight_bits(ctx, n.inputs[0], n.params["W"], n.params["B"]) - 8)
            for ls in tied.values() for n in ls}


@dataclass(frozen=True)
class Prediction:
    """What the choice is made from: per candidate tensor the error power widening it removes (`gain`:
    its own term, `own`, plus its readers' weight terms that wider weights remove) and the work it moves
    to 16 bits; the all-8-bit error power `p8`; the mean logit power `signal`."""
    gain: dict[str, float]
    own: dict[str, float]
    work: dict[str, float]
    p8: float
    signal: float
    samples: int
    probes: int

    def cosine(self, p: float) -> float:
        return 1.0 - p / (2 * self.signal) if self.signal > 0 else float("nan")

    @property
    def floor(self) -> float:
        return self.p8 - sum(self.gain.values())


def _calib_batch(graph: Graph, samples: int) -> np.ndarray:
    """The first `samples` calibration inputs, whole batches of a static-batch graph (at least one)."""
    data = graph.meta["calib_data"][graph.inputs[0]]
    b = graph.static_batch_size() or 1
    return np.asarray(data[:max(samples // b, 1) * b], np.float32)


TRACE_BYTES = 3 << 30  # the traces' working set: 8 samples of an 800x608 detector at once were killed at 24 GiB
BYTES_PER_ELEMENT = 32  # float32 tensors kept by the tape (values, pre-activations), gradients, the e² blocks


def _trace_chunks(graph: Graph, x: np.ndarray) -> list[np.ndarray]:
    """x in chunks the traces can hold: a static-batch graph's batches; else as many samples at a time
    as keep BYTES_PER_ELEMENT x (every tensor's elements per sample) within TRACE_BYTES (at least one)."""
    if graph.static_batch_size() is not None:
        return static_chunks(graph, x)
    per = sum(float(np.prod([abs(int(d)) for d in sh[1:] if d is not None])) for sh in graph.shapes.values() if sh)
    k = max(1, int(TRACE_BYTES // max(BYTES_PER_ELEMENT * per, 1.0)))
    return [x[i:i + k] for i in range(0, len(x), k)]


def predict(graph: Graph, samples: int = 8, weight_clip: WeightClip = WeightClip.NONE,
            wide_weights: WideWeights = WideWeights.NONE, quiet: bool = True) -> Prediction:
    cands = sorted(wide_candidates(graph, WideActivations.ALL))
    x = _calib_batch(graph, samples)
    layers = [n for n in graph.weighted_nodes() if "W" in n.params]
    werr2 = {n.name: weight_rounding_error(n.params["W"], 8, weight_clip) ** 2 for n in layers}
    want, zs, parts = set(cands), [], []
    for xb in _trace_chunks(graph, x):  # one run, and one trace estimate, per chunk
        acts: dict[str, np.ndarray] = {}
        env = execute(graph, {graph.inputs[0]: xb}, lambda t, v: acts.__setitem__(t, v) if t in want else None)
        zs.append(np.concatenate([env[o].reshape(len(xb), -1) for o in graph.outputs], axis=1))  # every head
        blocks: dict = {("act", t): np.zeros_like(acts[t]) for t in cands}
        blocks.update({n.name: n.params["W"] for n in layers})
        err2 = {("act", t): activation_rounding_error(acts[t].astype(np.float64), act_range(graph, t, 8), 8) ** 2
                for t in cands} | werr2
        parts.append((len(xb), estimate_traces(graph, xb, blocks, rel_se=0.2, min_probes=16, max_probes=32,
                                               quiet=quiet, logits=True, err2=err2)))
    z = np.concatenate(zs)
    traces = {k: SimpleNamespace(mean=sum(n * tr[k].mean for n, tr in parts) / len(x),
                                 probes=max(tr[k].probes for _, tr in parts)) for k in parts[0][1]}
    p_act = {t: traces[("act", t)].mean for t in cands}
    p_w = {l.name: traces[l.name].mean for l in layers}
    tied = _tied_layers(graph, cands, layers) if wide_weights is WideWeights.AUTO else {}
    keep = _weight_factors(graph, cands, tied) if tied else {}
    gain = {t: p_act[t] + sum(p_w[l.name] * (1.0 - keep[l.name]) for l in tied.get(t, ())) for t in cands}
    users = graph.consumers()
    return Prediction(gain=gain, own=p_act, work={t: max(_reader_work(graph, users, t), 1.0) for t in cands},
                      p8=sum(p_act.values()) + sum(p_w.values()),
                      signal=float((z.reshape(len(x), -1).astype(np.float64) ** 2).sum(1).mean()),
                      samples=len(x), probes=max((tr.probes for tr in traces.values()), default=0))


def ranked(pred: Prediction) -> list[str]:
    """The candidates, most error removed per unit of work first."""
    return sorted(pred.gain, key=lambda t: pred.gain[t] / pred.work[t], reverse=True)


def select(graph: Graph, pred: Prediction, share: float = 0.1) -> list[str]:
    """The shortest prefix of `ranked` whose predicted error is within `share` of the all-16-bit one."""
    left, chosen = pred.p8, []
    for t in ranked(pred):
        if left - pred.floor <= share * left:
            break
        chosen.append(t)
        left -= pred.gain[t]
    return _useful(graph.consumers(), chosen)


def simulated_cosine(graph: Graph, wide: list[str], x: np.ndarray, wide_weights: WideWeights,
                     weight_clip: WeightClip, bias_correction: bool, over: CosineOver = CosineOver.SAMPLE) -> float:
    """Mean logit cosine (`mean_cosine`) against fp32 on x of the float simulation of the build that
    widens `wide`: 8-bit layers, wider weights where `widen_weights` will give them
    (`round_weights.simulate`); with several outputs, that of the output furthest off."""
    from dyadic.passes.round_weights import simulate
    from dyadic.passes.widen_weights import widen_weights

    g = with_wide(graph, set(wide))
    g = widen_weights(g.replace(bits={n.name: (8, 8) for n in g.weighted_nodes()}), wide_weights)
    sim = simulate(g, x, weight_clip, bias_correction)
    return min(mean_cosine(*sim[o], over) for o in g.outputs)  # every output, a detector's heads too


def select_for_cosine(graph: Graph, pred: Prediction, cosine: float, x: np.ndarray, wide_weights: WideWeights,
                      weight_clip: WeightClip, bias_correction: bool, seen: dict[int, float] | None = None,
                      over: CosineOver = CosineOver.SAMPLE) -> tuple[list[str], float, dict[int, float]]:
    """The shortest prefix of `ranked` whose simulated cosine reaches `cosine` (bisection: the cosine
    grows with the prefix, to first order), or all of it when none does; its cosine; and every prefix
    length measured with its cosine."""
    users, order = graph.consumers(), ranked(pred)
    seen = dict(seen or {})

    def cos(k: int) -> float:
        if k not in seen:
            seen[k] = simulated_cosine(graph, _useful(users, order[:k]), x, wide_weights, weight_clip,
                                       bias_correction, over)
        return seen[k]

    lo, hi = 0, len(order)
    if cos(lo) >= cosine or cos(hi) < cosine:
        k = lo if cos(lo) >= cosine else hi
        return _useful(users, order[:k]), cos(k), seen
    while hi - lo > 1:  # cos(lo) < cosine <= cos(hi)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if cos(mid) >= cosine else (mid, hi)
    return _useful(users, order[:hi]), cos(hi), seen


def _criterion(cosine: float, over: CosineOver) -> dict:
    return {"cosine": cosine} | ({"over": over.value} if over is not CosineOver.SAMPLE else {})


def _label(over: CosineOver) -> str:
    return "per-step " if over is CosineOver.STEP else ""


def choose_wide_activations(graph: Graph, kind: WideActivations = WideActivations.NONE, samples: int = 8,
                            share: float = 0.1, weight_clip: WeightClip = WeightClip.NONE,
                            wide_weights: WideWeights = WideWeights.NONE, cosine: float | None = None,
                            bias_correction: bool = True, cosine_over: CosineOver = CosineOver.SAMPLE,
                            quiet: bool = False) -> Graph:
    if kind is not WideActivations.AUTO:
        return graph
    floats = [t for t in graph.inputs if t not in graph.meta.get("int_inputs", ())]
    if len(graph.inputs) != 1 or len(floats) != 1:
        raise ModelError("--wide-activations auto: the graph has inputs "
                         f"{list(graph.inputs)}; the choice runs on graphs with one float input "
                         "(use --wide-activations all or tables)")
    sims: dict[int, float] = {}
    if cosine is not None:
        x = _calib_batch(graph, samples)
        sims[0] = simulated_cosine(graph, [], x, wide_weights, weight_clip, bias_correction, cosine_over)
        if sims[0] >= cosine:  # met with 8 bits: no traces needed
            if not quiet:
                print(f"  wide activations (auto): none; simulated {_label(cosine_over)}cosine {sims[0]:.4f} with 8 bits "
                      f"meets the target {cosine}")
            return graph.replace(meta={**graph.meta, "wide_choice": {
                "criterion": _criterion(cosine, cosine_over), "widened": 0, "work_widened": 0.0,
                "simulated_cosine": {"8bit": sims[0], "chosen": sims[0], "evaluated": 1}}})
    pred = predict(graph, samples, weight_clip, wide_weights, quiet)
    if cosine is None:
        chosen = select(graph, pred, share)
    else:
        chosen, sim, sims = select_for_cosine(graph, pred, cosine, x, wide_weights, weight_clip, bias_correction,
                                              sims, cosine_over)
    left = pred.p8 - sum(pred.gain[t] for t in chosen)
    total_work = sum(pred.work.values())
    info = {"method": "Hutchinson traces in logit space x measured 8-bit rounding errors",
            "samples": pred.samples, "probes": pred.probes,
            "criterion": _criterion(cosine, cosine_over) if cosine is not None else {"share": share},
            "wide_weights": wide_weights.value, "candidates": len(pred.gain), "widened": len(chosen),
            "work_widened": round(sum(pred.work[t] for t in chosen) / total_work, 4) if total_work else 0.0,
            "predicted_cosine": {"8bit": pred.cosine(pred.p8), "chosen": pred.cosine(left),
                                 "all16": pred.cosine(pred.floor)}}
    if sims:
        info["simulated_cosine"] = {"8bit": sims[0], "all16": sims.get(len(pred.gain)), "chosen": sim,
                                    "evaluated": len(sims)}
    if not quiet:
        pc = info["predicted_cosine"]
        print(f"  wide activations (auto): {len(chosen)} of {len(pred.gain)} tensors, "
              f"{100 * info['work_widened']:.0f} % of their readers' work; predicted logit cosine "
              f"{pc['8bit']:.4f} (8-bit) -> {pc['chosen']:.4f} (all 16-bit: {pc['all16']:.4f})"
              + (f"; simulated {_label(cosine_over)}cosine {sim:.4f} for target {cosine} (8-bit {sims[0]:.4f})"
                 if sims else "")
              + (f"; the target is out of reach: every candidate widened gives {sim:.4f} (see --wide-weights "
                 "auto, or a lower --wide-cosine)" if sims and sim < cosine else ""))
    out = with_wide(graph, set(chosen))
    return out.replace(meta={**out.meta, "wide_choice": info})
