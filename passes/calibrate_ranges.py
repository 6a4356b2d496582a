"""Record the (min, max) of every tensor of the float graph over the calibration data.

The float graph is executed in numpy batch by batch; `Graph.ranges[name]` is the running min and max
over all calibration images (the MinMax calibrator); with another `method` a second pass builds |x|
histograms and `dyadic.calibrators` picks a range per tensor and bit-width. For a tensor with min >= 0 (after ReLU, pooling
of such, ReLU6) `quantize_graph` chooses an unsigned integer type, which doubles its resolution.
"""
from __future__ import annotations

import numpy as np

from dyadic.core.float_exec import batches, execute
from dyadic.core.graph import Graph
from dyadic.core.progress import Progress
from dyadic.core.calibrators import Calibration, Histogram, choose_ranges


def calibrate_ranges(graph: Graph, data: dict[str, np.ndarray], batch_size: int = 32,
                     quiet: bool = False, method: Calibration = Calibration.MINMAX,
                     percentile: float = 99.99) -> Graph:
    ranges: dict[str, tuple[float, float]] = {}
    batch_size = graph.static_batch_size() or batch_size  # a static-batch graph runs at its one batch size

    def observe(name: str, v: np.ndarray) -> None:
        lo, hi = float(v.min()), float(v.max())
        old = ranges.get(name)
        ranges[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    n = len(next(iter(data.values())))
    with Progress("calibrate", n, quiet=quiet) as bar:
        for b in batches(data, batch_size):
            execute(graph, b, observe)
            bar.advance(len(next(iter(b.values()))))
    meta = {**graph.meta, "calib_data": data,  # the data-aware weight pass (passes/round_weights.py) reuses it
            "act_calibration": {"method": "minmax", "tensors": {}}}
    if method is not Calibration.MINMAX:  # a second pass: |x| histograms, thresholds per bit-width
        hists = {t: Histogram(max(abs(lo), abs(hi))) for t, (lo, hi) in ranges.items()}
        with Progress(f"calibrate ({method.value})", n, quiet=quiet) as bar:
            for b in batches(data, batch_size):
                execute(graph, b, lambda t, v: hists[t].add(v))
                bar.advance(len(next(iter(b.values()))))
        meta["act_calibration"] = {"method": method.value, "percentile": percentile,
                                   "tensors": choose_ranges(ranges, hists, method, percentile)}
    return graph.replace(ranges=ranges, meta=meta)
