"""External tools the cross targets need, found once, with an actionable error when one is missing.

Cross builds lean on programs outside Python (aarch64 g++/objdump, qemu-user, nvcc) and on files
dyadic makes itself and caches (a stub libcuda, the aarch64 TVM runtime, the prebuilt runner).
Every lookup here either returns a path or raises `ToolchainError` saying what to install, so a
missing tool is one clear sentence instead of a traceback from deep inside TVM.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

from dyadic.core.errors import ToolchainError

AARCH64_CXX = "aarch64-linux-gnu-g++"
AARCH64_OBJDUMP = "aarch64-linux-gnu-objdump"
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
APT_ARM = "apt-get install g++-aarch64-linux-gnu qemu-user-static"

# Every libcuda symbol libtvm_runtime_cuda links against (nm -D --undefined-only), plus the two a
# driver query touches first. Each returns CUDA_ERROR_STUB_LIBRARY (34): nothing can run, but TVM's
# CUDA runtime loads, and only then does relax.build produce a real fatbin instead of CUDA source.
_STUB_SYMBOLS = ("cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString",
                 "cuLaunchKernelEx", "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload",
                 "cuTensorMapEncodeTiled", "cuInit", "cuDriverGetVersion")


def cache_dir(*sub: str) -> Path:
    """$DYADIC_CACHE_DIR, else $XDG_CACHE_HOME/dyadic, else ~/.cache/dyadic (created)."""
    root = os.environ.get("DYADIC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dyadic")
    p = Path(root, *sub)
    p.mkdir(parents=True, exist_ok=True)
    return p


def find(tool: str, why: str, install: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolchainError(f"{tool} not found on PATH; it is needed to {why}. Install it: {install}")
    return path


def find_qemu() -> str | None:
    """qemu-user for aarch64, or None (only the optional self-check needs it)."""
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def qemu_command() -> list[str]:
    q = find_qemu()
    if q is None:
        raise ToolchainError(f"qemu-aarch64-static not found; it is needed to run aarch64 code here ({APT_ARM})")
    return [q, "-L", AARCH64_SYSROOT]


def find_nvcc() -> str:
    for cand in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.isfile(cand):
            return cand
    raise ToolchainError("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin); --target cuda needs the "
                         "CUDA toolkit (12.x or 13.x) to compile kernels, but no GPU")


def run(cmd: list[str], what: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a tool; a non-zero exit becomes a ToolchainError quoting the end of its output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolchainError(f"{what} failed: {e}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise ToolchainError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc


_CUDA_READY = False


def enable_cuda_codegen() -> None:
    """Load TVM's CUDA runtime into this process, with a stub libcuda when no driver is installed.

    TVM tries to load libtvm_runtime_cuda at import and silently gives up without libcuda.so.1.
    A library already loaded under the soname libcuda.so.1 satisfies that dependency, so the stub is
    compiled (gcc, into the cache), loaded RTLD_GLOBAL, and the CUDA runtime loaded again after it.
    A real driver, when present, is always preferred.
    """
    global _CUDA_READY
    from tvm.base import _LOADED_LIBS

    if _CUDA_READY or "tvm_runtime_cuda" in _LOADED_LIBS:
        _CUDA_READY = True
        return
    try:
        ctypes.CDLL("libcuda.so.1", ctypes.RTLD_GLOBAL)
    except OSError:
        ctypes.CDLL(str(_stub_libcuda()), ctypes.RTLD_GLOBAL)
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                                                           extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    except (OSError, FileNotFoundError, RuntimeError) as e:
        raise ToolchainError(f"TVM's CUDA runtime (libtvm_runtime_cuda.so) does not load: {e}. It needs the "
                             "CUDA runtime library libcudart from the CUDA toolkit on the loader path") from None
    _CUDA_READY = True


def _stub_libcuda() -> Path:
    out = cache_dir("cuda-stub") / "libcuda.so.1"
    if out.is_file():
        return out
    src = out.with_name("fake_libcuda.c")
    src.write_text("/* codegen-only libcuda stub made by dyadic: every call returns CUDA_ERROR_STUB_LIBRARY */\n"
                   + "".join(f"int {s}(void) {{ return 34; }}\n" for s in _STUB_SYMBOLS))
    gcc = find("gcc", "compile the stub libcuda that CUDA code generation needs", "apt-get install gcc")
    tmp = out.with_name(f"libcuda.so.1.{os.getpid()}")
    run([gcc, "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)], "compiling the stub libcuda")
    os.replace(tmp, out)
    return out
