"""Target-specific integer kernels (TE/TIR with explicit schedules), chosen from the target's features.

`for_lowerer(lowerer)` is what `dyadic.backend.lower` calls: it returns an object with
`lower(node, xs)` (the Relax value of a node it implements, or None) and
`generic_inputs(node, xs)` (inputs converted back to what the generic Relax ops expect), or None
when no kernel family fits the target (the generic Relax lowering then does everything).

Families so far: cuda (`cuda_lowering.CudaKernels`: integer conv / dense as implicit GEMMs on
`mma.sync` tensor cores, s8/u8 and s4/u4, requant fused, see `cuda_gemm`), and CPU
(`lowering.CpuKernels`), one set of loop nests and layouts for x86 and aarch64, with
  * "amx": on a target with AMX-INT8 (Sapphire Rapids and later), conv and dense layers with enough
    channels and pixels run on `tdpbusd` tiles (`amx_conv`, `amx_layout`, `intrin_amx`; the
    per-layer choice is `amx_lowering.AmxPolicy`), the others on the VNNI kernels below;
  * "vnni":   AVX512-VNNI `vpdpbusd` (u8 x s8 -> s32), the fast x86 path;
  * "avx2": conv and dense on AVX2 `vpmaddwd` (operands widened to int16, `intrin_avx2`), depthwise
    with int32 vector multiply-adds;
  * "avx512": the same schedules with int32 vector multiply-adds (exact, slower);
  * "sdot" (dotprod cores) / "usmmla" (i8mm cores: `usmmla` matrix multiply-accumulate for
    channel-blocked convs, `usdot` for the others), `arm_intrin`; a core without dotprod
    (Cortex-A72) gets the generic lowering.
Set DYADIC_KERNELS=generic in the environment to force the generic lowering, DYADIC_KERNELS=vnni to
keep AMX targets on the previous (VNNI) kernels (for comparisons; `kernel_choice`).

Modules: `lowering` (which graph nodes, in which layout), `spec` (kernel parameters, register tile),
`cpu_conv` (conv / depthwise / dense with fused requant and residual add), `cpu_ops` (add, pooling,
layout changes), `intrin` (the tensor intrinsics), `intrin_avx2` (the `vpmaddwd` step),
`epilogue` (the int32 residual add),
`arm_intrin` (the aarch64 ones), `packing` (compile-time weight and constant layouts), `peak`
(measured `vpdpbusd` / `vpmaddwd` peak, for `dyadic bench`), `cuda_gemm`/`cuda_lowering` (tensor cores).
4-bit weights go through the dot products too
(stored two per byte, unpacked per operand next to their use); on the AVX2/AVX-512 fallbacks they,
and 16-bit activations everywhere, take the generic path.
"""
from __future__ import annotations

import enum
import os

from dyadic.backend.kernels.family import KernelFamily  # noqa: F401  (re-exported)


class KernelsOverride(enum.Enum):
    """DYADIC_KERNELS: unset (the target's best), `generic` (no dyadic kernels), `vnni` (no AMX)."""
    DEFAULT = ""
    GENERIC = "generic"
    VNNI = "vnni"


def kernel_choice() -> KernelsOverride:
    v = os.environ.get("DYADIC_KERNELS", "").strip().lower()
    try:
        return KernelsOverride(v)
    except ValueError:
        from dyadic.core.errors import TargetError

        raise TargetError(f"DYADIC_KERNELS={v!r} is not one of: generic, vnni (or unset)") from None


def x86_amx(tvm_target: dict) -> bool:
    """Whether an x86 TVM target has AMX-INT8 tiles (`amx-tile` and `amx-int8`, from its -mcpu /
    -mattr), i.e. whether the lowering may use the AMX kernels. DYADIC_KERNELS=vnni says no."""
    if kernel_choice() is not KernelsOverride.DEFAULT or x86_isa(tvm_target) != "vnni":
        return False
    import tvm
    from tvm.target import codegen

    tgt = tvm.target.Target(tvm_target)
    return bool(codegen.target_has_features("amx-int8", tgt)) and bool(codegen.target_has_features("amx-tile", tgt))


def x86_has(tvm_target: dict, feature: str) -> bool:
    """Whether an x86 TVM target (a dict, as in `dyadic.targets`) has an LLVM feature ("avx512vbmi")."""
    if x86_isa(tvm_target) is None:
        return False
    import tvm
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features(feature, tvm.target.Target(tvm_target)))
    except Exception:  # a target LLVM cannot describe: no
        return False


def x86_isa(tvm_target: dict) -> str | None:
    """'vnni', 'avx512', 'avx2' or None for a TVM target description (a dict, as in `dyadic.targets`)."""
    if not isinstance(tvm_target, dict) or tvm_target.get("kind") != "llvm":
        return None
    triple = str(tvm_target.get("mtriple", ""))
    if triple and not triple.startswith(("x86_64", "i686", "i386")):
        return None
    import tvm
    from tvm.target import codegen

    try:
        tgt = tvm.target.Target(tvm_target)
        has = lambda f: bool(codegen.target_has_features(f, tgt))  # noqa: E731
        if has("avx512vnni") and has("avx512bw"):
            return "vnni"
        if has("avx512bw"):
            return "avx512"
        if has("avx2"):
            return "avx2"
    except Exception:  # an unknown CPU or a target LLVM cannot describe: no fast kernels
        return None
    return None


def arm_isa(target) -> str | None:
    """'usmmla' (i8mm: `usmmla` convs, `usdot` elsewhere), 'sdot' (dotprod) or None (no int8 dot
    product: generic ops) for an arm TargetSpec."""
    cpu = getattr(target, "cpu", None)
    if cpu is None:
        return None
    return "usmmla" if cpu.i8mm else "sdot" if cpu.dotprod else None


def for_lowerer(lowerer):
    """The kernel family for `lowerer.target` (a `dyadic.targets.Target`), or None."""
    if kernel_choice() is KernelsOverride.GENERIC or lowerer.target is None:
        return None
    if lowerer.target.kind == "cuda":
        from dyadic.backend.kernels.cuda_lowering import CudaKernels

        return CudaKernels(lowerer, lowerer.target.gpu.name)
    isa = arm_isa(lowerer.target) if lowerer.target.kind == "arm" else x86_isa(lowerer.target.tvm_target)
    if isa is None:
        return None
    from dyadic.backend.kernels.lowering import CpuKernels

    amx = lowerer.target.kind != "arm" and x86_amx(lowerer.target.tvm_target)
    vbmi = isa == "vnni" and x86_has(lowerer.target.tvm_target, "avx512vbmi")
    gather = lowerer.target.kind != "arm" and x86_has(lowerer.target.tvm_target, "avx512f")
    return CpuKernels(lowerer, isa, amx=amx, vbmi=vbmi, gather=gather)
