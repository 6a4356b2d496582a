"""Typed compile configuration."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CompileConfig:
    target: str = "host"          #: a preset name from `dyadic.targets.PRESETS`
    weight_bits: int = 8
    act_bits: int = 8
    calib_batch: int = 32         #: images per calibration batch (memory vs. speed)
    check_samples: int = 4        #: inputs used for the post-build bit-exactness self-check
    quiet: bool = False
