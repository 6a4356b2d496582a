"""Property tests of the activation calibrators and the weight clipping search."""
from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dyadic.core.calibrators import (Calibration, Histogram, act_range, choose_ranges, clamp_range, levels,
                                mse_of_thresholds)
from dyadic.core.arith import channel_scales
from dyadic.core.weight_quant import clip_scales, fake_quant

finite = st.floats(-50, 50, allow_nan=False, width=32)
acts = hnp.arrays(np.float32, st.integers(8, 400), elements=finite)
relu_acts = hnp.arrays(np.float32, st.integers(8, 400), elements=st.floats(0, 50, width=32))


def _ranges(x: np.ndarray, method: Calibration, p: float = 99.9) -> dict:
    rng = (float(x.min()), float(x.max()))
    h = Histogram(max(abs(rng[0]), abs(rng[1])), bins=256)
    h.add(x)
    return rng, choose_ranges({"t": rng}, {"t": h}, method, p)["t"]


@settings(max_examples=60, deadline=None)
@given(x=st.one_of(acts, relu_acts), method=st.sampled_from(list(Calibration)),
       p=st.floats(90, 100))
@example(x=np.full(8, -1.0, np.float32), method=Calibration.MSE, p=90.0)  # all negative: lo <= hi after the cut
def test_ranges_within_min_max_and_keep_sign(x, method, p):
    (lo, hi), chosen = _ranges(x, method, p)
    for b in ("4", "8"):
        clo, chi = chosen[b]
        # within [min, max] widened to 0 (unsigned: [0, max]; all negative: [min, 0]), and ordered
        assert min(lo, 0) - 1e-6 <= clo <= chi <= max(hi, 0) + 1e-6
        assert (clo < 0) == (lo < 0)  # signedness is that of the min/max range
        assert max(abs(clo), abs(chi)) <= max(abs(lo), abs(hi)) + 1e-6


@settings(max_examples=60, deadline=None)
@given(x=st.one_of(acts, relu_acts), bits=st.sampled_from([4, 8]))
def test_mse_threshold_not_worse_than_max(x, bits):
    """On the histogram model the mse choice never has a larger error than min/max's threshold."""
    amax = float(np.abs(x).max())
    h = Histogram(amax, bins=256)
    h.add(x)
    signed = x.min() < 0
    (_, _), chosen = _ranges(x, Calibration.MSE)
    c = max(abs(v) for v in chosen[str(bits)])
    errs = mse_of_thresholds(h, np.array([c, amax]), levels(bits, signed))
    assert errs[0] <= errs[1] * (1 + 1e-9) + 1e-12


def test_minmax_is_identity_and_percentile_cuts_outliers():
    x = np.concatenate([np.linspace(0, 1, 100000), [100.0]]).astype(np.float32)
    (lo, hi), mm = _ranges(x, Calibration.MINMAX)
    assert mm["8"] == [lo, hi]
    _, pc = _ranges(x, Calibration.PERCENTILE, 99.9)
    assert pc["8"][1] < 2.0  # the single outlier at 100 does not set the range
    _, ms = _ranges(x, Calibration.MSE)
    assert ms["4"][1] <= ms["8"][1]  # fewer levels clip harder


def test_clamp_range_and_act_range_fallback():
    assert clamp_range((-1.0, 5.0), 3.0) == (-1.0, 3.0)
    assert clamp_range((0.0, 5.0), 3.0) == (0.0, 3.0)

    class G:
        ranges = {"a": (0.0, 2.0), "b": (-1.0, 1.0)}
        meta = {"act_calibration": {"tensors": {"a": {"4": [0.0, 1.0], "8": [0.0, 1.5]}}}}

    assert act_range(G, "a", 4) == (0.0, 1.0) and act_range(G, "a", 8) == (0.0, 1.5)
    assert act_range(G, "b", 4) == (-1.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(w=hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(2, 40)),
                    elements=st.floats(-3, 3, allow_nan=False)),
       bits=st.sampled_from([2, 3, 4, 8]))
@example(w=np.array([[5e-324, 0.0], [0.0, 0.0]]), bits=2)  # a denormal layer: its floor must not underflow to 0
def test_clip_search_never_worse_than_maxabs(w, bits):
    s_clip, s_max = clip_scales(w, bits), channel_scales(w, bits)
    e_clip = ((fake_quant(w, s_clip, bits) - w) ** 2).sum(axis=1)
    e_max = ((fake_quant(w, s_max, bits) - w) ** 2).sum(axis=1)
    assert np.all(e_clip <= e_max + 1e-12)
    assert np.all(s_clip <= s_max + 1e-15)
