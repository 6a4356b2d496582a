"""Store chosen CNN activations as 16-bit codes (`--wide-activations`): lookup-table outputs, or all.

Where a network loses accuracy at 8 bits, the loss is often in a few places that are cheap to
widen. In PP-OCR's text-line classifier (a trained MobileNetV3-style net) the largest single-layer
SQNR drops are at the convolutions that read hard-swish outputs: hard-swish spans [-0.375, max],
so a symmetric 8-bit code spends half its levels on a sliver, and a depthwise 3x3 of it passes the
code noise through with little averaging (isolated SQNR 23-29 dB there, against 35-40 dB elsewhere).

* `TABLES`: the output of every lookup-table nonlinearity (`unary`/`ew`: hard-swish, hard-sigmoid,
  SiLU, GELU, ...) becomes 16-bit;
* `ALL`: also every conv, dense, add, Mul, per-channel affine, concat and average-pool output, and
  the network's input;
* `AUTO`: those of `ALL`'s tensors whose 8-bit rounding the logits feel most, per unit of work
  (`passes.choose_wide_activations`, after calibration).

A tensor is widened only when all its readers take a 16-bit input (below, through value-preserving
moves); the logits keep their own rule (16-bit). The readers handle the width:
`qconv`/`qdense`/`qlinear` read up to 16 bits where max|x_q| max_o Σ|W_q[o]| + max|B_q| < 2^31 and
otherwise requantize the input to the widest width that fits (`ops.matmul.widest_input_bits`),
`qadd`/`qmul`/`qaffine` work in int64 (bounded by the verifier), `qlut` indexes a 65,536-entry
table (exact at every code, as at 8 bits), `qmean_hw` and `qavgpool` sum in int64, a concat aligns
its inputs to its own (16-bit) scale. 16-bit codes are stored as
int16 (`QParams.dtype`; int32 before: mobilenet_v2 `auto` on a 2-core AMX Xeon, 1 thread, 3.38 ->
3.15 ms in `dyadic profile`). On x86 a conv on them runs on dyadic's int16 step (`intrin_avx2`): `vpmaddwd` on AVX2 hosts,
which is also what they do with 8-bit inputs, so the extra cost is the wider loads and stores;
`vpdpwssd` on AVX512-VNNI hosts, at about half the rate of their 8-bit `vpdpbusd` (ResNet-50's 3x3
and 1x1 shapes, 1 thread, Zen 4: 84-106 against 183-211 GMAC/s; the AVX2 step there ran 52-62); a
depthwise conv runs pairs of taps on `vpdpwssd` on AVX512-VNNI (`ConvSpec.dw_pairs`), multiplies in
int32 elsewhere. On AMX hosts a conv or dense of 17 or more input channels runs on the tiles, its
codes split into two byte planes (`amx_layout`, `wide`). On arm and cuda such a conv takes TVM's
generic code.

Measured (2-core AMD EPYC Zen 3, AVX2 only, 1 thread):
* PP-OCR text-line classifier (trained), top-1 on its 1,000 test lines: 98.5 % by default, 98.9 %
  with `TABLES` (fp32 99.2 %), at 2.09 -> 2.28 ms per line (median of 5 processes);
* torchvision mobilenet_v2 (random init, the model-zoo benchmark's inputs), logit cosine against
  fp32: 0.979 by default, 0.991 with `ALL`, at 11.2 -> 12.9 ms (median of 3 processes, the table
  in `benchmarks/results/model_zoo.md`).
"""
from __future__ import annotations

from dyadic.core.config import WideActivations
from dyadic.core.graph import Graph
from dyadic.passes.widen_residual import read_only_by

_TABLES = ("unary", "ew")
_ALL = _TABLES + ("conv", "dense", "linear", "add", "mul", "affine", "concat", "avgpool")
#: readers that take 16-bit codes; a concat only where its own output is 16-bit too (`ALL`: it aligns
#: its inputs to its output's scale, so under `TABLES` it would just round them back to 8 bits)
_READERS = ("conv", "dense", "linear", "add", "mul", "affine", "unary", "ew", "mean_hw", "avgpool")


def wide_candidates(graph: Graph, kind: WideActivations) -> set[str]:
    """The tensors `kind` may widen: outputs of its ops whose readers all take 16-bit codes
    (`AUTO` chooses among `ALL`'s, after calibration: `passes.choose_wide_activations`)."""
    if kind is WideActivations.NONE:
        return set()
    full = kind in (WideActivations.ALL, WideActivations.AUTO)
    users = graph.consumers()
    readers = _READERS + (("concat",) if full else ())
    ok = lambda t: read_only_by(users, t, readers)  # noqa: E731
    ops = _ALL if full else _TABLES
    wide = {n.output for n in graph.nodes if n.op in ops and n.output not in graph.outputs and ok(n.output)}
    if full:  # the network's float inputs too (not token ids)
        wide |= {t for t in graph.inputs if t not in graph.meta.get("int_inputs", ()) and ok(t)}
    return wide


def with_wide(graph: Graph, wide: set[str]) -> Graph:
    if not wide:
        return graph
    return graph.replace(meta={**graph.meta, "wide": tuple(sorted(set(graph.meta.get("wide", ())) | wide))})


def widen_activations(graph: Graph, kind: WideActivations = WideActivations.NONE) -> Graph:
    if kind is WideActivations.AUTO:  # chosen after calibration, from measured errors
        return graph
    return with_wide(graph, wide_candidates(graph, kind))
