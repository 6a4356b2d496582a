"""Measured `vpdpbusd` (or AVX2 `vpmaddwd`) throughput of this machine: the denominator of `dyadic bench`'s "of peak".

The nominal figure (cores x 64 MACs/cycle x the clock in /proc/cpuinfo) is wrong on machines whose
cores boost above that clock (on the 2-core znver4 VM it made ResNet-50 reach "108 %"). Instead a
kernel with ACC independent `vpdpbusd` accumulator chains per thread and no memory traffic in its
loop is built and timed; peak = 64 MACs x instructions / second, for the given thread count.
On an AVX2-only CPU (`pmadd_peak_gmacs`) the chains are `vpmaddwd` + `vpaddd` on ymm (the step the
avx2 kernels run, `intrin_avx2`): 16 MACs per `vpmaddwd`.
On an AMX host (`amx_peak_gmacs`) the chains are 4 independent 16 x 16 int32 accumulator tiles fed by
2 A and 2 B tiles loaded once (`intrin_amx`, the 2 x 2 blocking of the AMX kernels): 16 x 16 x 64 =
16,384 MACs per `tdpbusd`. The process requests AMX tile data first (`dyadic.runtime.cpu`).
"""
from __future__ import annotations

import time

ACC = 12          #: independent chains: more than latency x throughput (4-5 cycles x 1-2 per cycle)
ITERS = 200_000   #: loop trips per thread per call


def host_peak() -> tuple[str | None, str | None]:
    """(instruction, function of this module measuring it) for `dyadic bench`'s "of peak" on this host:
    `vpdpbusd` on AVX512-VNNI, `vpmaddwd` on AVX2 without AVX-512 (what the kernels run), else Nones."""
    from dyadic.backend.kernels import x86_isa
    from dyadic.targets import host_target

    from dyadic.backend.kernels import x86_amx

    tgt = host_target().tvm_target
    if x86_amx(tgt):
        return "tdpbusd", "amx_peak_gmacs"
    isa = x86_isa(tgt)
    return {"vnni": ("vpdpbusd", "vnni_peak_gmacs"), "avx2": ("vpmaddwd", "pmadd_peak_gmacs")}.get(isa, (None, None))


AMX_ITERS = 20_000  #: `tdpbusd` rounds (4 instructions, ~16 cycles each) per thread per call


def amx_kernel(threads: int):
    """The `tdpbusd` chain kernel (a TIR PrimFunc; compiled for an AMX target in `amx_peak_gmacs`)."""
    from tvm import tirx
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script.builder import ir as T

    from dyadic.backend.kernels.intrin_amx import TileOps

    ops = TileOps(16, 2, 2)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True})
            a = T.match_buffer(T.arg("a", T.handle()), (2048,), "uint8")
            b = T.match_buffer(T.arg("b", T.handle()), (2048,), "int8")
            out = T.match_buffer(T.arg("out", T.handle()), (threads * 4 * 256,), "int32")
            with T.parallel(0, threads) as p:
                ops.begin()
                for i in range(2):
                    ops.load(ops.a(i), a, i * 1024, 64)
                    ops.load(ops.b(i), b, i * 1024, 64)
                    for j in range(2):
                        ops.zero(ops.c(i, j))
                with T.serial(0, AMX_ITERS):
                    for i in range(2):
                        for j in range(2):
                            ops.dot(ops.c(i, j), ops.a(i), ops.b(j))
                for t in range(4):
                    T.evaluate(tirx.call_llvm_intrin("void", "llvm.x86.tilestored64", tirx.const(t, "int8"),
                                                     tirx.address_of(out[(p * 4 + t) * 256]), tirx.const(64, "int64")))
                ops.end()
    return ib.get()


def amx_peak_gmacs(threads: int, repeat: int = 10) -> float:
    """As `vnni_peak_gmacs`, for AMX `tdpbusd` (16,384 MACs per instruction); this host must have AMX."""
    import numpy as np
    import tvm

    from dyadic.runtime.cpu import request_amx_tile_data
    from dyadic.targets import host_target

    request_amx_tile_data("the tdpbusd peak kernel")
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 256, 2048).astype("uint8"), rng.integers(-128, 128, 2048).astype("int8")]
    lib = tvm.compile(tvm.IRModule({"main": amx_kernel(threads)}), target=host_target().tvm())
    args = [*(tvm.runtime.tensor(d) for d in data), tvm.runtime.empty((threads * 4 * 256,), "int32")]
    return _best(lib, args, repeat) * threads * AMX_ITERS * 4 / 1e9 * 16384


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


def _pmadd_kernel(threads: int):
    """ACC chains acc[k] += pmaddwd(acc[k] as int16x16, b) (int32x8), as `_kernel` for `vpdpbusd`: the
    chain's own value is the first operand, else LLVM hoists the loop-invariant product out of the loop
    (12 chains of 3 + 1 cycles latency still issue more than the 2 `vpmaddwd` per cycle a core can run)."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def main(a: T.Buffer((8,), "int32"), b: T.Buffer((16,), "int16"), out: T.Buffer((threads, ACC, 8), "int32")):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        for p in T.parallel(threads):
            acc = T.decl_buffer((ACC, 8), "int32", scope="local")
            for k in T.unroll(ACC):
                acc[k, T.ramp(0, 1, 8)] = a.vload([0], "int32x8") + T.broadcast(k, 8)
            for _ in range(ITERS):
                for k in T.unroll(ACC):
                    acc[k, T.ramp(0, 1, 8)] = acc.vload([k, 0], "int32x8") + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                        T.reinterpret(acc.vload([k, 0], "int32x8"), dtype="int16x16"), b.vload([0], "int16x16"),
                        dtype="int32x8")
            for k in T.unroll(ACC):
                out[p, k, T.ramp(0, 1, 8)] = acc.vload([k, 0], "int32x8")
    return main


def pmadd_peak_gmacs(threads: int, repeat: int = 10) -> float:
    """As `vnni_peak_gmacs`, for AVX2 `vpmaddwd` (16 MACs per instruction)."""
    import numpy as np

    rng = np.random.default_rng(0)
    data = [rng.integers(0, 256, 8).astype("int32"), rng.integers(-128, 128, 16).astype("int16")]
    return _time(_pmadd_kernel(threads), data, (threads, ACC, 8), threads, repeat) * 16


def vnni_peak_gmacs(threads: int, repeat: int = 10) -> float:
    """Best-of-`repeat` measured GMAC/s of `vpdpbusd` on `threads` threads (this machine, this process:
    its TVM thread pool must have that many threads, TVM_NUM_THREADS; `bench` runs it in a subprocess)."""
    import numpy as np

    rng = np.random.default_rng(0)
    data = [rng.integers(0, 256, 64).astype("uint8"), rng.integers(-128, 128, 64).astype("int8")]
    return _time(_kernel(threads), data, (threads, ACC, 16), threads, repeat) * 64


def _time(func, data, out_shape, threads: int, repeat: int) -> float:
    """Giga-instructions per second (ITERS x ACC per thread) of one chain kernel, best of `repeat`."""
    import tvm

    from dyadic.targets import host_target

    lib = tvm.compile(tvm.IRModule({"main": func}), target=host_target().tvm())
    args = [*(tvm.runtime.tensor(d) for d in data), tvm.runtime.empty(out_shape, "int32")]
    return _best(lib, args, repeat) * threads * ITERS * ACC / 1e9


def _best(lib, args, repeat: int) -> float:
    """1 / (the fastest of `repeat` calls, in seconds), after 0.2 s of warm-up calls."""
    t_end = time.perf_counter() + 0.2  # wake the pool's workers and let the clocks settle first
    while time.perf_counter() < t_end:
        lib(*args)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        lib(*args)
        best = min(best, time.perf_counter() - t0)
    return 1.0 / best
