"""Typed compile configuration."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from dyadic.core.calibrators import Calibration
from dyadic.core.weight_quant import Rounding, WeightClip


#: the per-layer (weight bits, activation bits) choices: W8A8, W4A8, W4A4 (`passes.assign_bitwidths`,
#: the ILP of `dyadic.mixed.ilp`)
CANDIDATES: tuple[tuple[int, int], ...] = ((8, 8), (4, 8), (4, 4))


class WideActivations(Enum):
    """Which activations `passes/widen_activations` stores as 16-bit codes (`--wide-activations`)."""
    NONE = "none"
    TABLES = "tables"   #: lookup-table outputs (hard-swish, hard-sigmoid, SiLU, GELU, ...)
    ALL = "all"         #: also the input, convs, dense layers, adds, Muls, affines, concats, average pools
    AUTO = "auto"       #: those of ALL where the predicted logit error is (passes/choose_wide_activations)


class WideWeights(Enum):
    """Whether layers that read 16-bit codes get weights wider than 8 bits (`--wide-weights`,
    `passes/widen_weights`)."""
    NONE = "none"       #: 8-bit weights everywhere
    AUTO = "auto"       #: up to 12 bits where the int32 accumulator bound leaves the input its margin


class CosineOver(Enum):
    """What one cosine of `--wide-cosine` compares (`--wide-cosine-over`): the mean is taken over these."""
    SAMPLE = "sample"   #: a sample's whole output, flattened (a classifier's logits)
    STEP = "step"       #: each row of the output's last axis (a sequence model's per-step class scores: CTC)


class BitMode(Enum):
    INT8 = "8"          #: every layer W8A8
    INT4 = "4"          #: every free layer W4A4 (first/last pinned to 8 bits)
    W4A8 = "w4a8"       #: every free layer W4A8
    MIXED = "mixed"     #: per-layer choice by the Hessian-weighted ILP under the budgets


_UNITS = {"ms": 1e-3, "s": 1.0, "us": 1e-6, "b": 1, "kb": 1e3, "mb": 1e6, "kib": 1024, "mib": 2 ** 20,
          "bops": 1, "kbops": 1e3, "mbops": 1e6, "gbops": 1e9}


@dataclass(frozen=True)
class Budget:
    """A cap on a total cost: absolute (seconds, bytes, BOPs) or relative to the all-W8A8 model."""

    value: float
    relative: bool

    @staticmethod
    def parse(text: str, kind: str) -> "Budget":
        t = text.strip().lower()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z]*)", t)
        allowed = {"latency": ("ms", "s", "us"), "memory": ("b", "kb", "mb", "kib", "mib"),
                   "bops": ("bops", "kbops", "mbops", "gbops")}[kind]
        if not m or (m.group(2) not in allowed + ("x",)):
            from dyadic.core.errors import DyadicError
            raise DyadicError(f"--{kind}-budget {text!r}: give a number with a unit ({', '.join(allowed)}) "
                              f"or a ratio to all-int8 like 0.6x")
        v, unit = float(m.group(1)), m.group(2)
        return Budget(v, True) if unit == "x" else Budget(v * _UNITS[unit], False)

    def resolve(self, int8_total: float) -> float:
        return self.value * int8_total if self.relative else self.value


@dataclass(frozen=True)
class Budgets:
    latency: Budget | None = None
    memory: Budget | None = None
    bops: Budget | None = None

    def items(self) -> list[tuple[str, Budget]]:
        return [(k, b) for k, b in (("latency", self.latency), ("memory", self.memory), ("bops", self.bops)) if b]


def parse_input_shapes(specs: list[str] | None) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """`NAME:D0,D1,...` strings (the CLI's repeatable --input-shape) -> ((name, dims), ...)."""
    from dyadic.core.errors import DyadicError

    out: dict[str, tuple[int, ...]] = {}
    for s in specs or []:
        name, sep, dims = s.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise DyadicError(f"--input-shape {s!r}: give NAME:D0,D1,... with positive integer dims, "
                              f"e.g. x:1,3,224,224")
        if name in out:
            raise DyadicError(f"--input-shape names input {name!r} twice")
        out[name] = shape
    return tuple(out.items())


@dataclass(frozen=True)
class CompileConfig:
    target: str = "host"          #: a preset name from `dyadic.targets.PRESETS`
    rpc: str | None = None        #: HOST:PORT of a TVM RPC server on the target: mixed precision times layers there
    bits: BitMode = BitMode.INT8
    budgets: Budgets = field(default_factory=Budgets)
    pin_first_last: bool = True   #: keep the first and last weighted layers at W8A8
    #: explicit per-layer choices ((layer name, weight bits, activation bits), ...) applied last
    layer_bits: tuple[tuple[str, int, int], ...] = ()
    calib_batch: int = 32         #: images per calibration batch (memory vs. speed)
    hessian_samples: int = 32     #: calibration images used for the Hessian trace estimates
    calibration: Calibration = Calibration.MSE   #: activation range calibrator (dyadic.calibrators)
    wide_activations: WideActivations = WideActivations.NONE  #: 16-bit activations (passes/widen_activations)
    wide_weights: WideWeights = WideWeights.NONE  #: >8-bit weights on 16-bit inputs (passes/widen_weights)
    wide_share: float = 0.1       #: AUTO: widen until the predicted error is within this share of the all-16-bit one
    wide_cosine: float | None = None  #: AUTO: instead, widen until the simulated logit cosine reaches this
    wide_cosine_over: CosineOver = CosineOver.SAMPLE  #: that cosine per sample or per output step
    percentile: float = 99.99     #: for calibration=percentile
    weight_clip: WeightClip = WeightClip.W4      #: MSE clipping search of weight scales at these widths
    rounding: Rounding = Rounding.NEAREST        #: weight rounding (adaround: data-aware, passes/round_weights.py)
    bias_correction: bool = True  #: add each layer's expected output shift (calibration data) to its bias
    adaround_iters: int = 1000    #: optimizer steps per layer for rounding=adaround
    check_samples: int = 4        #: inputs used for the post-build bit-exactness self-check
    quiet: bool = False
    #: pinned input dims ((input name, (d0, d1, ...)), ...), the CLI's --input-shape
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
