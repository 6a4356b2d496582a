"""Recognize LayerNorm written out as elementwise ops and reductions, and make it one `layernorm`.

Exporters that do not emit ONNX LayerNormalization (opset < 17, hand-written LNs, ConvNeXt's
channel LN over axis 1 of NCHW) spell it

    m = ReduceMean(x, axis);  d = x - m;  p = d ** 2 (or d * d);  v = ReduceMean(p, axis)
    y = d / Sqrt(v + eps)                 (then * gamma + beta: folded by `fold_batchnorm`)

This pass replaces each such chain (whose intermediate tensors have no readers outside it) by
`layernorm(x, axis, eps)` with gamma = 1, beta = 0: the integer LayerNorm of
`dyadic.ops.layernorm`, instead of a mean, a subtraction, two tables and a division of two
activations (which has no integer form). It runs first, before the chains become tables.
"""
from __future__ import annotations

import numpy as np

from dyadic.core.graph import Graph, Node


def _is_square(n: Node | None, d: str) -> bool:
    if n is None:
        return False
    if n.op == "mul":
        return n.inputs == (d, d)
    if n.op == "ew" and n.attrs["fn"] == "pow" and n.inputs == (d,):
        p = dict(n.attrs["params"])
        return not p.get("c_first") and float(p["c"]) == 2.0
    return False


def _match(div: Node, prod: dict[str, Node]):
    """(x, axis, eps, chain nodes) of the LayerNorm that ends in `div`, or None."""
    if not (div.op == "binary" and div.attrs.get("fn") == "div"):
        return None
    d, s = div.inputs
    sq = prod.get(s)
    if sq is None or sq.op != "ew" or sq.attrs["fn"] != "sqrt":
        return None
    e = prod.get(sq.inputs[0])
    eps, chain = 0.0, [sq]
    if e is not None and e.op == "affine" and "bshape" not in e.attrs and e.params["A"].size == 1 \
            and float(e.params["A"].ravel()[0]) == 1.0 and e.params["B"].size == 1:
        eps = float(e.params["B"].ravel()[0])
        chain.append(e)
        v = prod.get(e.inputs[0])
    else:
        v = e
    if v is None or v.op != "mean" or len(v.attrs["axes"]) != 1 or not v.attrs["keepdims"]:
        return None
    p = prod.get(v.inputs[0])
    if not _is_square(p, d):
        return None
    sub = prod.get(d)
    if sub is None or sub.op != "binary" or sub.attrs.get("fn") != "sub":
        return None
    x, m = sub.inputs
    mean = prod.get(m)
    if mean is None or mean.op != "mean" or mean.inputs != (x,) or tuple(mean.attrs["axes"]) != tuple(v.attrs["axes"]) \
            or not mean.attrs["keepdims"] or eps < 0:
        return None
    return x, int(v.attrs["axes"][0]), eps, chain + [v, p, sub, mean]


def fuse_layernorm(graph: Graph) -> Graph:
    prod = graph.producers()
    users = graph.consumers()
    replace: dict[str, Node] = {}
    drop: set[str] = set()
    for n in graph.nodes:
        m = _match(n, prod)
        if m is None:
            continue
        x, axis, eps, chain = m
        inside = {c.output for c in chain} | {n.output}
        if any(t in graph.outputs or any(u.output not in inside for u in users.get(t, []))
               for t in inside - {n.output}):
            continue  # an intermediate (the mean, the centred x) is read elsewhere: leave it
        c = graph.shapes[x][axis]
        replace[n.output] = Node("layernorm", n.name, (x,), n.outputs, {"axis": axis, "eps": eps},
                                 {"gamma": np.ones(c, np.float32), "beta": np.zeros(c, np.float32)})
        drop |= {c_.output for c_ in chain}
    if not replace:
        return graph
    nodes = tuple(replace.get(n.output, n) for n in graph.nodes if n.output not in drop)
    return graph.replace(nodes=nodes)
