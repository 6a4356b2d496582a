"""Hutchinson estimates of per-layer Hessian traces, with a stopping rule on their standard error.

Every graph dyadic compiles is piecewise linear in each block θ_k (a layer's weights, or an
additive perturbation δ_k of an activation tensor): ReLU/Clip/max-pool switch patterns are locally
constant, and the logits are linear in one block with the others fixed. Hence the diagonal Hessian
block of the loss L = (1/N) Σ_n ℓ(z_n) is exactly its Gauss-Newton form

    H_kk = (1/N) Σ_n J_{k,n}^T A_n J_{k,n},   A_n = diag(p_n) − p_n p_n^T   (softmax cross-entropy,
                                                                            also KL to soft targets)

with J_{k,n} = ∂z_n/∂θ_k. Hutchinson's identity applied on the output side gives, for u_n i.i.d.
Rademacher vectors in logit space and w_n = A_n^{1/2} u_n / sqrt(N),

    E_u ‖ Σ_n J_{k,n}^T w_n ‖² = Tr(H_kk)

and Σ_n J_{k,n}^T w_n is the gradient of <w, z> — one reverse pass (`dyadic.mixed.autodiff.backward`)
yields a sample for every block at once, with no cross-block terms and no finite differences. The
mean trace Tr(H_kk) / n_k is the running mean over probes; probing stops once every block's
relative standard error (sample std / sqrt(p) / mean) is at most `rel_se`, or after `max_probes`.
With `logits=True` the probes skip A_n^{1/2} (w_n = u_n / sqrt(N)), so the same estimate is
(1/N) Σ_n Tr(J_{k,n}^T J_{k,n}): the logit error power per unit of block error, which is what the
logit cosine sees whatever the softmax's temperature (`passes.choose_wide_activations`). There z is
every output of the graph, flattened and concatenated (a detector's score and box heads), and a
block that no output reads gets 0.
`exact_block_traces` (finite differences of gradients along every coordinate) is the check used by
the tests on tiny models.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dyadic.mixed.autodiff import backward, forward, loss_and_grads
from dyadic.core.graph import Graph
from dyadic.core.progress import Progress


@dataclass(frozen=True)
class TraceEstimate:
    mean: float        #: Tr(H_kk) / n_k
    se: float          #: standard error of `mean`
    probes: int
    n: int             #: number of elements of the block

    @property
    def rel_se(self) -> float:
        return self.se / abs(self.mean) if self.mean else float("inf")


def _sqrt_output_hessians(z: np.ndarray) -> np.ndarray:
    """A_n^{1/2} for each sample, A_n = diag(p) − p p^T (PSD), via eigendecomposition."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    a = np.einsum("nk,kl->nkl", p, np.eye(p.shape[1])) - p[:, :, None] * p[:, None, :]
    vals, vecs = np.linalg.eigh(a)
    return np.einsum("nkj,nj,nlj->nkl", vecs, np.sqrt(np.clip(vals, 0, None)), vecs)


def estimate_traces(graph: Graph, x: np.ndarray, blocks: dict[object, np.ndarray], rel_se: float = 0.1,
                    min_probes: int = 8, max_probes: int = 100, seed: int = 0, dtype=np.float32,
                    quiet: bool = True, logits: bool = False,
                    err2: dict[object, np.ndarray] | None = None) -> dict[object, TraceEstimate]:
    """blocks: {layer name: its weight, or ("act", tensor): zeros shaped like that tensor on x}.
    err2 (optional, every block): squared errors e² shaped like the block; each probe's sample is then
    Σ g² e² (so `mean` is Σ_i (JᵀJ)_ii e_i², the error power e causes), not Σ g² / n_k."""
    rng = np.random.default_rng(seed)
    theta = {k: np.asarray(v, dtype) for k, v in blocks.items()}
    tape = forward(graph, x, theta, dtype)
    outs = list(graph.outputs) if logits else [graph.outputs[0]]  # logit space: every output; the loss: the first
    zs = [tape.env[o] for o in outs]
    zf = np.concatenate([z.reshape(len(z), -1) for z in zs], axis=1).astype(np.float64)
    cuts = np.cumsum([z[0].size for z in zs])[:-1]
    sq = None if logits else _sqrt_output_hessians(zf)
    samples: dict[object, list[float]] = {k: [] for k in blocks}
    with Progress("hessian probes", max_probes, quiet=quiet) as bar:
        for p in range(max_probes):
            u = rng.choice(np.array([-1.0, 1.0]), size=zf.shape)
            w = (u if sq is None else np.einsum("nkl,nl->nk", sq, u)) / np.sqrt(len(zf))
            dz = {o: part.reshape(z.shape).astype(dtype) for o, z, part in zip(outs, zs, np.split(w, cuts, axis=1))}
            grads = backward(graph, tape, dz, theta)
            for k in theta:
                if k not in grads:  # a block no output reads (another head's branch): no error reaches them
                    samples[k].append(0.0)
                    continue
                g2 = grads[k].astype(np.float64) ** 2
                samples[k].append(float((g2 * err2[k]).sum()) if err2 is not None else float(g2.sum()) / theta[k].size)
            bar.advance()
            if p + 1 >= min_probes and all(_rel_se(s) <= rel_se for s in samples.values()):
                break
    return {k: TraceEstimate(float(np.mean(s)), _se(s), len(s), theta[k].size) for k, s in samples.items()}


def exact_block_traces(graph: Graph, x: np.ndarray, target: np.ndarray, blocks: dict[object, np.ndarray],
                       eps: float = 1e-5) -> dict[object, float]:
    """Tr(H_kk)/n_k from central differences of exact gradients along every coordinate (tiny models only)."""
    theta = {k: np.asarray(v, np.float64) for k, v in blocks.items()}
    out = {}
    for k, v in theta.items():
        total = 0.0
        for i in range(v.size):
            e = np.zeros(v.size)
            e[i] = eps
            plus, minus = dict(theta), dict(theta)
            plus[k], minus[k] = v + e.reshape(v.shape), v - e.reshape(v.shape)
            gp = loss_and_grads(graph, x, target, plus)[1][k].ravel()[i]
            gm = loss_and_grads(graph, x, target, minus)[1][k].ravel()[i]
            total += (gp - gm) / (2 * eps)
        out[k] = total / v.size
    return out


def _se(s: list[float]) -> float:
    return float(np.std(s, ddof=1) / np.sqrt(len(s))) if len(s) > 1 else float("inf")


def _rel_se(s: list[float]) -> float:
    m = abs(float(np.mean(s)))
    if m == 0 and not any(s):
        return 0.0  # a block no output reads: exactly 0, nothing to wait for
    return _se(s) / m if m > 0 else float("inf")
