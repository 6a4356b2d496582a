"""Give every tensor a concat joins the concat's own calibrated range, so the concat is a plain copy.

`quantize_graph` quantizes a concat's output at the scale of its own calibrated range and aligns
every input whose scale differs with a `requant` node first. Each such input is then rounded twice:
at its own scale by its producer (a conv's epilogue), then again at the concat's, and the requants
run as generic code before a copy (on a 2-core Zen 4, 1 thread: 4.7 of googlenet's 13.0 ms, 6.4 of
squeezenet1_1's 8.7, 175 of densenet121's 184).

This pass runs after `calibrate_ranges`. Tensors are joined into classes through concats (each
input with the output) and through the ops whose output `quantize_graph` gives its input's
quantization (`PASSTHROUGH_OPS`: max-pool, pad, slice, reshape, flatten; and the op table's
passthrough moves: transpose, squeeze, unsqueeze, ...: ShuffleNet's channel shuffle between one block's
concat and the next block's split). Every class that contains a
concat output gets, for every member, the union of its concat outputs' calibrated ranges (per
quantizer width, `Graph.meta["act_calibration"]`, and the plain min/max). The members then quantize
to the same scale, and the producers' own epilogues (conv, add, pool requants) write at the concat's
scale directly:

* a class with one concat: each input is rounded once, at the scale the concat used anyway (its
  requant clipped to that range too), so the integers change only by the double rounding removed;
* nested concats (DenseNet's blocks: each layer's features are concatenated into every later
  layer's input) share one scale, the widest of the block's concats: the narrower early concats lose
  resolution to that, and gain the single rounding.

Measured on the random-init torchvision exports (logit cosine vs fp32, 16 N(0,1) inputs): densenet121
0.99604 -> 0.99619, googlenet 0.98214 -> 0.98231, inception_v3 0.96303 -> 0.96284 (its max-pool
branches join two blocks' concats into one class), squeezenet1_1 1.0 -> 1.0. Joining through the shuffle's
moves took shufflenet_v2 (`--wide-activations auto`, Zen 4) from 28 aligning requants to 2, and from
5.64 to 3.39 ms.

Classes that hold a token-id (integer) input are left alone. Nothing else changes: where members
still differ in width (16-bit `--wide-activations` tensors, 4-bit activations) or signedness,
`quantize_graph` keeps its aligning requants, so the result is correct in every case.
"""
from __future__ import annotations

from dyadic.core.graph import Graph
from dyadic.passes.widen_residual import moves


def share_concat_scales(graph: Graph) -> Graph:
    parent: dict[str, str] = {}

    def find(t: str) -> str:
        while parent.setdefault(t, t) != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    concats = [n for n in graph.nodes if n.op == "concat"]
    if not concats:
        return graph
    for n in graph.nodes:
        if n.op == "concat" or (moves(n.op) and n.inputs):
            for t in n.inputs if n.op == "concat" else n.inputs[:1]:
                parent[find(t)] = find(n.output)
    ints = set(graph.meta.get("int_inputs", ()))
    bad = {find(t) for t in ints if t in parent}
    cal = graph.meta.get("act_calibration", {})
    chosen = cal.get("tensors", {})
    union: dict[str, dict[str, tuple[float, float]]] = {}
    for n in concats:
        root, t = find(n.output), n.output
        if root in bad or t not in graph.ranges:
            continue
        per = union.setdefault(root, {})
        for key, r in [("minmax", graph.ranges[t]), *chosen.get(t, {}).items()]:
            lo, hi = per.get(key, (float("inf"), float("-inf")))
            per[key] = (min(lo, float(r[0])), max(hi, float(r[1])))
    if not union:
        return graph
    ranges, tensors = dict(graph.ranges), {k: dict(v) for k, v in chosen.items()}
    for t in list(parent):
        per = union.get(find(t))
        if per is None or t not in ranges:
            continue
        ranges[t] = per["minmax"]
        own = tensors.get(t)
        if own is not None:  # the same quantizer widths the tensor was calibrated for
            tensors[t] = {k: list(per.get(k, per["minmax"])) for k in own}
    meta = {**graph.meta, "act_calibration": {**cal, "tensors": tensors}} if cal else graph.meta
    return graph.replace(ranges=ranges, meta=meta)
