"""Execute a float `Graph` in numpy (float32). Used for calibration and as the fp32 baseline of a pass."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from dyadic.core import npops
from dyadic.core.graph import Graph, Node
from dyadic.ops import FLOAT


def _act(y, node: Node):
    lo, hi = node.attrs.get("act", (-np.inf, np.inf))
    return np.clip(y, lo, hi) if (lo, hi) != (-np.inf, np.inf) else y


def run_node(node: Node, xs: list[np.ndarray]) -> np.ndarray:
    a, op = node.attrs, node.op
    if op in FLOAT:
        return FLOAT[op].run_float(node, xs)
    x = xs[0]
    if op == "conv":
        y = npops.conv2d(x, node.params["W"], a["strides"], a["pads"], a["dilations"], a["group"], exact=False)
        return _act(y + node.params["B"].reshape(1, -1, 1, 1), node)
    if op == "dense":
        return _act(npops.dense(x, node.params["W"], exact=False) + node.params["B"], node)
    if op == "batchnorm":
        p = node.params
        a_ = p["gamma"] / np.sqrt(p["var"] + a["eps"])
        return (x - p["mean"].reshape(1, -1, 1, 1)) * a_.reshape(1, -1, 1, 1) + p["beta"].reshape(1, -1, 1, 1)
    if op == "add":
        return _act(x + xs[1], node)
    if op == "relu":
        return np.maximum(x, 0)
    if op == "clip":
        return np.clip(x, a["lo"], a["hi"])
    if op == "maxpool":
        return npops.maxpool(x, a["kernel"], a["strides"], a["pads"])
    if op == "avgpool":
        return npops.avgpool(x, a["kernel"], a["strides"], a["pads"], a["count_include_pad"])
    if op == "mean_hw":
        return x.mean(axis=(2, 3), keepdims=bool(a["keepdims"]))
    if op == "concat":
        return np.concatenate(xs, axis=a["axis"])
    if op == "pad":
        return npops.pad_nd(x, a["pads"])
    if op == "slice":
        return npops.slice_nd(x, a["spec"])
    raise NotImplementedError(op)


def execute(graph: Graph, inputs: dict[str, np.ndarray],
            observe: Callable[[str, np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
    """Run the graph; `observe(name, value)` sees every tensor (used by calibration)."""
    env = {k: np.asarray(v, np.float32) for k, v in inputs.items()}
    if observe:
        for k, v in env.items():
            observe(k, v)
    for node in graph.nodes:
        if node.op == "reshape":
            y = npops.reshape_batch(env[node.inputs[0]], graph.shapes[node.output])
        else:
            y = run_node(node, [env[i] for i in node.inputs]).astype(np.float32, copy=False)
        env[node.output] = y
        if observe:
            observe(node.output, y)
    return {o: env[o] for o in graph.outputs}


def batches(arrays: dict[str, np.ndarray], batch_size: int) -> Iterable[dict[str, np.ndarray]]:
    n = len(next(iter(arrays.values())))
    for i in range(0, n, batch_size):
        yield {k: v[i:i + batch_size] for k, v in arrays.items()}


def static_chunks(graph: Graph, x: np.ndarray) -> list[np.ndarray]:
    """x as the batches the graph can run: x itself for a free batch axis; for a static batch B, the
    consecutive B-sample slices (a tail shorter than B is dropped)."""
    b = graph.static_batch_size()
    if b is None:
        return [x]
    if len(x) < b:
        from dyadic.core.errors import ModelError

        raise ModelError(f"the graph runs at a static batch of {b} only, and {len(x)} calibration "
                         f"sample(s) are fewer than that")
    return [x[i:i + b] for i in range(0, len(x) - b + 1, b)]
