"""Per-layer Hessian sensitivity Ω for each bit-width candidate (HAWQ-V3's objective, computed).

For layer i with weights W_i (n_i elements) and input activation a_i (m_i elements per sample):

    T^W_i = Tr(H_{W_i}) / n_i,   T^A_i = Tr(H_{a_i}) / (N m_i)     (Hutchinson, `dyadic.mixed.hessian`)
    Ω_i(b_w, b_a) = T^W_i ‖Q_{b_w}(W_i) − W_i‖² + T^A_i Σ_batch ‖Q_{b_a}(a_i) − a_i‖²

where Q_b is the quantizer `quantize_graph` will use: per-channel symmetric weights with the
scales of `weight_clip` (MSE-clipped at 4 bits by default, `dyadic.weight_quant`), and the per-tensor
activation range the calibrator chose for that width (`dyadic.calibrators.act_range`). AdaRound and
bias correction are not in Ω (they depend on the bits of the earlier layers, which the ILP is
choosing); they only lower the output error of the rounding Ω charges and the loss is the mean cross-entropy on the calibration
batch. With or without labels (KL divergence to the fp32 model's own softmax) the Hessian in the
logits is diag(p) − pp^T, so labels are not needed (see `dyadic.mixed.hessian`). Both
terms approximate twice the loss increase of the second-order Taylor expansion under an isotropic
block Hessian, so they add. The result goes to `Graph.meta["sensitivity"]`.
"""
from __future__ import annotations

import numpy as np

from dyadic.core.arith import quantize_weight
from dyadic.core.float_exec import execute
from dyadic.core.graph import Graph
from dyadic.mixed.hessian import estimate_traces
from dyadic.core.calibrators import act_range
from dyadic.core.weight_quant import WeightClip, fake_quant, weight_scales

CANDIDATE_NAMES = {(8, 8): "W8A8", (4, 8): "W4A8", (4, 4): "W4A4"}


def weight_rounding_error(w: np.ndarray, bits: int, clip: WeightClip = WeightClip.NONE) -> np.ndarray:
    """Q_b(W) − W, elementwise (float64)."""
    s = weight_scales(w, bits, clip is WeightClip.ALL or (clip is WeightClip.W4 and bits == 4))
    return fake_quant(w.astype(np.float64), s, bits) - w.astype(np.float64)


def activation_rounding_error(a: np.ndarray, rng: tuple[float, float], bits: int) -> np.ndarray:
    """Q_b(a) − a at the calibrated range `rng`, elementwise."""
    from dyadic.passes.quantize_graph import activation_qparams

    q = activation_qparams(rng, bits)
    return np.clip(np.rint(a / q.scale), q.lo, q.hi) * q.scale - a


def weight_error(w: np.ndarray, bits: int, clip: WeightClip = WeightClip.NONE) -> float:
    return float((weight_rounding_error(w, bits, clip) ** 2).sum())


def activation_error(a: np.ndarray, rng: tuple[float, float], bits: int) -> float:
    return float((activation_rounding_error(a, rng, bits) ** 2).sum())


def estimate_sensitivity(graph: Graph, data: dict[str, np.ndarray], samples: int = 32, rel_se: float = 0.1, max_probes: int = 100,
                         quiet: bool = False, weight_clip: WeightClip = WeightClip.NONE) -> Graph:
    x = data[graph.inputs[0]][:samples].astype(np.float64)
    layers = graph.weighted_nodes()
    acts: dict[str, np.ndarray] = {}
    wanted = {n.inputs[0] for n in layers}
    execute(graph, {graph.inputs[0]: x},
                     lambda t, v: acts.__setitem__(t, v.astype(np.float64)) if t in wanted else None)
    blocks: dict = {}
    for n in layers:
        blocks[n.name] = n.params["W"]
        blocks[("act", n.inputs[0])] = np.zeros_like(acts[n.inputs[0]])
    traces = estimate_traces(graph, x, blocks, rel_se=rel_se, max_probes=max_probes, quiet=quiet)
    sens = {}
    for n in layers:
        tw, ta = traces[n.name], traces[("act", n.inputs[0])]
        a, t = acts[n.inputs[0]], n.inputs[0]
        dw = {b: weight_error(n.params["W"], b, weight_clip) for b in (8, 4)}
        da = {b: activation_error(a, act_range(graph, t, b), b) for b in (8, 4)}
        sens[n.name] = {
            "trace_w": tw.mean, "trace_w_se": tw.se, "trace_a": ta.mean, "trace_a_se": ta.se,
            "probes": tw.probes, "weight_sq_err": {str(b): v for b, v in dw.items()},
            "act_sq_err": {str(b): v for b, v in da.items()},
            "omega": {name: tw.mean * dw[bw] + ta.mean * da[ba] for (bw, ba), name in CANDIDATE_NAMES.items()},
        }
    info = {"method": "Hutchinson (Rademacher probes in logit space on the exact Gauss-Newton form)",
            "loss": "cross-entropy / KL to fp32 outputs (same Hessian in the logits)",
            "samples": len(x), "probes": max(s["probes"] for s in sens.values()), "rel_se_target": rel_se,
            "max_rel_se_w": max(s["trace_w_se"] / abs(s["trace_w"]) if s["trace_w"] else float("inf")
                                for s in sens.values())}
    return graph.replace(meta={**graph.meta, "sensitivity": sens, "sensitivity_info": info})
