"""Fold each BatchNormalization and per-channel affine map into the convolution (or dense layer) that feeds it.

BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta is the affine map A y + B with, per channel c,
A[c] = gamma[c] / sqrt(var[c] + eps) and B[c] = beta[c] - A[c] mean[c]; an `affine` node (Mul/Add/
Sub/Div by a per-channel or scalar constant, `dyadic.ops.arith_ops`) is one already.
With y = W x + b:  W'[c] = A[c] W[c],  b'[c] = A[c] b[c] + B[c]. Two affine maps in a row compose
(A2 (A1 y + B1) + B2). The folded layer writes the map's output tensor, so later passes and
calibration see one layer. A map whose producer is not a conv/dense/affine, or whose producer's
output has other readers, stays an `affine` node (a BN is converted to one): it quantizes to a
per-channel dyadic affine (`qaffine`).
"""
from __future__ import annotations

import numpy as np

from dyadic.core.graph import Graph, Node


def bn_affine(bn: Node) -> tuple[np.ndarray, np.ndarray]:
    p = bn.params
    a = p["gamma"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + bn.attrs["eps"])
    return a, p["beta"].astype(np.float64) - a * p["mean"].astype(np.float64)


def fold_batchnorm(graph: Graph) -> Graph:
    nodes = list(graph.nodes)
    producers = graph.producers()
    users = graph.consumers()
    for bn in [n for n in nodes if n.op in ("batchnorm", "affine")]:
        a, b = bn_affine(bn) if bn.op == "batchnorm" else (bn.params["A"].astype(np.float64),
                                                           bn.params["B"].astype(np.float64))
        src = producers.get(bn.inputs[0])
        sole = src is not None and len(users[bn.inputs[0]]) == 1 and bn.inputs[0] not in graph.outputs
        if sole and src.op in ("conv", "dense") and "act" not in src.attrs:
            a = np.broadcast_to(a, (src.params["W"].shape[0],))
            w = src.params["W"].astype(np.float64) * a.reshape((-1,) + (1,) * (src.params["W"].ndim - 1))
            new = src.replace(outputs=bn.outputs, params={"W": w.astype(np.float32),
                                                          "B": (a * src.params["B"] + b).astype(np.float32)})
        elif sole and src.op == "affine":
            a0, b0 = src.params["A"].astype(np.float64), src.params["B"].astype(np.float64)
            new = src.replace(outputs=bn.outputs, params={"A": (a * a0).astype(np.float32),
                                                          "B": (a * b0 + b).astype(np.float32)})
        else:
            if bn.op == "batchnorm":
                nodes[nodes.index(bn)] = producers[bn.output] = Node(
                    "affine", bn.name, bn.inputs, bn.outputs, {}, {"A": a.astype(np.float32), "B": b.astype(np.float32)})
            continue
        nodes[nodes.index(src)] = new
        nodes.remove(bn)
        producers[bn.output] = new
    return graph.replace(nodes=tuple(nodes))
