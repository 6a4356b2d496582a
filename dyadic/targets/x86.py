"""x86 CPU presets for `--target host --cpu NAME` (a library for another x86 CPU than this one), and
the CPU flags a host library needs where it is loaded.

`--cpu sapphirerapids` builds with `-mcpu=sapphirerapids`: AVX-512, VNNI and the AMX tile kernels
(`dyadic.backend.kernels.amx_conv`). Such a library cannot run on a CPU without those instructions
(it would die of SIGILL), so model.json records `requires.cpu_flags` (the /proc/cpuinfo names of
the instruction sets dyadic's kernels use, from the target's LLVM features) and
`requires.amx_tile_data`; `dyadic.load` and the deploy runner refuse a library whose flags this CPU
lacks, and request AMX tile-data permission from Linux before the first tile instruction.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class X86Cpu:
    name: str          #: LLVM's -mcpu
    examples: str


X86_CPUS = {c.name: c for c in (
    X86Cpu("sapphirerapids", "Intel Xeon 4th gen (AMX-INT8, AVX512-VNNI)"),
    X86Cpu("emeraldrapids", "Intel Xeon 5th gen (AMX-INT8, AVX512-VNNI)"),
    X86Cpu("graniterapids", "Intel Xeon 6 P-core (AMX-INT8, AVX512-VNNI)"),
    X86Cpu("icelake-server", "Intel Xeon 3rd gen (AVX512-VNNI, no AMX)"),
    X86Cpu("cascadelake", "Intel Xeon 2nd gen (AVX512-VNNI, no AMX)"),
    X86Cpu("znver4", "AMD EPYC 9004 / Ryzen 7000 (AVX512-VNNI, no AMX)"),
    X86Cpu("haswell", "any x86-64 with AVX2 (the AVX2 kernels)"),
)}

#: (LLVM feature, /proc/cpuinfo flag) of the instruction sets dyadic's x86 kernels use: a library built
#: for a target with the feature needs the flag where it runs. AMX first: the most likely to be missing.
GATING_FEATURES = (("amx-int8", "amx_int8"), ("amx-tile", "amx_tile"), ("avx512vnni", "avx512_vnni"),
                   ("avx512vbmi", "avx512vbmi"), ("avx512bw", "avx512bw"), ("avx512f", "avx512f"),
                   ("avx2", "avx2"))


def required_flags(tvm_target: dict) -> list[str]:
    """The /proc/cpuinfo flags (of `GATING_FEATURES`) a library for this x86 TVM target needs."""
    import platform

    import tvm
    from tvm.target import codegen

    triple = str(tvm_target.get("mtriple", ""))
    arch = triple.split("-")[0] if triple else platform.machine().lower()
    if arch not in ("x86_64", "amd64", "i686", "i386"):
        return []
    tgt = tvm.target.Target(tvm_target)
    return [flag for feat, flag in GATING_FEATURES if codegen.target_has_features(feat, tgt)]
