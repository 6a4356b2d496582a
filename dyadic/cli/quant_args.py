"""The quantizer flags shared by `dyadic compile` and `dyadic sweep` (calibration, clipping, rounding)."""
from __future__ import annotations

import argparse

from dyadic.core.calibrators import Calibration
from dyadic.core.config import CosineOver, WideActivations, WideWeights
from dyadic.core.weight_quant import Rounding, WeightClip


def add_quant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", choices=[c.value for c in Calibration], default=None,
                   help="activation range calibrator, per tensor and bit-width: minmax, percentile, mse "
                        "(default), entropy (KL)")
    p.add_argument("--percentile", type=float, default=99.99, help="P for --calibration percentile (default 99.99)")
    p.add_argument("--weight-clip", choices=[c.value for c in WeightClip], default=None,
                   help="MSE-optimal per-channel weight clipping at: 4 (4-bit weights, default), all, none")
    p.add_argument("--rounding", choices=[r.value for r in Rounding], default=None,
                   help="weight rounding: nearest (default), adaround (layer-wise reconstruction on the "
                        "calibration data; integer weights within one step of nearest) or gptq (column-wise "
                        "rounding with error feedback on the same data; one pass, no optimizer)")
    p.add_argument("--adaround-iters", type=int, default=None, help="AdaRound optimizer steps per layer (default 1000)")
    p.add_argument("--wide-activations", choices=[w.value for w in WideActivations], default=None,
                   help="store these activations as 16-bit codes: none (default), tables (lookup-table "
                        "outputs: hard-swish, sigmoid, GELU, ...), all (also the input, convs, adds, Muls, "
                        "concats, pools), auto (those of all whose 8-bit rounding the logits feel most per unit of work, "
                        "until --wide-share or --wide-cosine is met); more accurate, a little slower on x86, slower on arm/cuda (16-bit "
                        "conv inputs take generic code there)")
    p.add_argument("--wide-share", type=float, default=None,
                   help="with --wide-activations auto: widen until the predicted logit error is within this "
                        "share of widening every candidate's (default 0.1; 0 widens every candidate that matters)")
    p.add_argument("--wide-cosine", type=float, default=None,
                   help="with --wide-activations auto, instead of --wide-share: widen, most error removed per "
                        "unit of work first, until the mean logit cosine against fp32 of the build's float "
                        "simulation on calibration inputs reaches C; a network already there at 8 bits stays 8-bit")
    p.add_argument("--wide-cosine-over", choices=[c.value for c in CosineOver], default=None,
                   help="what one cosine of --wide-cosine compares: sample (a sample's whole output, default) or "
                        "step (each row of the output's last axis: per-step class scores of a CTC recognizer "
                        "or a token model, where the sure steps would otherwise hide the unsure ones)")
    p.add_argument("--wide-weights", choices=[w.value for w in WideWeights], default=None,
                   help="auto: layers that read 16-bit codes (see --wide-activations) get 9-12-bit weights, as "
                        "wide as the int32 accumulator allows while the input keeps 2 more bits; the same "
                        "int16 kernel step on x86, no slower there (default none: 8-bit weights)")
    p.add_argument("--no-bias-correction", action="store_true",
                   help="do not add each layer's expected output shift (on the calibration data) to its bias")


def quant_config(a) -> dict:
    """CompileConfig keyword arguments for the flags given (unset flags keep the config's defaults)."""
    out: dict = {"percentile": a.percentile}
    if a.calibration:
        out["calibration"] = Calibration(a.calibration)
    if a.weight_clip:
        out["weight_clip"] = WeightClip(a.weight_clip)
    if a.rounding:
        out["rounding"] = Rounding(a.rounding)
    if a.adaround_iters:
        out["adaround_iters"] = a.adaround_iters
    if a.wide_activations:
        out["wide_activations"] = WideActivations(a.wide_activations)
    if a.wide_weights:
        out["wide_weights"] = WideWeights(a.wide_weights)
    if a.wide_share is not None:
        if not 0.0 <= a.wide_share < 1.0:
            raise SystemExit(f"dyadic: --wide-share {a.wide_share}: must be in [0, 1)")
        out["wide_share"] = a.wide_share
    if a.wide_cosine is not None:
        if a.wide_share is not None:
            raise SystemExit("dyadic: --wide-share and --wide-cosine are two criteria for the same choice: give one")
        if not 0.0 < a.wide_cosine < 1.0:
            raise SystemExit(f"dyadic: --wide-cosine {a.wide_cosine}: must be in (0, 1)")
        out["wide_cosine"] = a.wide_cosine
    if a.wide_cosine_over is not None:
        if a.wide_cosine is None:
            raise SystemExit("dyadic: --wide-cosine-over says what --wide-cosine compares; give --wide-cosine too")
        out["wide_cosine_over"] = CosineOver(a.wide_cosine_over)
    given = [f for f, v in (("--wide-share", a.wide_share), ("--wide-cosine", a.wide_cosine)) if v is not None]
    if given and a.wide_activations != WideActivations.AUTO.value:
        raise SystemExit(f"dyadic: {given[0]} sets how far --wide-activations auto widens; "
                         f"it needs --wide-activations auto (got {a.wide_activations or 'none'})")
    if a.no_bias_correction:
        out["bias_correction"] = False
    return out
