"""Fuse Relu and Clip into the conv, dense, add or per-channel affine that produces their input.

After fusion the layer carries `attrs["act"] = (lo, hi)` (Relu is (0, inf), ReLU6 is (0, 6)) and
writes the activation's output tensor. In the integer graph the activation becomes the clip bounds
of the layer's requantization, so it costs nothing. A Relu/Clip whose input has other readers stays
a separate node (it becomes an integer `requant` with clip bounds). The affine is a BatchNorm that
follows no conv (DenseNet's pre-activation BN + ReLU): fused, its ReLU output is rounded once, where
the separate requant rounded it a second time (and ran as its own pass over the tensor).
"""
from __future__ import annotations

import numpy as np

from dyadic.core.graph import Graph


def fuse_activations(graph: Graph) -> Graph:
    nodes = list(graph.nodes)
    producers = graph.producers()
    users = graph.consumers()
    for act in [n for n in nodes if n.op in ("relu", "clip")]:
        src = producers.get(act.inputs[0])
        if src is None or src.op not in ("conv", "dense", "add", "affine") or "act" in src.attrs \
                or len(users[act.inputs[0]]) != 1 or act.inputs[0] in graph.outputs:
            continue
        bounds = (0.0, np.inf) if act.op == "relu" else (act.attrs["lo"], act.attrs["hi"])
        fused = src.replace(outputs=act.outputs, attrs={**src.attrs, "act": bounds})
        nodes[nodes.index(src)] = fused
        nodes.remove(act)
        producers[act.output] = fused
    return graph.replace(nodes=tuple(nodes))
