"""Data movement on integers: Transpose, Squeeze/Unsqueeze, Split, Gather with constant indices.

These ops move values without changing them, so the output keeps the input's scale and the same
op runs in the float and the integer graph (pass-through). None of them may move the batch axis:
one library serves every batch size, so axis 0 must stay axis 0.
"""
from __future__ import annotations

import numpy as np

from dyadic.ops.base import IntOpDef, OpDef, importer, register_float, register_int


def _transpose(node, xs, out_shape=None):
    return np.transpose(xs[0], node.attrs["perm"])


def _transpose_lower(L, node, xs):
    from tvm import relax

    return L.emit(relax.op.permute_dims(xs[0], list(node.attrs["perm"])))


def _gather(node, xs, out_shape=None):
    return np.take(xs[0], node.params["I"], axis=node.attrs["axis"])


def _gather_lower(L, node, xs):
    from tvm import relax

    idx = node.params["I"].astype(np.int64)
    return L.emit(relax.op.take(xs[0], relax.const(idx, "int64"), axis=node.attrs["axis"], mode="clip"))


register_float(OpDef("transpose", lambda n, xs: _transpose(n, xs), None, passthrough=True))
register_int(IntOpDef("transpose", _transpose, _transpose_lower))
register_float(OpDef("gather", lambda n, xs: _gather(n, xs), None, passthrough=True))
register_int(IntOpDef("gather", _gather, _gather_lower))


@importer("Transpose", doc="integer transpose (batch axis fixed)")
def _import_transpose(c):
    from dyadic.core.graph import Node

    r = c.rank()
    perm = tuple(int(p) for p in c.attrs.get("perm", range(r - 1, -1, -1)))
    if sorted(perm) != list(range(r)):
        c.fail(f"perm {list(perm)} is not a permutation of {r} axes")
    if perm[0] != 0:
        c.fail(f"perm {list(perm)} moves the batch axis")
    return [Node("transpose", c.name, (c.inputs[0],), (c.outputs[0],), {"perm": perm})]


@importer("Squeeze", "Unsqueeze", doc="integer reshape (batch axis fixed)")
def _import_squeeze(c):
    from dyadic.core.graph import Node

    axes = c.attrs.get("axes")
    if axes is None:
        axes = c.const(1, None)
    r = c.rank() + (len(np.atleast_1d(axes)) if c.op == "Unsqueeze" and axes is not None else 0)
    for a in np.atleast_1d(axes if axes is not None else []):
        if not -r <= int(a) < r:
            c.fail(f"axis {int(a)} is out of range for rank {r}")
        if int(a) % r == 0:
            c.fail("squeezing or unsqueezing the batch axis is not supported")
    return [Node("reshape", c.name, (c.inputs[0],), (c.outputs[0],))]


@importer("Split", doc="integer slices")
def _import_split(c):
    from dyadic.core.graph import Node

    ax = c.axis(c.attrs.get("axis", 0))
    dim = c.shapes[c.inputs[0]][ax]
    sizes = c.attrs.get("split")
    if sizes is None:
        sizes = c.const(1, None)
    if sizes is None:
        k = len(c.outputs)
        n = c.attrs.get("num_outputs", k)
        step = -(-dim // n)
        sizes = [min(step, dim - i * step) for i in range(n)]
    sizes = [int(s) for s in np.atleast_1d(sizes)]
    if sum(sizes) != dim or any(s < 0 for s in sizes) or len(sizes) != len(c.outputs):
        c.fail(f"split sizes {sizes} do not divide axis {ax} of length {dim} into {len(c.outputs)} outputs")
    nodes, start = [], 0
    for k, (s, o) in enumerate(zip(sizes, c.outputs)):
        nodes.append(Node("slice", f"{c.name}/{k}", (c.inputs[0],), (o,), {"spec": ((ax, start, start + s, 1),)}))
        start += s
    return nodes


@importer("Gather", doc="integer gather with constant indices (not along the batch axis); from a constant "
                        "table by integer ids: an int8 embedding lookup")
def _import_gather(c):
    from dyadic.core.graph import Node

    if c.is_const(0) and not c.is_const(1):
        from dyadic.ops.embedding import import_embedding

        return import_embedding(c)
    if not c.is_const(1):
        c.fail("indices must be constant")
    ax = c.axis(c.attrs.get("axis", 0))
    dim = c.shapes[c.inputs[0]][ax]
    idx = np.asarray(c.consts[c.inputs[1]]).astype(np.int64)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        c.fail(f"indices {idx.min()}..{idx.max()} are out of range for axis {ax} of length {dim}")
    return [Node("gather", c.name, (c.inputs[0],), (c.outputs[0],), {"axis": ax}, {"I": idx % dim})]
