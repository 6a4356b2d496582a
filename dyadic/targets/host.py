"""The host target: this CPU, built with TVM's default pipeline and checked in this process."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from dyadic.targets.base import Target


@dataclass(frozen=True)
class HostTarget(Target):
    @property
    def runs_here(self) -> bool:
        return True

    def self_check(self, int_graph, build_dir: str, plan: dict, sample: dict[str, np.ndarray]) -> str:
        """The built library must equal the int64 reference exactly on real (calibration) inputs."""
        from dyadic.core.errors import VerificationError
        from dyadic.core.io import quantize_inputs
        from dyadic.core.reference import run_reference
        from dyadic.runtime.loader import load

        ig = int_graph
        m = load(build_dir)
        q_all = quantize_inputs(ig, sample)
        step = int(ig.shapes[ig.inputs[0]][0]) if ig.meta.get("static_batch") else len(next(iter(q_all.values())))
        for i in range(0, len(next(iter(q_all.values()))), step):  # a static-batch library: one batch at a time
            q = {k: v[i:i + step] for k, v in q_all.items()}
            got = m.run_int(q)
            want = run_reference(ig, q)
            for o, g in zip(ig.outputs, got):
                if not np.array_equal(g, want[o]):
                    raise VerificationError(f"self-check: compiled output {o!r} differs from the int64 reference "
                                            f"in {(g != want[o]).sum()} of {g.size} values")
        return f"bit-exact vs int64 reference ({len(next(iter(sample.values())))} inputs)"


def host_target() -> HostTarget:
    from tvm.target import codegen

    cpu = codegen.llvm_get_system_cpu()
    return HostTarget("host", {"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1})
