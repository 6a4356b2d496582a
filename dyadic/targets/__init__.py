"""Target presets -> TVM target descriptions.

A compile names its target as one string so that `CompileConfig.target` stays a plain value:
`host[:CPU]` (this CPU, or an x86 preset such as host:sapphirerapids), `arm[:CPU]` (aarch64 Linux, cross-compiled) or `cuda[:sm_XX]` (NVIDIA GPU).
The presets are typed and frozen because they are facts about hardware, not options: which
instructions a core has decides both the LLVM `-mattr` and which instruction counts mean anything
(an `sdot` count on a Cortex-A72 preset would be a bug, it has no dot-product extension).

Why presets and not free-form `-mcpu`: a wrong `mattr` does not fail at compile time, it fails on the
board with SIGILL. Each preset was checked against Arm's core documentation for the features it sets.

One module per target behind one interface (`base.Target`: build, export, package, self_check,
count_instructions): `host`, `arm` (with its deploy bundle), `cuda` (with its nvcc build); the
external tools they call are found by `toolchain`.
"""
from __future__ import annotations

from dyadic.core.errors import TargetError
from dyadic.targets.arm import AARCH64_TRIPLE, ARM_CPUS, DEFAULT_ARM_CPU, ArmCpu, ArmTarget, arm_target
from dyadic.targets.base import Built, Target, TargetSpec
from dyadic.targets.cuda import CUDA_ARCHS, DEFAULT_CUDA_ARCH, CudaArch, CudaTarget, cuda_target
from dyadic.targets.host import HostTarget, host_target

PRESETS = {"host": host_target, "arm": arm_target, "cuda": cuda_target}


def resolve(name: str) -> Target:
    """`host`, `host:CPU`, `arm`, `arm:CPU`, `cuda` or `cuda:sm_XX` -> a Target."""
    kind, _, sub = name.partition(":")
    if kind not in PRESETS:
        raise TargetError(f"unknown target {name!r}; known: host[:CPU], arm[:CPU], cuda[:sm_XX]")
    if kind == "host":  # host:CPU: another x86 CPU (`x86.X86_CPUS`), e.g. host:sapphirerapids
        return host_target(sub or None)
    return PRESETS[kind](sub) if sub else PRESETS[kind]()


def preset_name(target: str, cpu: str | None = None, arch: str | None = None) -> str:
    """Combine the CLI's --target/--cpu/--arch into one preset string, rejecting inconsistent flags."""
    if cpu and target not in ("arm", "host"):
        raise TargetError(f"--cpu {cpu} only applies to --target arm or host (got --target {target})")
    if arch and target != "cuda":
        raise TargetError(f"--arch {arch} only applies to --target cuda (got --target {target})")
    name = f"{target}:{cpu or arch}" if (cpu or arch) else target
    resolve(name)  # validate now: the error names the flag's value before any work is done
    return name


__all__ = ["AARCH64_TRIPLE", "ARM_CPUS", "CUDA_ARCHS", "DEFAULT_ARM_CPU", "DEFAULT_CUDA_ARCH", "PRESETS", "ArmCpu",
           "ArmTarget", "Built", "CudaArch", "CudaTarget", "HostTarget", "Target", "TargetSpec", "arm_target",
           "cuda_target", "host_target", "preset_name", "resolve"]
