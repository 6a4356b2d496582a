"""Before/expected tests of the float graph passes: `fold_batchnorm`, `fuse_activations`,
`calibrate_ranges`."""
from __future__ import annotations

import math

import numpy as np
import pytest

from _tiny_onnx import run_ort, bias, conv_w, f32, make_model, node
from dyadic.core.errors import ModelError
from dyadic.core.float_exec import execute
from dyadic.core.graph import Graph, Node
from dyadic.frontend import import_onnx
from dyadic.passes import calibrate_ranges, fold_batchnorm, fuse_activations

ort = pytest.importorskip("onnxruntime")


# =============================================================================== fold_batchnorm


def _bn_inits(rng, c, prefix="bn"):
    return {f"{prefix}.g": rng.uniform(0.5, 1.5, c).astype(np.float32),
            f"{prefix}.b": rng.normal(0, 0.1, c).astype(np.float32),
            f"{prefix}.m": rng.normal(0, 0.1, c).astype(np.float32),
            f"{prefix}.v": rng.uniform(0.5, 1.5, c).astype(np.float32)}


def _bn(x, out, prefix="bn", **kw):
    return node("BatchNormalization", [x] + [f"{prefix}.{k}" for k in "gbmv"], out, **kw)


def test_fold_batchnorm_conv(rng):
    m = make_model([node("Conv", ["input", "W", "B"], "c", pads=[1, 1, 1, 1]), _bn("c", "out", epsilon=1e-3)],
                   {"W": conv_w(rng, 5, 3), "B": bias(rng, 5), **_bn_inits(rng, 5)})
    fg = import_onnx(m)
    assert [n.op for n in fg.nodes] == ["conv", "batchnorm"]
    folded = fold_batchnorm(fg)
    assert [n.op for n in folded.nodes] == ["conv"]
    (conv,) = folded.nodes
    assert conv.name == fg.nodes[0].name and conv.outputs == ("out",) and conv.inputs == ("input",)
    assert conv.params["W"].dtype == np.float32 and conv.params["B"].dtype == np.float32
    x = rng.normal(size=(3, 3, 8, 8))
    want = execute(fg, {"input": x})["out"]
    np.testing.assert_allclose(execute(folded, {"input": x})["out"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(want, run_ort(m, x), rtol=1e-5, atol=1e-5)
    # the graph type's other fields are untouched
    assert folded.inputs == fg.inputs and folded.outputs == fg.outputs and folded.shapes == fg.shapes


def test_fold_batchnorm_expected_params():
    w = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
    b = f32([1.0, -1.0])
    conv = Node("conv", "c", ("x",), ("y",), {"kernel": (2, 2), "strides": (1, 1), "pads": (0, 0, 0, 0),
                                             "dilations": (1, 1), "group": 1}, {"W": w, "B": b})
    bn = Node("batchnorm", "bn", ("y",), ("z",), {"eps": 0.0},
              {"gamma": f32([2.0, 3.0]), "beta": f32([0.5, 0.0]), "mean": f32([1.0, 2.0]), "var": f32([4.0, 9.0])})
    g = Graph((conv, bn), ("x",), ("z",), {"x": (-1, 1, 3, 3), "y": (-1, 2, 2, 2), "z": (-1, 2, 2, 2)},
              {t: "float32" for t in "xyz"})
    (c,) = fold_batchnorm(g).nodes
    # a = gamma / sqrt(var) = [1, 1]; b' = a (b - mean) + beta = [0.5, -3]
    np.testing.assert_array_equal(c.params["W"], w)
    np.testing.assert_array_equal(c.params["B"], f32([0.5, -3.0]))
    assert c.outputs == ("z",)


def test_fold_batchnorm_dense(rng):
    m = make_model([node("Gemm", ["input", "W", "B"], "d", transB=1), _bn("d", "out")],
                   {"W": rng.normal(size=(4, 6)).astype(np.float32), "B": bias(rng, 4), **_bn_inits(rng, 4)},
                   in_shape=("N", 6))
    folded = fold_batchnorm(import_onnx(m))
    assert [n.op for n in folded.nodes] == ["dense"]
    x = rng.normal(size=(3, 6))
    np.testing.assert_allclose(execute(folded, {"input": x})["out"], run_ort(m, x), rtol=1e-5, atol=1e-5)


def _unfoldable_cases(rng):
    yield "lonely_bn", make_model([node("Relu", ["input"], "r"), _bn("r", "out", name="lonely_bn")], _bn_inits(rng, 3))
    yield "input_bn", make_model([_bn("input", "out", name="input_bn")], _bn_inits(rng, 3))
    yield "shared_bn", make_model([node("Conv", ["input", "W"], "c", pads=[1, 1, 1, 1]), _bn("c", "b", name="shared_bn"),
                                   node("Add", ["c", "b"], "out")], {"W": conv_w(rng, 3, 3), **_bn_inits(rng, 3)})


def test_fold_batchnorm_unfoldable_becomes_affine(rng):
    """A BN after a non-conv, on the graph input, or on a conv output with other readers stays as
    a per-channel affine y = A x + B with A = gamma / sqrt(var + eps), B = beta - A mean."""
    for name, m in _unfoldable_cases(rng):
        g = fold_batchnorm(import_onnx(m))
        (bn,) = [n for n in g.nodes if n.name == name]
        assert bn.op == "affine", name
        inits = {t.name: np.frombuffer(t.raw_data, np.float32) if t.raw_data else np.array(t.float_data, np.float32)
                 for t in m.graph.initializer}
        a = inits["bn.g"] / np.sqrt(inits["bn.v"] + 1e-5)
        np.testing.assert_allclose(bn.params["A"], a, rtol=1e-6)
        np.testing.assert_allclose(bn.params["B"], inits["bn.b"] - a * inits["bn.m"], rtol=1e-5, atol=1e-7)
        x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(execute(g, {"input": x})["out"], run_ort(m, x), rtol=1e-4, atol=1e-5)


def test_fold_affine_chain_into_conv(rng):
    """conv -> Add(per-channel bias) -> BN -> Mul(scalar): all three fold into the conv (paddle2onnx)."""
    m = make_model([node("Conv", ["input", "W"], "c", pads=[1, 1, 1, 1]), node("Add", ["c", "cb"], "cbias"),
                    _bn("cbias", "b"), node("Mul", ["b", "k"], "out")],
                   {"W": conv_w(rng, 4, 3), "cb": f32(rng.normal(0, 0.1, (1, 4, 1, 1))), **_bn_inits(rng, 4),
                    "k": f32(0.5)})
    g = fold_batchnorm(import_onnx(m))
    assert [n.op for n in g.nodes] == ["conv"]
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(execute(g, {"input": x})["out"], run_ort(m, x), rtol=1e-4, atol=1e-5)


def test_fold_batchnorm_two_bns_in_a_chain(rng):
    m = make_model([node("Conv", ["input", "W"], "c", pads=[1, 1, 1, 1]), _bn("c", "b1"), node("Relu", ["b1"], "r"),
                    node("Conv", ["r", "W2"], "c2"), _bn("c2", "out", prefix="bn2")],
                   {"W": conv_w(rng, 4, 3), "W2": conv_w(rng, 4, 4), **_bn_inits(rng, 4), **_bn_inits(rng, 4, "bn2")})
    folded = fold_batchnorm(import_onnx(m))
    assert [n.op for n in folded.nodes] == ["conv", "relu", "conv"]
    assert folded.nodes[1].inputs == ("b1",)
    x = rng.normal(size=(2, 3, 8, 8))
    np.testing.assert_allclose(execute(folded, {"input": x})["out"], run_ort(m, x), rtol=1e-4, atol=1e-5)


# ============================================================================= fuse_activations


def _conv_relu_model(rng, act_nodes, extra_inits=None):
    return make_model([node("Conv", ["input", "W"], "c", pads=[1, 1, 1, 1])] + act_nodes,
                      {"W": conv_w(rng, 4, 3), **(extra_inits or {})})


def test_fuse_relu_into_conv(rng):
    fg = import_onnx(_conv_relu_model(rng, [node("Relu", ["c"], "out")]))
    g = fuse_activations(fg)
    (conv,) = g.nodes
    assert conv.op == "conv" and conv.attrs["act"] == (0.0, math.inf) and conv.outputs == ("out",)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8))
    np.testing.assert_array_equal(execute(g, {"input": x})["out"], execute(fg, {"input": x})["out"])


def test_fuse_relu6_clip_into_conv(rng):
    fg = import_onnx(_conv_relu_model(rng, [node("Clip", ["c", "lo", "hi"], "out")],
                                      {"lo": f32(0.0), "hi": f32(6.0)}))
    (conv,) = fuse_activations(fg).nodes
    assert conv.attrs["act"] == (0.0, 6.0) and conv.outputs == ("out",)


def test_fuse_relu_into_add_and_dense(rng):
    m = make_model([node("Conv", ["input", "W"], "a", pads=[1, 1, 1, 1]), node("Conv", ["input", "W2"], "b", pads=[1, 1, 1, 1]),
                    node("Add", ["a", "b"], "s"), node("Relu", ["s"], "r"), node("Flatten", ["r"], "f"),
                    node("Gemm", ["f", "G"], "g", transB=1), node("Relu", ["g"], "out")],
                   {"W": conv_w(rng, 4, 3), "W2": conv_w(rng, 4, 3), "G": rng.normal(size=(5, 256)).astype(np.float32)})
    g = fuse_activations(import_onnx(m))
    assert [n.op for n in g.nodes] == ["conv", "conv", "add", "reshape", "dense"]
    assert g.node("s").attrs["act"] == (0.0, math.inf) and g.node("s").outputs == ("r",)
    assert g.node("g").attrs["act"] == (0.0, math.inf) and g.outputs == ("out",)
    assert "act" not in g.node("a").attrs


def test_fuse_relu_with_shared_input_not_fused(rng):
    m = _conv_relu_model(rng, [node("Relu", ["c"], "r"), node("Add", ["c", "r"], "out")])
    g = fuse_activations(import_onnx(m))
    assert [n.op for n in g.nodes] == ["conv", "relu", "add"]
    assert "act" not in g.node("c").attrs


def test_fuse_not_when_input_is_graph_output(rng):
    m = make_model([node("Conv", ["input", "W"], "c"), node("Relu", ["c"], "out")], {"W": conv_w(rng, 4, 3)},
                   outputs=("out", "c"))
    g = fuse_activations(import_onnx(m))
    assert [n.op for n in g.nodes] == ["conv", "relu"]


def test_fuse_only_one_activation_per_layer(rng):
    fg = import_onnx(_conv_relu_model(rng, [node("Relu", ["c"], "r"), node("Clip", ["r", "lo", "hi"], "out")],
                                      {"lo": f32(0.0), "hi": f32(6.0)}))
    g = fuse_activations(fg)
    assert [n.op for n in g.nodes] == ["conv", "clip"]
    assert g.nodes[0].attrs["act"] == (0.0, math.inf) and g.nodes[1].inputs == ("r",)


def test_fuse_relu_into_standalone_batchnorm_affine(rng):
    """Before: Conv -> Concat -> BatchNormalization -> Relu (DenseNet's pre-activation BN, which
    fold_batchnorm leaves as a per-channel affine). Expected: the Relu fused into the affine, which
    computes the same floats as BN then Relu (onnxruntime)."""
    c = 4
    inits = {"W": conv_w(rng, c, 3), "g": f32(rng.uniform(0.5, 2, 2 * c)), "b": f32(rng.normal(0, 1, 2 * c)),
             "m": f32(rng.normal(0, 0.5, 2 * c)), "v": f32(rng.uniform(0.5, 2, 2 * c))}
    m = make_model([node("Conv", ["input", "W"], "c", pads=[1, 1, 1, 1]), node("Concat", ["c", "c"], "cat", axis=1),
                    node("BatchNormalization", ["cat", "g", "b", "m", "v"], "bn"), node("Relu", ["bn"], "out")], inits)
    g = fuse_activations(fold_batchnorm(import_onnx(m)))
    assert [n.op for n in g.nodes] == ["conv", "concat", "affine"]
    assert g.node("bn").attrs["act"] == (0.0, math.inf) and g.node("bn").outputs == ("out",)
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(execute(g, {"input": x})["out"], run_ort(m, x), rtol=1e-5, atol=1e-5)


def test_fuse_not_after_pool(rng):
    m = make_model([node("MaxPool", ["input"], "p", kernel_shape=[2, 2]), node("Relu", ["p"], "out")])
    g = fuse_activations(import_onnx(m))
    assert [n.op for n in g.nodes] == ["maxpool", "relu"]


# ============================================================================= calibrate_ranges


def test_calibrate_ranges_minmax(rng):
    w, b = conv_w(rng, 4, 3), bias(rng, 4)
    m = make_model([node("Conv", ["input", "W", "B"], "c", pads=[1, 1, 1, 1]), node("Relu", ["c"], "r"),
                    node("MaxPool", ["r"], "out", kernel_shape=[2, 2], strides=[2, 2])], {"W": w, "B": b})
    fg = import_onnx(m)
    x = rng.normal(size=(10, 3, 8, 8)).astype(np.float32)
    g = calibrate_ranges(fg, {"input": x}, batch_size=3, quiet=True)  # 4 batches, running min/max
    # direct computation in float64
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    c = np.zeros((10, 4, 8, 8))
    for i in range(3):
        for j in range(3):
            c += np.einsum("nchw,oc->nohw", xp[:, :, i:i + 8, j:j + 8], w[:, :, i, j].astype(np.float64))
    c += b.reshape(1, -1, 1, 1)
    r = np.maximum(c, 0)
    p = r.reshape(10, 4, 4, 2, 4, 2).max(axis=(3, 5))
    assert set(g.ranges) == {"input", "c", "r", "out"}
    assert g.ranges["input"] == (float(x.min()), float(x.max()))
    for t, v in (("c", c), ("r", r), ("out", p)):
        lo, hi = g.ranges[t]
        assert lo == pytest.approx(v.min(), rel=1e-5, abs=1e-6) and hi == pytest.approx(v.max(), rel=1e-5, abs=1e-6)
    assert g.ranges["r"][0] == 0.0
    assert g.nodes == fg.nodes  # calibration changes nothing else


def test_calibrate_ranges_batching_invariant(rng):
    m = make_model([node("Conv", ["input", "W"], "out")], {"W": conv_w(rng, 4, 3)})
    fg = import_onnx(m)
    x = rng.normal(size=(7, 3, 8, 8)).astype(np.float32)
    a = calibrate_ranges(fg, {"input": x}, batch_size=2, quiet=True).ranges
    b = calibrate_ranges(fg, {"input": x}, batch_size=32, quiet=True).ranges
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
