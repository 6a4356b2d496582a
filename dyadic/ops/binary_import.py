"""Import rules of the ONNX binary elementwise ops (Add, Sub, Mul, Div, Max, Min, Pow).

Two activations: Add -> `add` (dyadic residual add), Mul -> `mul`, Sub/Max/Min -> `binary`; Div and
Pow of two activations only inside a chain that `passes/fuse_unary` turns into one table.
One activation and a constant c: a scalar c, or one that varies along one axis (axis 1: per
channel of NCHW; the last axis: LayerNorm gamma/beta, the bias of a [N, T, C] tensor), makes an
`affine` map (x + c, x - c, c - x, x * c, x / c) along that axis; a constant that varies along
several non-batch axes (a position embedding [1, T, C], an additive attention mask [1, 1, T, T])
makes an elementwise `affine` (`bshape`). c / x, max(x, c), min(x, c), x ** c, c ** x with a scalar
c make an `ew` step (a table). A constant that varies along the batch axis is refused, naming it.
"""
from __future__ import annotations

import numpy as np

from dyadic.ops.base import importer


def _const_axes(c, x: str, v: np.ndarray) -> list[int]:
    rank = c.rank(x)
    if v.ndim > rank:
        c.fail(f"constant operand of shape {list(v.shape)} has more dims than the activation (rank {rank})")
    aligned = (1,) * (rank - v.ndim) + tuple(v.shape)
    return [d for d, s in enumerate(aligned) if s != 1]


@importer("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow",
          doc="two activations: integer sum/product/max/min + dyadic requant; with a scalar or "
              "per-channel constant: a per-channel dyadic affine (or a table)")
def import_binary(c):
    from dyadic.core.graph import Node

    op, out = c.op.lower(), (c.outputs[0],)
    acts = c.activations
    if len(acts) == 2:
        a, b = c.inputs[0], c.inputs[1]
        if op == "add":
            return [Node("add", c.name, (a, b), out)]
        if op == "mul":
            return [Node("mul", c.name, (a, b), out)]
        return [Node("binary", c.name, (a, b), out, {"fn": op})]
    if len(acts) != 1:
        c.fail("no activation operand (constant folding should have removed this node)")
    x = acts[0]
    first = c.inputs[0] != x                    # the constant is the first operand
    v = np.asarray(c.consts[c.inputs[0] if first else c.inputs[1]], np.float64)
    axes = _const_axes(c, x, v)
    rank = c.rank(x)
    if tuple(c.shapes.get(c.outputs[0], ()))[1:] not in ((), tuple(c.shapes[x])[1:]):
        c.fail(f"constant operand of shape {list(v.shape)} broadcasts the activation to a larger shape")
    layout: dict = {}
    if 0 in axes:
        c.fail(f"constant operand of shape {list(v.shape)} varies along the batch axis")
    if len(axes) == 1:
        ch = c.shapes[x][axes[0]]
        vec = np.broadcast_to(v.reshape(-1), (ch,)).astype(np.float64)
        if axes[0] != 1:
            layout = {"axis": axes[0]}
    elif axes:
        aligned = (1,) * (rank - v.ndim) + tuple(v.shape)
        layout = {"bshape": tuple(int(d) for d in aligned[1:])}
        vec = v.reshape(aligned[1:]).ravel().astype(np.float64)
        ch = vec.size
    else:
        ch, vec = 1, v.reshape(1).astype(np.float64)
    one, zero = np.ones(ch), np.zeros(ch)
    affine = {"add": (one, vec), "mul": (vec, zero),
              "sub": ((-one, vec) if first else (one, -vec))}
    if op == "div" and not first:
        if np.any(vec == 0):
            c.fail("division by a constant zero")
        affine["div"] = (1.0 / vec, zero)
    if op in affine:
        A, B = affine[op]
        return [Node("affine", c.name, (x,), out, layout, {"A": A.astype(np.float32), "B": B.astype(np.float32)})]
    if axes:
        c.fail(f"{c.op} with a non-scalar constant operand is not supported (only a scalar)")
    s = float(vec[0])
    fn = {"div": "rdiv", "max": "max", "min": "min", "pow": "pow"}[op]
    return [Node("ew", c.name, (x,), out, {"fn": fn, "params": (("c", s), ("c_first", first))})]
