"""The int16 dot-product step: C[16] int32 += A[4] int16 . B[16, 4] on AVX2 `vpmaddwd` (no AVX-512, no
VNNI) or, on AVX512-VNNI hosts, `vpdpwssd` (the `vnni16` isa: 16-bit activations there).

`vpmaddwd` (`llvm.x86.avx2.pmadd.wd`): 16 x s16 times 16 x s16 -> 8 x s32, lane q = x[2q] y[2q] +
x[2q+1] y[2q+1]. With x from 8-bit activations (uint8 0..255 or int8, widened to int16 as they are,
no offset) and y from int8 weights (-128..127) every product is at most 255 * 128 = 32,640 in
magnitude and a pair sum at most 65,280: exact in int32, no saturation. (`vpmaddubsw`, u8 x s8 pairs
summed in int16, has more MACs per cycle on Zen 3 but saturates at 2 x 255 x 127 > 2^15; making it
exact needs every same-sign weight pair to sum to at most 128, which costs ResNet-50's weights
15 dB of SQNR, or 7-bit weights, 6 dB: not taken.)

Operands. Each 16 x 4 int8 weight operand is stored as B[p, j, e] = W[j, 2p + e] (p the input pair,
j the output, e the input in the pair; 64 bytes, `packing.weight`), so for outputs j = 0..7 (8..15)
pair p is 16 contiguous bytes: one `vpmovsxbw` to int16x16, shared by the tile's pixels. Weights
pre-widened to int16 at compile time ran no faster (within noise on six ResNet-50 layers) and
doubled the weight bytes, which batch-1 late layers stream from memory.
The activations are int16 in memory: every AVX2 conv's first stage (the pad/pack copy of `cpu_conv`)
widens its 8-bit input, so the pair [a0 a1] of a pixel is one 32-bit word and [a0 a1] x 8 is one
`vpbroadcastd` from memory, no ALU. (Widening in registers instead, one `vpbroadcastd` + two
`vpshufb` per pixel and step, left the kernels ALU-bound: on ResNet-50's layers, 1 thread, Zen 3,
34-60 GMAC/s against 56-68 with the widening copy; the `vpmaddwd` chain peak there is ~76.)
Then
    C[0:8]  += pmaddwd([a0 a1] x 8, B[0, 0:8])  + pmaddwd([a2 a3] x 8, B[1, 0:8])
    C[8:16] += pmaddwd([a0 a1] x 8, B[0, 8:16]) + pmaddwd([a2 a3] x 8, B[1, 8:16])
i.e. C[j] += a0 W[j,0] + a1 W[j,1] + a2 W[j,2] + a3 W[j,3]: 4 instructions (64 MACs) per step; the two
products are summed first so each accumulator half carries one dependent add per step.

16-bit activations (`--wide-activations`, a transformer's LayerNorm/GELU outputs) take the same step;
a pair sum is at most 2 x 32768 x 128 = 2^23 in magnitude, exact in int32 (the layer's int32 bound
is the verifier's). An int16 right operand (`cpu_bmm`: 16-bit keys or values) is loaded as it is;
its pair sums are at most 2 max|a| max|b|, below the product's own bound K max|a| max|b| < 2^31
(K >= 2 once padded to whole steps; a padded step's second term is 0).

AVX512-VNNI (`vnni16`): the same operands, one zmm per accumulator: `vpdpwssd` (`llvm.x86.avx512.
vpdpwssd.512`: per int32 lane j, C[j] += x[2j] y[2j] + x[2j+1] y[2j+1], no saturation) with x the pair
[a_2p a_2p+1] broadcast to all 16 lanes and y = B[p] (32 bytes: outputs 0..15 x 2 inputs) sign-extended
to int16x32: two instructions (64 MACs) and two `vpmovsxbw` (shared by the tile's pixels) per step, where
the AVX2 form needs 4 + 2 adds on half-width vectors. `vpdpbusd` would take 8-bit codes only; this is the
16-bit codes' step on VNNI hosts (`--wide-activations`, attention's int16 products). Exactness is the
AVX2 argument: the same pair sums, accumulated in int32 with the verifier's bound on the whole sum.

The description's reduction is split as k = 2 k2 + k1 (k2 the pair, k1 the input in it), the same
two reduction axes `cpu_conv.conv_func` uses for this isa, so tensorize matches B[k2, i, k1] directly.
As in `intrin`, the implementation is single-expression buffer stores (no Python-level temporaries).
"""
from __future__ import annotations

from tvm.script import tirx as T

from dyadic.backend.kernels.intrin import dw_desc

PMADD_INTRIN = "dyadic_dot_16x4_avx2_pmaddwd_i16"
DPWSSD_INTRIN = "dyadic_dot_16x4_avx512_vpdpwssd_i16"
_LLVM = "llvm.x86.avx2.pmadd.wd"
_LLVM_512 = "llvm.x86.avx512.vpdpwssd.512"
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


def _pair16(A, p: int, lanes: int = 8):
    """[a_2p a_2p+1] x lanes of int16 activations: their 32-bit word broadcast (`vpbroadcastd`), no shuffle."""
    return T.reinterpret(T.broadcast(T.reinterpret(A.vload([2 * p], "int16x2"), dtype="int32"), lanes),
                         dtype=f"int16x{2 * lanes}")


def _wide_b(B, b_dtype: str, p: int, j0: int, lanes: int):
    """Outputs j0 .. j0 + lanes of input pair p as int16 pairs (int8 weights sign-extended)."""
    if b_dtype == "int16":
        return B.vload([p, j0, 0], dtype=f"int16x{2 * lanes}")
    return T.Cast(f"int16x{2 * lanes}", B.vload([p, j0, 0], dtype=f"int8x{2 * lanes}"))


def _impl(a_dtype: str, b_dtype: str):
    def mad(A, B, p: int, half: int):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(_LLVM), _pair16(A, p),
                                       _wide_b(B, b_dtype, p, 8 * half, 8), dtype="int32x8")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer((2, 16, 2), b_dtype, offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:2, 0:16, 0:2])
            T.writes(C[0:16])
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + (mad(A, B, 0, 0) + mad(A, B, 1, 0))
            C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + (mad(A, B, 0, 1) + mad(A, B, 1, 1))
    return impl


def _impl_512(a_dtype: str, b_dtype: str):
    def dp(acc, A, B, p: int):  # acc + [a_2p a_2p+1] x 16 . B[p] on one zmm
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(_LLVM_512), acc, _pair16(A, p, 16),
                                       _wide_b(B, b_dtype, p, 0, 16), dtype="int32x16")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer((2, 16, 2), b_dtype, offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:2, 0:16, 0:2])
            T.writes(C[0:16])
            C[T.ramp(T.int32(0), 1, 16)] = dp(dp(C.vload([0], dtype="int32x16"), A, B, 0), A, B, 1)
    return impl


def register_pmadd(b_dtype: str = "int8", isa: str = "avx2") -> str:
    """Register the step (int16 activations) for int8 weights or int16 right operands (a product of two
    16-bit activations, `cpu_bmm`) on `isa` ("avx2": `vpmaddwd`, "vnni16": `vpdpwssd`), once; returns its
    name."""
    from tvm.s_tir import TensorIntrin

    a_dtype = "int16"
    base = DPWSSD_INTRIN if isa == "vnni16" else PMADD_INTRIN
    name = base if b_dtype == "int8" else f"{base}_{b_dtype}"
    if name not in _done:
        impl = _impl_512 if isa == "vnni16" else _impl
        TensorIntrin.register(name, _desc(a_dtype, b_dtype), impl(a_dtype, b_dtype), override=True)
        _done.add(name)
    return name


# ---------------------------------------------------------------------------------------------
# Depthwise taps of 16-bit codes on AVX512-VNNI (`ConvSpec.dw_pairs`): C[16] int32 += sum_{t<2}
# A[t, j] B[j, t] for the 16 channels j of a block, A = 2 consecutive pixels x 16 channels (32 int16,
# 64 contiguous bytes of the staged layout), B those taps' int8 weights (or int16 ones, read as they
# are). One word shuffle (`vpermw`) makes A channel-major [j][t], a `vpmovsxbw` widens int8 B: one `vpdpwssd` per 2 taps of 16 channels,
# where the int32 fallback multiplies (`vpmulld`) and adds once per tap. Exact as the step above.
DW_PAIRS_INTRIN = "dyadic_dw_2tap_vpdpwssd_i16"


def _dw_impl(w_dtype: str = "int8"):
    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2, 16), "int16", offset_factor=1), B: T.Buffer((16, 2), w_dtype, offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:2, 0:16], B[0:16, 0:2])
            T.writes(C[0:16])
            wv = B.vload([0, 0], dtype=f"{w_dtype}x32")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(_LLVM_512), C.vload([0], dtype="int32x16"),
                T.Shuffle([A.vload([0, 0], dtype="int16x32")], [t * 16 + j for j in range(16) for t in range(2)]),
                wv if w_dtype == "int16" else T.Cast("int16x32", wv), dtype="int32x16")
    return impl


def register_dw_pairs(w_dtype: str = "int8") -> str:
    """The 2-tap step for int8 weights (widened by `vpmovsxbw`) or int16 ones (9-16-bit weights of a
    16-bit input, `passes/widen_weights`: `vpdpwssd` reads them as they are), once; its name."""
    from tvm.s_tir import TensorIntrin

    name = DW_PAIRS_INTRIN if w_dtype == "int8" else f"{DW_PAIRS_INTRIN}_w{w_dtype}"
    if name not in _done:
        TensorIntrin.register(name, dw_desc("int16", taps=2, w_dtype=w_dtype), _dw_impl(w_dtype), override=True)
        _done.add(name)
    return name


# ---------------------------------------------------------------------------------------------
# Depthwise taps on AVX2 (`ConvSpec.dw_pmadd`): C[16] int32 += A[j] B[j] for the 16 channels j of one
# tap, A 8- or 16-bit codes, B int8 (or int16) weights. The int32-lane form multiplies with `vpmulld`, a slower
# instruction than `vpmaddwd` (on Skylake two uops and twice the latency; on Zen 1 the kernel took 16 %
# less time with this step and the requant of `intrin.requant_hi32_x16(odd_shuffle)` together).
# `vpmaddwd` computes x[2q] y[2q] + x[2q+1] y[2q+1] per int32 lane q; with x = A[q] extended to 32 bits
# (its high half 0 or -1) and y = B[q] sign-extended to 16 bits and then *zero*-extended to 32 (its high
# half 0), that is A[q] B[q] + x_hi * 0 = A[q] B[q] exactly (|A|, |B| <= 2^15: one int16 product; the
# sum of 9..12-bit weights' products stays in int32 by `widest_input_bits`).
# LLVM does not find this itself: it needs one operand with 17 zero high bits, and sign extensions wider
# than 128 bits are not rewritten.
DW_PMADD_INTRIN = "dyadic_dw_1tap_pmaddwd"


def _dw1_desc(a_dtype: str, w_dtype: str = "int8"):
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((16,), a_dtype, offset_factor=1), B: T.Buffer((16,), w_dtype, offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:16], B[0:16])
            T.writes(C[0:16])
            for j in T.serial(0, 16):
                with T.sblock("update"):
                    vj = T.axis.remap("S", [j])
                    C[vj] = C[vj] + T.cast(A[vj], "int32") * T.cast(B[vj], "int32")
    return desc


def _dw1_impl(a_dtype: str, w_dtype: str = "int8"):
    def half(A, B, h: int):
        x = T.reinterpret(T.Cast("int32x8", A.vload([8 * h], f"{a_dtype}x8")), dtype="int16x16")
        wv = B.vload([8 * h], f"{w_dtype}x8")
        y = T.reinterpret(T.Cast("int32x8", T.Cast("uint16x8", wv if w_dtype == "int16" else T.Cast("int16x8", wv))),
                          dtype="int16x16")
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(_LLVM), x, y, dtype="int32x8")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((16,), a_dtype, offset_factor=1), B: T.Buffer((16,), w_dtype, offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:16], B[0:16])
            T.writes(C[0:16])
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + half(A, B, 0)
            C[T.ramp(T.int32(8), 1, 8)] = C.vload([8], dtype="int32x8") + half(A, B, 1)
    return impl


def register_dw_pmadd(a_dtype: str, w_dtype: str = "int8") -> str:
    """Register the one-tap depthwise step for `a_dtype` codes (uint8, int8 or int16) and `w_dtype`
    weights (int8, or int16: 9-16-bit weights of a 16-bit input, `passes/widen_weights`), once; its name."""
    from tvm.s_tir import TensorIntrin

    name = f"{DW_PMADD_INTRIN}_{a_dtype}" + ("" if w_dtype == "int8" else f"_w{w_dtype}")
    if name not in _done:
        TensorIntrin.register(name, _dw1_desc(a_dtype, w_dtype), _dw1_impl(a_dtype, w_dtype), override=True)
        _done.add(name)
    return name
