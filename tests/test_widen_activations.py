"""16-bit activations on request (`--wide-activations`, `passes/widen_activations`).

* Before/Expected: which tensors each mode widens (lookup-table outputs; all layer outputs), and
  which it leaves alone (a reader that takes only 8 bits, the graph output).
* A conv reading a 16-bit input keeps its int32 accumulator: it reads the full width where the bound
  holds, and the widest narrower width that fits where it does not.
* A MobileNetV3-style block (hard-swish, a depthwise conv, a hard-sigmoid squeeze-excite) compiles
  bit-exact in every mode, its convs on dyadic's kernels (x86), and is closer to the float graph the
  more it widens, on the same inputs.
"""
from __future__ import annotations

import platform

import numpy as np
import pytest

from _tiny_onnx import bias, conv_w, f32, make_model, node

from dyadic.core.config import CompileConfig, WideActivations
from dyadic.frontend import import_onnx


def _mv3_block(rng, c=8):
    """conv -> hard-swish -> depthwise 3x3 -> hard-swish -> SE (mean, 1x1, HardSigmoid, Mul) -> 1x1 conv"""
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]), node("HardSwish", ["c0"], "h0"),
             node("Conv", ["h0", "Wd", "Bd"], "dw", pads=[1, 1, 1, 1], group=c), node("HardSwish", ["dw"], "h1"),
             node("GlobalAveragePool", ["h1"], "g"), node("Conv", ["g", "Ws", "Bs"], "s"),
             node("HardSigmoid", ["s"], "gate", alpha=1 / 6, beta=0.5), node("Mul", ["h1", "gate"], "se"),
             node("Conv", ["se", "Wp", "Bp"], "out")]
    inits = {"W0": conv_w(rng, c, 3), "B0": bias(rng, c), "Wd": conv_w(rng, c, 1, gain=2.0), "Bd": bias(rng, c),
             "Ws": conv_w(rng, c, c, 1), "Bs": bias(rng, c), "Wp": conv_w(rng, 4, c, 1), "Bp": bias(rng, 4)}
    return make_model(nodes, inits, in_shape=("N", 3, 12, 12))


def _fused(model):
    from dyadic.passes import fold_batchnorm, fuse_activations, fuse_unary

    return fuse_activations(fuse_unary(fold_batchnorm(import_onnx(model))))


def test_widen_before_expected():
    from dyadic.passes import widen_activations

    g = _fused(_mv3_block(np.random.default_rng(0)))
    assert widen_activations(g, WideActivations.NONE) is g
    by_op = {n.output: n.op for n in g.nodes}
    tables = set(widen_activations(g, WideActivations.TABLES).meta["wide"])
    assert tables and all(by_op[t] == "unary" for t in tables)
    assert {"h0", "h1", "gate"} <= tables
    every = set(widen_activations(g, WideActivations.ALL).meta["wide"])
    assert tables < every and {"se", "input"} <= every  # the SE product and the network input too
    assert "input" not in tables
    assert "out" not in every  # the graph output keeps its own (16-bit logits) rule


def test_widen_skips_a_tensor_with_an_8bit_only_reader():
    """a table output also read by a Concat (which aligns its inputs to one 8-bit code) stays 8-bit"""
    from dyadic.passes import widen_activations

    rng = np.random.default_rng(1)
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]), node("HardSwish", ["c0"], "h0"),
             node("Sigmoid", ["c0"], "s0"), node("Concat", ["h0", "c0"], "cat", axis=1),
             node("Conv", ["cat", "W1", "B1"], "c1"), node("Add", ["c1", "s0"], "out")]
    model = make_model(nodes, {"W0": conv_w(rng, 4, 3), "B0": bias(rng, 4), "W1": conv_w(rng, 4, 8, 1),
                               "B1": bias(rng, 4)})
    g = _fused(model)
    wide = set(widen_activations(g, WideActivations.TABLES).meta["wide"])
    assert "h0" not in wide and "s0" in wide


@pytest.mark.parametrize("k,gain,want_full", [(1, 1.0, True), (256, 1.0, False)], ids=["fits", "narrowed"])
def test_conv_on_16bit_input_keeps_int32(k, gain, want_full):
    """a conv reads its 16-bit input at full width while max|x_q| max_o Σ|W_q[o]| + max|B_q| < 2^31, and
    at the widest narrower width that fits otherwise (a requant copy), never overflowing"""
    from dyadic.core.reference import run_reference
    from dyadic.core.io import quantize_inputs
    from dyadic.pipeline import graph_passes, run_passes

    rng = np.random.default_rng(2)
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]), node("HardSwish", ["c0"], "h0"),
             node("Conv", ["h0", "W1", "B1"], "out")]
    model = make_model(nodes, {"W0": conv_w(rng, k, 3), "B0": bias(rng, k),
                               "W1": conv_w(rng, 4, k, 3, gain=gain), "B1": bias(rng, 4)})
    calib = {"input": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)}
    ig = run_passes(import_onnx(model), graph_passes(CompileConfig(quiet=True, wide_activations=WideActivations.TABLES),
                                                      calib))
    assert ig.qparams["h0"].bits == 16
    conv = [n for n in ig.nodes if n.op == "qconv"][-1]
    bits = ig.qparams[conv.inputs[0]].bits
    assert (bits == 16) if want_full else (8 <= bits < 16 and any(n.op == "requant" for n in ig.nodes))
    acc_max = (max(abs(ig.qparams[conv.inputs[0]].lo), ig.qparams[conv.inputs[0]].hi)
               * np.abs(conv.params["W"].astype(np.int64)).reshape(4, -1).sum(1).max()
               + np.abs(conv.params["B"].astype(np.int64)).max())
    assert acc_max < 2 ** 31
    run_reference(ig, quantize_inputs(ig, calib))  # every stored value inside its dtype (checked there)


def _sqnr(ref, got):
    return 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())


def test_mv3_block_16bit_bit_exact_and_closer_to_float(tmp_path):
    import dyadic
    from dyadic.core.float_exec import execute
    from dyadic.core.io import quantize_inputs
    from dyadic.core.reference import run_reference

    rng = np.random.default_rng(3)
    model = _mv3_block(rng)
    calib = {"input": rng.normal(size=(32, 3, 12, 12)).astype(np.float32)}
    x = {"input": rng.normal(size=(16, 3, 12, 12)).astype(np.float32)}
    ref = execute(import_onnx(model), x)["out"].astype(np.float64)
    sq = {}
    for kind in WideActivations:
        out = tmp_path / kind.value
        res = dyadic.compile(model, str(out), calib, CompileConfig(quiet=True, wide_activations=kind))
        assert res.plan["self_check"].startswith("bit-exact")
        if platform.machine() == "x86_64":  # 16-bit conv inputs on dyadic's AVX2 kernels, not generic code
            generic = res.plan["target"]["kernel_coverage"].get("generic_ops", {})
            assert not {"qconv", "qlut", "qmul"} & set(generic), (kind, generic)  # tables, SE product packed too
        ig = res.int_graph
        q = quantize_inputs(ig, x)
        got = dyadic.load(str(out)).run_int(q)[0]
        np.testing.assert_array_equal(got, run_reference(ig, q)[ig.outputs[0]])
        sq[kind] = _sqnr(ref, got.astype(np.float64) * ig.qparams[ig.outputs[0]].scale)
    assert sq[WideActivations.TABLES] > sq[WideActivations.NONE] + 0.5, sq
    assert sq[WideActivations.ALL] > sq[WideActivations.TABLES] + 1.5, sq  # the rest: 8-bit input, weights
    # AUTO widens until 8-bit activations carry <= 10 % of the predicted error: within ~0.5 dB of ALL
    assert sq[WideActivations.AUTO] > sq[WideActivations.NONE] + 3.0 and sq[WideActivations.AUTO] > sq[WideActivations.ALL] - 1.0, sq


def test_cli_flag_maps_to_the_config():
    import argparse

    from dyadic.cli.quant_args import add_quant_args, quant_config

    p = argparse.ArgumentParser()
    add_quant_args(p)
    assert quant_config(p.parse_args(["--wide-activations", "tables"]))["wide_activations"] is WideActivations.TABLES
    assert "wide_activations" not in quant_config(p.parse_args([]))
    with pytest.raises(SystemExit):
        p.parse_args(["--wide-activations", "some"])


def test_mv3_block_16bit_arm_bit_exact_under_qemu(tmp_path):
    """the 16-bit convs and tables also build for an arm core (generic code there), bit-exact under qemu"""
    import shutil

    import dyadic
    from dyadic.core.errors import ToolchainError
    from dyadic.core.io import quantize_inputs
    from dyadic.core.reference import run_reference
    from dyadic.runtime import bundle
    from dyadic.targets import toolchain

    if shutil.which(toolchain.AARCH64_CXX) is None or not bundle.can_run_bundle():
        pytest.skip(f"aarch64 g++ / qemu-aarch64-static not installed ({toolchain.APT_ARM})")
    rng = np.random.default_rng(4)
    model = _mv3_block(rng)
    calib = {"input": rng.normal(size=(16, 3, 12, 12)).astype(np.float32)}
    try:
        res = dyadic.compile(model, str(tmp_path), calib, CompileConfig(target="arm:cortex-a76", quiet=True,
                                                                        wide_activations=WideActivations.ALL))
    except ToolchainError as e:
        pytest.skip(f"toolchain unavailable: {e}")
    ig = res.int_graph
    assert ig.qparams["h0"].bits == 16 and ig.qparams["input"].bits == 16
    q = quantize_inputs(ig, {"input": rng.normal(size=(3, 3, 12, 12)).astype(np.float32)})
    got, _ = bundle.run_bundle(str(tmp_path), res.plan, q)
    np.testing.assert_array_equal(got[0], run_reference(ig, q)[ig.outputs[0]])


def test_classifier_head_on_16bit_codes_runs_on_the_int16_step(tmp_path):
    """A dense head reading 16-bit codes (MobileNetV3's 960 -> 1280 -> hard-swish -> 1000 classifier, in
    small) takes the kernels' int16 step on x86 (`vpdpwssd` / `vpmaddwd`), not TVM's generic matmul, and is
    bit-exact against the int64 reference."""
    import dyadic
    from dyadic.core.io import quantize_inputs
    from dyadic.core.reference import run_reference

    rng = np.random.default_rng(5)
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]), node("HardSwish", ["c0"], "h0"),
             node("GlobalAveragePool", ["h0"], "g"), node("Flatten", ["g"], "f"),
             node("Gemm", ["f", "W1", "B1"], "d1", transB=1), node("HardSwish", ["d1"], "h1"),
             node("Gemm", ["h1", "W2", "B2"], "out", transB=1)]
    inits = {"W0": conv_w(rng, 24, 3), "B0": bias(rng, 24), "W1": f32(rng.normal(size=(40, 24)) / 5), "B1": bias(rng, 40),
             "W2": f32(rng.normal(size=(10, 40)) / 6), "B2": bias(rng, 10)}
    model = make_model(nodes, inits, in_shape=("N", 3, 8, 8))
    calib = {"input": rng.normal(size=(16, 3, 8, 8)).astype(np.float32)}
    res = dyadic.compile(model, str(tmp_path), calib, CompileConfig(quiet=True, wide_activations=WideActivations.ALL))
    ig = res.int_graph
    dense = [n for n in ig.nodes if n.op == "qdense"]
    assert len(dense) == 2 and ig.qparams[dense[1].inputs[0]].bits == 16  # the first reads the 8-bit mean
    assert res.plan["self_check"].startswith("bit-exact")
    x = {"input": rng.normal(size=(4, 3, 8, 8)).astype(np.float32)}
    q = quantize_inputs(ig, x)
    np.testing.assert_array_equal(dyadic.load(str(tmp_path)).run_int(q)[0], run_reference(ig, q)[ig.outputs[0]])
    if platform.machine() == "x86_64":
        generic = res.plan["target"]["kernel_coverage"].get("generic_ops", {})
        assert "qdense" not in generic, generic
