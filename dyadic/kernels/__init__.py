"""Target-specific integer kernels (TE/TIR with explicit schedules), chosen from the target's features.

`for_lowerer(lowerer)` is what `dyadic.lower` calls: it returns an object with
`lower(node, xs)` (the Relax value of a node it implements, or None) and
`generic_inputs(node, xs)` (inputs converted back to what the generic Relax ops expect), or None
when no kernel family fits the target (the generic Relax lowering then does everything).

Families so far: x86 (`lowering.X86Kernels`), with
  * "vnni":   AVX512-VNNI `vpdpbusd` (u8 x s8 -> s32), the fast path;
  * "avx512" / "avx2": the same schedules with int32 vector multiply-adds (exact, slower).
Set DYADIC_KERNELS=generic in the environment to force the generic lowering (for comparisons).

Modules: `lowering` (which graph nodes, in which layout), `spec` (kernel parameters, register tile),
`x86_conv` (conv / depthwise / dense with fused requant and residual add), `x86_ops` (add, pooling,
layout changes), `intrin` (the tensor intrinsics), `epilogue` (the int32 residual add),
`packing` (compile-time weight and constant layouts). 4-bit weights go through `vpdpbusd` too
(stored two per byte, unpacked per operand next to their use); on the AVX2/AVX-512 fallbacks they,
and 16-bit activations everywhere, take the generic path.
"""
from __future__ import annotations

import os


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


def for_lowerer(lowerer):
    """The kernel family for `lowerer.target` (a `dyadic.targets.TargetSpec`), or None."""
    if os.environ.get("DYADIC_KERNELS", "").lower() == "generic" or lowerer.target is None:
        return None
    isa = x86_isa(lowerer.target.tvm_target)
    if isa is None:
        return None
    from dyadic.kernels.lowering import X86Kernels

    return X86Kernels(lowerer, isa)
