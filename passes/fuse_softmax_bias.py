"""Fold a constant added to a Softmax input into the Softmax (`params["bias"]`).

Attention adds a constant to its scores before the Softmax: an additive mask (0 where attended,
-1e4 / -inf where not), a relative-position bias (Swin). As a separate dyadic add, its output
would be calibrated on scores plus mask, so a -1e4 entry would set the scale of every score. Folded
into the softmax, the scores are quantized on their own range and the bias is added in integer
code units inside `qsoftmax` (`dyadic.ops.softmax`), where a masked entry's exp is exactly 0.

A constant `affine` with A = 1 (Add/Sub of a constant), whose only reader is the Softmax, is
folded when its constant varies only along non-batch axes (always true of an `affine`).

An input mask: Softmax(scores + bias) where bias = A m + B is a scalar affine of an integer graph
input m (through reshapes and casts: BERT's `(1 - attention_mask) * finfo.min`) becomes
Softmax(scores, m) with `mask_affine = (A, B)`; the mask's float chain is dropped when nothing
else reads it.
"""
from __future__ import annotations

import numpy as np

from dyadic.core.graph import PASSTHROUGH_OPS, Graph
from dyadic.ops.arith_ops import affine_shape


_MOVES = ("reshape", "flatten", "gather", "transpose", "expand", "slice")


def _mask_source(graph: Graph, prod: dict, t: str):
    """How tensor t derives from an integer graph input m (an attention mask): (m, the value-moving
    nodes from m to t, B0, B1) where t = B1 where (moved m) != 0 and B0 elsewhere, or None.
    Steps: scalar affines (`(1 - mask) * finfo.min`), Where(cond, c1, c2), Cast to bool, broadcasts
    and moves. For the affine spelling the mask is taken as 0/1 (what attention masks are)."""
    a, b = 1.0, 0.0                      # t = a v + b of the value v below
    v0, v1 = 0.0, 1.0                    # v where the mask is 0 / not 0
    n = prod.get(t)
    moves = []
    while n is not None:
        if n.op == "affine" and n.params["A"].size == 1 and n.params["B"].size == 1 and "bshape" not in n.attrs:
            a1, b1 = float(n.params["A"].ravel()[0]), float(n.params["B"].ravel()[0])
            a, b = a * a1, a * b1 + b
        elif n.op == "ew" and n.attrs["fn"] == "where":
            p = dict(n.attrs["params"])
            v0, v1 = p["c2"], p["c1"]
        elif n.op == "ew" and n.attrs["fn"] == "nonzero":
            pass
        elif n.op in _MOVES and len(n.inputs) == 1:
            moves.append(n)
        else:
            return None
        t = n.inputs[0]
        n = prod.get(t)
    if t not in graph.meta.get("int_inputs", ()):
        return None
    return t, moves[::-1], a * v0 + b, a * v1 + b


def _drop_dead(graph: Graph, nodes: list) -> tuple:
    while True:
        used = {i for n in nodes for i in n.inputs} | set(graph.outputs)
        keep = [n for n in nodes if n.output in used]
        if len(keep) == len(nodes):
            return tuple(keep)
        nodes = keep


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
    head: list = []                 # the mask's moves, rebuilt on the raw input (they read only it)
    shapes = dict(graph.shapes)
    for n in graph.nodes:  # an input mask
        if n.op != "softmax" or n.name in replace or len(n.inputs) != 1:
            continue
        src = prod.get(n.inputs[0])
        if src is None or src.op != "add" or len(users[src.output]) != 1 or "act" in src.attrs:
            continue
        for i in (0, 1):
            found = _mask_source(graph, prod, src.inputs[1 - i])
            if found is None:
                continue
            m, moves, b0, b1 = found
            for mv in moves:  # the moves again, on the raw mask (no Cast to bool / Where between them)
                name = f"{mv.output}/mask"
                if name not in shapes:
                    shapes[name] = graph.shapes[mv.output]
                    head.append(mv.replace(name=f"{mv.name}/mask", inputs=(m,), outputs=(name,)))
                m = name
            replace[n.name] = n.replace(inputs=(src.inputs[i], m), attrs={**n.attrs, "mask_affine": (b1 - b0, b0)})
            drop.add(src.name)
            break
    if not replace:
        return graph
    nodes = head + [replace.get(n.name, n) for n in graph.nodes if n.name not in drop]
    return graph.replace(nodes=_drop_dead(graph, nodes), shapes=shapes)
