"""Weight quantizers: MSE-optimal per-channel clipping and AdaRound, in numpy.

All weights are symmetric per output channel c: W_q[c] = s_c · clip(r(W[c] / s_c), −L, L),
L = 2^(b−1) − 1, with r a rounding function. The stored integers and the dyadic requant that
absorbs s_c are what `quantize_graph` emits; nothing here changes the integer arithmetic.

**Clipping** (`clip_scales`): s_c = α_c · max|W[c]| / L with α_c = argmin_α ‖Q_α(W[c]) − W[c]‖² over
a grid of α in [ALPHA_MIN, 1] that contains 1, so the chosen error is never above max-abs's.

**AdaRound** (Nagel et al., ICML 2020), on the layer's linear map y = W x. Per group of a grouped
conv (one group for a plain conv or dense) the inputs x are the im2col columns of all calibration
images and positions; x̃ is the same column in the *quantized* model (quantized earlier layers and
activations), x in the fp32 model. The reconstruction loss of the rounded weights W̃ is

    R(W̃) = E ‖W̃ x̃ − W x − δ‖² = tr(W̃ A W̃ᵀ) − 2 tr(W̃ B Wᵀ) + tr(W C Wᵀ),
    A = Cov(x̃), B = Cov(x̃, x), C = Cov(x)                       (centered: δ is the bias correction)

so one pass over the data gives the three Gram matrices and every iteration costs one matrix
product, using all calibration positions exactly. W̃ = s · clip(⌊W/s⌋ + h(V), −L, L) with the
rectified sigmoid h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1), ζ = 1.1, γ = −0.1, V initialised so that h = the
fractional part (W̃ = W before clipping). Adam minimises R / R_nearest + λ · mean(1 − |2h − 1|^β) with
β annealed from 20 to 2 after a warm-up without the regulariser; the result is hard: h = [V >= 0],
so each integer is ⌊W/s⌋ or ⌊W/s⌋ + 1, within one step of round-to-nearest. If the hard result
reconstructs worse than nearest rounding, nearest is kept.

**GPTQ** (Frantar et al., ICLR 2023; OBQ's greedy order), on the layer's own rounding error
E ‖(W̃ − W) x̃‖² = tr((W̃ − W) A (W̃ − W)ᵀ), A as above (inputs from the quantized model). Columns k
are quantized one at a time, each rounded to nearest on the fixed per-channel grid, and the rounding
error e_k = (w_k − q_k) / U_kk is pushed onto the columns not yet quantized, w_j −= e_k U_kj, with U
the upper Cholesky factor of A⁻¹: the optimal update of the remaining columns for a quadratic loss
with Hessian A (OBS), so later columns absorb what earlier ones could not represent. Columns go in
descending order of A_kk, in blocks of BLOCK with one matrix update per block, and A gets a damping
of DAMP · mean(diag A) so that it is invertible with fewer calibration positions than columns.
Cost: one Cholesky and O(og · K²) per group, against AdaRound's O(og · K²) per step for 1000 steps.
The target stays W, not the least-squares W Bᵀ A⁻¹ that would also undo the upstream error: on
ResNet-50 that target fitted the 32 calibration images and lost on fresh ones. The result is kept
only if its reconstruction loss R is below nearest rounding's.

**Bias correction**: the expected output shift E[W x − W̃ x̃] (per channel, over the calibration
data) is added to the bias: b̃ = b + W μ − W̃ μ̃.
"""
from __future__ import annotations

from enum import Enum

import numpy as np

from dyadic.core.arith import channel_scales, round_to_scale, weight_dtype


class Rounding(Enum):
    NEAREST = "nearest"
    ADAROUND = "adaround"
    GPTQ = "gptq"


class WeightClip(Enum):
    NONE = "none"    #: max-abs scales everywhere
    W4 = "4"         #: MSE clipping search for 4-bit weights, max-abs at 8 bits
    ALL = "all"      #: MSE clipping search at every width


ALPHA_MIN = 0.3
DAMP = 0.01
BLOCK = 128
ZETA, GAMMA = 1.1, -0.1


def qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def _bshape(w: np.ndarray) -> tuple:
    return (-1,) + (1,) * (w.ndim - 1)


def fake_quant(w: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    L = qmax(bits)
    s = scale.reshape(_bshape(w))
    return np.clip(np.rint(w / s), -L, L) * s


def clip_scales(w: np.ndarray, bits: int, grid: int = 71) -> np.ndarray:
    """Per-channel scales minimising ‖Q(W[c]) − W[c]‖² over α ∈ [ALPHA_MIN, 1] (α = 1 wins ties)."""
    w2 = w.reshape(w.shape[0], -1).astype(np.float64)
    base = channel_scales(w, bits)
    best_err = np.full(len(w2), np.inf)
    best = base.copy()
    for a in np.linspace(1.0, ALPHA_MIN, grid):
        s = base * a
        err = ((fake_quant(w2, s, bits) - w2) ** 2).sum(axis=1)
        better = err < best_err
        best_err[better], best[better] = err[better], s[better]
    return best


def weight_scales(w: np.ndarray, bits: int, clip: bool) -> np.ndarray:
    return clip_scales(w, bits) if clip else channel_scales(w, bits)


round_nearest = round_to_scale


def recon_loss(wt: np.ndarray, w: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray) -> float:
    """R(W̃) summed over groups; wt, w: [G, og, K]; A, B, C: [G, K, K]."""
    t = (np.sum(np.matmul(wt, A) * wt) - 2 * np.sum(np.matmul(wt, B) * w) + np.sum(np.matmul(w, C) * w))
    return float(t)


def _h(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sig = 1.0 / (1.0 + np.exp(-v))
    raw = sig * (ZETA - GAMMA) + GAMMA
    return np.clip(raw, 0.0, 1.0), sig * (1 - sig) * (ZETA - GAMMA) * ((raw > 0) & (raw < 1))


def adaround(w: np.ndarray, scale: np.ndarray, bits: int, A: np.ndarray, B: np.ndarray, C: np.ndarray,
             iters: int = 1000, lam: float = 1.0, lr: float = 0.01, warmup: float = 0.2,
             beta: tuple[float, float] = (20.0, 2.0)) -> tuple[np.ndarray, dict]:
    """w: [G, og, K] float weights, scale: [G, og] (per output channel); A, B, C: [G, K, K].
    Returns the integers [G, og, K] (int8) and {loss_nearest, loss_adaround, kept}."""
    L = qmax(bits)
    s = scale[..., None]
    w = w.astype(np.float64)
    wf = np.floor(w / s)
    rest = np.clip(w / s - wf, 1e-4, 1 - 1e-4)
    v = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1)
    near = np.clip(np.rint(w / s), -L, L)
    r0 = recon_loss(near * s, w, A, B, C)
    norm = max(r0, 1e-30)
    wb = np.einsum("gol,gkl->gok", w, B)  # W Bᵀ per group, constant
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    n_w = v.size
    t_warm = int(warmup * iters)
    for t in range(iters):
        h, dh = _h(v)
        q = wf + h
        inside = (q > -L) & (q < L)
        wt = np.clip(q, -L, L) * s
        g = 2 * (np.matmul(wt, A) - wb) * s * inside / norm
        if t >= t_warm:
            frac = (t - t_warm) / max(1, iters - t_warm)
            bt = beta[1] + 0.5 * (beta[0] - beta[1]) * (1 + np.cos(np.pi * frac))
            u = 2 * h - 1
            g = g - (2 * lam / n_w) * bt * np.abs(u) ** (bt - 1) * np.sign(u)
        g = g * dh
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g * g
        v -= lr * (m1 / (1 - b1 ** (t + 1))) / (np.sqrt(m2 / (1 - b2 ** (t + 1))) + eps)
    return _versus_nearest("adaround", bits, np.clip(wf + (v >= 0), -L, L), near, r0, s, w, A, B, C)


def _versus_nearest(name: str, bits: int, q, near, r0: float, s, w, A, B, C) -> tuple[np.ndarray, dict]:
    """A data-aware rounding's integers q, kept only if they reconstruct no worse than nearest's (loss r0)."""
    r1 = recon_loss(q * s, w, A, B, C)
    kept = r1 <= r0
    return (q if kept else near).astype(weight_dtype(bits)), {"loss_nearest": r0, f"loss_{name}": r1, "kept": bool(kept),
                                                   "loss": min(r0, r1)}


def _gptq_group(w: np.ndarray, s: np.ndarray, L: int, H: np.ndarray) -> np.ndarray:
    """w: [og, K] target weights, s: [og] scales, H: [K, K]. Returns the integers [og, K] (float)."""
    K = H.shape[0]
    H = H.copy()
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    w = w.copy()
    w[:, dead] = 0.0
    H[np.diag_indices(K)] += DAMP * float(np.mean(np.diag(H)))
    perm = np.argsort(-np.diag(H), kind="stable")
    H, w = H[perm][:, perm], w[:, perm]
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # A⁻¹ = Uᵀ U, U upper
    q = np.empty_like(w)
    for b0 in range(0, K, BLOCK):
        b1 = min(b0 + BLOCK, K)
        blk = w[:, b0:b1].copy()
        err = np.empty_like(blk)
        for j in range(b1 - b0):
            k = b0 + j
            qk = np.clip(np.rint(blk[:, j] / s), -L, L)
            q[:, k] = qk
            e = (blk[:, j] - qk * s) / U[k, k]
            blk[:, j + 1:] -= np.outer(e, U[k, k + 1:b1])
            err[:, j] = e
        w[:, b1:] -= err @ U[b0:b1, b1:]
    out = np.empty_like(q)
    out[:, perm] = q
    return out


def gptq(w: np.ndarray, scale: np.ndarray, bits: int, A: np.ndarray, B: np.ndarray, C: np.ndarray
         ) -> tuple[np.ndarray, dict]:
    """w: [G, og, K] float weights, scale: [G, og]; A, B, C: [G, K, K] as for `adaround`.
    Returns the integers [G, og, K] (int8) and {loss_nearest, loss_gptq, kept, loss}."""
    L = qmax(bits)
    s = scale[..., None]
    w = w.astype(np.float64)
    near = np.clip(np.rint(w / s), -L, L)
    out = np.stack([_gptq_group(w[g], scale[g], L, A[g]) for g in range(w.shape[0])])
    return _versus_nearest("gptq", bits, out, near, recon_loss(near * s, w, A, B, C), s, w, A, B, C)
