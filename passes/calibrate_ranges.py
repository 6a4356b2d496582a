"""Record the (min, max) of every tensor of the float graph over the calibration data.

The float graph is executed in numpy batch by batch; `Graph.ranges[name]` is the running min and max
over all calibration images (the MinMax calibrator). For a tensor with min >= 0 (after ReLU, pooling
of such, ReLU6) `quantize_graph` chooses an unsigned integer type, which doubles its resolution.
"""
from __future__ import annotations

import numpy as np

from dyadic.core.float_exec import batches, execute
from dyadic.core.graph import Graph
from dyadic.core.progress import Progress


def calibrate_ranges(graph: Graph, data: dict[str, np.ndarray], batch_size: int = 32,
                     quiet: bool = False) -> Graph:
    ranges: dict[str, tuple[float, float]] = {}
    if graph.meta.get("static_batch"):  # a static-batch graph runs at its one batch size
        batch_size = int(graph.shapes[graph.inputs[0]][0])

    def observe(name: str, v: np.ndarray) -> None:
        lo, hi = float(v.min()), float(v.max())
        old = ranges.get(name)
        ranges[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    n = len(next(iter(data.values())))
    with Progress("calibrate", n, quiet=quiet) as bar:
        for b in batches(data, batch_size):
            execute(graph, b, observe)
            bar.advance(len(next(iter(b.values()))))
    return graph.replace(ranges=ranges)
