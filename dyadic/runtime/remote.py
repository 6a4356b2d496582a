"""Run a built library through TVM's runtime API on a device: a remote board over TVM RPC, or a
local GPU.

    outs, ms = run_rpc("build/model.so", plan, q_inputs, "192.168.1.7:9090", reps=20)

RPC is how a board is benchmarked without copying bundles around by hand: the client uploads
model.so, the board's RPC server loads it with its own TVM runtime (aarch64 for an arm build) and
runs `main` there; only tensors travel. Timings come from TVM's `time_evaluator`, measured on the
board. Start a server on the board with either

    python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090   # TVM's own; needs `cloudpickle`
    python -m dyadic.runtime.remote --host 0.0.0.0 --port 9090  # the same server loop, in-process

The second runs TVM's listen/serve loop directly instead of through TVM's Popen worker, which is
what needs cloudpickle, and on a CPU with AMX it requests the tile-data permission first (Linux
grants it per process), so uploaded libraries with AMX kernels run; TVM's own server does not. Either server executes whatever a client uploads: trusted networks only.
"""
from __future__ import annotations

import argparse
import itertools
import os
import socket
import sys

import numpy as np

from dyadic.core.errors import TargetError, ToolchainError

_DEVICE = {"host": "cpu", "arm": "cpu", "cuda": "cuda"}
_UPLOADS = itertools.count()


def parse_address(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"--rpc expects HOST:PORT (e.g. 192.168.1.7:9090), got {addr!r}")
    return host, int(port)


def connect(addr: str):
    from tvm import rpc

    host, port = parse_address(addr)
    try:
        socket.create_connection((host, port), timeout=10).close()
        return rpc.connect(host, port)
    except Exception as e:  # noqa: BLE001  (socket and TVM errors alike mean: no usable server there)
        raise ToolchainError(f"cannot reach a TVM RPC server at {host}:{port} ({e}); start one on the board: "
                             "python -m dyadic.runtime.remote --host 0.0.0.0 --port 9090") from None


def _run_vm(lib, dev, plan: dict, q_inputs: dict[str, np.ndarray], reps: int):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    vm = VirtualMachine(lib, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(q_inputs[i["name"]].astype(i["dtype"])), dev)
            for i in plan["inputs"]]
    out = vm["main"](*args)
    outs = [out] if len(plan["outputs"]) == 1 else list(out)
    result = [o.numpy() for o in outs]
    timing = None
    if reps:
        t = vm.time_evaluator("main", dev, number=1, repeat=reps, min_repeat_ms=0)(*args)
        ms = np.array(t.results) * 1e3
        timing = {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()), "runs": reps}
    return result, timing


def run_rpc(so_path: str, plan: dict, q_inputs: dict[str, np.ndarray], addr: str, reps: int = 0):
    """Upload and run `so_path` on the RPC server at `addr`: (outputs, timing or None)."""
    sess = connect(addr)
    kind = plan["target"].get("kind", "host")
    try:
        lib, dev = load_remote(sess, so_path, kind, "dyadic_model.so")
        return _run_vm(lib, dev, plan, q_inputs, reps)
    except (ToolchainError, TargetError):
        raise
    except Exception as e:  # noqa: BLE001
        raise ToolchainError(f"running {so_path} over RPC at {addr} failed: {str(e).strip().splitlines()[-1]}. "
                             f"Is the board's TVM runtime apache-tvm 0.27 and its architecture the build's "
                             f"({plan['target']['preset']})?") from None


def load_remote(sess, so_path: str, kind: str, name: str | None = None):
    """Upload `so_path` to an open RPC session and load it there: (module, the session's device).
    Without `name` a fresh one per call: the server caches loaded modules by file name."""
    name = name or f"dyadic_layer_{os.getpid()}_{next(_UPLOADS)}.so"
    sess.upload(so_path, name)
    return sess.load_module(name), getattr(sess, _DEVICE[kind])(0)


def local_cuda_available() -> bool:
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001  (no driver, stub driver, no CUDA runtime: all mean no GPU)
        return False


def run_local(so_path: str, plan: dict, q_inputs: dict[str, np.ndarray], device: str = "cuda", reps: int = 0):
    """Run on a local device through the TVM runtime (the GPU path): (outputs, timing or None)."""
    import tvm

    lib = tvm.runtime.load_module(so_path)
    return _run_vm(lib, getattr(tvm, device)(0), plan, q_inputs, reps)


def run_build(build_dir: str, q_inputs: dict[str, np.ndarray], rpc: str | None = None, reps: int = 0,
              threads: int | None = None):
    """Run a build directory wherever its target says: over RPC, on a local GPU, as an arm bundle
    (natively or under qemu) or on this CPU. Returns (outputs, timing or None, where it ran)."""
    from dyadic.core.plan_schema import read_plan
    from dyadic.runtime import bundle
    from dyadic.runtime.loader import check_library

    plan = read_plan(build_dir)
    so, kind = os.path.join(build_dir, "model.so"), plan["target"].get("kind", "host")
    check_library(so, plan)  # size and sha256 before the library goes anywhere
    if rpc:
        outs, timing = run_rpc(so, plan, q_inputs, rpc, reps)
        return outs, timing, f"{rpc} over TVM RPC"
    if kind == "cuda":
        if not local_cuda_available():
            raise ToolchainError(f"{build_dir} is a CUDA build and there is no CUDA GPU here; use --rpc HOST:PORT")
        outs, timing = run_local(so, plan, q_inputs, "cuda", reps)
        return outs, timing, "the local GPU"
    if kind == "arm":
        outs, text = bundle.run_bundle(build_dir, plan, q_inputs, reps=reps)
        if bundle.runner_prefix():  # emulated: timings mean nothing, do not report them
            return outs, None, "qemu-user (emulated aarch64; no timing)"
        line = next((l for l in text.splitlines() if l.startswith("timing:")), None)
        timing = None if line is None else {"median_ms": float(line.split()[2]), "min_ms": float(line.split()[5]),
                                             "runs": reps}
        return outs, timing, "this aarch64 machine"
    from dyadic.runtime.loader import load

    m = load(build_dir, threads)
    outs = m.run_int(q_inputs)
    timing = None
    if reps:
        import time

        ms = []
        for _ in range(reps):
            t0 = time.perf_counter()
            m.run_int(q_inputs)
            ms.append((time.perf_counter() - t0) * 1e3)
        timing = {"median_ms": float(np.median(ms)), "min_ms": float(min(ms)), "runs": reps}
    return outs, timing, "this CPU"


def serve(host: str = "0.0.0.0", port: int = 9090, port_end: int | None = None) -> None:
    """Serve TVM RPC sessions on host:port (or the first free port below port_end) until killed."""
    from tvm.rpc.server import PopenRPCServerState

    from dyadic.runtime.cpu import cpu_flags, request_amx_tile_data

    if {"amx_int8", "amx_tile"} <= (cpu_flags() or set()):  # libraries with AMX kernels run in this process
        request_amx_tile_data("this RPC server (it runs uploaded libraries with AMX kernels)")
    try:
        state = PopenRPCServerState(host, port, max(port_end or 0, port + 1), silent=True)
    except (OSError, ValueError) as e:
        raise ToolchainError(f"cannot listen on {host}:{port}: {e}") from None
    print(f"dyadic rpc server listening on {host}:{state.port}", flush=True)
    state.thread.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dyadic.runtime.remote", description="Start a TVM RPC server "
                                 "(trusted networks only: clients can run any code).")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=9090)
    ap.add_argument("--port-end", type=int, default=None, help="try ports up to this one if --port is taken")
    a = ap.parse_args(argv)
    try:
        serve(a.host, a.port, a.port_end)
    except ToolchainError as e:
        print(f"dyadic rpc server: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
