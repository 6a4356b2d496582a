"""Load and run a compiled library with the TVM runtime only (no compiler, no LLVM mapped).

    m = dyadic.load("build/")        # reads build/model.so and build/model.json
    logits = m.run(x)                # float input -> quantize -> integer library -> dequantized output
    q_out = m.run_int({"input": q})  # integer in, integer out: what the library itself computes

In a fresh process this maps only libtvm_ffi, libtvm_runtime and the model (TVM_USE_RUNTIME_LIB
style, via ctypes); in a process that already imported the TVM compiler it reuses that.

Threads: TVM's runtime defaults to half the logical CPUs on x86 (it assumes hyper-threading), which
on a VM without SMT is half the cores (measured: ResNet-50 ran on 1 of 2 cores, 27 ms instead of
14). Unless TVM_NUM_THREADS or OMP_NUM_THREADS is set, `load` sets TVM_NUM_THREADS to the physical
cores this process may use; `load(path, threads=N)` asks for N. Either only takes effect before the
process first runs a library: TVM creates its thread pool once. It also sets TVM_BIND_THREADS=0
unless set: TVM's thread pinning put both threads of a 2-thread pool on one core in 3 of 5 fresh
processes on the 2-core VM (a `vpdpbusd` loop then ran at 1-thread speed); unpinned, 5 of 5 scaled.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import sys

import numpy as np

from dyadic.core.arith import quantize_float

_RUNTIME_LOADED = False


def _ensure_runtime() -> None:
    global _RUNTIME_LOADED
    if _RUNTIME_LOADED or "tvm" in sys.modules:
        return
    import tvm_ffi  # noqa: F401  (loads libtvm_ffi, which libtvm_runtime links against)

    spec = importlib.util.find_spec("tvm")
    if spec is None or spec.origin is None:
        raise RuntimeError("the TVM runtime (apache-tvm) is not installed")
    ctypes.CDLL(os.path.join(os.path.dirname(spec.origin), "lib", "libtvm_runtime.so"), ctypes.RTLD_GLOBAL)
    _RUNTIME_LOADED = True


def aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy at a 64-byte boundary: the generated kernels use aligned vector loads."""
    a = np.asarray(a)
    buf = np.empty(a.nbytes + align, np.uint8)
    off = (-buf.ctypes.data) % align
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def quantize_plan_inputs(specs: list[dict], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float inputs -> the library's integer inputs, by the plan's `inputs` entries (scale, lo, hi, dtype)."""
    return {i["name"]: quantize_float(inputs[i["name"]], i["scale"], i["lo"], i["hi"]).astype(i["dtype"])
            for i in specs}


def physical_cores() -> int:
    """CPUs this process may run on, SMT siblings counted once."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for c in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(c))
    return max(1, len(cores))


def set_threads(threads: int | None) -> None:
    """The thread policy of the module docstring, for this process (before its first run)."""
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    if threads:
        os.environ["TVM_NUM_THREADS"] = str(int(threads))
    elif not (os.environ.get("TVM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")):
        os.environ["TVM_NUM_THREADS"] = str(physical_cores())


class CompiledModel:
    def __init__(self, so_path: str, plan: dict, threads: int | None = None):
        import tvm_ffi

        set_threads(threads)
        _ensure_runtime()
        self.plan = plan
        self._lib = tvm_ffi.load_module(so_path)
        self._vm = self._lib["vm_load_executable"]()
        self._vm["vm_initialization"](1, 0, 2)  # kDLCPU, device 0, pooled allocator
        self._main = self._vm["main"]
        self.inputs = plan["inputs"]
        self.outputs = plan["outputs"]

    def quantize_inputs(self, inputs) -> dict[str, np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = {self.inputs[0]["name"]: inputs}
        return quantize_plan_inputs(self.inputs, inputs)

    def run_int(self, q_inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        import tvm_ffi

        args = [tvm_ffi.from_dlpack(aligned(q_inputs[i["name"]].astype(i["dtype"]))) for i in self.inputs]
        out = self._main(*args)
        outs = list(out) if len(self.outputs) > 1 else [out]
        return [np.from_dlpack(o).copy() for o in outs]

    def run(self, inputs) -> np.ndarray | list[np.ndarray]:
        """Float inputs (array or {name: array}) -> float outputs (dequantized)."""
        outs = self.run_int(self.quantize_inputs(inputs))
        res = [o.astype(np.float32) * np.float32(spec["scale"]) for o, spec in zip(outs, self.outputs)]
        return res[0] if len(res) == 1 else res


def load(path: str, threads: int | None = None) -> CompiledModel:
    """Load `path/model.so` + `path/model.json` (or a .so with its .json beside it). `threads`: see
    the module docstring (default: the physical cores, unless TVM_NUM_THREADS says otherwise)."""
    so = os.path.join(path, "model.so") if os.path.isdir(path) else path
    js = os.path.splitext(so)[0] + ".json"
    for f in (so, js):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{f} not found: is {path!r} the output directory of `dyadic compile`?")
    with open(js) as fh:
        plan = json.load(fh)
    return CompiledModel(so, plan, threads)
