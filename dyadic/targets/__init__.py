"""Target presets -> TVM target descriptions.

A compile names its target as one string so that `CompileConfig.target` stays a plain value:
`host` (this CPU), `arm[:CPU]` (aarch64 Linux, cross-compiled) or `cuda[:sm_XX]` (NVIDIA GPU).
The presets are typed and frozen because they are facts about hardware, not options: which
instructions a core has decides both the LLVM `-mattr` and which instruction counts mean anything
(an `sdot` count on a Cortex-A72 preset would be a bug, it has no dot-product extension).

Why presets and not free-form `-mcpu`: a wrong `mattr` does not fail at compile time, it fails on the
board with SIGILL. Each preset was checked against Arm's core documentation for the features it sets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from dyadic.errors import TargetError


@dataclass(frozen=True)
class ArmCpu:
    """An aarch64 core. `mcpu` is LLVM's name for it; the features are the int8 extensions it has."""
    name: str
    dotprod: bool      #: Armv8.2 dot product: SDOT/UDOT (4 int8 products per int32 lane)
    i8mm: bool         #: Armv8.6 int8 matrix multiply: SMMLA/UMMLA/USMMLA and USDOT
    examples: str

    @property
    def mattr(self) -> tuple[str, ...]:
        return ("+neon",) + (("+dotprod",) if self.dotprod else ()) + (("+i8mm",) if self.i8mm else ())


@dataclass(frozen=True)
class CudaArch:
    """An NVIDIA compute capability. dp4a exists from sm_61; int8 mma.sync from sm_75."""
    name: str          #: "sm_75"
    examples: str

    @property
    def compute(self) -> str:
        return "compute_" + self.name[3:]


ARM_CPUS: dict[str, ArmCpu] = {c.name: c for c in (
    ArmCpu("cortex-a76", dotprod=True, i8mm=False, examples="Raspberry Pi 5, RK3588 big cores"),
    ArmCpu("cortex-a55", dotprod=True, i8mm=False, examples="RK3588/RK3566 little cores, many phones"),
    ArmCpu("neoverse-n1", dotprod=True, i8mm=False, examples="AWS Graviton2, Ampere Altra"),
    ArmCpu("cortex-a72", dotprod=False, i8mm=False, examples="Raspberry Pi 4"),
    ArmCpu("neoverse-v1", dotprod=True, i8mm=True, examples="AWS Graviton3"),
)}
DEFAULT_ARM_CPU = "cortex-a76"

CUDA_ARCHS: dict[str, CudaArch] = {a.name: a for a in (
    CudaArch("sm_75", "T4, RTX 20xx"),
    CudaArch("sm_80", "A100, A30"),
    CudaArch("sm_86", "A10, A40, RTX 30xx"),
    CudaArch("sm_89", "L4, L40, RTX 40xx"),
    CudaArch("sm_90", "H100, H200"),
)}
DEFAULT_CUDA_ARCH = "sm_75"

AARCH64_TRIPLE = "aarch64-linux-gnu"


@dataclass(frozen=True)
class TargetSpec:
    name: str                        #: the preset string: "host", "arm:cortex-a76", "cuda:sm_75"
    tvm_target: dict                 #: TVM target dict of the code that runs the kernels
    kind: str = "host"               #: "host" | "arm" | "cuda"
    host: dict | None = None         #: TVM host target of a device target (cuda)
    cpu: ArmCpu | None = None
    gpu: CudaArch | None = None
    extra: dict = field(default_factory=dict)

    @property
    def runs_here(self) -> bool:
        """Whether this process can run the built library itself (the compile self-check)."""
        return self.kind == "host"

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


def host_target() -> TargetSpec:
    from tvm.target import codegen

    cpu = codegen.llvm_get_system_cpu()
    return TargetSpec("host", {"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1})


def arm_target(cpu: str = DEFAULT_ARM_CPU) -> TargetSpec:
    if cpu not in ARM_CPUS:
        raise TargetError(f"unknown ARM CPU preset {cpu!r}; known: {', '.join(ARM_CPUS)}")
    c = ARM_CPUS[cpu]
    tgt = {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mcpu": c.name, "mattr": list(c.mattr)}
    return TargetSpec(f"arm:{c.name}", tgt, kind="arm", cpu=c)


def cuda_target(arch: str = DEFAULT_CUDA_ARCH) -> TargetSpec:
    if arch not in CUDA_ARCHS:
        raise TargetError(f"unknown CUDA architecture {arch!r}; known: {', '.join(CUDA_ARCHS)}")
    g = CUDA_ARCHS[arch]
    # the host side stays generic x86-64 so the library loads on any x86 GPU server
    return TargetSpec(f"cuda:{g.name}", {"kind": "cuda", "arch": g.name}, kind="cuda",
                      host={"kind": "llvm"}, gpu=g)


PRESETS = {"host": host_target, "arm": arm_target, "cuda": cuda_target}


def resolve(name: str) -> TargetSpec:
    """`host`, `arm`, `arm:CPU`, `cuda` or `cuda:sm_XX` -> a TargetSpec."""
    kind, _, sub = name.partition(":")
    if kind not in PRESETS:
        raise TargetError(f"unknown target {name!r}; known: host, arm[:CPU], cuda[:sm_XX]")
    if kind == "host":
        if sub:
            raise TargetError(f"target 'host' takes no sub-preset (got {name!r})")
        return host_target()
    return PRESETS[kind](sub) if sub else PRESETS[kind]()


def preset_name(target: str, cpu: str | None = None, arch: str | None = None) -> str:
    """Combine the CLI's --target/--cpu/--arch into one preset string, rejecting inconsistent flags."""
    if cpu and target != "arm":
        raise TargetError(f"--cpu {cpu} only applies to --target arm (got --target {target})")
    if arch and target != "cuda":
        raise TargetError(f"--arch {arch} only applies to --target cuda (got --target {target})")
    name = f"{target}:{cpu or arch}" if (cpu or arch) else target
    resolve(name)  # validate now: the error names the flag's value before any work is done
    return name
