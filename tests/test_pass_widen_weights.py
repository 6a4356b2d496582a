"""`widen_weights` (`--wide-weights auto`): Before/Expected on small graphs (which layers get wider
weights and how wide, against the int32 bound), then whole compiles with int16 weights that are
bit-exact on the host and hold int16 weight constants, and the flag's default leaves 8 bits."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from _tiny_onnx import bias, conv_w, make_model, node
from dyadic.core.config import CompileConfig, WideActivations, WideWeights
from dyadic.core.graph import Graph, Node
from dyadic.passes import widen_weights
from dyadic.passes.widen_weights import MARGIN, MAX_BITS
from dyadic.runtime import bundle
from dyadic.targets import toolchain

P1 = (1, 1, 1, 1)


def _conv(name, x, o, c, k, group=1, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((o, c // group, k, k)).astype(np.float32)
    return Node("conv", name, (x,), (name,), {"strides": (1, 1), "pads": P1 if k == 3 else (0, 0, 0, 0),
                                                "dilations": (1, 1), "group": group},
                {"W": w, "B": np.zeros(o, np.float32)})


def _graph(wide: tuple[str, ...]) -> Graph:
    """x -> stem (3x3, 3 -> 64) -> dw (depthwise 3x3) -> wide_k (3x3, 64 -> 16: K = 576)."""
    nodes = [_conv("stem", "x", 64, 3, 3), _conv("dw", "stem", 64, 64, 3, group=64, seed=1),
             _conv("wide_k", "dw", 16, 64, 3, seed=2)]
    shapes = {"x": (-1, 3, 8, 8), "stem": (-1, 64, 8, 8), "dw": (-1, 64, 8, 8), "wide_k": (-1, 16, 8, 8)}
    ranges = {t: (-4.0, 4.0) for t in shapes}
    return Graph(tuple(nodes), ("x",), ("wide_k",), shapes, {t: "float32" for t in shapes}, ranges=ranges,
                 bits={n.name: (8, 8) for n in nodes}, meta={"wide": wide})


def _row_sum_bits(n, wb) -> float:
    from dyadic.core.arith import quantize_weight

    w_q, _ = quantize_weight(n.params["W"], wb)
    return float(np.log2(np.abs(w_q.astype(np.int64)).reshape(len(w_q), -1).sum(1).max()))


def test_layers_on_16bit_codes_get_wider_weights():
    """Before: every layer W8, x, stem and dw 16-bit (`meta["wide"]`). Expected: stem (K = 27) at
    MAX_BITS; wide_k (K = 576) as wide as 2^15 x max_o Σ|W_q[o]| < 2^31 allows with its input kept
    MARGIN bits wider, below MAX_BITS; the depthwise dw (K = 9) at MAX_BITS too."""
    g = widen_weights(_graph(("x", "stem", "dw")), kind=WideWeights.AUTO)
    assert g.bits["stem"] == (MAX_BITS, 8)
    assert g.bits["dw"] == (MAX_BITS, 8)
    wb = g.bits["wide_k"][0]
    assert 8 < wb < MAX_BITS
    n = g.node("wide_k")
    # input bits a left by the bound at wb: a - 1 + log2(row sum) < 31, and a >= wb + MARGIN
    assert 31 - _row_sum_bits(n, wb) + 1 >= wb + MARGIN
    assert 31 - _row_sum_bits(n, wb + 1) + 1 < wb + 1 + MARGIN


def test_layers_on_8bit_codes_and_the_default_keep_8bit_weights(capsys):
    g0 = _graph(("x", "stem", "dw"))
    assert widen_weights(g0).bits == g0.bits  # kind NONE (the default)
    g = widen_weights(_graph(()), kind=WideWeights.AUTO, quiet=False)  # nothing 16-bit: says so
    assert set(g.bits.values()) == {(8, 8)}
    out = capsys.readouterr().out
    assert "0 of 3 layers" in out and "--wide-activations" in out


def _model():
    """input -> conv 3x3 (3 -> 16) -> relu -> conv 3x3 (16 -> 24) -> relu -> depthwise 3x3 -> relu ->
    conv 1x1 (24 -> 10)."""
    rng = np.random.default_rng(0)
    inits = {"w1": conv_w(rng, 16, 3, 3), "b1": bias(rng, 16), "w2": conv_w(rng, 24, 16, 3), "b2": bias(rng, 24),
             "w3": conv_w(rng, 24, 1, 3), "w4": conv_w(rng, 10, 24, 1)}
    nodes = [node("Conv", ["input", "w1", "b1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             node("Conv", ["r1", "w2", "b2"], "c2", pads=[1, 1, 1, 1]), node("Relu", ["c2"], "r2"),
             node("Conv", ["r2", "w3"], "c3", pads=[1, 1, 1, 1], group=24), node("Relu", ["c3"], "r3"),
             node("Conv", ["r3", "w4"], "out")]
    return make_model(nodes, inits, ("N", 3, 12, 12))


def test_compile_with_wide_weights_is_bitexact_with_int16_weights(tmp_path):
    """A `--wide-activations all --wide-weights auto` compile: the plain convs and the depthwise one
    get W9-W12 with int16 weight constants (the depthwise on `vpmaddwd` over int16 weights on AVX2,
    the int32 fallback on AVX512-VNNI), and the library equals the int64 reference (the compile's
    self-check, then here on fresh inputs and on inputs at the ends of the input range)."""
    import dyadic
    from dyadic.compiler import compile as dy_compile
    from dyadic.core.io import quantize_inputs
    from dyadic.core.reference import run_reference

    cfg = CompileConfig(wide_activations=WideActivations.ALL, wide_weights=WideWeights.AUTO, quiet=True)
    res = dy_compile(_model(), str(tmp_path / "b"), config=cfg)
    g = res.int_graph
    convs = [n for n in g.nodes if n.op == "qconv"]
    dw = [n for n in convs if n.attrs["group"] > 1]
    wide = [n for n in convs if n.attrs["w_bits"] > 8]
    assert len(dw) == 1 and dw[0].attrs["w_bits"] > 8 and dw[0].params["W"].dtype == np.int16
    assert len(wide) == 4 and all(n.params["W"].dtype == np.int16 for n in wide)
    assert all(int(np.abs(n.params["W"]).max()) > 127 for n in wide)
    assert str(res.plan["self_check"]).startswith("bit-exact")
    m = dyadic.load(str(tmp_path / "b"))
    x = np.random.default_rng(5).standard_normal((3, 3, 12, 12)).astype(np.float32)
    x[2] = np.where(x[2] > 0, 1e3, -1e3)  # saturated codes at both ends
    q = quantize_inputs(g, {"input": x})
    want = run_reference(g, q)[g.outputs[0]]
    assert len(np.unique(want)) > 20
    np.testing.assert_array_equal(np.asarray(m.run_int(q)[0]), want)
    # model.json records the widths, and its schema takes 9-16-bit weights but names a width outside
    import copy
    import json

    from dyadic.core.errors import BuildDirError
    from dyadic.core.plan_schema import validate_plan

    plan = json.load(open(tmp_path / "b" / "model.json"))
    assert sorted({l["w_bits"] for l in plan["layers"] if "w_bits" in l})[-1] > 8
    validate_plan(plan)
    bad = copy.deepcopy(plan)
    next(l for l in bad["layers"] if "w_bits" in l)["w_bits"] = 17
    with pytest.raises(BuildDirError, match="w_bits 17"):
        validate_plan(bad)


def _other_target(target, out):
    from dyadic.compiler import compile as dy_compile
    from dyadic.core.errors import ToolchainError

    cfg = CompileConfig(target=target, wide_activations=WideActivations.ALL, wide_weights=WideWeights.AUTO, quiet=True)
    try:
        return dy_compile(_model(), str(out), config=cfg)
    except ToolchainError as e:
        pytest.skip(f"toolchain unavailable: {e}")


@pytest.mark.skipif(shutil.which(toolchain.AARCH64_CXX) is None or not bundle.can_run_bundle(),
                    reason=f"aarch64 g++ / qemu-aarch64-static not installed ({toolchain.APT_ARM})")
def test_wide_weights_arm_bit_exact_under_qemu(tmp_path):
    """On arm the layers of 16-bit codes and int16 weights take the generic lowering (int16 x int16 ->
    int32): bit-exact under qemu."""
    from dyadic.core.io import quantize_inputs
    from dyadic.core.reference import run_reference

    res = _other_target("arm:cortex-a76", tmp_path)
    assert res.plan["self_check"].startswith("bit-exact")
    ig = res.int_graph
    assert any(n.op == "qconv" and n.params["W"].dtype == np.int16 for n in ig.nodes)
    assert any(n.op == "qconv" and n.attrs["group"] > 1 and n.params["W"].dtype == np.int16 for n in ig.nodes)
    q = quantize_inputs(ig, {"input": 3 * np.random.default_rng(2).normal(size=(2, 3, 12, 12)).astype(np.float32)})
    got, _ = bundle.run_bundle(str(tmp_path), res.plan, q)
    np.testing.assert_array_equal(got[0], run_reference(ig, q)[ig.outputs[0]])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_wide_weights_cuda_build(tmp_path):
    res = _other_target("cuda:sm_75", tmp_path)
    assert any(n.op == "qconv" and n.params["W"].dtype == np.int16 for n in res.int_graph.nodes)
    assert (tmp_path / "cuda" / "kernels.ptx").is_file()
    assert res.plan["self_check"].startswith(("not run", "bit-exact"))



def test_transformer_linears_on_16bit_codes_get_wider_weights(tmp_path):
    """A BERT-style block's linears read 16-bit LayerNorm / GELU outputs (`widen_residual`), so with
    `--wide-weights auto` alone they get int16 weights of 9-12 bits (`ops.matmul.wide_weight_bits`) on
    the int16 GEMM step, and the library stays bit-exact (self-check, then fresh token ids here)."""
    import dyadic
    from _tiny_xfmr import encoder_block
    from dyadic.core.io import quantize_inputs
    from dyadic.core.reference import run_reference

    rng = np.random.default_rng(7)
    calib = {"ids": rng.integers(0, 50, (16, 8)).astype(np.int64)}
    cfg = CompileConfig(wide_weights=WideWeights.AUTO, quiet=True)
    res = dyadic.compile(encoder_block(rng), str(tmp_path / "b"), calib, cfg)
    lin = [n for n in res.int_graph.nodes if n.op == "qlinear"]
    wide = [n for n in lin if n.params["W"].dtype == np.int16]
    assert wide and all(int(np.abs(n.params["W"]).max()) > 127 for n in wide), [n.params["W"].dtype for n in lin]
    assert str(res.plan["self_check"]).startswith("bit-exact")
    ig = res.int_graph
    q = quantize_inputs(ig, {"ids": rng.integers(0, 50, (3, 8)).astype(np.int64)})
    m = dyadic.load(str(tmp_path / "b"))
    np.testing.assert_array_equal(np.asarray(m.run_int(q)[0]), run_reference(ig, q)[ig.outputs[0]])
