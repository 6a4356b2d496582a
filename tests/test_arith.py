"""Property tests of the dyadic arithmetic core (`dyadic.arith`)."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dyadic.core.arith import (CHANNEL_FLOOR, MAX_SHIFT, dyadic, dyadic_array, dyadic_shared, quantize_float,
                          quantize_weight, requantize, rounding_term)

#: applied to every property test of this module (no global profile: other modules keep theirs)
FAST = settings(max_examples=200, deadline=None)

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
# factors for which s = 30 - floor(log2 r) is neither clamped at 62 nor below 1
unclamped = st.floats(min_value=1e-9, max_value=1e8, allow_nan=False, allow_infinity=False)


def _rel_err(m: int, s: int, r: float) -> Fraction:
    return abs(Fraction(m, 2 ** s) - Fraction(r)) / Fraction(r)


# ---------------------------------------------------------------------------------------------- dyadic


@FAST
@given(unclamped)
@example(1.0)
@example(0.5)
@example(math.nextafter(1.0, 0.0))
@example(math.nextafter(4.0, 0.0))
@example(math.nextafter(2.0 ** -20, 0.0))
@example(2.0 ** 26 * 1.9999999999)
@example(1e8)
@example(1e-9)
def test_dyadic_range_and_relative_error(r):
    m, s = dyadic(r)
    assert isinstance(m, int) and isinstance(s, int)
    assert 0 < m < 2 ** 31
    assert 1 <= s <= MAX_SHIFT
    assert m >= 2 ** 30, "the multiplier should use all 31 bits when s is not clamped"
    assert _rel_err(m, s, r) <= Fraction(1, 2 ** 31)


@FAST
@given(st.floats(min_value=2.0 ** -62, max_value=2.0 ** -33))
def test_dyadic_clamped_shift(r):
    """Tiny factors: s is clamped at 62 and m loses bits, but the absolute error is still half an ulp."""
    m, s = dyadic(r)
    assert s == MAX_SHIFT
    assert 0 < m < 2 ** 31
    assert abs(Fraction(m, 2 ** s) - Fraction(r)) <= Fraction(1, 2 ** (s + 1))


@FAST
@given(st.integers(min_value=-32, max_value=29))
def test_dyadic_powers_of_two_are_exact(k):
    m, s = dyadic(2.0 ** k)
    assert (m, s) == (2 ** 30, 30 - k)


@pytest.mark.parametrize("r", [0.0, -0.0, -1.0, -1e-12, math.inf, -math.inf, math.nan,
                               2.0 ** 30, 2.0 ** 31, 1e10, 1e300,
                               # rounds up to 2^31 at s = 1; the carry would leave s = 0
                               2.0 ** 30 - 2.0 ** -16,
                               # so small that m = round(r * 2^62) = 0
                               1e-20, 2.0 ** -64])
def test_dyadic_invalid_factor_raises(r):
    with pytest.raises(ValueError):
        dyadic(r)


def test_dyadic_largest_valid_factor():
    r = 2.0 ** 30 - 1.0
    m, s = dyadic(r)
    assert s == 1 and m == 2 ** 31 - 2


def test_dyadic_array_matches_scalar():
    r = np.array([[1e-3, 0.25], [3.7, 1e-7]])
    m, s = dyadic_array(r)
    assert m.shape == s.shape == r.shape and m.dtype == s.dtype == np.int64
    for idx in np.ndindex(r.shape):
        assert (int(m[idx]), int(s[idx])) == dyadic(float(r[idx]))


# ---------------------------------------------------------------------------------------- dyadic_shared


@FAST
@given(st.floats(min_value=1e-6, max_value=1e4),
       st.lists(st.floats(min_value=2.0 ** -20, max_value=1.0), min_size=1, max_size=4))
def test_dyadic_shared_common_shift(top, fracs):
    rs = [top] + [top * f for f in fracs]
    ms, s = dyadic_shared(rs)
    assert len(ms) == len(rs)
    assert 1 <= s <= MAX_SHIFT
    # the shift is the one `dyadic` chooses for the largest factor
    assert s == dyadic(max(rs))[1]
    assert ms[0] == dyadic(top)[0]
    assert max(ms) < 2 ** 31 and max(ms) >= 2 ** 30
    for m, r in zip(ms, rs):
        assert isinstance(m, int) and m > 0
        assert abs(Fraction(m, 2 ** s) - Fraction(r)) <= Fraction(1, 2 ** (s + 1))


def test_dyadic_shared_order_independent():
    ms1, s1 = dyadic_shared([0.3, 0.7])
    ms2, s2 = dyadic_shared([0.7, 0.3])
    assert s1 == s2 and ms1 == ms2[::-1]


# ------------------------------------------------------------------------------------------ requantize


def _requant_bigint(acc: int, m: int, s: int, lo: int, hi: int) -> int:
    """Independent definition: floor((acc*m + 2^(s-1)) / 2^s) in Python big integers, then clip."""
    y = (acc * m + 2 ** (s - 1)) // 2 ** s
    return min(max(y, lo), hi)


@FAST
@given(acc=st.integers(INT32_MIN, INT32_MAX), m=st.integers(1, 2 ** 31 - 1), s=st.integers(1, 62),
       bounds=st.sampled_from([(-128, 127), (0, 255), (-32768, 32767), (0, 6), (INT32_MIN, INT32_MAX)]))
def test_requantize_scalar_matches_bigint(acc, m, s, bounds):
    lo, hi = bounds
    got = requantize(np.array(acc), m, s, lo, hi)
    assert got.dtype == np.int64
    assert int(got) == _requant_bigint(acc, m, s, lo, hi)


@FAST
@given(acc=hnp.arrays(np.int32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)),
       data=st.data())
def test_requantize_broadcast_matches_bigint(acc, data):
    """Per-channel m, s broadcast over the last axis, as the integer ops use them."""
    c = acc.shape[-1]
    m = np.array(data.draw(st.lists(st.integers(1, 2 ** 31 - 1), min_size=c, max_size=c)), np.int64)
    s = np.array(data.draw(st.lists(st.integers(1, 62), min_size=c, max_size=c)), np.int64)
    got = requantize(acc, m, s, -128, 127)
    assert got.shape == acc.shape
    for idx in np.ndindex(acc.shape):
        assert int(got[idx]) == _requant_bigint(int(acc[idx]), int(m[idx[-1]]), int(s[idx[-1]]), -128, 127)


@pytest.mark.parametrize("acc,expected", [
    (5, 3), (3, 2), (1, 1), (-1, 0), (-3, -1), (-5, -2), (-7, -3), (7, 4),  # x.5 -> up
    (4, 2), (-4, -2), (6, 3), (0, 0),
])
def test_requantize_ties_round_half_up(acc, expected):
    # m / 2^s = 1/2: acc / 2 with ties exactly at .5
    assert int(requantize(np.array(acc), 1, 1, -100, 100)) == expected
    # the same value via a larger shift: (acc * 2^29) / 2^30
    assert int(requantize(np.array(acc), 2 ** 29, 30, -100, 100)) == expected


def test_requantize_negative_tie_example():
    # -2.5 rounds up to -2 (not to -3 as round-half-away-from-zero would, nor -2 by even-ness only)
    assert int(requantize(np.array(-5), 2 ** 30, 31, -128, 127)) == -2
    assert int(requantize(np.array(-7), 2 ** 30, 31, -128, 127)) == -3  # -3.5 -> -3
    assert int(requantize(np.array(-9), 2 ** 30, 31, -128, 127)) == -4  # -4.5 -> -4


def test_requantize_saturates():
    acc = np.array([-10 ** 9, -1000, -129, -128, 0, 127, 128, 1000, 10 ** 9])
    got = requantize(acc, 2 ** 30, 30, -128, 127)  # multiplier exactly 1
    assert got.tolist() == [-128, -128, -128, -128, 0, 127, 127, 127, 127]
    got = requantize(acc, 2 ** 30, 30, 0, 6)  # fused ReLU6 bounds
    assert got.tolist() == [0, 0, 0, 0, 0, 6, 6, 6, 6]
    # extreme int32 accumulator times the largest multiplier stays exact in int64
    big = requantize(np.array([INT32_MIN, INT32_MAX]), 2 ** 31 - 1, 62, INT32_MIN, INT32_MAX)
    assert big.tolist() == [_requant_bigint(INT32_MIN, 2 ** 31 - 1, 62, INT32_MIN, INT32_MAX),
                            _requant_bigint(INT32_MAX, 2 ** 31 - 1, 62, INT32_MIN, INT32_MAX)]


def test_rounding_term():
    assert rounding_term(1) == 1
    assert rounding_term(62) == 2 ** 61
    assert rounding_term(np.array([1, 2, 31])).tolist() == [1, 2, 2 ** 30]


@FAST
@given(st.floats(1e-4, 1e3), st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=20))
def test_requantize_approximates_real_rescale(r, xs):
    """|requant(acc) - acc * r| <= 1/2 + |acc| * r * 2^-31 (dyadic error) when not saturated."""
    m, s = dyadic(r)
    acc = np.rint(np.array(xs)).astype(np.int64)
    got = requantize(acc, m, s, INT32_MIN, INT32_MAX)
    err = np.abs(got - acc.astype(np.float64) * r)
    assert np.all(err <= 0.5 + np.abs(acc) * r * 2.0 ** -31 + 1e-9 * (1 + np.abs(acc) * r))


# ----------------------------------------------------------------------------------- quantize_float


def test_quantize_float_round_half_even_and_clip():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0])
    assert quantize_float(x, 1.0, -128, 127).tolist() == [0, 2, 2, 0, -2, 127, -128]
    assert quantize_float(x, 1.0, 0, 255).tolist() == [0, 2, 2, 0, 0, 255, 0]


# ---------------------------------------------------------------------------------- quantize_weight


weights = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
    elements=st.floats(-10, 10, width=32),
)


@FAST
@given(weights, st.integers(2, 8))
def test_quantize_weight_properties(w, bits):
    q, scale = quantize_weight(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == np.int8 and q.shape == w.shape
    assert scale.shape == (w.shape[0],)
    assert np.abs(q.astype(np.int64)).max() <= qmax
    rec = q.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
    err = np.abs(rec - w.astype(np.float64))
    assert np.all(err <= scale.reshape(-1, 1, 1, 1) / 2 * (1 + 1e-9))
    top = float(np.abs(w).max())
    for c in range(w.shape[0]):
        amax = float(np.abs(w[c]).max())
        if top == 0:
            assert scale[c] == 1.0 and not q[c].any()
        elif amax >= top * CHANNEL_FLOOR:
            # per-channel symmetric scale: the largest weight of each channel maps to +-qmax
            assert scale[c] == pytest.approx(amax / qmax, rel=1e-12)
            assert np.abs(q[c].astype(np.int64)).max() == qmax
        else:  # a dead channel, 96 dB under the layer's largest: the floor's scale
            assert scale[c] == pytest.approx(top * CHANNEL_FLOOR / qmax, rel=1e-12)


def test_quantize_weight_per_channel_scales_differ():
    w = np.stack([np.full((2, 3, 3), 0.01), np.full((2, 3, 3), -5.0), np.zeros((2, 3, 3))]).astype(np.float32)
    w[0, 0, 0, 0] = -0.02
    q, scale = quantize_weight(w, 8)
    np.testing.assert_allclose(scale, [0.02 / 127, 5.0 / 127, 5.0 * CHANNEL_FLOOR / 127], rtol=1e-6)
    assert q[0, 0, 0, 0] == -127 and q[0, 1, 1, 1] == 64  # 0.01 / (0.02/127) = 63.5 -> 64 (half-even)
    assert np.all(q[1] == -127) and np.all(q[2] == 0)


@FAST
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 7)),
                  elements=st.floats(-3, 3, width=32)))
def test_quantize_weight_dense_layout(w):
    q, scale = quantize_weight(w, 8)
    assert q.shape == w.shape and scale.shape == (w.shape[0],)
    assume(np.abs(w).max() > 0)
    assert np.all(np.abs(q * scale[:, None] - w) <= scale[:, None] / 2 * (1 + 1e-9))
