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

Checks (`BuildDirError` / `InputError`, never a crash): `model.json` is parsed strictly and
validated against the plan schema (`dyadic.core.plan_schema`); `model.so` must have the size and
sha256 the plan records before it is mapped (a truncated or edited library would otherwise SIGBUS,
SIGILL or run garbage); `run_int` refuses missing inputs, non-integer dtypes, wrong shapes and
values outside the input's integer range; `run` refuses non-finite or wrongly shaped floats.
A host library built for another x86 CPU (`--cpu sapphirerapids`) records the CPU flags it needs
(`target.requires` in model.json); `load` refuses it on a CPU without them, and requests Linux's
AMX tile-data permission for a library with AMX kernels (`dyadic.runtime.cpu`), before mapping it.
A build directory is native code: load only builds from a trusted source (the checksum detects
damage, not a malicious plan and library written together).

Thread safety: one `CompiledModel` may be called from many threads. The TVM VM is not reentrant
(its registers and the pooled allocator are shared: concurrent calls segfaulted), so calls into
the library are serialized by a lock; the quantize/dequantize and input checks run outside it.
Each call already uses all the cores through TVM's thread pool.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading

import numpy as np

from dyadic.core.arith import quantize_float
from dyadic.core.errors import BuildDirError, InputError

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
    out = {}
    for i in specs:
        x = _input_array(inputs, i, "float")
        if x.dtype.kind not in "biuf":
            raise InputError(f"input {i['name']!r} has dtype {x.dtype}, not a real number type")
        # a finite sum proves every value finite in one pass (an overflow to inf only costs the full
        # check); only otherwise count them
        if x.dtype.kind == "f" and not np.isfinite(np.add.reduce(x, axis=None)) \
                and not np.isfinite(x).all():
            raise InputError(f"input {i['name']!r} has {int(x.size - np.isfinite(x).sum())} non-finite value(s) "
                             "(NaN or Inf)")
        out[i["name"]] = quantize_float(x, i["scale"], i["lo"], i["hi"], i["dtype"])
    return out


def _input_array(inputs, spec: dict, kind: str) -> np.ndarray:
    """inputs[spec name] as an array whose shape fits the plan (any batch >= 1 where it is dynamic)."""
    if not isinstance(inputs, dict):
        raise InputError(f"inputs must be a dict of arrays keyed by input name, got {type(inputs).__name__}")
    if spec["name"] not in inputs:
        raise InputError(f"no array for input {spec['name']!r} (got {sorted(map(str, inputs))})")
    x = np.asarray(inputs[spec["name"]])
    want = spec["shape"]
    if x.ndim != len(want) or tuple(x.shape[1:]) != tuple(want[1:]) or x.shape[0] < 1 \
            or (want[0] > 0 and x.shape[0] != want[0]):
        raise InputError(f"{kind} input {spec['name']!r} has shape {list(x.shape)}, the build takes "
                         f"[{'N' if want[0] < 0 else want[0]}, {', '.join(map(str, want[1:]))}]")
    return x


def check_int_inputs(specs: list[dict], q_inputs) -> list[np.ndarray]:
    """The library's integer arguments, checked: present, integer dtype, shape, inside [lo, hi]."""
    if isinstance(q_inputs, dict):
        extra = sorted(set(map(str, q_inputs)) - {i["name"] for i in specs})
        if extra:
            raise InputError(f"unknown input(s) {extra}; the build's inputs are {[i['name'] for i in specs]}")
    args = []
    for i in specs:
        q = _input_array(q_inputs, i, "integer")
        if q.dtype.kind not in "iu":
            raise InputError(f"integer input {i['name']!r} has dtype {q.dtype}: run_int takes integers "
                             f"({i['dtype']}); use run() for float inputs")
        if q.size:
            lo, hi = int(q.min()), int(q.max())
            if lo < i["lo"] or hi > i["hi"]:
                raise InputError(f"integer input {i['name']!r} has values in [{lo}, {hi}], outside the "
                                 f"{i['dtype']} range [{i['lo']}, {i['hi']}] of the build (they would wrap)")
        args.append(q.astype(i["dtype"], copy=False))
    return args


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
        try:
            self._lib = tvm_ffi.load_module(so_path)
            self._vm = self._lib["vm_load_executable"]()
            self._vm["vm_initialization"](1, 0, 2)  # kDLCPU, device 0, pooled allocator
            self._main = self._vm["main"]
        except Exception as e:  # a library that passed its checksum but is not ours (or needs another runtime)
            raise BuildDirError(f"{so_path} cannot be loaded by the TVM runtime: {' '.join(str(e).split())[:300]}") \
                from None
        self._lock = threading.Lock()  # the VM is not reentrant: see the module docstring
        self.inputs = plan["inputs"]
        self.outputs = plan["outputs"]

    def quantize_inputs(self, inputs) -> dict[str, np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = {self.inputs[0]["name"]: inputs}
        return quantize_plan_inputs(self.inputs, inputs)

    def run_int(self, q_inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if isinstance(q_inputs, np.ndarray) and len(self.inputs) == 1:
            q_inputs = {self.inputs[0]["name"]: q_inputs}
        return self._call(check_int_inputs(self.inputs, q_inputs))

    def _call(self, args: list[np.ndarray]) -> list[np.ndarray]:
        """The library on integer arguments already checked (dtype, shape, range), in input order."""
        import tvm_ffi

        args = [aligned(a) for a in args]
        with self._lock:
            out = self._main(*[tvm_ffi.from_dlpack(a) for a in args])
            outs = list(out) if len(self.outputs) > 1 else [out]
            return [np.from_dlpack(o).copy() for o in outs]

    def run(self, inputs) -> np.ndarray | list[np.ndarray]:
        """Float inputs (array or {name: array}) -> float outputs (dequantized)."""
        q = self.quantize_inputs(inputs)  # in range and of the build's dtypes by construction
        outs = self._call([q[i["name"]] for i in self.inputs])
        res = [o.astype(np.float32) * np.float32(spec["scale"]) for o, spec in zip(outs, self.outputs)]
        return res[0] if len(res) == 1 else res


def check_library(so: str, plan: dict) -> None:
    """`so` is a regular file with the size and sha256 `plan["library"]` records (before any dlopen)."""
    import stat

    from dyadic.core.plan import sha256_file

    try:
        st = os.stat(so)
    except OSError:
        raise BuildDirError(f"{so} not found: is {os.path.dirname(so) or '.'!r} the output directory of "
                            "`dyadic compile`?") from None
    if not stat.S_ISREG(st.st_mode):
        raise BuildDirError(f"{so} is not a regular file")
    lib = plan["library"]
    if st.st_size != lib["bytes"]:
        raise BuildDirError(f"{so} is {st.st_size} bytes, the plan records {lib['bytes']}: the library is damaged "
                            "(truncated or replaced); compile it again")
    if sha256_file(so) != lib["sha256"]:
        raise BuildDirError(f"{so} does not match the sha256 recorded in model.json: the library is damaged or "
                            "was modified; compile it again")


def load(path: str, threads: int | None = None) -> CompiledModel:
    """Load `path/model.so` + `path/model.json` (or a .so with its .json beside it). `threads`: see
    the module docstring (default: the physical cores, unless TVM_NUM_THREADS says otherwise).
    Raises `BuildDirError` for a missing or damaged build (see the module docstring)."""
    from dyadic.core.plan_schema import read_plan

    path = os.fspath(path)
    so = os.path.join(path, "model.so") if os.path.isdir(path) else path
    if not os.path.isdir(path) and not os.path.isfile(path):
        raise BuildDirError(f"{path} not found: is {path!r} the output directory of `dyadic compile`?")
    plan = read_plan(path)
    check_library(so, plan)
    from dyadic.runtime.cpu import prepare

    prepare(plan["target"].get("requires"), so)  # CPU flags (never a SIGILL), AMX tile-data permission
    return CompiledModel(so, plan, threads)
