"""A 256-entry byte table on AVX512-VBMI: 64 lookups per pair of `vpermt2b` (`qlut` on 8-bit codes).

`vpermt2b` / `vpermi2b` (`llvm.x86.avx512.vpermi2var.qi.512`) picks, for each of 64 byte lanes, one of
128 table bytes held in two zmm registers by the lane's low 7 index bits. A 256-entry table is two such
halves, T[0:128] and T[128:256]; the lane's top bit chooses between the two results (`vpmovb2m` + a
masked blend). With the table covering the input type's whole range (index = code - dtype min), the
index byte is the code itself (uint8) or the code with its top bit flipped (int8, code + 128), so:

    uint8:  out = top bit of x ? perm(T[128:256], x) : perm(T[0:128], x)
    int8:   out = top bit of x ? perm(T[0:128], x)   : perm(T[128:256], x)

(the low 7 bits of x and of x + 128 agree). That is T[x - min] exactly, for every code: no clamp is
needed because every byte is a valid index. The scalar lookup (`cpu_ops.lut_func`) does one load per
element; this does 64 in four instructions, whose table operands stay in registers across the loop.
"""
from __future__ import annotations

from tvm.script import tirx as T

_PERM = "llvm.x86.avx512.vpermi2var.qi.512"
CHUNK = 64  # vectors (4 KiB) per parallel task: TVM's parallel loop costs far more than one lookup


def flat_lookup(m: int, lanes: int, din: str, dout: str, table_len: int, look, tail):
    """The PrimFunc (x, t, out) over [N, m] codes (N symbolic): whole vectors of `lanes` codes by
    look(t, x vector) in parallel chunks of `CHUNK` vectors, then the m % lanes tail codes one by one
    by tail(t, x code); t has table_len entries of dout. Shared with `intrin_gather`."""
    nv, rest, vdt = m // lanes, m % lanes, f"{din}x{lanes}"

    @T.prim_func(s_tir=True)
    def f(x_h: T.handle, t_h: T.handle, o_h: T.handle):
        n = T.int32()
        X = T.match_buffer(x_h, (n, m), din)
        t = T.match_buffer(t_h, (table_len,), dout)
        O = T.match_buffer(o_h, (n, m), dout)
        for c in T.parallel((n * nv + CHUNK - 1) // CHUNK):
            for v in T.serial(CHUNK):
                if c * CHUNK + v < n * nv:
                    O[(c * CHUNK + v) // nv, T.ramp(((c * CHUNK + v) % nv) * lanes, 1, lanes)] = look(
                        t, X.vload([(c * CHUNK + v) // nv, ((c * CHUNK + v) % nv) * lanes], vdt))
        for b, j in T.grid(n, rest):
            O[b, nv * lanes + j] = tail(t, X[b, nv * lanes + j])
    return f.with_attr("op_pattern", 8)


def lut8_func(m: int, din: str, dout: str):
    """out[b, i] = T[x[b, i] - min(din)] over [N, m] 8-bit codes (N symbolic), T 256 entries of dout."""
    if m < 64:
        raise ValueError(f"lut8_func needs at least 64 codes per sample, got {m}")
    lo_first = din == "uint8"  # which half the top index bit selects (module docstring)
    off = 0 if din == "uint8" else 128

    def half(t, at: int, xv):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(_PERM),
                                       T.reinterpret(t.vload([at], dout + "x64"), dtype="int8x64"), xv,
                                       T.reinterpret(t.vload([at + 64], dout + "x64"), dtype="int8x64"),
                                       dtype="int8x64")

    def look(t, xv):
        xb = T.reinterpret(xv, dtype="int8x64")
        neg = xb < T.broadcast(T.int8(0), 64)
        hi, lo = half(t, 128, xb), half(t, 0, xb)
        return T.reinterpret(T.Select(neg, hi, lo) if lo_first else T.Select(neg, lo, hi), dtype=dout + "x64")

    return flat_lookup(m, 64, din, dout, 256, look, lambda t, x: t[T.Cast("int32", x) + off])
