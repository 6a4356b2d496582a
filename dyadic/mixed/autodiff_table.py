"""Vector-Jacobian products of the op-table ops (`dyadic.ops`), for the Hessian estimates.

Elementwise tables (`ew`, `unary`) are differentiated numerically, f'(x) ≈ (f(x+h) - f(x-h)) / 2h
with h = 1e-4 (max(1, |x|)), which is far below the quantization steps whose effect the traces
weigh; the others are exact: affine (A[c]), products and sums with broadcasting (the gradient
summed back over the broadcast axes), max/min (to the winning operand), softmax
(y (dy - sum(y dy))), transpose (inverse permutation), gather (scatter-add), linear (dy W), the
matmul of two activations (dy Bᵀ and Aᵀ dy) and layernorm ((g - mean g - x̂ mean(g x̂)) / σ, g = dy γ).
"""
from __future__ import annotations

import numpy as np

from dyadic.core.errors import ModelError
from dyadic.ops.arith_ops import affine_shape, channel_shape


def _unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for ax, s in enumerate(shape):
        if s == 1 and g.shape[ax] != 1:
            g = g.sum(axis=ax, keepdims=True)
    return g


def _table_fn(n):
    from dyadic.ops.elementwise import apply_unary, run_program

    if n.op == "ew":
        params = dict(n.attrs["params"])
        return lambda v: apply_unary(n.attrs["fn"], v, params)
    return lambda v: run_program(n.attrs["program"], v)


def _layernorm_vjp(n, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """y = x̂ γ + β with x̂ = (x - μ)/σ over one axis: dx = (g - mean(g) - x̂ mean(g x̂)) / σ, g = dy γ."""
    ax = n.attrs["axis"]
    x = x.astype(dy.dtype, copy=False)
    d = x - x.mean(axis=ax, keepdims=True)
    sigma = np.sqrt((d * d).mean(axis=ax, keepdims=True) + dy.dtype.type(n.attrs["eps"]))
    xh = d / sigma
    g = dy * n.params["gamma"].astype(dy.dtype).reshape(channel_shape(x.ndim, ax))
    return (g - g.mean(axis=ax, keepdims=True) - xh * (g * xh).mean(axis=ax, keepdims=True)) / sigma


def vjp(n, xs: list[np.ndarray], y: np.ndarray, dy: np.ndarray) -> list[np.ndarray]:
    """The gradients of <dy, n(xs)> with respect to each input of table op n."""
    x = xs[0]
    if n.op in ("ew", "unary"):
        f = _table_fn(n)
        h = 1e-4 * np.maximum(1.0, np.abs(x))
        return [dy * (f(x + h) - f(x - h)) / (2 * h)]
    if n.op == "affine":
        return [dy * n.params["A"].reshape(affine_shape(n, x.ndim)).astype(dy.dtype)]
    if n.op == "mul":
        return [_unbroadcast(dy * xs[1], xs[0].shape), _unbroadcast(dy * xs[0], xs[1].shape)]
    if n.op == "binary":
        fn = n.attrs["fn"]
        if fn in ("add", "sub"):
            return [_unbroadcast(dy, xs[0].shape), _unbroadcast(-dy if fn == "sub" else dy, xs[1].shape)]
        first = (xs[0] >= xs[1]) if fn == "max" else (xs[0] <= xs[1])
        return [_unbroadcast(dy * first, xs[0].shape), _unbroadcast(dy * ~first, xs[1].shape)]
    if n.op == "softmax":
        ax = n.attrs["axis"]
        return [y * (dy - (y * dy).sum(axis=ax, keepdims=True))]
    if n.op == "transpose":
        return [np.transpose(dy, np.argsort(n.attrs["perm"]))]
    if n.op == "gather":
        dx = np.zeros_like(x)
        idx = [slice(None)] * x.ndim
        for k, i in enumerate(np.atleast_1d(n.params["I"])):
            idx[n.attrs["axis"]] = int(i)
            src = np.take(dy, k, axis=n.attrs["axis"]) if np.ndim(n.params["I"]) else dy
            dx[tuple(idx)] += src
        return [dx]
    if n.op == "linear":  # y = clip(x Wᵀ + B): the clip passes the gradient where it did not bind
        lo, hi = n.attrs.get("act", (-np.inf, np.inf))
        g = dy * ((y > lo) & (y < hi)) if (lo, hi) != (-np.inf, np.inf) else dy
        return [g @ n.params["W"].astype(dy.dtype)]
    if n.op == "matmul":  # y = alpha A B
        alpha = dy.dtype.type(n.attrs.get("alpha", 1.0))
        a, b = xs
        return [_unbroadcast(alpha * np.matmul(dy, np.swapaxes(b, -1, -2)), a.shape),
                _unbroadcast(alpha * np.matmul(np.swapaxes(a, -1, -2), dy), b.shape)]
    if n.op == "layernorm":
        return [_layernorm_vjp(n, x, dy)]
    raise ModelError(f"mixed precision: no gradient for op {n.op} ({n.name}) yet; use --bits 8, 4 or w4a8")
