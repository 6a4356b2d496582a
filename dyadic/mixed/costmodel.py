"""Stated latency models, for targets whose layers cannot be timed from here.

`passes.measure_costs` times each layer's kernel where the target runs on this machine; elsewhere
(a GPU or a board that is not attached) it asks `for_target(spec)` for a model and records which
one in `model.json`. Two models:

* `Roofline` (CUDA architectures): per layer at batch 1,

      latency_s = max(2 macs / peak_ops(b_w, b_a),  moved_bytes / bandwidth) + launch_s
      moved_bytes = ceil(n_w b_w / 8) + 4 O + in_elems b_a / 8 + out_elems

  peak_ops(b_w, b_a) is the datasheet's dense int4 tensor-core rate when both operands are 4-bit and
  the architecture has int4 MMA (sm_75/80/86), else its dense int8 rate (4-bit weights are then
  unpacked to int8, as on Hopper). 4-bit activations count as packed (what an int4 MMA consumes);
  outputs as one byte. `launch_s` is the same for every candidate, so it never changes a choice.
  The peaks and bandwidths are NVIDIA datasheet figures (not measurements); `source` says which.
* `BopsModel` (everything else): latency_s = bops / a fixed nominal throughput. It only orders
  candidates by bit-operations, so only relative budgets mean much with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Roofline:
    gpu: str
    int8_ops_per_s: float    #: dense int8 tensor-core peak, datasheet
    int4_ops_per_s: float    #: dense int4 tensor-core peak, datasheet; = int8 where there is no int4 MMA
    bytes_per_s: float       #: memory bandwidth, datasheet
    launch_s: float = 5e-6   #: per-kernel launch overhead (candidate-independent)

    def latency(self, macs: int, wb: int, ab: int, weights: int, bias_out: int, in_elems: int,
                out_elems: int) -> float:
        peak = self.int4_ops_per_s if (wb, ab) == (4, 4) else self.int8_ops_per_s
        moved = math.ceil(weights * wb / 8) + 4 * bias_out + in_elems * ab / 8 + out_elems
        return max(2 * macs / peak, moved / self.bytes_per_s) + self.launch_s

    def describe(self, why: str) -> str:
        return (f"model: roofline of {self.gpu} (NVIDIA datasheet: int8 {self.int8_ops_per_s / 1e12:g} TOPS, "
                f"int4 {self.int4_ops_per_s / 1e12:g} TOPS dense, {self.bytes_per_s / 1e9:g} GB/s) at batch 1 "
                f"+ {self.launch_s * 1e6:g} us launch; {why}")


@dataclass(frozen=True)
class BopsModel:
    bops_per_s: float = 1e12   #: nominal integer throughput, not a measurement

    def latency(self, macs: int, wb: int, ab: int, *_args) -> float:
        return macs * wb * ab / self.bops_per_s

    def describe(self, why: str) -> str:
        return f"model: bops / {self.bops_per_s:.3g} BOP/s (nominal fixed throughput; {why})"


ROOFLINES = {
    "sm_75": Roofline("T4", 130e12, 260e12, 320e9),
    "sm_80": Roofline("A100 40GB", 624e12, 1248e12, 1555e9),
    "sm_86": Roofline("A10", 250e12, 500e12, 600e9),
    "sm_89": Roofline("L4 (int4 rate not in the datasheet: taken as int8)", 242e12, 242e12, 300e9),
    "sm_90": Roofline("H100 SXM (no int4 MMA)", 1979e12, 1979e12, 3350e9),
}


def for_target(spec) -> Roofline | BopsModel:
    """The latency model for a `targets.TargetSpec` that cannot be timed here."""
    if spec.kind == "cuda" and spec.gpu is not None and spec.gpu.name in ROOFLINES:
        return ROOFLINES[spec.gpu.name]
    return BopsModel()
