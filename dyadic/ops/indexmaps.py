"""Data movement that is a compile-time index map per axis: Pad (reflect, edge, wrap), Tile (Expand: `ops.movement`).

Each of these ops computes y[..., i, ...] = x[..., I_d[i], ...] along every axis d it changes, with
I_d an integer array known at compile time, so it imports as one `gather` (`dyadic.ops.movement`:
integers moved, scale kept, no arithmetic) per changed axis:

    Pad reflect:  I[i] = r(i - p_begin), r(j) = -j for j < 0, 2 (L - 1) - j for j >= L (repeated)
    Pad edge:     I[i] = clip(i - p_begin, 0, L - 1)
    Pad wrap:     I[i] = (i - p_begin) mod L
    Tile by k:    I[i] = i mod L,  i < k L
    Expand:       I[i] = 0,        i < L_out, on each axis of length 1 that is broadcast

Negative pads crop (the same maps). Constant-mode Pad stays the `pad` node (zeros: the value 0 is
exactly the integer 0 at any scale); a non-zero pad value is refused. The batch axis never moves.
"""
from __future__ import annotations

import numpy as np

from dyadic.ops.base import importer


def reflect_index(j: np.ndarray, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros_like(j)
    period = 2 * (n - 1)
    j = np.mod(j, period)
    return np.where(j < n, j, period - j)


def pad_index(mode: str, before: int, after: int, n: int) -> np.ndarray:
    j = np.arange(-before, n + after, dtype=np.int64)
    if mode == "edge":
        return np.clip(j, 0, n - 1)
    if mode == "wrap":
        return np.mod(j, n)
    return reflect_index(j, n)


def gather_chain(c, x: str, out: str, maps: dict[int, np.ndarray], tag: str = "axis") -> list:
    """One `gather` per axis in `maps` (axis -> index array), x -> ... -> out; records the shapes."""
    from dyadic.core.graph import Node

    maps = {ax: np.asarray(i, np.int64) for ax, i in maps.items()}
    if not maps:
        return [Node("reshape", c.name, (x,), (out,))]
    shape = list(c.shapes[x])
    nodes, src = [], x
    for k, (ax, idx) in enumerate(sorted(maps.items())):
        last = k == len(maps) - 1
        dst = out if last else f"{out}/{tag}{ax}"
        shape[ax] = len(idx)
        if not last:
            c.shapes[dst] = tuple(shape)
        nodes.append(Node("gather", c.name if last else f"{c.name}/{tag}{ax}", (src,), (dst,), {"axis": ax}, {"I": idx}))
        src = dst
    return nodes


@importer("Pad", doc="constant 0: integer zero padding; reflect, edge, wrap: integer gathers (index maps)")
def _import_pad(c):
    from dyadic.core.graph import Node

    rank = c.rank()
    mode = c.attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    pads = c.attrs.get("pads")
    pads = [int(p) for p in (pads if pads is not None else c.const(1))]
    axes = c.const(3, None)
    axes = [int(a) % rank for a in axes] if axes is not None else list(range(rank))
    if len(pads) != 2 * len(axes):
        c.fail(f"{len(pads)} pads for {len(axes)} axes")
    full = [(0, 0)] * rank
    for j, ax in enumerate(axes):
        full[ax] = (pads[j], pads[len(axes) + j])
    if full[0] != (0, 0):
        c.fail("padding the batch dimension is not supported")
    if mode == "constant":
        value = c.const(2, None)
        if value is not None and np.any(np.asarray(value) != 0):
            c.fail("non-zero pad value (constant mode)")
        if any(p < 0 for pair in full for p in pair):
            c.fail("negative constant pads (cropping)")
        return [Node("pad", c.name, (c.inputs[0],), (c.outputs[0],), {"pads": tuple(full)})]
    if mode not in ("reflect", "edge", "wrap"):
        c.fail(f"pad mode {mode!r}")
    shape = c.shapes[c.inputs[0]]
    maps = {}
    for ax, (b, e) in enumerate(full):
        if (b, e) != (0, 0):
            if mode == "reflect" and (b >= shape[ax] or e >= shape[ax]):
                c.fail(f"reflect pads {b, e} must be smaller than axis {ax} of length {shape[ax]}")
            maps[ax] = pad_index(mode, b, e, shape[ax])
    return gather_chain(c, c.inputs[0], c.outputs[0], maps)


@importer("Tile", doc="integer gathers along the repeated non-batch axes")
def _import_tile(c):
    reps = [int(r) for r in np.atleast_1d(c.const(1))]
    shape = c.shapes[c.inputs[0]]
    if len(reps) != len(shape):
        c.fail(f"{len(reps)} repeats for rank {len(shape)}")
    if reps[0] != 1:
        c.fail("tiling the batch dimension is not supported")
    maps = {ax: np.arange(r * shape[ax]) % shape[ax] for ax, r in enumerate(reps) if r != 1}
    return gather_chain(c, c.inputs[0], c.outputs[0], maps)
