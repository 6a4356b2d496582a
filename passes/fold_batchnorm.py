"""Fold each BatchNormalization into the convolution (or dense layer) that feeds it.

BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta. With y = W x + b and a = gamma / sqrt(var + eps)
per output channel c:  W'[c] = a[c] W[c],  b'[c] = a[c] (b[c] - mean[c]) + beta[c].
The folded layer writes the BN's output tensor, so later passes and calibration see one layer.
A BN whose producer is not a conv/dense, or whose producer output has other readers, is an error:
there is no integer op for a free-standing affine transform.
"""
from __future__ import annotations

import numpy as np

from dyadic.core.errors import ModelError
from dyadic.core.graph import Graph


def fold_batchnorm(graph: Graph) -> Graph:
    nodes = list(graph.nodes)
    producers = graph.producers()
    users = graph.consumers()
    bad = []
    for bn in [n for n in nodes if n.op == "batchnorm"]:
        src = producers.get(bn.inputs[0])
        if src is None or src.op not in ("conv", "dense") or len(users[bn.inputs[0]]) != 1 \
                or bn.inputs[0] in graph.outputs:
            bad.append(bn.name)
            continue
        p = bn.params
        a = p["gamma"].astype(np.float64) / np.sqrt(p["var"].astype(np.float64) + bn.attrs["eps"])
        w = src.params["W"].astype(np.float64) * a.reshape((-1,) + (1,) * (src.params["W"].ndim - 1))
        b = a * (src.params["B"].astype(np.float64) - p["mean"]) + p["beta"]
        folded = src.replace(outputs=bn.outputs,
                             params={"W": w.astype(np.float32), "B": b.astype(np.float32)})
        nodes[nodes.index(src)] = folded
        nodes.remove(bn)
        producers[bn.output] = folded
    if bad:
        raise ModelError("BatchNormalization not directly after a Conv/Gemm (cannot be folded): " + ", ".join(bad))
    return graph.replace(nodes=tuple(nodes))


