"""Before/expected tests of `quantize_graph` and uniform `assign_bitwidths`."""
from __future__ import annotations

import numpy as np
import pytest

from _tiny_onnx import bias, conv_w, make_model, node
from dyadic.core.arith import dyadic_array, quantize_weight
from dyadic.compiler import quantize_inputs
from dyadic.core.config import CompileConfig
from dyadic.core.errors import VerificationError
from dyadic.core.float_exec import execute
from dyadic.core.graph import INT_OPS
from dyadic.frontend import import_onnx
from dyadic.passes import assign_bitwidths, calibrate_ranges, quantize_graph
from dyadic.core.config import BitMode
from dyadic.core.calibrators import Calibration
from dyadic.passes import (assign_bitwidths, calibrate_ranges, quantize_graph)
from dyadic.pipeline import graph_passes, run_passes
from dyadic.core.reference import run_reference
from dyadic.core.verify import verify_integer_graph

ort = pytest.importorskip("onnxruntime")


# ============================================================================== quantize_graph


@pytest.fixture(scope="module")
def quantized():
    """A float graph with conv+relu, a residual add (+relu), a concat of differently scaled branches,
    global pooling and a classifier, taken through all graph passes."""
    rng = np.random.default_rng(7)
    inits = {"W1": conv_w(rng, 4, 3), "B1": bias(rng, 4), "W2": conv_w(rng, 4, 4), "W3": conv_w(rng, 4, 3),
             "W4": 8 * conv_w(rng, 4, 3), "W5": conv_w(rng, 6, 8, k=1), "G": rng.normal(size=(5, 6)).astype(np.float32),
             "GB": bias(rng, 5)}
    m = make_model([
        node("Conv", ["input", "W1", "B1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
        node("Conv", ["r1", "W2"], "c2", pads=[1, 1, 1, 1]),
        node("Conv", ["input", "W3"], "c3", pads=[1, 1, 1, 1]),
        node("Add", ["c2", "c3"], "a"), node("Relu", ["a"], "ar"),
        node("Conv", ["input", "W4"], "c4", pads=[1, 1, 1, 1]),
        node("Concat", ["ar", "c4"], "cat", axis=1),
        node("Conv", ["cat", "W5"], "c5"),
        node("GlobalAveragePool", ["c5"], "gap"), node("Flatten", ["gap"], "flat"),
        node("Gemm", ["flat", "G", "GB"], "out", transB=1),
    ], inits)
    fg = import_onnx(m)
    calib = {"input": rng.normal(size=(16, 3, 8, 8)).astype(np.float32)}
    cfg = CompileConfig(quiet=True, calibration=Calibration.MINMAX)  # the expected scales below are min/max's
    # quantize_graph's own concat alignment, so without share_concat_scales (which would give the
    # branches the concat's range: tested in test_pass_share_concat_scales.py)
    passes = [p for p in graph_passes(cfg, calib) if p[0] != "share_concat_scales"]
    log_ig = run_passes(fg, passes)
    # the float graph right before quantize_graph, for expected values
    pre = run_passes(fg, passes[:-1])
    return fg, pre, log_ig, calib


def test_quantize_graph_ops_and_dtypes(quantized):
    _, pre, ig, _ = quantized
    assert all(n.op in INT_OPS for n in ig.nodes)
    assert [n.op for n in ig.nodes] == ["qconv", "qconv", "qconv", "qadd", "qconv", "requant",
                                        "concat", "qconv", "qmean_hw", "reshape", "qdense"]
    assert ig.dtypes["input"] == "int8"
    assert ig.dtypes["r1"] == "uint8" and ig.dtypes["ar"] == "uint8"  # fused ReLU: unsigned
    assert ig.dtypes["c3"] == "int8" and ig.dtypes["c4"] == "int8"
    for t in ig.shapes:
        if t in ig.dtypes:
            assert ig.dtypes[t] in ("int8", "uint8", "int16")
    verify_integer_graph(ig, after="test")


def test_quantize_graph_qconv_params(quantized):
    _, pre, ig, _ = quantized
    fnode, qnode = pre.node("c1"), ig.node("c1")
    p = qnode.params
    assert qnode.op == "qconv" and qnode.outputs == ("r1",)
    w_q, s_w = quantize_weight(fnode.params["W"], 8)
    assert p["W"].dtype == np.int8 and np.abs(p["W"].astype(int)).max() <= 127
    np.testing.assert_array_equal(p["W"], w_q)
    # per-output-channel: each channel's largest |weight| is 127
    assert (np.abs(p["W"].reshape(4, -1).astype(int)).max(axis=1) == 127).all()
    s_x, s_y = ig.qparams["input"].scale, ig.qparams["r1"].scale
    assert p["B"].dtype == np.int32
    np.testing.assert_array_equal(p["B"], np.rint(fnode.params["B"].astype(np.float64) / (s_x * s_w)).astype(np.int32))
    m, s = dyadic_array(s_x * s_w / s_y)
    np.testing.assert_array_equal(p["M"], m)
    np.testing.assert_array_equal(p["S"], s)
    assert p["M"].shape == (4,) and ((p["M"] >= 2 ** 30) & (p["M"] < 2 ** 31)).all()
    # fused ReLU -> the requant clips at 0; the output is uint8
    assert (qnode.attrs["lo"], qnode.attrs["hi"]) == (0, 255)
    assert qnode.attrs["w_bits"] == 8 and qnode.attrs["a_bits"] == 8
    assert "act" not in qnode.attrs
    # the input scale follows the calibrated range of a signed 8-bit tensor
    lo, hi = pre.ranges["input"]
    assert s_x == pytest.approx(max(-lo, hi) / 127)
    assert ig.qparams["r1"].scale == pytest.approx(pre.ranges["r1"][1] / 255)


def test_quantize_graph_add_shared_shift(quantized):
    _, _, ig, _ = quantized
    n = ig.node("a")
    assert n.op == "qadd" and n.inputs == ("c2", "c3") and n.outputs == ("ar",)
    m, s = n.params["M"], n.params["S"]
    assert m.shape == (2,) and np.ndim(s) == 0
    s_y = ig.qparams["ar"].scale
    for mv, t in zip(m, n.inputs):
        assert 0 < mv < 2 ** 31
        assert int(mv) / 2.0 ** int(s) == pytest.approx(ig.qparams[t].scale / s_y, rel=1e-8)
    assert max(m) >= 2 ** 30
    assert n.attrs["lo"] == 0  # fused ReLU


def _check_aligned(ig, cat_name):
    cat, q = ig.node(cat_name), ig.qparams[cat_name]
    for t in cat.inputs:
        assert ig.qparams[t] == q and ig.dtypes[t] == q.dtype
        if t.startswith(f"{cat_name}/align"):
            al = ig.node(t)
            assert al.op == "requant" and ig.shapes[t] == ig.shapes[al.inputs[0]]
            m, s = dyadic_array(np.array(ig.qparams[al.inputs[0]].scale / q.scale))
            assert al.params["M"] == m and al.params["S"] == s
            assert (al.attrs["lo"], al.attrs["hi"]) == (q.lo, q.hi)


def test_quantize_graph_concat_alignment(quantized):
    _, pre, ig, _ = quantized
    q = ig.qparams["cat"]
    assert q.signed and q.bits == 8
    # the signed branch c4 has the larger range, so it sets the concat's scale; the unsigned
    # (ReLU) branch gets a requant to that scale
    assert pre.ranges["cat"] == pre.ranges["c4"]
    assert ig.qparams["c4"] == q and ig.qparams["ar"] != q
    assert ig.node("cat").inputs == ("cat/align0", "c4")
    assert ig.node("cat/align0").inputs == ("ar",)
    _check_aligned(ig, "cat")


def test_quantize_graph_concat_output_aligns_every_input(rng):
    m = make_model([node("Conv", ["input", "W"], "a", pads=[1, 1, 1, 1]), node("Relu", ["a"], "ra"),
                    node("Conv", ["input", "W2"], "b", pads=[1, 1, 1, 1]), node("Concat", ["ra", "b"], "out", axis=1)],
                   {"W": conv_w(rng, 4, 3), "W2": 5 * conv_w(rng, 3, 3)})
    calib = {"input": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)}
    passes = [p for p in graph_passes(CompileConfig(quiet=True), calib) if p[0] != "share_concat_scales"]
    ig = run_passes(import_onnx(m), passes)
    assert [n.op for n in ig.nodes] == ["qconv", "qconv", "requant", "requant", "concat"]
    assert ig.node("out").inputs == ("out/align0", "out/align1")
    assert ig.qparams["out"].bits == 16 and ig.dtypes["out"] == "int16"
    assert ig.dtypes["ra"] == "uint8" and ig.dtypes["b"] == "int8"
    _check_aligned(ig, "out")


def test_quantize_graph_concat_same_scale_not_aligned(rng):
    m = make_model([node("Conv", ["input", "W"], "c", pads=[1, 1, 1, 1]), node("Concat", ["c", "c"], "cat", axis=1),
                    node("Conv", ["cat", "W2"], "out")], {"W": conv_w(rng, 4, 3), "W2": conv_w(rng, 2, 8, k=1)})
    calib = {"input": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)}
    ig = run_passes(import_onnx(m), graph_passes(CompileConfig(quiet=True), calib))
    assert [n.op for n in ig.nodes] == ["qconv", "concat", "qconv"]
    assert ig.qparams["cat"] == ig.qparams["c"]


def test_quantize_graph_outputs_are_16_bit(quantized):
    _, pre, ig, _ = quantized
    q = ig.qparams["out"]
    assert (q.bits, q.signed, q.dtype) == (16, True, "int16") and ig.dtypes["out"] == "int16"
    lo, hi = pre.ranges["out"]
    assert q.scale == pytest.approx(max(-lo, hi) / 32767)
    n = ig.node("out")
    assert (n.attrs["lo"], n.attrs["hi"]) == (-32768, 32767)
    # the tensor reshaped into the output is not widened (Flatten is not the output here)
    assert ig.dtypes["flat"] in ("int8", "uint8")


def test_quantize_graph_wide_through_reshape(rng):
    m = make_model([node("Conv", ["input", "W"], "c"), node("Flatten", ["c"], "out")], {"W": conv_w(rng, 4, 3)})
    calib = {"input": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)}
    ig = run_passes(import_onnx(m), graph_passes(CompileConfig(quiet=True), calib))
    assert ig.qparams["c"].bits == 16 and ig.qparams["out"] == ig.qparams["c"]


def test_quantized_reference_approximates_float(quantized):
    fg, _, ig, calib = quantized
    x = calib["input"][:4]
    want = execute(fg, {"input": x})["out"]
    q = quantize_inputs(ig, {"input": x})
    got = run_reference(ig, q)["out"].astype(np.float64) * ig.qparams["out"].scale
    assert np.abs(got - want).max() <= 0.1 * np.abs(want).max()


def test_quantize_graph_needs_ranges(rng):
    fg = import_onnx(make_model([node("Conv", ["input", "W"], "out")], {"W": conv_w(rng, 4, 3)}))
    with pytest.raises(VerificationError):
        quantize_graph(assign_bitwidths(fg))
    with pytest.raises(VerificationError, match="missing"):
        quantize_graph(calibrate_ranges(fg, {"input": np.zeros((1, 3, 8, 8), np.float32)}, quiet=True))


def test_assign_bitwidths_uniform(rng):
    fg = import_onnx(make_model([node("Conv", ["input", "W"], "c"), node("Relu", ["c"], "out")],
                                {"W": conv_w(rng, 4, 3)}))
    assert assign_bitwidths(fg).bits == {"c": (8, 8)}
    # a single layer is both the first and the last: pinned to 8 bits unless freed
    assert assign_bitwidths(fg, mode=BitMode.INT4).bits == {"c": (8, 8)}
    assert assign_bitwidths(fg, mode=BitMode.INT4, pin_first_last=False).bits == {"c": (4, 4)}
    assert assign_bitwidths(fg, mode=BitMode.W4A8, pin_first_last=False).bits == {"c": (4, 8)}


# ============================================================================== dead channels


def test_channel_scales_floor_dead_channels():
    from dyadic.core.arith import CHANNEL_FLOOR, channel_scales

    w = np.ones((4, 3, 1, 1), np.float32)
    w[1], w[2], w[3] = 1e-34, 0.0, 0.25
    s = channel_scales(w, 8)
    assert s[0] == pytest.approx(1 / 127) and s[3] == pytest.approx(0.25 / 127)
    assert s[1] == s[2] == pytest.approx(CHANNEL_FLOOR / 127)  # floored, not 1e-34 / 127
    assert (channel_scales(np.zeros((2, 3)), 4) == 1.0).all()
    q, _ = quantize_weight(w, 8)
    assert (q[1] == 0).all() and (q[0] == 127).all()


def test_bn_with_zero_gamma_compiles_bit_exact(tmp_path):
    """A pretrained net's BN with gamma ~ 0 folds to weights of 1e-34 beside a bias: the bias must
    still fit int32 (PP-OCRv4's text detector has such channels)."""
    import dyadic

    rng = np.random.default_rng(3)
    c = 6
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    gamma[2], gamma[4] = 1e-36, 3e-30
    m = make_model([node("Conv", ["input", "W", "B"], "c", pads=[1, 1, 1, 1]),
                    node("BatchNormalization", ["c", "g", "b", "mu", "var"], "bn"), node("Relu", ["bn"], "r"),
                    node("Conv", ["r", "W2", "B2"], "out")],
                   {"W": conv_w(rng, c, 3), "B": bias(rng, c), "g": gamma, "b": bias(rng, c, 0.5),
                    "mu": bias(rng, c), "var": rng.uniform(0.5, 2, c).astype(np.float32),
                    "W2": conv_w(rng, 3, c, 1), "B2": bias(rng, 3)})
    calib = {"input": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)}
    res = dyadic.compile(m, str(tmp_path / "b"), calib, CompileConfig(quiet=True, check_samples=2))
    assert res.plan["self_check"].startswith("bit-exact")
    ig = res.int_graph
    x = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    got = dyadic.load(str(tmp_path / "b")).run_int(quantize_inputs(ig, {"input": x}))[0]
    np.testing.assert_array_equal(got, run_reference(ig, quantize_inputs(ig, {"input": x}))[ig.outputs[0]])


def test_bias_fits_with_a_dead_channel_and_a_fine_input_scale(tmp_path):
    """Zero weights beside a large bias, read from a 16-bit-fine input scale: that channel's weight
    scale is raised until the bias fits (`_fit_bias`), and the build stays bit-exact."""
    import dyadic
    from dyadic.passes.quantize_graph import BIAS_LIMIT, _fit_bias

    w = np.zeros((3, 2, 1, 1))
    w[0] = 0.5
    b = np.array([0.1, 40.0, 0.0])
    q, s = quantize_weight(w, 8)
    q2, s2 = _fit_bias(w, q, s, b, 1e-6, 8)
    assert np.all(np.abs(b / (1e-6 * s2)) <= BIAS_LIMIT * (1 + 1e-12))
    assert s2[0] == s[0] and (q2[0] == q[0]).all() and s2[1] > s[1] and (q2[1] == 0).all()

    rng = np.random.default_rng(5)
    W = conv_w(rng, 4, 3)
    W[2] = 0.0
    B = np.array([0.1, -0.2, 3e4, 0.0], np.float32)  # a dead channel whose bias alone would overflow
    m = make_model([node("Conv", ["input", "W", "B"], "c", pads=[1, 1, 1, 1]), node("Relu", ["c"], "r"),
                    node("Conv", ["r", "W2", "B2"], "out")], {"W": W, "B": B, "W2": conv_w(rng, 3, 4, 1),
                                                              "B2": bias(rng, 3)})
    calib = {"input": (1e-4 * rng.normal(size=(8, 3, 8, 8))).astype(np.float32)}
    res = dyadic.compile(m, str(tmp_path / "b"), calib, CompileConfig(quiet=True, check_samples=2))
    assert res.plan["self_check"].startswith("bit-exact")
