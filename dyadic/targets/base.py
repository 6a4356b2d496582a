"""The one interface every target implements, and what a build hands between its steps.

A compile does, for any target T:

    built = T.build(mod)                       # Relax module -> TVM executable (+ kernel sources)
    T.export(built, "model.so")                # the shared library, with T's linker
    names = T.package(built, out_dir, plan)    # the files T adds beside model.so / model.json
    status = T.self_check(graph, out_dir, plan, sample)   # bit-exact vs the int64 reference, where T runs

`Target` keeps the fields of the former `TargetSpec` (`name`, `tvm_target`, `kind`, `host`, `cpu`,
`gpu`, `extra`): the lowering and the kernels read them. `TargetSpec` stays as its name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Built:
    """A built executable plus what the build learned: kernel sources (cuda) and their files."""
    executable: object
    target: "Target"
    files: dict[str, str] = field(default_factory=dict)   #: relative path -> text, written beside model.so


@dataclass(frozen=True)
class Target:
    name: str                        #: the preset string: "host", "arm:cortex-a76", "cuda:sm_75"
    tvm_target: dict                 #: TVM target dict of the code that runs the kernels
    kind: str = "host"               #: "host" | "arm" | "cuda"
    host: dict | None = None         #: TVM host target of a device target (cuda)
    cpu: object | None = None        #: an `arm.ArmCpu`
    gpu: object | None = None        #: a `cuda.CudaArch`
    extra: dict = field(default_factory=dict)
    #: the generic schedule inlines each fused function's elementwise steps into one expression
    inlines_elementwise_chains: bool = False

    @property
    def runs_here(self) -> bool:
        """Whether this process can run the built library itself (the compile self-check)."""
        return False

    def tvm(self):
        import tvm

        return tvm.target.Target(self.tvm_target, host=self.host) if self.host else tvm.target.Target(self.tvm_target)

    def describe(self) -> dict:
        d = {"preset": self.name, "kind": self.kind, "tvm": self.tvm_target}
        if self.host:
            d["host"] = self.host
        if self.cpu:
            d["cpu"] = {"name": self.cpu.name, "mattr": list(self.cpu.mattr), "examples": self.cpu.examples}
        if self.gpu:
            d["gpu"] = {"arch": self.gpu.name, "examples": self.gpu.examples}
        return d

    def build(self, mod) -> Built:
        """`relax.build` with TVM's CPU pipeline for this target. Not `relax.build`'s "default",
        which for a CPU target skips FuseOps/FuseTIR: every generic elementwise op (the casts,
        multiplies and shifts of a requant, a table's `take`) would then be its own pass over
        memory with int64 temporaries (measured: half of efficientnet_b0's run time).
        Chains of reshapes are collapsed first (`RemoveRedundantReshape`): the pipeline turns a lone
        reshape into a view, but FuseOps fuses two consecutive ones into a copying function."""
        from tvm import relax

        tgt = self.tvm()
        mod = relax.transform.RemoveRedundantReshape()(mod)
        return Built(relax.build(mod, tgt, relax_pipeline=relax.get_default_pipeline(tgt)), self)

    def export(self, built: Built, so_path: str) -> None:
        """Write the shared library (the host's compiler and linker)."""
        built.executable.export_library(so_path)

    def package(self, built: Built, out_dir: str, plan: dict) -> list[str]:
        """Write the files the target adds beside model.so/model.json; returns their top-level names.
        By default: the build's `files` (cuda: kernels.cu and kernels.ptx, for inspection)."""
        for rel, text in built.files.items():
            os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
            with open(os.path.join(out_dir, rel), "w") as f:
                f.write(text)
        return sorted({rel.split("/")[0] for rel in built.files})

    def self_check(self, int_graph, build_dir: str, plan: dict, sample: dict[str, np.ndarray]) -> str:
        """Run the built library where possible and compare it with the int64 reference: raises
        `VerificationError` on any difference; returns the status line recorded in the plan."""
        raise NotImplementedError(f"target kind {self.kind!r} has no self-check")

    def integer_runner(self, build_dir: str):
        """The built library as a callable (integer inputs -> output codes) where this process can run
        it, for the compile's fidelity figures (`core.fidelity`); None where it cannot (the figures
        then come from the int64 reference)."""
        return None

    def count_instructions(self, built: Built, so_path: str) -> dict[str, int]:
        """The target's int8 MAC instructions in the library (none counted by default)."""
        return {}

    def runtime_requirements(self, mod) -> dict:
        """What the loader must check or enable before mapping the library (model.json `target.requires`;
        host: CPU flags, AMX tile data). Nothing by default."""
        return {}


TargetSpec = Target


def compare_outputs(graph, q: dict[str, np.ndarray], got: list[np.ndarray], kind: str) -> None:
    """A cross-built library's outputs `got` on integer inputs `q` must equal the int64 reference."""
    from dyadic.core.errors import VerificationError
    from dyadic.core.reference import run_reference

    want = run_reference(graph, q)
    for o, g in zip(graph.outputs, got):
        if g.shape != want[o].shape or not np.array_equal(g, want[o]):
            raise VerificationError(f"self-check: the {kind} library's output {o!r} differs from the int64 "
                                    f"reference in {int((g != want[o]).sum())} of {g.size} values")
