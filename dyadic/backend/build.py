"""Lower the integer graph to Relax, verify it holds no float, and build it with TVM for a target.

Per target kind:
- host: `relax.build` with TVM's default pipeline for this CPU.
- arm: the same, for `aarch64-linux-gnu` with the preset's `-mattr`; the library is linked with the
  cross g++. Its dot-product instructions (sdot/udot/usdot/smmla...) are counted in the disassembly,
  because they are the evidence of whether the int8 MACs use the core's int8 hardware.
- cuda: our own Relax pipeline. Integer conv / dense layers are `dyadic.kernels.cuda_gemm` tensor-core
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
from collections import Counter
from dataclasses import dataclass, field

import tvm
from tvm import relax

from dyadic import toolchain
from dyadic.graph import Graph
from dyadic.lower import lower_to_relax
from dyadic.targets import TargetSpec
from dyadic.verify import verify_lowered

ARM_DOT = ("sdot", "udot", "usdot", "sudot", "smmla", "ummla", "usmmla")
_MMA = r"\bmma\.sync\.aligned\.m\d+n\d+k\d+\.row\.col\.s32\."
#: counted in the PTX; "mma.int8" / "mma.int4": tensor-core MMAs with 8-bit (s8/u8) / 4-bit (s4/u4) operands
PTX_INT8 = {"dp4a": r"\bdp4a\.", "dp2a": r"\bdp2a\.", "mma.sync": r"\bmma\.sync\.", "wmma": r"\bwmma\.mma",
            "mma.int8": _MMA + r"[su]8\.s8\.", "mma.int4": _MMA + r"[su]4\.s4\."}
_OP_OPAQUE, _OP_COMM_REDUCE = 8, 3


@dataclass
class Built:
    """A built executable plus what the build learned: kernel sources (cuda) and their files."""
    executable: object
    target: TargetSpec
    files: dict[str, str] = field(default_factory=dict)   #: relative path -> text, written beside model.so


def lower_and_verify(graph: Graph, target: TargetSpec | None = None) -> tvm.IRModule:
    mod = lower_to_relax(graph, target)
    verify_lowered(mod)
    return mod


def build(mod: tvm.IRModule, target: TargetSpec):
    """The executable only (the host path's historical signature)."""
    return build_for(mod, target).executable


def build_for(mod: tvm.IRModule, target: TargetSpec) -> Built:
    if target.kind == "cuda":
        return _build_cuda(mod, target)
    return Built(relax.build(mod, target.tvm()), target)


def export(built: Built, so_path: str) -> None:
    """Write the shared library; cross-links aarch64 code with aarch64-linux-gnu-g++."""
    if built.target.kind == "arm":
        from tvm.support import cc

        cxx = toolchain.find(toolchain.AARCH64_CXX, "link an aarch64 library", toolchain.APT_ARM)
        built.executable.export_library(so_path, fcompile=cc.cross_compiler(cxx))
    else:
        built.executable.export_library(so_path)


def count_instructions(built: Built, so_path: str) -> dict[str, int]:
    """arm: dot-product mnemonics in `objdump -d` of the library; cuda: integer MAC instructions in the PTX
    (dp4a, and tensor-core `mma.sync` in total and by operand width, see `PTX_INT8`)."""
    if built.target.kind == "arm":
        return count_arm_dot(so_path)
    if built.target.kind == "cuda":
        return count_ptx_int8(built.files.get("cuda/kernels.ptx", ""))
    return {}


def dot_macs(mod: tvm.IRModule, graph: Graph) -> dict | None:
    """MACs per image of the conv/dense layers, and how many of them the kernel family runs on its
    int8 dot-product / MMA instructions (`vpdpbusd`, `sdot`, `usdot`, `usmmla`, `mma.sync`: recorded
    by the lowering, per layer)."""
    from dyadic.passes.measure_costs import macs

    layers = [n for n in graph.nodes if n.op in ("qconv", "qdense")]
    total = sum(macs(graph, n) for n in layers)
    info = mod.attrs.get("dyadic_dot") if mod.attrs is not None else None
    if info is None:
        return {"isa": None, "macs": 0, "total_macs": total, "fraction": 0.0}
    by_layer = {n.name: macs(graph, n) for n in layers}
    by_instr: dict[str, int] = {}
    for name, ins in info["layers"].items():
        by_instr[str(ins)] = by_instr.get(str(ins), 0) + by_layer.get(str(name), 0)
    dot = sum(by_instr.values())
    return {"isa": str(info["isa"]), "macs": dot, "total_macs": total, "fraction": round(dot / max(total, 1), 4),
            "by_instruction": by_instr}


def count_arm_dot(so_path: str) -> dict[str, int]:
    objdump = toolchain.find(toolchain.AARCH64_OBJDUMP, "count instructions in an aarch64 library",
                             toolchain.APT_ARM)
    text = toolchain.run([objdump, "-d", "--no-show-raw-insn", so_path], "aarch64 objdump").stdout
    seen = Counter(parts[1].split()[0] for line in text.splitlines()
                   if len(parts := line.split("\t")) >= 2 and parts[1].strip())
    return {m: seen.get(m, 0) for m in ARM_DOT}


def count_ptx_int8(ptx: str) -> dict[str, int]:
    return {k: len(re.findall(p, ptx)) for k, p in PTX_INT8.items()}


# ------------------------------------------------------------------------------------------ cuda

@tvm.transform.module_pass(opt_level=0, name="DyadicKeepReductionsUnfused")
def _reductions_opaque(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    for gv, f in list(mod.functions.items()):
        if isinstance(f, tvm.tirx.PrimFunc) and int(f.attrs.get("op_pattern", 0)) >= _OP_COMM_REDUCE:
            mod[gv] = f.with_attr("op_pattern", _OP_OPAQUE)
    return mod


def _cuda_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    from tvm.relax.backend.cuda import pipeline as cp
    from tvm.s_tir import dlight as dl

    legalize = [
        relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
        _reductions_opaque, relax.transform.FuseOps(), relax.transform.FuseTIR(),
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

    def __init__(self, target: TargetSpec, files: dict[str, str]):
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


def _build_cuda(mod: tvm.IRModule, target: TargetSpec) -> Built:
    toolchain.find_nvcc()
    toolchain.enable_cuda_codegen()
    tgt = target.tvm()
    files: dict[str, str] = {}
    with _NvccCallback(target, files), tgt:
        ex = relax.build(mod, tgt, relax_pipeline=_cuda_pipeline(tgt))
    if "cuda/kernels.ptx" not in files:
        raise toolchain.ToolchainError("the CUDA build produced no device code: TVM's CUDA runtime is not active")
    return Built(ex, target, files)


def library_bytes(so_path: str) -> dict[str, int]:
    """Size of the library file and of its serialized executable (constants, i.e. the stored
    weights, plus VM bytecode): the `__tvm_ffi__library_bin` symbol, read with `nm -S`."""
    import os
    import shutil
    import subprocess

    out = {"file": os.path.getsize(so_path)}
    nm = shutil.which("nm")
    if nm:
        res = subprocess.run([nm, "-S", so_path], capture_output=True, text=True)
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[3] == "__tvm_ffi__library_bin":
                out["executable_blob"] = int(parts[1], 16)
    return out


def constant_bytes(mod) -> int:
    """Bytes of all constants bound into the Relax module: the weights, biases and requantization
    tables the library stores (serialized as they are into the executable)."""
    seen: dict[int, int] = {}

    def visit(e):
        if isinstance(e, tvm.ir.GenericConst):
            v = e.value
            if hasattr(v, "numpy"):
                seen.setdefault(e.__hash__(), v.numpy().nbytes)

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return int(sum(seen.values()))
