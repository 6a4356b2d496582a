"""The residual add of the epilogues, in int32 where that is exact (TE expressions + constants).

`qadd` is z = clip((a * m_a + b * m_b + 2^(s-1)) >> s, lo, hi) with m < 2^31: a 39-bit product for
8-bit a, b, which the reference forms in int64. When a and b are 8-bit (|a|, |b| <= 255) and
17 <= s <= 46, split each multiplier m = m_hi * 2^16 + m_lo (m_hi < 2^15, m_lo < 2^16):

    H = a * m_a_hi + b * m_b_hi + 2^(s-17)     |H| < 2^24 + 2^29
    L = a * m_a_lo + b * m_b_lo                |L| < 2^25
    a * m_a + b * m_b + 2^(s-1) = H * 2^16 + L
    z = (H + (L >> 16)) >> (s - 16)            (floor division in two exact steps, s - 16 >= 1)

all in int32 (16 lanes per AVX-512 vector instead of 8 int64 lanes and `vpmullq`). Otherwise the
int64 formula is used as is.

`add_pairs` is the same two-step division with a signed split, m = m_hi * 2^16 + m_lo with
m_lo in [-2^15, 2^15) and m_hi = (m - m_lo) / 2^16 in [-2^15, 2^15) (so m < 2^31 - 2^15,
`pairs_ok`): with (a, b) as the two int16 halves of one int32 lane, H and L are each one
`vpdpwssd` (AVX512-VNNI: lane j += x[2j] y[2j] + x[2j+1] y[2j+1], no saturation) against the
broadcast pairs (m_a_hi, m_b_hi) and (m_a_lo, m_b_lo), H's accumulator starting at 2^(s-17):
2 instructions instead of 4 `vpmulld` (2 uops each) and 3 adds. Bounds as above: |a m_hi + b m_hi'|
<= 511 * 2^15 < 2^24, |L| < 2^24.

`requant` is the int64 form of a per-tensor requant with compile-time constants, for the kernels
that apply one inside another op (a linear's or a softmax's narrowing, `qmul`'s int64 case).
"""
from __future__ import annotations

import numpy as np
from tvm import tirx

from dyadic.core.arith import rounding_term

_8BIT = ("uint8", "int8")


def int32_ok(a_range: tuple[int, int], b_dtype: str, s) -> bool:
    """Whether the int32 form applies: a within [-256, 255], b 8-bit, 17 <= s <= 46."""
    s = int(np.asarray(s))
    return -256 <= a_range[0] and a_range[1] <= 255 and b_dtype in _8BIT and 17 <= s <= 46


def consts(m, s, int32: bool) -> np.ndarray:
    """q: [m_a_hi, m_a_lo, m_b_hi, m_b_lo, 2^(s-17), s-16] (int32 form) or [m_a, m_b, 2^(s-1), s]."""
    m = np.asarray(m, np.int64).reshape(-1)
    s = int(np.asarray(s))
    if int32:
        return np.array([m[0] >> 16, m[0] & 0xFFFF, m[1] >> 16, m[1] & 0xFFFF, 1 << (s - 17), s - 16], np.int32)
    return np.array([m[0], m[1], int(rounding_term(s)), s], np.int64)


def post_of(node) -> tuple[int, int, int, int]:
    """(M, S, lo, hi) of a per-tensor `requant` node: what `requant` applies inside another kernel."""
    return int(node.params["M"]), int(node.params["S"]), node.attrs["lo"], node.attrs["hi"]


def requant(v, post: tuple[int, int, int, int]):
    """clip((v M + 2^(S-1)) >> S, lo, hi) in int64 with compile-time (M, S, lo, hi), as `dyadic.arith`."""
    m, s, lo, hi = post
    i64 = lambda c: tirx.const(int(c), "int64")  # noqa: E731
    z = (v.astype("int64") * i64(m) + i64(rounding_term(np.int64(s)))) >> i64(s)
    return tirx.max(tirx.min(z, i64(hi)), i64(lo))


def pairs_ok(m) -> bool:
    """Whether `add_pairs` applies to the add's two multipliers (signed 16-bit halves)."""
    m = np.asarray(m, np.int64).reshape(-1)
    return bool(np.all(m >= -2 ** 31) and np.all(m < 2 ** 31 - 2 ** 15))


def pair_consts(m, s) -> np.ndarray:
    """q of `add_pairs`: [(m_a_hi, m_b_hi), (m_a_lo, m_b_lo)] as int16 pairs in int32, 2^(s-17), s-16."""
    m = np.asarray(m, np.int64).reshape(-1)
    s = int(np.asarray(s))
    lo = ((m + 2 ** 15) & 0xFFFF) - 2 ** 15
    hi = (m - lo) >> 16
    pair = lambda v: int(np.array((v[0] & 0xFFFF) | ((v[1] & 0xFFFF) << 16), np.uint32).view(np.int32))  # noqa: E731
    return np.array([pair(hi), pair(lo), 1 << (s - 17), s - 16], np.int32)


def add_pairs(a, b, q, lo: int, hi: int):
    """clip(qadd(a, b)) of int32x16 vectors a (|a| <= 256) and b (8-bit codes), q from `pair_consts`."""
    vec = lambda c: tirx.Broadcast(tirx.const(c, "int32") if isinstance(c, int) else c, 16)  # noqa: E731
    ab = tirx.reinterpret("int16x32", tirx.bitwise_or(tirx.bitwise_and(a, vec(0xFFFF)), tirx.shift_left(b, vec(16))))

    def dot(acc, mq):
        return tirx.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpwssd.512", acc, ab,
                                          tirx.reinterpret("int16x32", vec(mq)))
    h, low = dot(vec(q[2]), q[0]), dot(vec(0), q[1])
    z = tirx.shift_right(h + tirx.shift_right(low, vec(16)), vec(q[3]))
    return tirx.max(tirx.min(z, vec(hi)), vec(lo))


def add(a, b, q, lo: int, hi: int, int32: bool):
    """The TE expression of clip(qadd(a, b)) in int32 (a, b, q int32) or int64; returns int32/int64."""
    if int32:
        a, b = a.astype("int32"), b.astype("int32")
        h = a * q[0] + b * q[2] + q[4]
        low = a * q[1] + b * q[3]
        z = (h + (low >> 16)) >> q[5]
        return tirx.max(tirx.min(z, hi), lo)
    z = (a.astype("int64") * q[0] + b.astype("int64") * q[1] + q[2]) >> q[3]
    return tirx.max(tirx.min(z, tirx.const(hi, "int64")), tirx.const(lo, "int64"))
