"""The model's inputs as the integer library takes them."""
from __future__ import annotations

import numpy as np

from dyadic.core.arith import quantize_float
from dyadic.core.graph import Graph


def input_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    return {t: tuple(graph.shapes[t]) for t in graph.inputs}


def quantize_inputs(graph: Graph, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {t: quantize_float(data[t], graph.qparams[t].scale, graph.qparams[t].lo, graph.qparams[t].hi)
            .astype(graph.dtypes[t]) for t in graph.inputs}
