"""The dyadic arithmetic core: every float rescale of the integer graph is a multiply and a shift.

A real rescale factor r > 0 is approximated by a dyadic number m / 2^s with m a 31-bit
unsigned integer (so it fits a signed 32-bit register) and 1 <= s <= 62:

    s = min(62, 30 - floor(log2 r)),   m = round(r * 2^s)              (so 2^30 <= m < 2^31)

The relative error is |m / 2^s - r| / r <= 2^-31 whenever s is not clamped.
The requantization of an int32 accumulator `acc` to an integer in [lo, hi] is

    y = clip((acc * m + 2^(s-1)) >> s, lo, hi)

with `>>` an arithmetic shift (floor), so the division by 2^s rounds half up (HAWQ-V3, Yao et al.
2021, eq. 4). The product is formed in int64: |acc| < 2^31 and m < 2^31 keep it below 2^62.

Residual adds use one shift for both branches, which rounds once instead of twice:

    y = clip((a * m_a + b * m_b + 2^(s-1)) >> s, lo, hi)

This module is the numpy definition of these formulas; the reference executor and the TVM lowering
both follow it, and the property tests check it.
"""
from __future__ import annotations

import math

import numpy as np

M_BITS = 31
MAX_SHIFT = 62


def dyadic(r: float, m_bits: int = M_BITS) -> tuple[int, int]:
    """Return (m, s) with m / 2^s ≈ r > 0, m < 2^m_bits, 1 <= s <= MAX_SHIFT."""
    if not (r > 0 and math.isfinite(r)):
        raise ValueError(f"dyadic rescale needs a finite positive factor, got {r}")
    s = (m_bits - 1) - math.floor(math.log2(r))
    s = min(MAX_SHIFT, s)
    if s < 1:
        raise ValueError(f"rescale factor {r} is too large for a {m_bits}-bit dyadic multiplier")
    m = int(round(r * (1 << s)))
    if m >= (1 << m_bits):  # round() carried into the next power of two
        m, s = (m + 1) >> 1, s - 1
    if s < 1:  # the carry above, for r just below 2^(m_bits - 1)
        raise ValueError(f"rescale factor {r} is too large for a {m_bits}-bit dyadic multiplier")
    if m == 0:  # s is clamped at MAX_SHIFT and r < 2^-(MAX_SHIFT + 1)
        raise ValueError(f"rescale factor {r} is too small for a dyadic multiplier with shift <= {MAX_SHIFT}")
    return m, s


def dyadic_shared(rs: list[float], m_bits: int = M_BITS) -> tuple[list[int], int]:
    """Dyadic multipliers for several factors over one common shift (set by the largest factor)."""
    _, s = dyadic(max(rs), m_bits)
    ms = [int(round(r * (1 << s))) for r in rs]
    if max(ms) >= (1 << m_bits):
        s -= 1
        ms = [int(round(r * (1 << s))) for r in rs]
    return ms, s


def dyadic_array(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise `dyadic` over an array of factors; returns int64 arrays (m, s)."""
    pairs = [dyadic(float(v)) for v in np.asarray(r, np.float64).ravel()]
    m = np.array([p[0] for p in pairs], np.int64).reshape(np.shape(r))
    s = np.array([p[1] for p in pairs], np.int64).reshape(np.shape(r))
    return m, s


def rounding_term(s: np.ndarray | int) -> np.ndarray:
    return np.left_shift(np.int64(1), np.asarray(s, np.int64) - 1)


def requantize(acc: np.ndarray, m, s, lo: int, hi: int) -> np.ndarray:
    """clip((acc * m + 2^(s-1)) >> s, lo, hi) in int64; m, s broadcast against acc."""
    acc = np.asarray(acc, np.int64)
    m = np.asarray(m, np.int64)
    s = np.asarray(s, np.int64)
    return np.clip((acc * m + rounding_term(s)) >> s, lo, hi)


def quantize_float(x: np.ndarray, scale: float, lo: int, hi: int, dtype=np.int64) -> np.ndarray:
    """Real -> integer at the graph boundary: clip(round_half_even(x · r), lo, hi) with r = 1 / scale
    in x's precision: float32 for float32 input with codes below 2^24 (exact integers there), else
    float64. One multiply temporary, rounded and clipped in place: this runs on every input of every
    `run`, and a float64 division took 0.22 ms of a 3 ms ShuffleNet run (224x224x3; 0.06 ms now). The
    product is within an ulp of x / scale, so a code can differ from the exact quotient's only where
    x / scale is within 2^-9 of a rounding tie; the library and the int64 reference take their inputs
    from this same function."""
    x = np.asarray(x)
    ft = np.float32 if x.dtype in (np.float32, np.float16) and max(abs(lo), abs(hi)) < 1 << 24 else np.float64
    y = np.multiply(x, ft(1.0 / scale), dtype=ft)
    np.rint(y, out=y)
    np.clip(y, lo, hi, out=y)
    return y.astype(dtype)


# A channel whose largest weight is this far below the layer's largest gets the floor's scale: its
# products sit ~100 dB under the shared output scale, so their precision is invisible, while its own
# absmax (BN folding with gamma ~ 0 leaves weights of 1e-34 in pretrained nets) would make the int32
# bias B / (s_x * s_w) overflow.
CHANNEL_FLOOR = 2.0 ** -16


def channel_scales(w: np.ndarray, bits: int) -> np.ndarray:
    """Per-output-channel (axis 0) max-abs scales, absmax / (2^(b-1) - 1), each at least
    CHANNEL_FLOOR x the layer's largest channel; an all-zero layer gets 1.0."""
    absmax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)
    if not np.isfinite(absmax).all():
        from dyadic.core.errors import DataRangeError
        raise DataRangeError("weights with NaN or Inf values cannot be quantized")
    top = absmax.max(initial=0.0)
    if top == 0:
        return np.ones_like(absmax)
    # the floor itself stays a normal float: top x CHANNEL_FLOOR underflows to 0 for denormal weights
    floor = max(top * CHANNEL_FLOOR, np.finfo(np.float64).tiny)
    return np.maximum(absmax, floor) / ((1 << (bits - 1)) - 1)


def weight_dtype(bits: int):
    """The storage of `bits`-bit integer weights: int8 up to 8 bits, int16 above (`passes/widen_weights`)."""
    return np.int8 if bits <= 8 else np.int16


def quantize_weight(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel (axis 0) weight quantization to `bits` bits.

    Returns (q, scale) with q in [-(2^(b-1)-1), 2^(b-1)-1] (int8, int16 above 8 bits) and
    w ≈ q * scale[:, None...] (`channel_scales`).
    """
    scale = channel_scales(w, bits)
    return round_to_scale(w, scale, bits), scale


def round_to_scale(w: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Nearest integers q = clip(rint(w / scale), ±(2^(b-1) - 1)), one scale per output channel (axis 0),
    int8 (int16 above 8 bits): the one rounding rule every weight path uses."""
    qmax = (1 << (bits - 1)) - 1
    bshape = (-1,) + (1,) * (w.ndim - 1)
    return np.clip(np.rint(w / scale.reshape(bshape)), -qmax, qmax).astype(weight_dtype(bits))


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Pack int4 values (int8 array in [-8, 7], last axis) two per byte: low nibble first.

    Byte j of a row holds elements 2j (bits 0-3) and 2j+1 (bits 4-7); an odd row is padded with 0.
    """
    q = np.asarray(q, np.int8)
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,), np.int8)], axis=-1)
    lo = q[..., 0::2].astype(np.uint8) & 0x0F
    hi = (q[..., 1::2].astype(np.uint8) & 0x0F) << 4
    return (lo | hi).view(np.int8)


def unpack_int4(b: np.ndarray, n: int) -> np.ndarray:
    """Inverse of `pack_int4` with arithmetic shifts: lo = (b << 4) >> 4, hi = b >> 4 (on int8)."""
    b = np.asarray(b, np.int8)
    lo = np.left_shift(b, 4).astype(np.int8) >> 4
    hi = b >> 4
    return np.stack([lo, hi], axis=-1).reshape(b.shape[:-1] + (-1,))[..., :n]
