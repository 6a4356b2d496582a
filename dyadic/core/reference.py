"""The numpy int64 reference executor of the integer graph: the definition compiled code must equal.

Every tensor is computed in int64 with the formulas of `dyadic.arith` and stored back in its integer
dtype (a value outside that dtype's range would be a bug, and the cast check catches it).
"""
from __future__ import annotations

import numpy as np

from dyadic.core import npops
from dyadic.core.arith import requantize, rounding_term
from dyadic.core.graph import Graph, Node
from dyadic.ops import INT

_BC = (1, -1, 1, 1)  # per-channel parameters broadcast over NCHW


def run_int_node(node: Node, xs: list[np.ndarray], out_shape) -> np.ndarray:
    a, p, op = node.attrs, node.params, node.op
    if op in INT:
        return INT[op].run_int(node, xs, out_shape)
    x = xs[0]
    if op == "qconv":
        acc = npops.conv2d(x, p["W"], a["strides"], a["pads"], a["dilations"], a["group"], exact=True)
        acc = acc + p["B"].astype(np.int64).reshape(_BC)
        return requantize(acc, p["M"].reshape(_BC), p["S"].reshape(_BC), a["lo"], a["hi"])
    if op == "qdense":
        acc = npops.dense(x, p["W"], exact=True) + p["B"].astype(np.int64)
        return requantize(acc, p["M"], p["S"], a["lo"], a["hi"])
    if op == "qadd":
        m, s = p["M"], p["S"]
        acc = xs[0].astype(np.int64) * m[0] + xs[1].astype(np.int64) * m[1] + rounding_term(s)
        return np.clip(acc >> s, a["lo"], a["hi"])
    if op == "qavgpool":
        acc = npops.window_sum(x, a["kernel"], a["strides"], a["pads"])
        return requantize(acc, p["M"], p["S"], a["lo"], a["hi"])
    if op == "qmean_hw":
        acc = x.astype(np.int64).sum(axis=(2, 3), keepdims=bool(a["keepdims"]))
        return requantize(acc, p["M"], p["S"], a["lo"], a["hi"])
    if op == "requant":
        return requantize(x, p["M"], p["S"], a["lo"], a["hi"])
    if op == "maxpool":
        return npops.maxpool(x, a["kernel"], a["strides"], a["pads"])
    if op == "concat":
        return np.concatenate(xs, axis=a["axis"])
    if op == "pad":
        return npops.pad_nd(x, a["pads"])
    if op == "slice":
        return npops.slice_nd(x, a["spec"])
    if op in ("reshape", "flatten"):
        return npops.reshape_batch(x, out_shape)
    raise NotImplementedError(op)


def _store(v: np.ndarray, dtype: str, name: str) -> np.ndarray:
    info = np.iinfo(dtype)
    if v.size and (v.min() < info.min or v.max() > info.max):
        raise AssertionError(f"reference: tensor {name} leaves the range of {dtype}")
    return v.astype(dtype)


def run_reference(graph: Graph, inputs: dict[str, np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
    """Execute the integer graph on integer inputs; returns the outputs (or every tensor with keep_all)."""
    env = {k: _store(np.asarray(v), graph.dtypes[k], k) for k, v in inputs.items()}
    for node in graph.nodes:
        y = run_int_node(node, [env[i] for i in node.inputs], graph.shapes[node.output])
        env[node.output] = _store(y, graph.dtypes[node.output], node.output)
    return env if keep_all else {o: env[o] for o in graph.outputs}
