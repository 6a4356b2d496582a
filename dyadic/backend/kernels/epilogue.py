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
