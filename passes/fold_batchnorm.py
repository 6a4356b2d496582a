"""Fold each BatchNormalization and per-channel affine map into the layer that feeds it.

BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta is the affine map A y + B with, per channel c,
A[c] = gamma[c] / sqrt(var[c] + eps) and B[c] = beta[c] - A[c] mean[c]; an `affine` node (Mul/Add/
Sub/Div by a per-channel or scalar constant, `dyadic.ops.arith_ops`) is one already.
With y = W x + b:  W'[c] = A[c] W[c],  b'[c] = A[c] b[c] + B[c]. Two affine maps in a row compose
(A2 (A1 y + B1) + B2) when their layouts agree (or one is a scalar). The folded layer writes the
map's output tensor, so later passes and calibration see one layer.

Producers a map folds into: conv and dense (along axis 1), `linear` (a constant-weight MatMul on
the last axis: along the last axis), `layernorm` (its gamma/beta, along its normalized axis), and
a positive scalar factor into an activation `matmul` (Q·Kᵀ / √d). A map whose producer is none of
these, or whose producer's output has other readers, stays an `affine` node (a BN is converted to
one): it quantizes to a per-channel dyadic affine (`qaffine`).
"""
from __future__ import annotations

import numpy as np

from dyadic.core.graph import Graph, Node
from dyadic.ops.arith_ops import affine_axis


def bn_affine(bn: Node) -> tuple[np.ndarray, np.ndarray]:
    p = bn.params
    a = p["gamma"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + bn.attrs["eps"])
    return a, p["beta"].astype(np.float64) - a * p["mean"].astype(np.float64)


def _fold(graph: Graph, src: Node, bn: Node, a: np.ndarray, b: np.ndarray) -> Node | None:
    """The producer `src` with the map y -> a y + b folded in, or None where it cannot be."""
    scalar = a.size == 1 and b.size == 1
    axis = 1 if bn.op == "batchnorm" else affine_axis(bn)
    rank = len(graph.shapes[src.output])
    if src.op in ("conv", "dense", "linear") and "act" not in src.attrs:
        if not (scalar or axis == (1 if src.op != "linear" else rank - 1)):
            return None
        a = np.broadcast_to(a, (src.params["W"].shape[0],))
        w = src.params["W"].astype(np.float64) * a.reshape((-1,) + (1,) * (src.params["W"].ndim - 1))
        return src.replace(outputs=bn.outputs, params={**src.params, "W": w.astype(np.float32),
                                                       "B": (a * src.params["B"] + b).astype(np.float32)})
    if src.op == "layernorm":
        if not (scalar or axis == src.attrs["axis"]):
            return None
        g, be = src.params["gamma"].astype(np.float64), src.params["beta"].astype(np.float64)
        return src.replace(outputs=bn.outputs, params={"gamma": (a * g).astype(np.float32),
                                                       "beta": (a * be + b).astype(np.float32)})
    if src.op == "matmul":
        if not (scalar and float(b.ravel()[0]) == 0.0 and float(a.ravel()[0]) > 0):
            return None
        return src.replace(outputs=bn.outputs, attrs={**src.attrs,
                                                      "alpha": src.attrs.get("alpha", 1.0) * float(a.ravel()[0])})
    if src.op == "affine":
        a0, b0 = src.params["A"].astype(np.float64), src.params["B"].astype(np.float64)
        layout = {k: v for k, v in src.attrs.items() if k in ("axis", "bshape")}
        blayout = {k: v for k, v in bn.attrs.items() if k in ("axis", "bshape")} if bn.op == "affine" else {}
        if not (scalar or a0.size == 1 and b0.size == 1 or layout == blayout):
            return None
        if a0.size == 1 and b0.size == 1 and not scalar:
            layout = blayout
        attrs = {**{k: v for k, v in src.attrs.items() if k not in ("axis", "bshape")}, **layout}
        return src.replace(outputs=bn.outputs, attrs=attrs, params={"A": (a * a0).astype(np.float32),
                                                                    "B": (a * b0 + b).astype(np.float32)})
    return None


def fold_batchnorm(graph: Graph) -> Graph:
    nodes = list(graph.nodes)
    producers = graph.producers()
    users = graph.consumers()
    for bn in [n for n in nodes if n.op in ("batchnorm", "affine")]:
        a, b = bn_affine(bn) if bn.op == "batchnorm" else (bn.params["A"].astype(np.float64),
                                                           bn.params["B"].astype(np.float64))
        src = producers.get(bn.inputs[0])
        sole = src is not None and len(users[bn.inputs[0]]) == 1 and bn.inputs[0] not in graph.outputs
        new = _fold(graph, src, bn, a, b) if sole and "act" not in bn.attrs else None
        if new is None:
            if bn.op == "batchnorm":
                nodes[nodes.index(bn)] = producers[bn.output] = Node(
                    "affine", bn.name, bn.inputs, bn.outputs, {}, {"A": a.astype(np.float32), "B": b.astype(np.float32)})
            continue
        nodes[nodes.index(src)] = new
        nodes.remove(bn)
        producers[bn.output] = new
    return graph.replace(nodes=tuple(nodes))
