"""Activation range calibrators: choose each tensor's clipping threshold per bit-width.

Every activation is stored symmetrically with zero-point 0 (`quantize_graph.activation_qparams`):
unsigned (min >= 0, after ReLU) on levels q in [0, 2^b - 1], else signed, q in [-2^(b-1), 2^(b-1) - 1].
Either way the quantizer of |x| has L = 2^b - 1 (unsigned) or 2^(b-1) - 1 (signed) positive levels
and one threshold c: step s = c / L, Q(x) = s · clip(round(x / s), -L(-1), L). So a calibrator only
chooses c in (0, amax], amax = max |x| over the calibration data, from a histogram of |x| on
[0, amax] (`BINS` bins, exact zeros counted apart: they are represented exactly):

* minmax:     c = amax.
* percentile: c = the P-th percentile of |x| (P = 99.99 by default); c <= amax, so the range stays
              within [min, max].
* mse:        c = argmin_c  Σ_{0<x<=c} min(x², s²/12) + Σ_{x>c} (x − c)²    (rounding noise of
              the uniform model, exact for x < s/2, plus the clipping error), over a grid of c.
* entropy:    TensorRT's KL calibration: for each candidate edge i >= L+1, P = hist[:i] with the
              tail folded into bin i−1, Q = P merged into L+1 equal groups and spread back over
              the nonzero bins of each group; c = the edge minimizing KL(P || Q).

The bit-widths are assigned after calibration (`assign_bitwidths`), so `choose_ranges` computes
the threshold for every candidate activation width (4 and 8) and `act_range(graph, t, bits)` is
what `quantize_graph` and the sensitivity pass read: the range for the width the tensor gets. The
16-bit logits keep min/max. The chosen ranges go to `Graph.meta["act_calibration"]` and model.json.
"""
from __future__ import annotations

from enum import Enum

import numpy as np

BINS = 2048
WIDTHS = (4, 8)


class Calibration(Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"
    ENTROPY = "entropy"


def levels(bits: int, signed: bool) -> int:
    """Positive levels L of the |x| quantizer."""
    return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1


class Histogram:
    """Histogram of |x| on [0, amax] with exact zeros counted apart; `add` over batches."""

    def __init__(self, amax: float, bins: int = BINS):
        self.amax = float(amax)
        self.counts = np.zeros(bins, np.float64)
        self.zeros = 0.0

    def add(self, v: np.ndarray) -> None:
        a = np.abs(np.asarray(v, np.float32)).ravel()
        nz = a[(a > 0) & np.isfinite(a)]  # NaN/Inf: the min/max pass has them, and the range check refuses them
        self.zeros += a.size - nz.size
        if self.amax > 0 and nz.size:
            pos = np.minimum(nz.astype(np.float64) * (len(self.counts) / self.amax), len(self.counts) - 1)
            idx = pos.astype(np.int64)
            self.counts += np.bincount(idx, minlength=len(self.counts))

    @property
    def width(self) -> float:
        return self.amax / len(self.counts)

    @property
    def centers(self) -> np.ndarray:
        return (np.arange(len(self.counts)) + 0.5) * self.width


def percentile_threshold(h: Histogram, p: float) -> float:
    total = h.counts.sum() + h.zeros
    if total == 0 or h.amax == 0:
        return h.amax
    cdf = (h.zeros + np.cumsum(h.counts)) / total
    i = int(np.searchsorted(cdf, p / 100.0))
    return float(min(h.amax, (i + 1) * h.width))


def mse_of_thresholds(h: Histogram, cs: np.ndarray, n_levels: int) -> np.ndarray:
    """Estimated squared quantization error of |x| (summed over samples) for each threshold in cs."""
    x, n = h.centers, h.counts
    s = cs[:, None] / n_levels
    inside = x[None, :] <= cs[:, None]
    err = np.where(inside, np.minimum(x[None, :] ** 2, s ** 2 / 12.0), (x[None, :] - cs[:, None]) ** 2)
    return (err * n[None, :]).sum(axis=1)


def mse_threshold(h: Histogram, n_levels: int, grid: int = 200) -> float:
    if h.amax == 0 or h.counts.sum() == 0:
        return h.amax
    cs = h.amax * np.linspace(1.0 / grid, 1.0, grid)
    return float(cs[int(np.argmin(mse_of_thresholds(h, cs, n_levels)))])


def entropy_threshold(h: Histogram, n_levels: int, stride: int = 8) -> float:
    hist = h.counts.copy()
    hist[0] += h.zeros
    nq = n_levels + 1
    best, best_i = np.inf, len(hist)
    for i in range(max(nq, stride), len(hist) + 1, stride):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        if p.sum() == 0:
            continue
        groups = np.array_split(np.arange(i), nq)
        q = np.zeros(i)
        for g in groups:
            nz = hist[:i][g] > 0
            if nz.any():
                q[g[nz]] = hist[:i][g].sum() / nz.sum()
        pn, qn = p / p.sum(), q / max(q.sum(), 1e-30)
        m = pn > 0
        kl = float((pn[m] * np.log(pn[m] / np.maximum(qn[m], 1e-30))).sum())
        if kl < best:
            best, best_i = kl, i
    return float(min(h.amax, best_i * h.width))


def threshold(h: Histogram, method: Calibration, bits: int, signed: bool, percentile: float = 99.99) -> float:
    if method is Calibration.MINMAX:
        return h.amax
    if method is Calibration.PERCENTILE:
        return percentile_threshold(h, percentile)
    if method is Calibration.MSE:
        return mse_threshold(h, levels(bits, signed))
    return entropy_threshold(h, levels(bits, signed))


def clamp_range(rng: tuple[float, float], c: float) -> tuple[float, float]:
    """The min/max range [lo, hi] cut to |x| <= c: both ends clipped to [-c, c], so its sign is kept,
    its abs-max becomes c, and lo <= hi holds (an all-negative tensor below -c too)."""
    lo, hi = rng
    return min(max(lo, -c), c), min(max(hi, -c), c)


def choose_ranges(ranges: dict[str, tuple[float, float]], hists: dict[str, Histogram], method: Calibration,
                  percentile: float = 99.99) -> dict[str, dict[str, list[float]]]:
    """{tensor: {"4": [lo, hi], "8": [lo, hi]}} from min/max ranges and |x| histograms."""
    out = {}
    for t, h in hists.items():
        signed = ranges[t][0] < 0
        out[t] = {str(b): list(clamp_range(ranges[t], threshold(h, method, b, signed, percentile)))
                  for b in WIDTHS}
    return out


def act_range(graph, t: str, bits: int) -> tuple[float, float]:
    """The calibrated range of tensor t for a `bits`-wide quantizer (min/max where none was chosen)."""
    chosen = graph.meta.get("act_calibration", {}).get("tensors", {}).get(t, {})
    r = chosen.get(str(bits))
    return (float(r[0]), float(r[1])) if r is not None else tuple(graph.ranges[t])
