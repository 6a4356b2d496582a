"""AdaRound, GPTQ, bias correction and their integer builds on tiny models."""
from __future__ import annotations

import numpy as np
import pytest

from _tiny_onnx import bias, conv_w, make_model, node
from dyadic.core import npops
from dyadic.core.calibrators import Calibration
from dyadic.core.config import BitMode, CompileConfig
from dyadic.frontend import import_onnx
from dyadic.passes import assign_bitwidths, calibrate_ranges, fold_batchnorm, fuse_activations
from dyadic.passes.round_weights import fq, round_weights, sim_qparams
from dyadic.core.weight_quant import Rounding, WeightClip, adaround, clip_scales, gptq, round_nearest


def _conv_model(rng, relu=True):
    inits = {"W1": conv_w(rng, 8, 3), "B1": bias(rng, 8), "W2": conv_w(rng, 6, 8), "B2": bias(rng, 6)}
    nodes = [node("Conv", ["input", "W1", "B1"], "c1", pads=[1, 1, 1, 1])]
    nodes += [node("Relu", ["c1"], "r1")] if relu else []
    nodes += [node("Conv", ["r1" if relu else "c1", "W2", "B2"], "out", pads=[1, 1, 1, 1])]
    return make_model(nodes, inits)


def _prepared(rng, bits=BitMode.INT4, method=Calibration.MINMAX, relu=True, n=24):
    g = fuse_activations(fold_batchnorm(import_onnx(_conv_model(rng, relu))))
    x = rng.normal(size=(n, 3, 8, 8)).astype(np.float32)
    g = calibrate_ranges(g, {"input": x}, quiet=True, method=method)
    return assign_bitwidths(g, bits, pin_first_last=False), x


def test_adaround_within_one_step_and_reduces_reconstruction_error(rng):
    """A dense layer y = W x on correlated inputs: AdaRound's integers differ from nearest rounding by
    at most one step and reconstruct the outputs (measured directly, not through the Grams) better."""
    k, o, n = 24, 6, 2000
    x = rng.normal(size=(n, k)) @ rng.normal(size=(k, k)) * 0.5
    w = rng.normal(size=(o, k))
    s = clip_scales(w, 4)
    A = B = C = (x.T @ x / n)[None]
    q, info = adaround(w[None], s[None], 4, A, B, C, iters=600)
    near = round_nearest(w, s, 4)
    assert np.abs(q[0].astype(int) - near.astype(int)).max() <= 1
    err = lambda qq: float((((qq * s[:, None]) @ x.T - w @ x.T) ** 2).sum(0).mean())
    assert err(q[0]) < 0.9 * err(near)
    assert info["kept"] and info["loss_adaround"] < info["loss_nearest"]
    assert err(q[0]) == pytest.approx(info["loss_adaround"], rel=1e-6)


def test_gptq_reduces_rounding_error_on_fresh_inputs(rng):
    """A dense layer on correlated inputs, 4-bit weights: GPTQ's integers (chosen from the Gram of one
    input set) reconstruct a *fresh* input set at least 1.3x better than nearest rounding, and the
    loss it reports is the direct one on its own inputs."""
    k, o = 32, 8
    mix = rng.normal(size=(k, k))
    x, fresh = (rng.normal(size=(n, k)) @ mix * 0.5 for n in (3000, 3000))
    w = rng.normal(size=(o, k))
    s = clip_scales(w, 4)
    A = B = C = (x.T @ x / len(x))[None]
    q, info = gptq(w[None], s[None], 4, A, B, C)
    near = round_nearest(w, s, 4)
    err = lambda qq, v: float((((qq * s[:, None]) @ v.T - w @ v.T) ** 2).sum(0).mean())
    assert info["kept"] and err(q[0], fresh) < err(near, fresh) / 1.3
    assert err(q[0], x) == pytest.approx(info["loss_gptq"], rel=1e-6)
    assert np.abs(q).max() <= 7


def test_gptq_equals_nearest_on_uncorrelated_inputs(rng):
    """Before: a diagonal input Gram (no input carries information about another). Expected: no error
    feedback (U is diagonal), so GPTQ's integers are exactly nearest rounding's."""
    k, o = 20, 5
    w = rng.normal(size=(o, k))
    s = clip_scales(w, 4)
    A = np.diag(rng.uniform(0.5, 2.0, k))[None]
    q, _ = gptq(w[None], s[None], 4, A, A, A)
    np.testing.assert_array_equal(q[0], round_nearest(w, s, 4))


def test_bias_correction_before_expected(rng):
    """Before: conv -> conv (no activation), W4A4. Expected: each layer's bias gains the mean over the
    calibration data of (fp32 output − the quantized model's output without bias)."""
    g, x = _prepared(rng, bits=BitMode.W4A8, relu=False)
    got = round_weights(g, Rounding.NEAREST, WeightClip.W4, bias_correction=True)
    qp = sim_qparams(g)
    c1, c2 = g.node("c1"), g.node("out")
    n1, n2 = got.node("c1"), got.node("out")

    def conv(v, w, b):
        return npops.conv2d(v.astype(np.float64), w, (1, 1), (1, 1, 1, 1), (1, 1), 1, exact=False) + b.reshape(1, -1, 1, 1)

    wq1 = n1.params["W_int"] * n1.params["W_scale"][:, None, None, None]
    xq = fq(x, qp["input"])
    want1 = c1.params["B"] + (conv(x, c1.params["W"], 0 * c1.params["B"]) - conv(xq, wq1, 0 * c1.params["B"])).mean((0, 2, 3))
    np.testing.assert_allclose(n1.params["B"], want1, rtol=1e-5, atol=1e-6)
    # layer 2 sees the quantized model's c1 (corrected bias, fake-quantized), the fp32 one's c1
    h_f = conv(x, c1.params["W"], c1.params["B"])
    h_q = fq(conv(xq, wq1, n1.params["B"]).astype(np.float32), qp["c1"])
    wq2 = n2.params["W_int"] * n2.params["W_scale"][:, None, None, None]
    want2 = c2.params["B"] + (conv(h_f, c2.params["W"], 0 * c2.params["B"]) - conv(h_q, wq2, 0 * c2.params["B"])).mean((0, 2, 3))
    np.testing.assert_allclose(n2.params["B"], want2, rtol=1e-4, atol=1e-5)
    # without bias correction the biases are unchanged
    plain = round_weights(g, Rounding.NEAREST, WeightClip.W4, bias_correction=False)
    np.testing.assert_array_equal(plain.node("c1").params["B"], c1.params["B"])


def test_bias_correction_removes_mean_output_error(rng):
    g, x = _prepared(rng, bits=BitMode.W4A8, relu=False)
    outs = {}
    for bc in (False, True):
        r = round_weights(g, Rounding.NEAREST, WeightClip.W4, bias_correction=bc)
        n1 = r.node("c1")
        wq = n1.params["W_int"] * n1.params["W_scale"][:, None, None, None]
        yq = npops.conv2d(fq(x, sim_qparams(g)["input"]), wq.astype(np.float32), (1, 1), (1, 1, 1, 1), (1, 1), 1, False)
        yf = npops.conv2d(x, g.node("c1").params["W"], (1, 1), (1, 1, 1, 1), (1, 1), 1, False)
        outs[bc] = np.abs((yf + g.node("c1").params["B"].reshape(1, -1, 1, 1)
                           - yq - n1.params["B"].reshape(1, -1, 1, 1)).mean((0, 2, 3))).max()
    assert outs[True] < 1e-5 < outs[False]


@pytest.mark.parametrize("rounding", [Rounding.ADAROUND, Rounding.GPTQ])
def test_round_weights_data_aware_layers(rng, rounding):
    g, _ = _prepared(rng, method=Calibration.MSE)
    r = round_weights(g, rounding, WeightClip.W4, bias_correction=True, iters=200)
    for n in r.weighted_nodes():
        near = round_nearest(n.params["W"], n.params["W_scale"], 4)
        if rounding is Rounding.ADAROUND:
            assert np.abs(n.params["W_int"].astype(int) - near).max() <= 1
        assert np.abs(n.params["W_int"]).max() <= 7
        info = r.meta["weight_quant"]["layers"][n.name]
        assert info["loss"] == min(info[f"loss_{rounding.value}"], info["loss_nearest"])
    assert "calib_data" not in r.meta


@pytest.mark.parametrize("rounding", [Rounding.ADAROUND, Rounding.GPTQ])
def test_compiled_data_aware_rounding_is_bit_exact(tmp_path, rng, rounding):
    """A tiny W4A4 model with mse calibration, AdaRound or GPTQ and bias correction builds, and its library
    equals the int64 reference (the compile's self-check), on more inputs than the self-check's."""
    import dyadic
    from dyadic.compiler import quantize_inputs
    from dyadic.core.reference import run_reference

    x = rng.normal(size=(24, 3, 8, 8)).astype(np.float32)
    cfg = CompileConfig(bits=BitMode.INT4, pin_first_last=False, calibration=Calibration.MSE,
                        rounding=rounding, adaround_iters=200, quiet=True, check_samples=16)
    res = dyadic.compile(_conv_model(rng), str(tmp_path), {"input": x}, cfg)
    assert res.plan["self_check"].startswith("bit-exact")
    q = quantize_inputs(res.int_graph, {"input": x})
    got = dyadic.load(str(tmp_path)).run_int(q)[0]
    np.testing.assert_array_equal(got, run_reference(res.int_graph, q)[res.int_graph.outputs[0]])
    layer = next(l for l in res.plan["layers"] if l["name"] == "c1")
    assert layer["weight_quant"]["loss"] <= layer["weight_quant"]["loss_nearest"]
    assert layer["calibration"]["method"] == "mse" and set(layer["calibration"]["ranges"]) == {"4", "8"}


def test_cli_quantizer_flags_reach_the_config():
    from dyadic.cli.main import _config, _parser

    a = _parser().parse_args(["compile", "m.onnx", "-o", "out", "--bits", "4", "--calibration", "percentile",
                              "--percentile", "99.9", "--weight-clip", "all", "--rounding", "adaround",
                              "--adaround-iters", "50", "--no-bias-correction"])
    c = _config(a, "host")
    assert (c.calibration, c.percentile, c.weight_clip, c.rounding, c.adaround_iters, c.bias_correction) == \
        (Calibration.PERCENTILE, 99.9, WeightClip.ALL, Rounding.ADAROUND, 50, False)
    d = _config(_parser().parse_args(["compile", "m.onnx", "-o", "out"]), "host")
    assert (d.calibration, d.weight_clip, d.rounding, d.bias_correction) == \
        (Calibration.MSE, WeightClip.W4, Rounding.NEAREST, True)
    s = _parser().parse_args(["sweep", "m.onnx", "-o", "o", "--calib", "c", "--data", "d", "--rounding", "adaround"])
    assert s.rounding == "adaround"
    g = _config(_parser().parse_args(["compile", "m.onnx", "-o", "out", "--rounding", "gptq"]), "host")
    assert g.rounding is Rounding.GPTQ
