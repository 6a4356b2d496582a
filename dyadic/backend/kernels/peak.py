"""Measured `vpdpbusd` throughput of this machine: the denominator of `dyadic bench`'s "of peak".

The nominal figure (cores x 64 MACs/cycle x the clock in /proc/cpuinfo) is wrong on machines whose
cores boost above that clock (on the 2-core znver4 VM it made ResNet-50 reach "108 %"). Instead a
kernel with ACC independent `vpdpbusd` accumulator chains per thread and no memory traffic in its
loop is built and timed; peak = 64 MACs x instructions / second, for the given thread count.
"""
from __future__ import annotations

import time

ACC = 12          #: independent chains: more than latency x throughput (4-5 cycles x 1-2 per cycle)
ITERS = 200_000   #: loop trips per thread per call


def _kernel(threads: int):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def main(a: T.Buffer((64,), "uint8"), b: T.Buffer((64,), "int8"), out: T.Buffer((threads, ACC, 16), "int32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for p in T.parallel(threads):
            acc = T.decl_buffer((ACC, 16), "int32", scope="local")
            for k in T.unroll(ACC):
                acc[k, T.ramp(0, 1, 16)] = T.broadcast(k, 16)
            for _ in range(ITERS):
                for k in T.unroll(ACC):
                    acc[k, T.ramp(0, 1, 16)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), acc.vload([k, 0], "int32x16"),
                        T.reinterpret(a.vload([0], "uint8x64"), dtype="int8x64"), b.vload([0], "int8x64"),
                        dtype="int32x16")
            for k in T.unroll(ACC):
                out[p, k, T.ramp(0, 1, 16)] = acc.vload([k, 0], "int32x16")
    return main


def vnni_peak_gmacs(threads: int, repeat: int = 10) -> float:
    """Best-of-`repeat` measured GMAC/s of `vpdpbusd` on `threads` threads (this machine, this process:
    its TVM thread pool must have that many threads, TVM_NUM_THREADS; `bench` runs it in a subprocess)."""
    import numpy as np
    import tvm

    from dyadic.targets import host_target

    lib = tvm.compile(tvm.IRModule({"main": _kernel(threads)}), target=host_target().tvm())
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.integers(0, 256, 64).astype("uint8")),
            tvm.runtime.tensor(rng.integers(-128, 128, 64).astype("int8")),
            tvm.runtime.empty((threads, ACC, 16), "int32")]
    t_end = time.perf_counter() + 0.2  # wake the pool's workers and let the clocks settle first
    while time.perf_counter() < t_end:
        lib(*args)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        lib(*args)
        best = min(best, time.perf_counter() - t0)
    return threads * ITERS * ACC * 64 / best / 1e9
