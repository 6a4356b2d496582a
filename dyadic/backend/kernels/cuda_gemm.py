"""Integer convolution / dense as an implicit GEMM on CUDA tensor cores (`mma.sync`), requant fused.

GEMM view of an NCHW conv (dense: H = W = KH = KW = 1):

    acc[m, o] = sum_k A[m, k] * B[o, k]       m = (b, oh, ow) flattened, k = (c, ky, kx) flattened
    A[m, k]   = x[b, c, oh*sh - pt + ky*dh, ow*sw - pl + kx*dw]   (0 outside the image: implicit im2col)
    B[o, k]   = W[o, c, ky, kx]
    y[b, o, oh, ow] = clip(((acc + bias[o]) * m[o] + 2^(s[o]-1)) >> s[o], lo, hi)   (int64, as dyadic.arith)

Operands travel as 32-bit words of E packed elements, element i in bits [i*32/E, (i+1)*32/E):
E = 4 bytes (int8 MMA: s8 x s8 or u8 x s8) or E = 8 nibbles (int4 MMA: s4 x s4 or u4 x s4).
In words, every MMA used is a (MM x 8 x KWM words) tile: m16n8k32 / m16n8k64 (sm_80+, MM=16, KWM=8)
or m8n8k16 / m8n8k32 (sm_75, MM=8, KWM=4). With g = lane >> 2, t = lane & 3 (PTX ISA fragment maps):

    A reg r  <- A[g + 8*(r % 2), t + 4*(r // 2)]     r < (MM/8)*(KWM/4)
    B reg r  <- B[n = g, kword = t + 4*r]             r < KWM/4
    C reg i  -> C[g + 8*(i // 2), 2*t + i % 2]        i < 2*MM/8

Weights are packed on the host into words [NP, KWP] (NP = O rounded up to BN, KWP = words rounded up
to BKW, zero padded). `w_unpack`: the host holds 4-bit weights as nibble words [NP, KWP/2] (half a
byte each) and the B tile load sign-extends them to int8 words (int4 weights x 8-bit activations,
or any int4 layer on sm_90, which has no int4 MMA).

Block = WM x WN warps, each MM*TM x 8*TN outputs; per K step of BKW words the block gathers
A[BM, BKW] (im2col) and B[BN, BKW] into shared memory, then each warp loads fragments and issues
TM*TN MMAs per KWM words. `emulate=True` builds the same loops for the CPU: thread loops serial,
fragments get (warp, lane) dimensions, and each `mma.sync` is replaced by its definition over the
fragment maps above, so the tiling, im2col and fragment indexing are testable bit-exactly on llvm.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T
from tvm import tirx

from dyadic.backend.kernels.spec import ConvGeometry, ceil_div


@dataclass(frozen=True)
class GemmSpec(ConvGeometry):
    in_dtype: str                     # uint8 | int8 (4-bit activations also travel in these)
    out_dtype: str
    lo: int
    hi: int
    a4: bool                          # int4 MMA (4-bit activations and weights)
    w_unpack: bool                    # int4 weights stored as nibbles, unpacked to int8 for the MMA
    sm: int                           # 75, 80, 86, 89, 90

    @property
    def e(self) -> int:                # elements per operand word
        return 8 if self.a4 else 4

    @property
    def k(self) -> int:
        return self.c * self.kh * self.kw

    @property
    def mm(self) -> int:
        return 16 if self.sm >= 80 else 8

    @property
    def kwm(self) -> int:              # words of K per MMA
        return 8 if self.sm >= 80 else 4

    @property
    def mma_shape(self) -> str:
        return {(16, 4): "m16n8k32", (16, 8): "m16n8k64", (8, 4): "m8n8k16", (8, 8): "m8n8k32"}[(self.mm, self.e)]

    @property
    def a_type(self) -> str:
        u = self.in_dtype == "uint8"
        return ("uint4" if u else "int4") if self.a4 else ("uint8" if u else "int8")

    @property
    def b_type(self) -> str:
        return "int4" if self.a4 else "int8"

    @property
    def bn(self) -> int:
        return 16 if self.o <= 16 else 32 if self.o <= 32 else 64

    @property
    def wn(self) -> int:
        return 1 if self.bn <= 32 else 2

    WM, BKW, BM = 2, 16, 64            # warps along M, words per K step, rows per block

    @property
    def np_(self) -> int:
        return ceil_div(self.o, self.bn) * self.bn

    @property
    def kwp(self) -> int:              # K words (E elements each) rounded up to BKW
        return ceil_div(ceil_div(self.k, self.e), self.BKW) * self.BKW

    @property
    def w_words(self) -> tuple[int, int]:
        """Shape of the packed uint32 weight argument."""
        return (self.np_, self.kwp // 2) if self.w_unpack else (self.np_, self.kwp)


def _ext(word, i: int, bits: int, signed: bool):
    """Element i of a packed uint32 word, as int32 (sign-extended when signed)."""
    shift = tirx.const(i * bits, "uint32") if isinstance(i, int) else tirx.Cast("uint32", i * bits)
    v = tirx.Cast("int32", (word >> shift) & tirx.const((1 << bits) - 1, "uint32"))
    return tirx.if_then_else(v >= (1 << (bits - 1)), v - (1 << bits), v) if signed else v


def _pack(vals, bits: int):
    """uint32 word of int32 element values (two's complement, truncated to `bits`)."""
    word = None
    for i, v in enumerate(vals):
        part = tirx.Cast("uint32", v & ((1 << bits) - 1)) << tirx.const(i * bits, "uint32")
        word = part if word is None else word | part
    return word


def gemm_func(sp: GemmSpec, emulate: bool = False) -> tirx.PrimFunc:
    """The PrimFunc (x, w_words, bias, m, 2^(s-1), s) -> y for `sp` (see the module docstring)."""
    C, H, W, O, KH, KW = sp.c, sp.h, sp.w, sp.o, sp.kh, sp.kw
    (SH, SW), (DH, DW), (PT, PL, _, _) = sp.stride, sp.dil, sp.pads
    OH, OW = sp.out_hw
    OHW, K, E, EB = OH * OW, sp.k, sp.e, 32 // sp.e
    MM, KWM, WM, WN, BM, BN, BKW = sp.mm, sp.kwm, sp.WM, sp.wn, sp.BM, sp.bn, sp.BKW
    TM, TN = BM // (WM * MM), BN // (WN * 8)
    NA, NB, NC = (MM // 8) * (KWM // 4), KWM // 4, 2 * MM // 8
    NT, NWARP, BKS = 32 * WM * WN, WM * WN, BKW + 4       # threads; warps; shared row stride (words)
    NP, KWP = sp.np_, sp.kwp
    NKT, NBN = KWP // BKW, NP // BN
    A_IT, B_IT = BM * BKW // NT, BN * BKW // NT
    WSHAPE = sp.w_words
    IN, OUT, LO, HI = sp.in_dtype, sp.out_dtype, sp.lo, sp.hi
    a_signed, EMU = IN == "int8", emulate
    SHARED, LOCAL = ("global", "global") if EMU else ("shared", "local")
    LANES = (NWARP, 32) if EMU else (1, 1)

    def loop(tag):
        return (lambda n: T.serial(n)) if EMU else (lambda n: T.thread_binding(n, thread=tag))

    BX, BY, TY, TX = loop("blockIdx.x"), loop("blockIdx.y"), loop("threadIdx.y"), loop("threadIdx.x")

    def ly(ty):
        return ty if EMU else 0

    def lx(tx):
        return tx if EMU else 0

    def a_word(x, mtot, m, wc):
        """im2col word (row m, K word wc) of the input."""
        b, p = m // OHW, m % OHW
        oh, ow = p // OW, p % OW
        vals = []
        for i in range(E):
            k = wc * E + i
            c, r = k // (KH * KW), k % (KH * KW)
            ih, iw = oh * SH - PT + (r // KW) * DH, ow * SW - PL + (r % KW) * DW
            ok = tirx.all(m < mtot, k < K, ih >= 0, ih < H, iw >= 0, iw < W)
            vals.append(tirx.if_then_else(ok, tirx.Cast("int32", x[b, c, ih, iw]), 0))
        return _pack(vals, EB)

    def b_word(w, row, wc):
        if not sp.w_unpack:
            return w[row, wc]
        src = w[row, wc // 2]
        nib = [tirx.Cast("uint32", (src >> tirx.Cast("uint32", (wc % 2) * 16 + 4 * i)) & tirx.const(15, "uint32"))
               for i in range(4)]
        return _pack([tirx.Cast("int32", v | ((v & tirx.const(8, "uint32")) * tirx.const(30, "uint32")))
                      for v in nib], 8)

    def mma_emulate(acc, afr, bfr, ty, tm, tn, row, col, kwd, i):
        """acc += A * B for one element product of the (tm, tn) MMA of warp ty (PTX fragment maps)."""
        a = afr[ty, (row % 8) * 4 + kwd % 4, tm, row // 8 + 2 * (kwd // 4)]
        b = bfr[ty, col * 4 + kwd % 4, tn, kwd // 4]
        return acc[ty, (row % 8) * 4 + col // 2, tm, tn, (row // 8) * 2 + col % 2] + \
            _ext(a, i, EB, a_signed) * _ext(b, i, EB, True)

    def requant(v, bias, mq, rq, sq, col):
        z = (tirx.Cast("int64", v) + tirx.Cast("int64", bias[col])) * mq[col] + rq[col]
        z = z >> sq[col]
        return tirx.Cast(OUT, tirx.max(tirx.min(z, tirx.const(HI, "int64")), tirx.const(LO, "int64")))

    @T.prim_func
    def func(x_h: T.handle, w: T.Buffer(WSHAPE, "uint32"), bias: T.Buffer((NP,), "int32"),
             mq: T.Buffer((NP,), "int64"), rq: T.Buffer((NP,), "int64"), sq: T.Buffer((NP,), "int64"),
             y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        n = T.int64()
        x = T.match_buffer(x_h, (n, C, H, W), IN)
        y = T.match_buffer(y_h, (n, O, OH, OW), OUT)
        for bx in BX(T.Cast("int32", (n * OHW + (BM - 1)) // BM)):
            for by in BY(NBN):
                As = T.alloc_buffer((BM, BKS), "uint32", scope=SHARED)
                Bs = T.alloc_buffer((BN, BKS), "uint32", scope=SHARED)
                acc = T.alloc_buffer((LANES[0], LANES[1], TM, TN, NC), "int32", scope=LOCAL)
                afr = T.alloc_buffer((LANES[0], LANES[1], TM, NA), "uint32", scope=LOCAL)
                bfr = T.alloc_buffer((LANES[0], LANES[1], TN, NB), "uint32", scope=LOCAL)
                for ty in TY(NWARP):
                    for tx in TX(32):
                        for tm, tn, i in T.grid(TM, TN, NC):
                            acc[ly(ty), lx(tx), tm, tn, i] = 0
                for kt in T.serial(NKT):
                    for ty in TY(NWARP):
                        for tx in TX(32):
                            for it in T.unroll(A_IT):
                                As[(it * NT + ty * 32 + tx) % BM, (it * NT + ty * 32 + tx) // BM] = a_word(
                                    x, T.Cast("int32", n) * OHW, bx * BM + (it * NT + ty * 32 + tx) % BM,
                                    kt * BKW + (it * NT + ty * 32 + tx) // BM)
                            for it in T.unroll(B_IT):
                                Bs[(it * NT + ty * 32 + tx) // BKW, (it * NT + ty * 32 + tx) % BKW] = b_word(
                                    w, by * BN + (it * NT + ty * 32 + tx) // BKW, kt * BKW + (it * NT + ty * 32 + tx) % BKW)
                    for ty in TY(NWARP):
                        for ks in T.unroll(BKW // KWM):
                            for tx in TX(32):
                                for tm, r in T.grid(TM, NA):
                                    afr[ly(ty), lx(tx), tm, r] = As[
                                        (ty % WM) * TM * MM + tm * MM + tx // 4 + 8 * (r % 2),
                                        ks * KWM + tx % 4 + 4 * (r // 2)]
                                for tn, r in T.grid(TN, NB):
                                    bfr[ly(ty), lx(tx), tn, r] = Bs[(ty // WM) * TN * 8 + tn * 8 + tx // 4,
                                                                    ks * KWM + tx % 4 + 4 * r]
                                if not EMU:
                                    for tm, tn in T.grid(TM, TN):
                                        T.evaluate(T.ptx_legacy.mma(
                                            sp.mma_shape, "row", "col", sp.a_type, sp.b_type, "int32",
                                            afr.data, tm * NA, bfr.data, tn * NB, acc.data, (tm * TN + tn) * NC,
                                            False, dtype="int32"))
                            if EMU:
                                for tm, tn, row, col, kwd, i in T.grid(TM, TN, MM, 8, KWM, E):
                                    acc[ty, (row % 8) * 4 + col // 2, tm, tn, (row // 8) * 2 + col % 2] = \
                                        mma_emulate(acc, afr, bfr, ty, tm, tn, row, col, kwd, i)
                for ty in TY(NWARP):
                    for tx in TX(32):
                        for tm, tn, i in T.grid(TM, TN, NC):
                            m_ = T.meta_var(bx * BM + (ty % WM) * TM * MM + tm * MM + tx // 4 + 8 * (i // 2))
                            o_ = T.meta_var(by * BN + (ty // WM) * TN * 8 + tn * 8 + (tx % 4) * 2 + i % 2)
                            if m_ < T.Cast("int32", n) * OHW and o_ < O:
                                y[m_ // OHW, o_, m_ % OHW // OW, m_ % OW] = requant(
                                    acc[ly(ty), lx(tx), tm, tn, i], bias, mq, rq, sq, o_)

    return func
