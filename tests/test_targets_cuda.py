"""--target cuda: builds without a GPU (nvcc + a stub libcuda), fatbin embedded, int8 MACs as dp4a.

Nothing here runs a kernel: that needs a GPU (benchmarks/gpu_check.py). What is checked is what a
GPU-less machine can know: the library holds a real fatbin (not CUDA source), the PTX targets the
requested architecture, and the int8 multiply-accumulates compiled to dp4a, as many as the plan says.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

import dyadic
from dyadic import targets, toolchain
from dyadic.config import CompileConfig
from dyadic.errors import TargetError
from dyadic.models import build

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
def test_cuda_build_embeds_fatbin_with_dp4a(name, kw, arch, tmp_path):
    res = dyadic.compile(build(name, **kw), str(tmp_path), None, CompileConfig(target=f"cuda:{arch}", quiet=True))
    assert sorted(os.listdir(tmp_path)) == ["cuda", "model.json", "model.so"]
    so = open(tmp_path / "model.so", "rb").read()
    assert FATBIN_MAGIC in so, "no fatbin in the library"
    assert b"__global__" not in so, "the library holds CUDA source, not a compiled fatbin"
    ptx = open(tmp_path / "cuda" / "kernels.ptx").read()
    assert re.search(rf"^\.target {arch}\b", ptx, re.M)
    counts = res.plan["target"]["instructions"]
    assert counts["dp4a"] == len(re.findall(r"\bdp4a\.", ptx)) > 0
    assert res.plan["target"]["gpu"]["arch"] == arch
    if not _gpu():
        assert res.plan["self_check"].startswith("not run: no CUDA GPU here")


def _gpu() -> bool:
    from dyadic.remote import local_cuda_available

    return local_cuda_available()


def test_gpu_check_without_gpu_exits_cleanly():
    if _gpu():
        pytest.skip("this machine has a GPU: run benchmarks/gpu_check.py itself")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU found" in proc.stdout
