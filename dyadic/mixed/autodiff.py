"""Reverse-mode gradients of a float `Graph` in numpy (float64 or float32), for Hessian estimation.

`loss_and_grads(graph, x, target, theta)` runs the graph forward with the weights in `theta`
(`{layer: W}`) plus additive perturbations `theta[("act", tensor)]` on chosen activation tensors,
then back-propagates a loss on the output logits:
  * labels given (int array): mean cross-entropy;
  * soft targets given (float [N, K] probabilities): mean KL(target || softmax(logits)).
It returns the loss and the gradient for every key of `theta`. Hessian-vector products come from
central differences of two such gradients (`dyadic.mixed.hessian`). Only the ops of the float graph after
`fold_batchnorm` and `fuse_activations` are differentiated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dyadic.core import npops
from dyadic.core.float_exec import run_node
from dyadic.core.graph import Graph, Node

Key = object  # a layer name (its weight) or ("act", tensor name) (a perturbation of that tensor)


def _act_mask(pre: np.ndarray, node: Node) -> np.ndarray | None:
    lo, hi = node.attrs.get("act", (-np.inf, np.inf))
    if (lo, hi) == (-np.inf, np.inf):
        return None
    return (pre > lo) & (pre < hi)


def _col2im(dcols, x_shape, kernel, strides, pads, dil, ho, wo) -> np.ndarray:
    """Adjoint of `npops.windows` on the padded input: scatter-add window gradients back."""
    n, c, h, w = x_shape
    t, l, b, r = pads
    dx = np.zeros((n, c, h + t + b, w + l + r), dcols.dtype)
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dil
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw] += dcols[..., i, j]
    return dx[:, :, t:t + h, l:l + w]


def _conv_backward(node: Node, x, w, dy):
    a = node.attrs
    g = a["group"]
    o, cg, kh, kw = w.shape
    win = npops.windows(npops.pad_hw(x, a["pads"]), (kh, kw), a["strides"], a["dilations"])
    n, c, ho, wo = win.shape[:4]
    og = o // g
    if cg == 1 and og == 1:  # depthwise: elementwise products, no contraction over channels
        dw = np.einsum("nchw,nchwij->cij", dy, win, optimize=True)[:, None]
        dcols = dy[..., None, None] * w[:, 0][None, :, None, None]
    else:  # per group, im2col and two BLAS matrix products
        dw = np.empty_like(w)
        dcols = np.empty((n, c, ho, wo, kh, kw), dy.dtype)
        for gi in range(g):
            cs, os_ = slice(gi * cg, (gi + 1) * cg), slice(gi * og, (gi + 1) * og)
            cols = win[:, cs].transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cg * kh * kw)
            dyf = dy[:, os_].transpose(0, 2, 3, 1).reshape(n * ho * wo, og)
            dw[os_] = (dyf.T @ cols).reshape(og, cg, kh, kw)
            dc = dyf @ w[os_].reshape(og, -1)
            dcols[:, cs] = dc.reshape(n, ho, wo, cg, kh, kw).transpose(0, 3, 1, 2, 4, 5)
    dx = _col2im(dcols, x.shape, (kh, kw), a["strides"], a["pads"], a["dilations"], ho, wo)
    return dx, dw


def _pool_backward(node: Node, x, y, dy):
    a = node.attrs
    kh, kw = a["kernel"]
    xp = npops.pad_hw(x, a["pads"], -np.inf if node.op == "maxpool" else 0)
    win = npops.windows(xp, (kh, kw), a["strides"])
    n, c, ho, wo = win.shape[:4]
    if node.op == "maxpool":
        hit = win == y[..., None, None]
        dcols = hit * (dy / hit.sum(axis=(-2, -1)))[..., None, None]
    else:
        cnt = kh * kw if a["count_include_pad"] else npops.window_counts(x.shape[2:], (kh, kw), a["strides"], a["pads"])
        dcols = np.broadcast_to((dy / cnt)[..., None, None], win.shape)
    return _col2im(dcols, x.shape, (kh, kw), a["strides"], a["pads"], (1, 1), ho, wo)


def _loss_grad(z: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    zs = z - z.max(axis=1, keepdims=True)
    logp = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    n = len(z)
    if target.ndim == 1:
        loss = -logp[np.arange(n), target].mean()
        t = np.zeros_like(p)
        t[np.arange(n), target] = 1.0
    else:
        t = target
        loss = float((t * (np.log(np.maximum(t, 1e-30)) - logp)).sum(axis=1).mean())
    return float(loss), (p - t) / n


@dataclass
class Tape:
    env: dict
    pre: dict
    raw: dict


def forward(graph: Graph, x: np.ndarray, theta: dict, dtype=np.float64) -> Tape:
    """Run the graph with the weights/perturbations of `theta`, keeping what backward needs.
    float64 for gradient checks; float32 (half the time) is enough for trace estimates."""
    env = {graph.inputs[0]: x.astype(dtype)}
    pre: dict[str, np.ndarray] = {}
    raw: dict[str, np.ndarray] = {}  # node outputs before any perturbation (max-pool needs its argmax)
    for key, d in theta.items():
        if isinstance(key, tuple) and key[1] in env:
            env[key[1]] = env[key[1]] + d
    for n in graph.nodes:
        xs = [env[i] for i in n.inputs]
        if n.op in ("conv", "dense"):
            plain = n.replace(params={"W": theta.get(n.name, n.params["W"]), "B": n.params["B"]},
                              attrs={k: v for k, v in n.attrs.items() if k != "act"})
            pre[n.output] = run_node(plain, xs).astype(dtype, copy=False)
            y = np.clip(pre[n.output], *n.attrs["act"]) if "act" in n.attrs else pre[n.output]
        elif n.op == "add":
            pre[n.output] = xs[0] + xs[1]
            y = np.clip(pre[n.output], *n.attrs["act"]) if "act" in n.attrs else pre[n.output]
        elif n.op == "reshape":
            y = npops.reshape_batch(xs[0], graph.shapes[n.output])
        else:
            y = run_node(n, xs).astype(dtype, copy=False)
        raw[n.output] = y
        if ("act", n.output) in theta:
            y = y + theta[("act", n.output)]
        env[n.output] = y
    return Tape(env, pre, raw)


def loss_and_grads(graph: Graph, x: np.ndarray, target: np.ndarray, theta: dict) -> tuple[float, dict]:
    tape = forward(graph, x, theta)
    z = tape.env[graph.outputs[0]]
    loss, dz = _loss_grad(z.reshape(len(z), -1), target)
    return loss, backward(graph, tape, dz.reshape(z.shape), theta)


def backward(graph: Graph, tape: Tape, dz, theta: dict) -> dict:
    """Vector-Jacobian product: the gradient of <dz, output> for every key of `theta` that reaches it.
    dz: an array for the first output, or {output: array} for several (the sum of their products)."""
    env, pre, raw = tape.env, tape.pre, tape.raw
    grads: dict = {}
    d = dict(dz) if isinstance(dz, dict) else {graph.outputs[0]: dz}

    def acc(t, g):
        d[t] = d[t] + g if t in d else g

    for n in reversed(graph.nodes):
        dy = d.pop(n.output, None)
        if dy is None:
            continue
        if ("act", n.output) in theta:
            grads[("act", n.output)] = dy
        x = env[n.inputs[0]]
        if n.op in ("conv", "dense", "add"):
            mask = _act_mask(pre[n.output], n)
            if mask is not None:
                dy = dy * mask
        if n.op == "conv":
            dx, grads[n.name] = _conv_backward(n, x, theta.get(n.name, n.params["W"]).astype(dy.dtype, copy=False), dy)
            acc(n.inputs[0], dx)
        elif n.op == "dense":
            w = theta.get(n.name, n.params["W"]).astype(dy.dtype, copy=False)
            x2 = x.reshape(len(x), -1)
            grads[n.name] = dy.T @ x2
            acc(n.inputs[0], (dy @ w).reshape(x.shape))
        elif n.op == "add":
            acc(n.inputs[0], dy)
            acc(n.inputs[1], dy)
        elif n.op == "relu":
            acc(n.inputs[0], dy * (x > 0))
        elif n.op == "clip":
            acc(n.inputs[0], dy * ((x > n.attrs["lo"]) & (x < n.attrs["hi"])))
        elif n.op in ("maxpool", "avgpool"):
            acc(n.inputs[0], _pool_backward(n, x, raw[n.output], dy))
        elif n.op == "mean_hw":
            h, w_ = x.shape[2:]
            acc(n.inputs[0], np.broadcast_to(dy.reshape(len(x), -1, 1, 1) / (h * w_), x.shape).copy())
        elif n.op == "reshape":
            acc(n.inputs[0], dy.reshape(x.shape))
        elif n.op == "concat":
            ax, start = n.attrs["axis"], 0
            for t in n.inputs:
                k = env[t].shape[ax]
                acc(t, np.take(dy, range(start, start + k), axis=ax))
                start += k
        elif n.op == "pad":
            idx = tuple(slice(p0, dim - p1) for (p0, p1), dim in zip(n.attrs["pads"], dy.shape))
            acc(n.inputs[0], dy[idx])
        elif n.op == "slice":
            dx = np.zeros_like(x)
            idx = [slice(None)] * x.ndim
            for ax, s, e, st in n.attrs["spec"]:
                idx[ax] = slice(s, e if e >= 0 else None, st)
            dx[tuple(idx)] = dy
            acc(n.inputs[0], dx)
        else:  # an op-table op
            from dyadic.mixed.autodiff_table import vjp

            for t, g in zip(n.inputs, vjp(n, [env[i] for i in n.inputs], raw[n.output], dy)):
                acc(t, g)
    for t in graph.inputs:
        if ("act", t) in theta:
            grads[("act", t)] = d.get(t, np.zeros_like(env[t]))
    return grads
