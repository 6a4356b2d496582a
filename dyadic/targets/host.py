"""The host target: this CPU (or, with `--cpu NAME`, another x86 CPU: `dyadic.targets.x86`), built with
TVM's default pipeline and checked in this process where this CPU can run it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass

import numpy as np

from dyadic.core.errors import TargetError
from dyadic.targets.base import Built, Target

#: x86 int8 MAC (and AMX tile) mnemonics counted in the library's disassembly
X86_MNEMONICS = ("vpdpbusd", "vpdpwssd", "vpmaddwd", "tdpbusd", "tdpbssd", "tileloadd", "ldtilecfg")


@dataclass(frozen=True)
class HostTarget(Target):
    @property
    def runs_here(self) -> bool:
        """This CPU has every flag the library needs (always, for a build for this CPU)."""
        from dyadic.runtime.cpu import cpu_flags

        if self.cpu is None:
            return True
        flags = cpu_flags()
        return flags is not None and not self.missing_flags(flags)

    def missing_flags(self, flags: set[str]) -> list[str]:
        from dyadic.targets.x86 import required_flags

        return [f for f in required_flags(self.tvm_target) if f not in flags]

    def describe(self) -> dict:
        d = {"preset": self.name, "kind": self.kind, "tvm": self.tvm_target}
        if self.cpu is not None:
            d["cpu"] = {"name": self.cpu.name, "examples": self.cpu.examples}
        return d

    def runtime_requirements(self, mod) -> dict:
        """model.json `requires`: the CPU flags (`x86.required_flags`) and whether AMX tile data is needed."""
        from dyadic.targets.x86 import required_flags

        flags = required_flags(self.tvm_target)
        fam = mod.attrs.get("dyadic_families") if mod.attrs is not None else None  # set by the lowering
        amx = any(str(v) == "amx" for v in (fam or {}).values())
        return {"cpu_flags": flags, "amx_tile_data": amx} if flags or amx else {}

    def count_instructions(self, built: Built, so_path: str) -> dict[str, int]:
        """x86 int8 MAC / AMX mnemonics in `objdump -d` of the library (empty without objdump)."""
        if shutil.which("objdump") is None:
            return {}
        asm = subprocess.run(["objdump", "-d", so_path], capture_output=True, text=True).stdout
        words = Counter(re.findall(r"\t([a-z][a-z0-9]*) ", asm))
        return {m: words[m] for m in X86_MNEMONICS if words[m]}

    def self_check(self, int_graph, build_dir: str, plan: dict, sample: dict[str, np.ndarray]) -> str:
        """The built library must equal the int64 reference exactly on real (calibration) inputs."""
        from dyadic.core.errors import VerificationError
        from dyadic.core.io import quantize_inputs
        from dyadic.core.reference import run_reference
        from dyadic.runtime.cpu import cpu_flags
        from dyadic.runtime.loader import load

        if not self.runs_here:
            missing = self.missing_flags(cpu_flags() or set())
            return f"not run: this CPU lacks {', '.join(missing)} (built for {self.cpu.name})"
        ig = int_graph
        m = load(build_dir)
        q_all = quantize_inputs(ig, sample)
        step = ig.static_batch_size() or len(next(iter(q_all.values())))
        for i in range(0, len(next(iter(q_all.values()))), step):  # a static-batch library: one batch at a time
            q = {k: v[i:i + step] for k, v in q_all.items()}
            got = m.run_int(q)
            want = run_reference(ig, q)
            for o, g in zip(ig.outputs, got):
                if not np.array_equal(g, want[o]):
                    raise VerificationError(f"self-check: compiled output {o!r} differs from the int64 reference "
                                            f"in {(g != want[o]).sum()} of {g.size} values")
        return f"bit-exact vs int64 reference ({len(next(iter(sample.values())))} inputs)"

    def integer_runner(self, build_dir: str):
        if not self.runs_here:
            return None
        from dyadic.runtime.loader import load

        return load(build_dir).run_int


def host_target(cpu: str | None = None) -> HostTarget:
    """This CPU, or the x86 preset `cpu` (`dyadic.targets.x86.X86_CPUS`)."""
    from tvm.target import codegen

    from dyadic.targets.x86 import X86_CPUS

    cores = os.cpu_count() or 1
    if cpu is None:
        tgt = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": cores}
        return HostTarget("host", _match_cpuinfo(tgt))
    if cpu not in X86_CPUS:
        from dyadic.targets.arm import ARM_CPUS

        hint = f" ({cpu} is an ARM core: use --target arm --cpu {cpu})" if cpu in ARM_CPUS else ""
        raise TargetError(f"unknown x86 CPU preset {cpu!r} for --target host{hint}; known: {', '.join(X86_CPUS)}")
    return HostTarget(f"host:{cpu}", {"kind": "llvm", "mcpu": cpu, "num-cores": cores}, cpu=X86_CPUS[cpu])


def _match_cpuinfo(tgt: dict) -> dict:
    """This CPU's target with the gating features (`x86.GATING_FEATURES`) set as /proc/cpuinfo reports
    them, whatever LLVM's name for the CPU implies. A VM may hide features the model name implies (AMX,
    AVX-512: LLVM knows the CPU by its name, the OS by what it enabled), so a native build never needs a
    flag this machine lacks; and a VM may show a generic model that LLVM maps to an older core (a
    Sapphire Rapids guest seen as "rocketlake"), so a native build still gets the AMX tiles it has."""
    import tvm
    from tvm.target import codegen

    from dyadic.runtime.cpu import cpu_flags
    from dyadic.targets.x86 import GATING_FEATURES

    flags = cpu_flags()
    if flags is None:
        return tgt
    t = tvm.target.Target(tgt)
    has = {feat: bool(codegen.target_has_features(feat, t)) for feat, _ in GATING_FEATURES}
    attrs = [f"-{feat}" for feat, flag in GATING_FEATURES if has[feat] and flag not in flags]
    attrs += [f"+{feat}" for feat, flag in GATING_FEATURES if not has[feat] and flag in flags]
    return {**tgt, "mattr": attrs} if attrs else tgt
