"""Batched product of two activations with the requantization fused (attention's Q·Kᵀ and P·V) on
the int16 step of `intrin_avx2`, for every x86 isa: `vpdpwssd` on AVX512-VNNI, AVX2 `vpmaddwd`
elsewhere (`qmatmul` in `ops/matmul`).

    C[g, i, j] = clip((Σ_k A[g, i, k] B[g, k, j]) M + 2^(S-1)) >> S, lo, hi)   (per-tensor M, S)

A holds int8 / uint8 codes or 16-bit codes (int16 storage, or int32 in older graphs) (attention probabilities, 0..32767;
16-bit queries), B int8 or 16-bit codes (keys, values); n is the batch (symbolic: one kernel serves any batch),
g the other leading dims flattened (heads).
Neither operand is a constant, so both are packed at run time inside the kernel, as the conv
kernels pack their input: A to [N, G, I, K4] int16 (K rounded up to whole steps of 4, zeros after
K), B to the weight-operand layout of `intrin_avx2`, [N, G, J16, K4/4, 2 pairs, 16, 2] (int8, or
int16 for 16-bit codes; zeros
beyond J and K). Zero padding leaves every sum unchanged.

Each register tile is `ti` rows of A x `tj` blocks of 16 columns: per step of 4 k the tj weight
operands are widened once and reused by the ti rows (`spec.choose_tile` with the isa's register file). A pair
sum a0 b0 + a1 b1 is at most 2 x 32768 x 128 = 2^23 in magnitude for an int8 B; the whole sum stays
below 2^31 by the verifier's bound K max|a| max|b| < 2^31, or for probabilities x 16-bit values by
(row sum of a) max|b| < 2^31 (`ops/matmul`: a >= 0, so every pair sum and partial sum is below it
too), so no step wraps. The epilogue runs on the tile while
the accumulators are in registers: int64 (acc M + 2^(S-1)) >> S, clipped, as `dyadic.arith`.
The output is [N, G, I, J16, 16] (columns blocked by 16; the lowering reshapes and slices it).
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import te, tirx

from dyadic.backend.kernels.intrin_avx2 import register_pmadd
from dyadic.backend.kernels.spec import ceil_div, choose_tile


@dataclass(frozen=True)
class BmmSpec:
    """Everything that determines one batched-matmul kernel (M and S are baked in: per tensor)."""

    n: int | None     # the batch; None: symbolic
    g: int
    i: int
    k: int
    j: int
    a_dtype: str      # int8 | uint8 | int32 (16-bit codes)
    b_dtype: str      # int8 | int32 (16-bit codes)
    out_dtype: str
    m: int
    s: int
    lo: int
    hi: int
    isa: str = "avx2"  # the int16 step: avx2 (`vpmaddwd`) | vnni16 (`vpdpwssd`, `intrin_avx2`)

    @property
    def jb(self) -> int:
        return ceil_div(self.j, 16)

    @property
    def kb(self) -> int:
        return ceil_div(self.k, 4)

    @property
    def b_operand(self) -> str:
        return "int8" if self.b_dtype == "int8" else "int16"

    @property
    def tile(self) -> tuple[int, int]:
        """(tj column blocks, ti rows) of one register tile."""
        tj, _, ti = choose_tile(self.j, 1, self.i, isa=self.isa)
        return tj, ti


def bmm_func(sp: BmmSpec) -> tirx.PrimFunc:
    """The scheduled PrimFunc (a, b, out) of one batched matmul + requant."""
    n = tirx.Var("n", "int32") if sp.n is None else sp.n
    a = te.placeholder((n, sp.g, sp.i, sp.k), sp.a_dtype, "a")
    b = te.placeholder((n, sp.g, sp.k, sp.j), sp.b_dtype, "b")
    tj, ti = sp.tile
    ip = ceil_div(sp.i, ti) * ti
    ap = te.compute((n, sp.g, ip, sp.kb * 4), lambda z, g, i, k: tirx.if_then_else(
        tirx.all(i < sp.i, k < sp.k), a[z, g, tirx.min(i, sp.i - 1), tirx.min(k, sp.k - 1)].astype("int16"),
        tirx.const(0, "int16")), name="pack_a")

    bdt = sp.b_operand

    def pack_b(z, g, jb, kb, k2, j, k1):
        kk, jj = kb * 4 + k2 * 2 + k1, jb * 16 + j
        return tirx.if_then_else(tirx.all(kk < sp.k, jj < sp.j),
                                 b[z, g, tirx.min(kk, sp.k - 1), tirx.min(jj, sp.j - 1)].astype(bdt),
                                 tirx.const(0, bdt))
    bp = te.compute((n, sp.g, sp.jb, sp.kb, 2, 16, 2), pack_b, name="pack_b")
    rk, r2, r1 = te.reduce_axis((0, sp.kb), "rk"), te.reduce_axis((0, 2), "r2"), te.reduce_axis((0, 2), "r1")
    acc = te.compute((n, sp.g, ip, sp.jb, 16), lambda z, g, i, jb, j: te.sum(
        ap[z, g, i, rk * 4 + r2 * 2 + r1].astype("int32") * bp[z, g, jb, rk, r2, j, r1].astype("int32"),
        axis=[rk, r2, r1]), name="acc")
    i64 = lambda v: tirx.const(v, "int64")  # noqa: E731

    def finish(z, g, i, jb, j):
        v = (acc[z, g, i, jb, j].astype("int64") * i64(sp.m) + i64(1 << (sp.s - 1))) >> i64(sp.s)
        return tirx.max(tirx.min(v, i64(sp.hi)), i64(sp.lo)).astype(sp.out_dtype)
    out = te.compute((n, sp.g, sp.i, sp.jb, 16), finish, name="out")
    return _schedule(te.create_prim_func([a, b, out]), sp).with_attr("op_pattern", 8)


def _schedule(func: tirx.PrimFunc, sp: BmmSpec) -> tirx.PrimFunc:
    sch = tvm.s_tir.Schedule(func)
    tj, ti = sp.tile
    blk = sch.get_sblock("acc")
    z, g, i, jb, j, rk, r2, r1 = sch.get_loops(blk)
    io, ii = sch.split(i, [None, ti])
    jo, ji = sch.split(jb, [None, tj])
    sch.reorder(z, g, io, jo, rk, ji, ii, j, r2, r1)
    sch.parallel(sch.fuse(z, g, io))
    out = sch.get_sblock("out")
    sch.reverse_compute_at(out, jo)
    ol = sch.get_loops(out)[2:]  # (tj, ti, 16) below (fused, jo)
    sch.vectorize(ol[-1])
    for lp in ol[:-1]:
        sch.unroll(lp)
    init = sch.decompose_reduction(blk, rk)
    sch.tensorize(j, register_pmadd(sp.b_operand, sp.isa))
    for lp in (ji, ii):
        sch.unroll(lp)
    il = sch.get_loops(init)[2:]
    sch.vectorize(il[-1])
    for lp in il[:-1]:
        sch.unroll(lp)
    for name in ("pack_a", "pack_b"):
        lp = sch.get_loops(sch.get_sblock(name))
        sch.parallel(sch.fuse(lp[0], lp[1], lp[2]))
    return sch.mod["main"]
