"""Give layers that read 16-bit codes weights wider than 8 bits (`--wide-weights auto`).

Why: with 16-bit activations the error left is the 8-bit weights'. On random-init torchvision nets,
which amplify any perturbation of their early layers, quantizing only the weights (per channel,
max-abs, nearest; activations fp32) gives a logit cosine of 0.9861 on resnet50 (8 inputs); its first
4 convs at 12 bits give 0.9905, its first 10 0.9958. inception_v3 needs ~11 bits throughout: 0.9656
at 8 bits, 0.9872 at 10, 0.9981 at 12. Compiled (16 fresh inputs, Zen 4, `benchmarks/results/model_zoo.md`):
resnet50 `--wide-activations auto` 0.98864 -> 0.99216 (6 layers at W12, the same 0.98x onnxruntime
int8); inception_v3 with `all` 0.99824 (0.97012 at 8-bit weights). `--wide-activations auto` counts
the weight error a widened tensor's readers lose in its ranking (`choose_wide_activations`); with
`--wide-cosine 0.995` all 14 torchvision models reach 0.994-1.0 with one set of flags.

Why it is free on x86: a layer on 16-bit codes runs on the int16 step (`vpdpwssd` / `vpmaddwd`,
`kernels/intrin_avx2`), which multiplies int16 by int16 anyway; its weights are then stored as int16
instead of sign-extended from int8 in the kernel (`ConvSpec.w16`). Elsewhere (arm, cuda, AMX tiles)
such a layer takes the generic lowering or the `vpdpwssd` step.

Depthwise convs too: PP-OCRv4's recognizer (PP-LCNetV3, whose depthwise kernels are re-parameterized
sums of several branches, so one tap per channel dominates its 8-bit scale) keeps a simulated
per-step cosine of 0.972 with every activation at 16 bits and its plain convs at 12-bit weights;
with its 14 depthwise convs at 12 bits too, 0.997 (8 test lines).

The choice, per plain conv (group 1), depthwise conv or dense layer whose input is 16-bit (as `quantize_graph` will
quantize it: `round_weights.sim_qparams`): the widest w in (8, MAX_BITS] for which
`ops.matmul.widest_input_bits` (the int32 bound 2^(a-1) max_o Σ|W_q[o]| + max|B_q| < 2^31, as
`quantize_graph` will apply it) leaves the input a >= w + MARGIN bits; else 8 bits. The margin balances the two errors: per-channel max-abs weights
sit within ~3 standard deviations (max|w| / std is 2.5-3.3 on these nets), a calibrated activation
range ~10 of its RMS, so an activation needs ~2 more bits for the same relative error. A 16-bit
input narrowed to a < 16 bits costs one requant (`narrow_input`). The result goes to `Graph.bits`
(W9..W12); `round_weights` and `quantize_graph` quantize at it. A transformer's `linear` (not in
`Graph.bits`) makes the same choice in `ops.matmul._quantize_linear`.
"""
from __future__ import annotations

from types import SimpleNamespace

from dyadic.core.config import WideWeights
from dyadic.core.graph import Graph
from dyadic.ops.matmul import WIDE_WEIGHT_BITS as MAX_BITS, WIDE_WEIGHT_MARGIN as MARGIN, wide_weight_bits

__all__ = ["MARGIN", "MAX_BITS", "takes_wide_weights", "widen_weights"]


def takes_wide_weights(n) -> bool:
    """A dense layer, a plain conv (group 1) or a depthwise one (each output channel reads its own
    input channel): the layers whose kernels read 9-16-bit weights as int16."""
    if n.op == "dense":
        return True
    w = n.params.get("W")
    return n.op == "conv" and (n.attrs["group"] == 1 or (w is not None and w.shape[1] == 1 and n.attrs["group"] == w.shape[0]))


def widen_weights(graph: Graph, kind: WideWeights = WideWeights.NONE, quiet: bool = True) -> Graph:
    if kind is WideWeights.NONE:
        return graph
    from dyadic.passes.round_weights import sim_qparams

    ctx = SimpleNamespace(graph=graph, qp=sim_qparams(graph))  # the input widths `quantize_graph` will give
    bits = dict(graph.bits)
    for n in graph.weighted_nodes():
        if takes_wide_weights(n) and ctx.qp.get(n.inputs[0]) is not None and bits.get(n.name) == (8, 8):
            bits[n.name] = (wide_weight_bits(ctx, n.inputs[0], n.params["W"], n.params["B"]), 8)
    if not quiet:
        wide = sum(b[0] > 8 for b in bits.values())
        print(f"  wide weights (auto): {wide} of {len(bits)} layers at 9-{MAX_BITS} bits"
              + ("" if wide else " (none reads 16-bit codes: see --wide-activations)"))
    # a transformer's linears choose at quantization (`ops.matmul._quantize_linear`)
    return graph.replace(bits=bits, meta={**graph.meta, "wide_weights": True})
