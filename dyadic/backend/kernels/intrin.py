"""The tensor intrinsics of the x86 kernels (TIR descriptions + LLVM implementations).

* VNNI_INTRIN: C[16] int32 += A[4] uint8 . B[16, 4] int8, one `vpdpbusd`. TVM 0.27's stock
  `dot_16x4_vnni` passes int32x16 operands, which the bundled LLVM rejects (the intrinsic is
  <16 x i32>, <64 x i8>, <64 x i8>); this one reinterprets the broadcast activation word and the
  weight vector as int8x64 (../shared/notes/tvm-0.27.md). Its description is TVM's
  `dot_product_16x4_u8i8i32_desc`, copied: importing `tvm.s_tir.tensor_intrin` builds every
  target's intrinsics (tens of seconds).
* REQUANT_INTRIN: the int32 requantization of 16 accumulators (below).
* DW_INTRIN: 4 depthwise taps of 16 channels, one byte shuffle + one `vpdpbusd` (below).

The implementations are single expressions: a Python-level assignment inside them would become a
"local" buffer, which TVM allocates as a heap workspace. For the same reason the accumulator tiles
must stay below 1 KiB: smaller intermediate buffers go on the stack, and LLVM promotes them to
registers once the tile is unrolled; larger ones stay in memory.
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

VNNI_INTRIN = "dyadic_dot_16x4_vnni"
_registered = False


def dot_16x4_desc(a_dtype: str = "uint8"):
    """C[16] int32 += A[4] . B[16, 4] int8 (A: `a_dtype`); shared with the aarch64 intrinsics."""
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")
    return desc


@T.prim_func(s_tir=True)
def _vnni_impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
               C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        # one expression: a Python-level assignment here would become a heap-allocated "local" buffer
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), C.vload([0], dtype="int32x16"),
            T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16), dtype="int8x64"),
            B.vload([0, 0], dtype="int8x64"), dtype="int32x16")


def register_vnni() -> None:
    global _registered
    if _registered:
        return
    from tvm.s_tir import TensorIntrin

    TensorIntrin.register(VNNI_INTRIN, dot_16x4_desc(), _vnni_impl, override=True)
    _registered = True


# ---------------------------------------------------------------------------------------------
# Requantization of 16 int32 accumulators when every shift s >= 33 (all constants int32):
#   V = ((int64(A + B) * M) >> 32 + R) >> S        with R = 2^(s-33), S = s - 32
# equals (acc * m + 2^(s-1)) >> s exactly: 2^(s-1) is a multiple of 2^32, and floor(floor(p/2^32)/2^t)
# = floor(p/2^(32+t)). The 32x32->64 products are formed on even and odd lanes with `vpmuldq` (LLVM
# emits it for products of sign-extended 32-bit halves) and their high halves interleaved back,
# instead of widening all 16 lanes to int64 and multiplying with `vpmullq`.
REQUANT_INTRIN = "dyadic_requant_hi32_16"


def _requant_desc(pre: int):
    def total(v):  # acc + bias, shifted left by `pre` (`packing.hi32_preshift`): the conv's own expression
        return T.shift_left(v, T.int32(pre)) if pre else v

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((16,), "int32", offset_factor=1), B: T.Buffer((16,), "int32", offset_factor=1),
             M: T.Buffer((16,), "int32", offset_factor=1), R: T.Buffer((16,), "int32", offset_factor=1),
             S: T.Buffer((16,), "int32", offset_factor=1), V: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(A[0:16], B[0:16], M[0:16], R[0:16], S[0:16])
            T.writes(V[0:16])
            for j in T.serial(0, 16):
                with T.sblock("rq"):
                    vj = T.axis.remap("S", [j])
                    V[vj] = T.shift_right(T.Cast("int32", T.shift_right(
                        T.Cast("int64", total(A[vj] + B[vj])) * T.Cast("int64", M[vj]), T.int64(32))) + R[vj], S[vj])
    return desc


def requant_hi32_x16(acc, mul, rnd, shf, odd_shuffle: bool = False):
    """The int32x16 expression ((int64(acc) * mul) >> 32 + rnd) >> shf of int32x16 operands, with the
    products on even and odd lanes (`vpmuldq`) as above; also used directly by the AMX epilogue.
    odd_shuffle (AVX2): the odd lanes are first copied onto the even ones (`vpshufd`) and multiplied as
    sign-extended low halves too. AVX2 has no 64-bit arithmetic shift, and for `a64 >> 32` LLVM then
    emulates a full 64 x 64 multiply (three `vpmuludq` and adds) instead of one `vpmuldq`."""
    c32 = tirx.Broadcast(tirx.const(32, "int64"), 8)
    a64, m64 = tirx.reinterpret("int64x8", acc), tirx.reinterpret("int64x8", mul)
    even = ((a64 << c32) >> c32) * ((m64 << c32) >> c32)  # sign-extended low halves
    if odd_shuffle:
        hi = [2 * (q // 2) + 1 for q in range(16)]
        ao, mo = (tirx.reinterpret("int64x8", tirx.Shuffle([v], hi)) for v in (acc, mul))
        odd = ((ao << c32) >> c32) * ((mo << c32) >> c32)
    else:
        odd = (a64 >> c32) * (m64 >> c32)
    hi = tirx.reinterpret("int32x16", tirx.bitwise_or(
        tirx.bitwise_and(even >> c32, tirx.Broadcast(tirx.const(0xFFFFFFFF, "int64"), 8)),
        tirx.bitwise_and(odd, tirx.Broadcast(tirx.const(-4294967296, "int64"), 8))))
    return tirx.shift_right(hi + rnd, shf)


def _requant_impl(odd_shuffle: bool, pre: int = 0):
    def total(A, B):
        v = A.vload([0], "int32x16") + B.vload([0], "int32x16")
        return v << T.Broadcast(T.int32(pre), 16) if pre else v

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((16,), "int32", offset_factor=1), B: T.Buffer((16,), "int32", offset_factor=1),
             M: T.Buffer((16,), "int32", offset_factor=1), R: T.Buffer((16,), "int32", offset_factor=1),
             S: T.Buffer((16,), "int32", offset_factor=1), V: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(A[0:16], B[0:16], M[0:16], R[0:16], S[0:16])
            T.writes(V[0:16])
            V[T.ramp(T.int32(0), 1, 16)] = requant_hi32_x16(total(A, B),
                                                            M.vload([0], "int32x16"), R.vload([0], "int32x16"),
                                                            S.vload([0], "int32x16"), odd_shuffle)
    return impl


def register_requant(isa: str = "", pre: int = 0) -> str:
    """Register the int32 requant (its AVX2 form for isa "avx2", see `requant_hi32_x16`; with acc + bias
    shifted left by `pre` first, `packing.hi32_preshift`), once; its name."""
    from tvm.s_tir import TensorIntrin

    name = REQUANT_INTRIN + ("_avx2" if isa == "avx2" else "") + (f"_pre{pre}" if pre else "")
    if name not in _done:
        TensorIntrin.register(name, _requant_desc(pre), _requant_impl(isa == "avx2", pre), override=True)
        _done.add(name)
    return name


_done: set[str] = set()


# ---------------------------------------------------------------------------------------------
# Depthwise taps: C[16] int32 += sum_{t<4} A[t, j] * B[j, t] for the 16 channels j of a block, where
# A is 4 consecutive pixels x 16 channels (64 contiguous bytes of the packed layout) and B the
# channels' weights for those 4 taps. A byte shuffle (one `vpermb`) turns pixel-major A into the
# channel-major [j][t] operand of one `vpdpbusd`: 64 multiply-adds per instruction pair.
DW_INTRIN = "dyadic_dw_4tap_vnni"


def dw_desc(a_dtype: str = "uint8", taps: int = 4, w_dtype: str = "int8"):
    """C[16] int32 += sum_t A[t, j] * B[j, t] (taps x 16 channels); shared with aarch64 and the 2-tap
    16-bit step (`intrin_avx2.DW_PAIRS_INTRIN`, int8 or int16 weights)."""
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((taps, 16), a_dtype, offset_factor=1), B: T.Buffer((16, taps), w_dtype, offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:taps, 0:16], B[0:16, 0:taps])
            T.writes(C[0:16])
            for j in T.serial(0, 16):
                for t in T.serial(0, taps):
                    with T.sblock("update"):
                        vj, vt = T.axis.remap("SR", [j, t])
                        C[vj] = C[vj] + T.cast(A[vt, vj], "int32") * T.cast(B[vj, vt], "int32")
    return desc


@T.prim_func(s_tir=True)
def _dw_impl(A: T.Buffer((4, 16), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4, 0:16], B[0:16, 0:4])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), C.vload([0], dtype="int32x16"),
            T.reinterpret(T.Shuffle([A.vload([0, 0], dtype="uint8x64")], [t * 16 + j for j in range(16) for t in range(4)]),
                          dtype="int8x64"),
            B.vload([0, 0], dtype="int8x64"), dtype="int32x16")


def register_dw() -> None:
    from tvm.s_tir import TensorIntrin

    if DW_INTRIN not in _done:
        TensorIntrin.register(DW_INTRIN, dw_desc(), _dw_impl, override=True)
        _done.add(DW_INTRIN)


