"""Reductions that are max-pools: GlobalMaxPool, and ReduceMax over the spatial axes of NCHW.

A max over H and W is a max-pool whose window is the whole plane, so it reuses `maxpool` (integer
max, scale kept) and, without keepdims, a reshape that drops the two unit axes.
"""
from __future__ import annotations

import numpy as np

from dyadic.ops.base import importer


@importer("GlobalMaxPool", "ReduceMax", doc="integer max over H, W (a whole-plane max-pool)")
def _import_global_max(c):
    from dyadic.core.graph import Node

    x = c.inputs[0]
    if c.rank(x) != 4:
        c.fail(f"only rank-4 NCHW inputs are supported (rank {c.rank(x)})")
    keep = 1
    if c.op == "ReduceMax":
        axes = c.attrs.get("axes")
        if axes is None:
            axes = c.const(1, None)
        if axes is None or sorted(int(a) % 4 for a in np.atleast_1d(axes)) != [2, 3]:
            c.fail("only the max over H, W (axes 2, 3) of NCHW is supported")
        keep = int(c.attrs.get("keepdims", 1))
    h, w = c.shapes[x][2:]
    mid = c.outputs[0] if keep else f"{c.outputs[0]}/keepdims"
    nodes = [Node("maxpool", c.name, (x,), (mid,), {"kernel": (h, w), "strides": (1, 1), "pads": (0, 0, 0, 0)})]
    if not keep:
        c.shapes[mid] = tuple(c.shapes[x][:2]) + (1, 1)
        nodes.append(Node("reshape", f"{c.name}/squeeze", (mid,), (c.outputs[0],)))
    return nodes
