"""The cuda target (NVIDIA GPU): our own Relax pipeline, built without a GPU.

Integer conv / dense layers are `dyadic.backend.kernels.cuda_gemm` tensor-core
kernels (`mma.sync` s8/u8/s4/u4, already scheduled: marked `tirx.is_scheduled`, so dlight leaves
them alone); the rest is generic Relax, scheduled by dlight. dlight's GPU rules crash on a convolution fused with its requant
epilogue, so reductions (conv, matmul, sums) are marked opaque to fusion and stay their own kernels
(dlight schedules them as shared-memory implicit GEMMs) while each requant/add/cast chain still fuses
into one elementwise kernel. Kernels are compiled with nvcc to PTX (kept, counted for dp4a/mma) and
then to a fatbin holding SASS for the arch plus the PTX, so newer GPUs can JIT it.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass

from dyadic.core.errors import TargetError
from dyadic.targets import toolchain
from dyadic.targets.base import Built, Target, compare_outputs

_MMA = r"\bmma\.sync\.aligned\.m\d+n\d+k\d+\.row\.col\.s32\."
#: counted in the PTX; "mma.int8" / "mma.int4": tensor-core MMAs with 8-bit (s8/u8) / 4-bit (s4/u4) operands
PTX_INT8 = {"dp4a": r"\bdp4a\.", "dp2a": r"\bdp2a\.", "mma.sync": r"\bmma\.sync\.", "wmma": r"\bwmma\.mma",
            "mma.int8": _MMA + r"[su]8\.s8\.", "mma.int4": _MMA + r"[su]4\.s4\."}
_OP_OPAQUE, _OP_COMM_REDUCE = 8, 3


@dataclass(frozen=True)
class CudaArch:
    """An NVIDIA compute capability. dp4a exists from sm_61; int8 mma.sync from sm_75."""
    name: str          #: "sm_75"
    examples: str

    @property
    def compute(self) -> str:
        return "compute_" + self.name[3:]


CUDA_ARCHS: dict[str, CudaArch] = {a.name: a for a in (
    CudaArch("sm_75", "T4, RTX 20xx"),
    CudaArch("sm_80", "A100, A30"),
    CudaArch("sm_86", "A10, A40, RTX 30xx"),
    CudaArch("sm_89", "L4, L40, RTX 40xx"),
    CudaArch("sm_90", "H100, H200"),
)}
DEFAULT_CUDA_ARCH = "sm_75"


def count_ptx_int8(ptx: str) -> dict[str, int]:
    return {k: len(re.findall(p, ptx)) for k, p in PTX_INT8.items()}


@dataclass(frozen=True)
class CudaTarget(Target):
    def build(self, mod) -> Built:
        return _build_cuda(mod, self)

    def count_instructions(self, built: Built, so_path: str) -> dict[str, int]:
        """Integer MAC instructions in the PTX (dp4a, and tensor-core `mma.sync` in total and by operand
        width, see `PTX_INT8`)."""
        return count_ptx_int8(built.files.get("cuda/kernels.ptx", ""))

    def self_check(self, int_graph, build_dir: str, plan: dict, sample) -> str:
        """Run the library on a local GPU, if there is one, and compare it with the int64 reference."""
        from dyadic.core.io import quantize_inputs
        from dyadic.runtime import remote

        if not remote.local_cuda_available():
            return "not run: no CUDA GPU here (run benchmarks/gpu_check.py on a GPU machine)"
        q = quantize_inputs(int_graph, sample)
        got, how = remote.run_local(os.path.join(build_dir, "model.so"), plan, q, "cuda")[0], "on the local GPU"
        compare_outputs(int_graph, q, got, self.kind)
        return f"bit-exact vs int64 reference ({len(next(iter(q.values())))} inputs, {how})"


def cuda_target(arch: str = DEFAULT_CUDA_ARCH) -> CudaTarget:
    if arch not in CUDA_ARCHS:
        raise TargetError(f"unknown CUDA architecture {arch!r}; known: {', '.join(CUDA_ARCHS)}")
    g = CUDA_ARCHS[arch]
    # the host side stays generic x86-64 so the library loads on any x86 GPU server
    return CudaTarget(f"cuda:{g.name}", {"kind": "cuda", "arch": g.name}, kind="cuda",
                      host={"kind": "llvm"}, gpu=g, inlines_elementwise_chains=True)  # dlight's Fallback


def _reductions_opaque_pass():
    """The pass that keeps reductions their own kernels (made on first use: importing the targets
    does not import the TVM compiler)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="DyadicKeepReductionsUnfused")
    def _reductions_opaque(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gv, f in list(mod.functions.items()):
            if isinstance(f, tvm.tirx.PrimFunc) and int(f.attrs.get("op_pattern", 0)) >= _OP_COMM_REDUCE:
                mod[gv] = f.with_attr("op_pattern", _OP_OPAQUE)
        return mod

    return _reductions_opaque


def _cuda_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cp
    from tvm.s_tir import dlight as dl

    legalize = [
        relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
        _reductions_opaque_pass(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
        dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                                dl.gpu.Fallback()),
    ]

    @tvm.transform.module_pass(opt_level=0, name="DyadicCudaPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = (cp.library_dispatch_passes(target) + legalize + cp.dataflow_lower_passes(target)
                   + cp.finalize_passes(target))
            return tvm.transform.Sequential(seq)(mod)

    return _pipeline


class _NvccCallback:
    """Replaces TVM's `tvm_callback_cuda_compile` for one build: .cu -> .ptx -> fatbin (SASS + PTX)."""

    NAME = "tvm_callback_cuda_compile"

    def __init__(self, target: Target, files: dict[str, str]):
        self.nvcc, self.gpu, self.files = toolchain.find_nvcc(), target.gpu, files

    def __call__(self, code: str) -> bytearray:
        with tempfile.TemporaryDirectory(prefix="dyadic-nvcc-") as d:
            cu, ptx, fatbin = (os.path.join(d, f"kernels.{e}") for e in ("cu", "ptx", "fatbin"))
            with open(cu, "w") as f:
                f.write(code)
            toolchain.run([self.nvcc, "-ptx", "-O3", f"-arch={self.gpu.compute}", "-o", ptx, cu],
                          f"nvcc (CUDA kernels to PTX for {self.gpu.compute})")
            toolchain.run([self.nvcc, "--fatbin", "-O3", "-gencode",
                           f"arch={self.gpu.compute},code=[{self.gpu.name},{self.gpu.compute}]", "-o", fatbin, ptx],
                          f"nvcc (PTX to fatbin for {self.gpu.name})")
            with open(ptx) as f:
                self.files["cuda/kernels.ptx"] = f.read()
            self.files["cuda/kernels.cu"] = code
            with open(fatbin, "rb") as f:
                return bytearray(f.read())

    def __enter__(self):
        import tvm_ffi

        self.old = tvm_ffi.get_global_func(self.NAME, allow_missing=True)
        tvm_ffi.register_global_func(self.NAME, self, override=True)
        return self

    def __exit__(self, *exc):
        import tvm_ffi

        if self.old is not None:
            tvm_ffi.register_global_func(self.NAME, self.old, override=True)


def _build_cuda(mod: tvm.IRModule, target: Target) -> Built:
    from tvm import relax

    toolchain.find_nvcc()
    toolchain.enable_cuda_codegen()
    tgt = target.tvm()
    files: dict[str, str] = {}
    with _NvccCallback(target, files), tgt:
        ex = relax.build(mod, tgt, relax_pipeline=_cuda_pipeline(tgt))
    if "cuda/kernels.ptx" not in files:
        raise toolchain.ToolchainError("the CUDA build produced no device code: TVM's CUDA runtime is not active")
    return Built(ex, target, files)
