"""The tensor intrinsics of the aarch64 kernels: the x86 ones' operand shapes, on NEON dot products.

The kernels (`cpu_conv`, shared by both ISAs) see the same 16 x 4 weight operand and the same
16-lane int32 accumulator as on x86; here one such step is four 128-bit dot products, each
acc[j] += sum_{i<4} a[4j+i] * b[4j+i] on 4 int32 lanes:

* "sdot" (Armv8.2 dotprod: Cortex-A55/A76, Neoverse-N1): both operands signed. The activation
  operand is int8, so unsigned activations are fed as x - 128 and the weight-row-sum correction
  folded into the bias (`packing.bias`, offset -128; see `spec.ConvSpec.offset`).
* "usdot" (Armv8.6 i8mm: Neoverse-V1): unsigned x signed, like `vpdpbusd`; signed activations get
  the +128 offset as on x86.

DOT_16x4: C[16] += A[4] . B[16, 4], A the 4 input channels (or taps) of one pixel broadcast to every
lane group (LLVM emits the by-element form `sdot v.4s, v.16b, v.4b[0]`).
DW_4TAP: C[16] += sum_t A[t, j] * B[j, t], 4 taps x 16 channels: a byte shuffle to channel-major,
then four dot products. As in `intrin`, the implementations are single expressions per store.
"""
from __future__ import annotations

from tvm.script import tirx as T

from dyadic.backend.kernels.intrin import dot_16x4_desc, dw_desc

_LLVM = {"sdot": "llvm.aarch64.neon.sdot.v4i32.v16i8", "usdot": "llvm.aarch64.neon.usdot.v4i32.v16i8"}
_A = {"sdot": "int8", "usdot": "uint8"}
_done: set[str] = set()


def dot_name(isa: str) -> str:
    return f"dyadic_dot_16x4_{isa}"


def dw_name(isa: str) -> str:
    return f"dyadic_dw_4tap_{isa}"


def _make_dot(isa: str):
    a_dt, llvm = _A[isa], _LLVM[isa]

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), a_dt, offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for q in T.unroll(4):
                C[T.ramp(q * 4, 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm), C.vload([q * 4], dtype="int32x4"),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], a_dt + "x4"), dtype="int32"), 4),
                                  dtype=a_dt + "x16"),
                    B.vload([q * 4, 0], dtype="int8x16"), dtype="int32x4")
    return dot_16x4_desc(a_dt), impl


def _make_dw(isa: str):
    a_dt, llvm = _A[isa], _LLVM[isa]
    l0, l1, l2, l3 = ([t * 16 + 4 * q + j for j in range(4) for t in range(4)] for q in range(4))

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4, 16), a_dt, offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4, 0:16], B[0:16, 0:4])
            T.writes(C[0:16])
            # channels 4q..4q+3 (q = 0..3), their 4 taps each: 16 bytes gathered from A by a shuffle
            C[T.ramp(0, 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm), C.vload([0], dtype="int32x4"),
                T.Shuffle([A.vload([0, 0], dtype=a_dt + "x64")], l0), B.vload([0, 0], dtype="int8x16"), dtype="int32x4")
            C[T.ramp(4, 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm), C.vload([4], dtype="int32x4"),
                T.Shuffle([A.vload([0, 0], dtype=a_dt + "x64")], l1), B.vload([4, 0], dtype="int8x16"), dtype="int32x4")
            C[T.ramp(8, 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm), C.vload([8], dtype="int32x4"),
                T.Shuffle([A.vload([0, 0], dtype=a_dt + "x64")], l2), B.vload([8, 0], dtype="int8x16"), dtype="int32x4")
            C[T.ramp(12, 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm), C.vload([12], dtype="int32x4"),
                T.Shuffle([A.vload([0, 0], dtype=a_dt + "x64")], l3), B.vload([12, 0], dtype="int8x16"),
                dtype="int32x4")
    return dw_desc(a_dt), impl


def register(isa: str) -> tuple[str, str]:
    """Register (once) and return the (dot, depthwise) intrinsic names for 'sdot' or 'usdot'."""
    from tvm.s_tir import TensorIntrin

    if isa not in _done:
        TensorIntrin.register(dot_name(isa), *_make_dot(isa), override=True)
        TensorIntrin.register(dw_name(isa), *_make_dw(isa), override=True)
        _done.add(isa)
    return dot_name(isa), dw_name(isa)


# ---------------------------------------------------------------------------------------------
# MMLA_2x16x8 (i8mm `usmmla`): C[q, e] += sum_{k<8} A[e // 2, k] * B[2q + e % 2, k] for q < 8, e < 4:
# 2 pixels (rows of A, 8 input channels each; A's row stride is free: the pixels sit `stride`
# packed positions apart) times 16 output channels, as eight 2x2 tiles. One `usmmla` computes the
# 2x2 int32 tile [p0o0, p0o1, p1o0, p1o1] of output channels 2q, 2q+1: the accumulator layout
# C[q, e] is the instruction's own, so the reduction loop never shuffles (the kernel un-permutes
# each finished tile once, before the epilogue).
MMLA_INTRIN = "dyadic_mmla_2x16x8_usmmla"


@T.prim_func(s_tir=True)
def _mmla_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    s0 = T.int32()
    A = T.match_buffer(a, (2, 8), "uint8", offset_factor=1, strides=[s0, 1])
    B = T.match_buffer(b, (16, 8), "int8", offset_factor=1)
    C = T.match_buffer(c, (8, 4), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:8, 0:4], A[0:2, 0:8], B[0:16, 0:8])
        T.writes(C[0:8, 0:4])
        for q, e, k in T.grid(8, 4, 8):
            with T.sblock("update"):
                vq, ve, vk = T.axis.remap("SSR", [q, e, k])
                C[vq, ve] = C[vq, ve] + T.cast(A[ve // 2, vk], "int32") * T.cast(B[vq * 2 + ve % 2, vk], "int32")


@T.prim_func(s_tir=True)
def _mmla_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    s0 = T.int32()
    A = T.match_buffer(a, (2, 8), "uint8", offset_factor=1, strides=[s0, 1])
    B = T.match_buffer(b, (16, 8), "int8", offset_factor=1)
    C = T.match_buffer(c, (8, 4), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:8, 0:4], A[0:2, 0:8], B[0:16, 0:8])
        T.writes(C[0:8, 0:4])
        for q in T.unroll(8):
            C[q, T.ramp(0, 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.usmmla.v4i32.v16i8"), C.vload([q, 0], dtype="int32x4"),
                T.Shuffle([A.vload([0, 0], dtype="uint8x8"), A.vload([1, 0], dtype="uint8x8")], list(range(16))),
                B.vload([q * 2, 0], dtype="int8x16"), dtype="int32x4")


def register_mmla() -> str:
    from tvm.s_tir import TensorIntrin

    if MMLA_INTRIN not in _done:
        TensorIntrin.register(MMLA_INTRIN, _mmla_desc, _mmla_impl, override=True)
        _done.add(MMLA_INTRIN)
    return MMLA_INTRIN
