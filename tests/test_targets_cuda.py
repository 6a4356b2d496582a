"""--target cuda: builds without a GPU (nvcc + a stub libcuda), fatbin embedded, MACs on tensor cores.

Nothing here runs a kernel: that needs a GPU (benchmarks/gpu_check.py). What is checked is what a
GPU-less machine can know: the library holds a real fatbin (not CUDA source), the PTX targets the
requested architecture, and the integer convolutions / dense layers compiled to tensor-core
`mma.sync` (s8/u8, and s4/u4 for W4A4 layers where the arch has int4 MMA), as many as the plan
says, with no dp4a left. (The kernels' index logic is checked on the CPU in test_kernels_cuda.py.)
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import dyadic
from dyadic import targets
from dyadic.targets import toolchain
from dyadic.core.config import BitMode, CompileConfig
from dyadic.core.errors import TargetError
from dyadic.models import build

from _tiny_onnx import make_model
from test_ops_bitexact import CASES, _data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FATBIN_MAGIC = b"\x50\xed\x55\xba"


def _have_nvcc() -> bool:
    try:
        toolchain.find_nvcc()
        return shutil.which("gcc") is not None
    except toolchain.ToolchainError:
        return False


needs_nvcc = pytest.mark.skipif(not _have_nvcc(), reason="nvcc (CUDA toolkit) or gcc not installed")


def test_cuda_presets():
    assert set(targets.CUDA_ARCHS) >= {"sm_75", "sm_80", "sm_86", "sm_90"}
    t = targets.resolve("cuda")
    assert t.name == "cuda:sm_75" and t.kind == "cuda" and not t.runs_here
    assert t.tvm_target == {"kind": "cuda", "arch": "sm_75"} and t.host == {"kind": "llvm"}
    assert targets.preset_name("cuda", arch="sm_90") == "cuda:sm_90"
    with pytest.raises(TargetError, match="sm_70"):
        targets.preset_name("cuda", arch="sm_70")
    with pytest.raises(TargetError, match="--arch sm_90 only applies to --target cuda"):
        targets.preset_name("arm", arch="sm_90")


@needs_nvcc
@pytest.mark.parametrize("name,kw,arch", [("resnet20", {}, "sm_75"), ("resnet18", {"image_size": 64}, "sm_90")],
                         ids=["resnet20-sm_75", "resnet18-sm_90"])
def test_cuda_build_embeds_fatbin_with_mma(name, kw, arch, tmp_path):
    res = dyadic.compile(build(name, **kw), str(tmp_path), None, CompileConfig(target=f"cuda:{arch}", quiet=True))
    assert sorted(os.listdir(tmp_path)) == ["cuda", "model.json", "model.so"]
    so = open(tmp_path / "model.so", "rb").read()
    assert FATBIN_MAGIC in so, "no fatbin in the library"
    assert b"__global__" not in so, "the library holds CUDA source, not a compiled fatbin"
    ptx = open(tmp_path / "cuda" / "kernels.ptx").read()
    assert re.search(rf"^\.target {arch}\b", ptx, re.M)
    counts = res.plan["target"]["instructions"]
    mma = MMA8_SM75 if arch == "sm_75" else MMA8_SM80
    assert counts["mma.int8"] == len(re.findall(mma, ptx)) == counts["mma.sync"] > 0
    assert re.search(mma.replace("[su]8", "u8", 1), ptx), "uint8 activations should use the u8 x s8 MMA"
    assert counts["dp4a"] == len(re.findall(r"\bdp4a\.", ptx)) == 0, "integer MACs left off the tensor cores"
    assert counts["mma.int4"] == 0
    assert res.plan["target"]["gpu"]["arch"] == arch
    if not _gpu():
        assert res.plan["self_check"].startswith("not run: no CUDA GPU here")


MMA8_SM75 = r"\bmma\.sync\.aligned\.m8n8k16\.row\.col\.s32\.[su]8\.s8\.s32"
MMA8_SM80 = r"\bmma\.sync\.aligned\.m16n8k32\.row\.col\.s32\.[su]8\.s8\.s32"
MMA4_SM75 = r"\bmma\.sync\.aligned\.m8n8k32\.row\.col\.s32\.[su]4\.s4\.s32"


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
def test_cuda_w4a4_int4_mma_where_the_arch_has_it(arch, tmp_path):
    """W4A4 layers: int4 MMA on sm_75; on sm_90 (no int4 MMA) the nibble weights feed the int8 MMA."""
    rng = np.random.default_rng(3)
    nodes, inits, in_shape = CASES["conv_relu_conv"](rng)
    cfg = CompileConfig(target=f"cuda:{arch}", bits=BitMode.INT4, pin_first_last=False, quiet=True)
    res = dyadic.compile(make_model(nodes, inits, in_shape=in_shape), str(tmp_path),
                         {"input": _data(rng, in_shape, 16, "signed")}, cfg)
    layers = [n for n in res.int_graph.nodes if n.op in ("qconv", "qdense")]
    assert layers and all(n.attrs["w_bits"] == 4 and n.attrs["a_bits"] == 4 for n in layers)
    ptx = open(tmp_path / "cuda" / "kernels.ptx").read()
    counts = res.plan["target"]["instructions"]
    assert counts["dp4a"] == 0 and counts["mma.sync"] == counts["mma.int4"] + counts["mma.int8"]
    if arch == "sm_75":
        assert counts["mma.int4"] == len(re.findall(MMA4_SM75, ptx)) > 0 and counts["mma.int8"] == 0
    else:
        assert counts["mma.int4"] == 0 and counts["mma.int8"] == len(re.findall(MMA8_SM80, ptx)) > 0


def _gpu() -> bool:
    from dyadic.runtime.remote import local_cuda_available

    return local_cuda_available()


def test_gpu_check_without_gpu_exits_cleanly():
    if _gpu():
        pytest.skip("this machine has a GPU: run benchmarks/gpu_check.py itself")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU found" in proc.stdout
