"""The AVX2 dot-product step: C[16] int32 += A[4] uint8 . B[16, 4] on `vpmaddwd` (no AVX-512, no VNNI).

`vpmaddwd` (`llvm.x86.avx2.pmadd.wd`): 16 x s16 times 16 x s16 -> 8 x s32, lane q = x[2q] y[2q] +
x[2q+1] y[2q+1]. With x from uint8 activations (0..255) and y from int8 weights (-128..127) every
product is at most 255 * 128 = 32,640 in magnitude and a pair sum at most 65,280: exact in int32, no
saturation (unlike `vpmaddubsw`, whose s16 pair sums of u8 x s8 saturate at 2 x 255 x 127 > 2^15).

Operands. Each 16 x 4 int8 weight operand is stored as B[p, j, e] = W[j, 2p + e] (p the input pair,
j the output, e the input in the pair; 64 bytes, `packing.weight`), so for outputs j = 0..7 (8..15)
pair p is 16 contiguous bytes: one `vpmovsxbw` to int16x16, shared by the tile's pixels. Weights
pre-widened to int16 at compile time ran no faster on the 64ch 3x3 layer (within noise) and doubled
the weight bytes, which batch-1 late layers stream from memory.
The 4 activation bytes a0..a3 of a pixel become two int16x16 vectors [a0 a1] x 8 and [a2 a3] x 8
(zero-extended: one `vpbroadcastd` + two `vpshufb`, shared by every output block of the tile).
Then
    C[0:8]  += pmaddwd([a0 a1] x 8, B[0, 0:8])  + pmaddwd([a2 a3] x 8, B[1, 0:8])
    C[8:16] += pmaddwd([a0 a1] x 8, B[0, 8:16]) + pmaddwd([a2 a3] x 8, B[1, 8:16])
i.e. C[j] += a0 W[j,0] + a1 W[j,1] + a2 W[j,2] + a3 W[j,3]: 4 instructions (64 MACs) per step; the two
products are summed first so each accumulator half carries one dependent add per step.

16-bit activations (a transformer's LayerNorm/GELU outputs, `ops/matmul`): the pair [a0 a1] is
already an int32 word, so one `vpbroadcastd` makes [a0 a1] x 8; a pair sum is at most
2 x 32768 x 128 = 2^23 in magnitude, exact in int32 (the layer's int32 bound is the verifier's).
An int16 right operand (`cpu_bmm`: 16-bit keys or values) is loaded as it is; its pair sums are
at most 2 max|a| max|b|, below the product's own bound K max|a| max|b| < 2^31 (K >= 2 once padded
to whole steps; a padded step's second term is 0).

The description's reduction is split as k = 2 k2 + k1 (k2 the pair, k1 the input in it), the same
two reduction axes `cpu_conv.conv_func` uses for this isa, so tensorize matches B[k2, i, k1] directly.
As in `intrin`, the implementation is single-expression buffer stores (no Python-level temporaries).
"""
from __future__ import annotations

from tvm.script import tirx as T

PMADD_INTRIN = "dyadic_dot_16x4_avx2_pmaddwd"
_LLVM = "llvm.x86.avx2.pmadd.wd"
_done: set[str] = set()


def _desc(a_dtype: str, b_dtype: str):
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer((2, 16, 2), b_dtype, offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:2, 0:16, 0:2])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k2 in T.serial(0, 2):
                    for k1 in T.serial(0, 2):
                        with T.sblock("update"):
                            vi, vk2, vk1 = T.axis.remap("SRR", [i, k2, k1])
                            C[vi] = C[vi] + T.cast(A[vk2 * 2 + vk1], "int32") * T.cast(B[vk2, vi, vk1], "int32")
    return desc


def _pair(A, p: int):
    """[a_2p a_2p+1] x 8 as int16x16: the pixel's 4-byte word broadcast to 8 lanes (`vpbroadcastd`
    from memory, no ALU), then one `vpshufb` picks bytes 2p, 2p+1 and zeroes the high byte of each
    int16 (mask byte 0x80). Written as TIR shuffle + zero-extension instead, LLVM emits a scalar
    load, shift, two `vmovd`, `vpbroadcastw` and `vpmovzxbw`: the 64ch 3x3 layer ran ~1.3-1.7x slower."""
    word = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8), dtype="int8x32")
    mask = (2 * p) | (0x80 << 8) | ((2 * p + 1) << 16) | (0x80 << 24)  # bytes [2p, 0x80, 2p+1, 0x80]
    mask = T.reinterpret(T.broadcast(T.int32(mask - (1 << 32)), 8), dtype="int8x32")
    return T.reinterpret(T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pshuf.b"), word, mask,
                                                 dtype="int8x32"), dtype="int16x16")


def _pair16(A, p: int):
    """[a_2p a_2p+1] x 8 of 16-bit activations: their 32-bit word broadcast (`vpbroadcastd`), no shuffle."""
    return T.reinterpret(T.broadcast(T.reinterpret(A.vload([2 * p], "int16x2"), dtype="int32"), 8), dtype="int16x16")


def _impl(a_dtype: str, b_dtype: str):
    pair = _pair16 if a_dtype == "int16" else _pair

    def wide_b(B, p: int, half: int):
        if b_dtype == "int16":
            return B.vload([p, 8 * half, 0], dtype="int16x16")
        return T.Cast("int16x16", B.vload([p, 8 * half, 0], dtype="int8x16"))

    def mad(A, B, p: int, half: int):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(_LLVM), pair(A, p), wide_b(B, p, half),
                                       dtype="int32x8")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer((2, 16, 2), b_dtype, offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:2, 0:16, 0:2])
            T.writes(C[0:16])
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + (mad(A, B, 0, 0) + mad(A, B, 1, 0))
            C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + (mad(A, B, 0, 1) + mad(A, B, 1, 1))
    return impl


def register_pmadd(a_dtype: str = "uint8", b_dtype: str = "int8") -> str:
    """Register the step for uint8 (`PMADD_INTRIN`) or int16 activations, and int8 weights or int16
    right operands (a product of two 16-bit activations, `cpu_bmm`), once; returns its name."""
    from tvm.s_tir import TensorIntrin

    name = PMADD_INTRIN if (a_dtype, b_dtype) == ("uint8", "int8") else f"{PMADD_INTRIN}_{a_dtype}_{b_dtype}"
    if name not in _done:
        TensorIntrin.register(name, _desc(a_dtype, b_dtype), _impl(a_dtype, b_dtype), override=True)
        _done.add(name)
    return name
