"""Fold a constant added to a Softmax input into the Softmax (`params["bias"]`).

Attention adds a constant to its scores before the Softmax: an additive mask (0 where attended,
-1e4 / -inf where not), a relative-position bias (Swin). As a separate dyadic add, its output
would be calibrated on scores plus mask, so a -1e4 entry would set the scale of every score. Folded
into the softmax, the scores are quantized on their own range and the bias is added in integer
code units inside `qsoftmax` (`dyadic.ops.softmax`), where a masked entry's exp is exactly 0.

A constant `affine` with A = 1 (Add/Sub of a constant), whose only reader is the Softmax, is
folded when its constant varies only along non-batch axes (always true of an `affine`).
"""
from __future__ import annotations

import numpy as np

from dyadic.core.graph import Graph
from dyadic.ops.arith_ops import affine_shape


def fuse_softmax_bias(graph: Graph) -> Graph:
    prod = graph.producers()
    users = graph.consumers()
    replace, drop = {}, set()
    for n in graph.nodes:
        if n.op != "softmax" or "bias" in n.params:
            continue
        src = prod.get(n.inputs[0])
        if src is None or src.op != "affine" or len(users[src.output]) != 1 or src.output in graph.outputs \
                or not np.all(src.params["A"] == 1.0) or "act" in src.attrs:
            continue
        ndim = len(graph.shapes[src.output])
        b = src.params["B"]
        bias = b.reshape(affine_shape(src, ndim)) if b.size > 1 else b.reshape((1,) * ndim)
        replace[n.name] = n.replace(inputs=src.inputs, params={**n.params, "bias": np.ascontiguousarray(bias, np.float32)})
        drop.add(src.name)
    if not replace:
        return graph
    return graph.replace(nodes=tuple(replace.get(n.name, n) for n in graph.nodes if n.name not in drop))
