"""Per-layer cost of every bit-width candidate: stored bytes, BOPs and latency on the target.

For weighted layer i (O_i output channels, n_i weights, group g) and candidate (b_w, b_a):

    macs_i    = O_i (C_i / g) k_h k_w H_out W_out  (conv),  O_i I_i  (dense)       at batch 1
    bytes     = ⌈n_i b_w / 8⌉ + 4 O_i                      (packed weights + int32 bias)
    bops      = macs_i b_w b_a
    latency_s = measured: that layer's compiled kernel timed on the target (`dyadic.mixed.latency`: here,
                or over TVM RPC on a board), cached; else the target's stated model
                (`dyadic.mixed.costmodel`: a datasheet roofline for CUDA architectures, a nominal BOPs
                throughput elsewhere), named in each record

`costs_info` counts layer-candidates measured, shared (same compiled kernel as another candidate),
reused (the same signature earlier in this call) and cached (from the file), and the depthwise
prologue baselines timed. The result goes to `graph.meta["costs"]` and `graph.meta["costs_info"]`.
"""
from __future__ import annotations

import math
import time

import numpy as np

from dyadic.core.graph import Graph, Node
from dyadic.mixed.latency import Meter, Timing, cache_file
from dyadic.core.progress import Progress


def macs(graph: Graph, n: Node) -> int:
    w = n.params["W"]
    if n.op == "dense":
        return int(w.shape[0] * w.shape[1])
    return int(np.prod(w.shape)) * int(np.prod(graph.shapes[n.output][2:]))


def _elems(graph: Graph, n: Node) -> tuple[int, int]:
    """Elements per image of the layer's input and output."""
    return tuple(int(np.prod(graph.shapes[t][1:])) for t in (n.inputs[0], n.output))


def measure_costs(graph: Graph, target: str = "host", cache_path: str | None = None, measure: bool = True,
                  quiet: bool = False, timing: Timing = Timing(), model=None, rpc: str | None = None) -> Graph:
    """`rpc`: HOST:PORT of a TVM RPC server on the target device to time the layers there.
    `model`: a `dyadic.mixed.costmodel` model to use where latency is not measured (default: the target's)."""
    from dyadic.mixed import costmodel
    from dyadic import targets
    from dyadic.passes.assign_bitwidths import CANDIDATES
    from dyadic.passes.estimate_sensitivity import CANDIDATE_NAMES

    t0 = time.perf_counter()
    spec = targets.resolve(target)
    layers = graph.weighted_nodes()
    why = None if measure and (spec.runs_here or rpc) else (
        "measure=False" if not measure else f"target {spec.name} cannot run on this machine and no --rpc device")
    meter = Meter(graph, spec, cache_file(cache_path), timing, rpc) if why is None else None
    model = model or costmodel.for_target(spec)
    costs: dict[str, dict] = {}
    where = "model" if why else "timing on " + spec.name + (f" at {rpc}" if rpc else "")
    with Progress(f"costs ({where})", total=len(layers), quiet=quiet) as pr:
        for n in layers:
            w, mac = n.params["W"], macs(graph, n)
            costs[n.name] = {}
            for wb, ab in CANDIDATES:
                rec = {"bytes": math.ceil(w.size * wb / 8) + 4 * int(w.shape[0]), "bops": mac * wb * ab, "macs": mac}
                if meter is None:
                    rec.update(latency_s=model.latency(mac, wb, ab, w.size, int(w.shape[0]), *_elems(graph, n)),
                               latency_source=model.describe(why))
                else:
                    rec.update(meter.latency(n, (wb, ab), costs[n.name]))
                costs[n.name][CANDIDATE_NAMES[(wb, ab)]] = rec
            pr.advance()
    info = {"target": spec.describe(), "latency": "measured" if meter else "model", "rpc": rpc if meter else None}
    if meter is not None:
        meter.cache.save()
        info.update(cache=meter.cache.path, **meter.counts, code_fingerprint=meter.code,
                    timing={"batch": 1, "repeat": timing.repeat, "min_repeat_ms": timing.min_repeat_ms,
                            "statistic": "median", "depthwise": "after a 1x1 conv prologue, minus the prologue"})
    else:
        info.update(cache=None, model=model.describe(why), modelled=len(layers) * len(CANDIDATES),
                    **dict.fromkeys(("measured", "shared", "reused", "cached", "baselines"), 0))
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return graph.replace(meta={**graph.meta, "costs": costs, "costs_info": info})


