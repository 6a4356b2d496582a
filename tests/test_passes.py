"""Before/expected tests of each graph pass, and of the verifier that runs between them."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from _tiny_onnx import INT64_MAX, bias, conv_w, f32, i64, make_model, node
from dyadic.arith import dyadic_array, quantize_weight
from dyadic.compiler import quantize_inputs
from dyadic.config import CompileConfig
from dyadic.errors import ModelError, VerificationError
from dyadic.float_exec import execute
from dyadic.graph import INT_OPS, Graph, Node, QParams
from dyadic.passes import (assign_bitwidths, calibrate_ranges, fold_batchnorm, fuse_activations,
                           import_onnx, quantize_graph)
from dyadic.config import BitMode
from dyadic.pipeline import graph_passes, run_passes
from dyadic.reference import run_reference
from dyadic.verify import verify_float_graph, verify_integer_graph, verify_lowered

ort = pytest.importorskip("onnxruntime")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def run_ort(model: onnx.ModelProto, x: np.ndarray, out: str = "out") -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([out], {"input": x.astype(np.float32)})[0]


def matches_ort(model, x, rtol=1e-5, atol=1e-5):
    """The imported float graph, executed by dyadic.float_exec, computes what onnxruntime computes."""
    g = import_onnx(model)
    got = execute(g, {"input": x})[g.outputs[0]]
    want = run_ort(model, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return g


# ================================================================================== import_onnx


@pytest.mark.parametrize("trans_b", [0, 1])
def test_import_gemm_dense_layout(rng, trans_b):
    w_out_in = rng.normal(size=(5, 12)).astype(np.float32)  # dyadic's dense layout: [out, in]
    b = bias(rng, 5)
    w_onnx = w_out_in if trans_b else np.ascontiguousarray(w_out_in.T)
    m = make_model([node("Gemm", ["input", "W", "B"], "out", transB=trans_b, alpha=2.0, beta=0.5)],
                   {"W": w_onnx, "B": b}, in_shape=("N", 12))
    g = matches_ort(m, rng.normal(size=(3, 12)))
    (n,) = g.nodes
    assert n.op == "dense" and n.inputs == ("input",) and n.outputs == ("out",)
    np.testing.assert_array_equal(n.params["W"], 2.0 * w_out_in)
    np.testing.assert_array_equal(n.params["B"], 0.5 * b)
    assert g.shapes["out"] == (-1, 5) and g.inputs == ("input",)


def test_import_matmul_is_dense_without_bias(rng):
    w = rng.normal(size=(12, 7)).astype(np.float32)
    m = make_model([node("MatMul", ["input", "W"], "out")], {"W": w}, in_shape=("N", 12))
    g = matches_ort(m, rng.normal(size=(2, 12)))
    (n,) = g.nodes
    assert n.op == "dense"
    np.testing.assert_array_equal(n.params["W"], w.T)
    np.testing.assert_array_equal(n.params["B"], np.zeros(7, np.float32))


def test_import_conv_attrs(rng):
    w, b = conv_w(rng, 6, 2), bias(rng, 6)
    m = make_model([node("Conv", ["input", "W", "B"], "out", strides=[2, 1], pads=[0, 1, 1, 2],
                         dilations=[1, 2], group=2)], {"W": w, "B": b}, in_shape=("N", 4, 9, 9))
    g = matches_ort(m, rng.normal(size=(2, 4, 9, 9)))
    (n,) = g.nodes
    assert n.op == "conv"
    assert n.attrs == {"kernel": (3, 3), "strides": (2, 1), "pads": (0, 1, 1, 2), "dilations": (1, 2), "group": 2}
    assert g.shapes["out"] == (-1, 6, 4, 8)


def test_import_conv_without_bias_gets_zero_bias(rng):
    m = make_model([node("Conv", ["input", "W"], "out")], {"W": conv_w(rng, 4, 3)})
    (n,) = import_onnx(m).nodes
    np.testing.assert_array_equal(n.params["B"], np.zeros(4, np.float32))
    assert n.attrs["pads"] == (0, 0, 0, 0) and n.attrs["strides"] == (1, 1)


@pytest.mark.parametrize("starts,ends,axes,steps,spec", [
    ([0, 1], [INT64_MAX, -1], [1, 3], [2, 2], ((1, 0, 6, 2), (3, 1, 7, 2))),
    ([-3], [INT64_MAX], [-1], [1], ((3, 5, 8, 1),)),
    ([-1], [-INT64_MAX], [2], [-1], ((2, 7, -1, -1),)),  # reversed rows
    ([1, 2], [5, 100], [1, 2], None, ((1, 1, 5, 1), (2, 2, 8, 1))),  # no steps input; end clamped
])
def test_import_slice(rng, starts, ends, axes, steps, spec):
    inits = {"st": i64(*starts), "en": i64(*ends), "ax": i64(*axes)}
    ins = ["input", "st", "en", "ax"]
    if steps is not None:
        inits["sp"] = i64(*steps)
        ins.append("sp")
    m = make_model([node("Slice", ins, "out")], inits, in_shape=("N", 6, 8, 8))
    g = matches_ort(m, rng.normal(size=(2, 6, 8, 8)), rtol=0, atol=0)
    (n,) = g.nodes
    assert n.op == "slice" and n.attrs["spec"] == spec


def test_import_slice_of_batch_raises():
    m = make_model([node("Slice", ["input", "st", "en", "ax"], "out")],
                   {"st": i64(0), "en": i64(1), "ax": i64(0)})
    with pytest.raises(ModelError, match="batch"):
        import_onnx(m)


@pytest.mark.parametrize("opset,axes", [(17, None), (18, [1])])
def test_import_pad(rng, opset, axes):
    if axes is None:
        pads, inits, ins = i64(0, 1, 0, 0, 0, 2, 0, 0), {}, ["input", "p", "v"]
    else:
        pads, inits, ins = i64(1, 2), {"a": i64(*axes)}, ["input", "p", "v", "a"]
    inits.update(p=pads, v=f32(0.0))
    m = make_model([node("Pad", ins, "out")], inits, opset=opset)
    g = matches_ort(m, rng.normal(size=(2, 3, 8, 8)), rtol=0, atol=0)
    (n,) = g.nodes
    assert n.op == "pad" and n.attrs["pads"] == ((0, 0), (1, 2), (0, 0), (0, 0))
    assert g.shapes["out"] == (-1, 6, 8, 8)


def test_import_pad_nonzero_value_raises():
    m = make_model([node("Pad", ["input", "p", "v"], "mypad")],
                   {"p": i64(0, 1, 0, 0, 0, 2, 0, 0), "v": f32(1.0)}, outputs=("mypad",))
    with pytest.raises(ModelError, match="mypad.*non-zero pad value"):
        import_onnx(m)


@pytest.mark.parametrize("opset,keepdims,axes", [(17, 0, [2, 3]), (17, 1, [3, 2]), (18, 1, [-1, -2]), (18, 0, [2, 3])])
def test_import_reduce_mean(rng, opset, keepdims, axes):
    if opset < 18:
        m = make_model([node("ReduceMean", ["input"], "out", axes=axes, keepdims=keepdims)], opset=opset,
                       in_shape=("N", 3, 5, 7))
    else:
        m = make_model([node("ReduceMean", ["input", "ax"], "out", keepdims=keepdims)], {"ax": i64(*axes)},
                       opset=opset, in_shape=("N", 3, 5, 7))
    g = matches_ort(m, rng.normal(size=(2, 3, 5, 7)))
    (n,) = g.nodes
    assert n.op == "mean_hw" and n.attrs == {"keepdims": keepdims}
    assert g.shapes["out"] == ((-1, 3, 1, 1) if keepdims else (-1, 3))


def test_import_global_average_pool(rng):
    g = matches_ort(make_model([node("GlobalAveragePool", ["input"], "out")]), rng.normal(size=(2, 3, 8, 8)))
    (n,) = g.nodes
    assert n.op == "mean_hw" and n.attrs == {"keepdims": 1}


def test_import_reduce_mean_over_channels_raises():
    m = make_model([node("ReduceMean", ["input"], "out", axes=[1], keepdims=1)])
    with pytest.raises(ModelError, match="axes 2,3"):
        import_onnx(m)


@pytest.mark.parametrize("ins,lo,hi", [
    (["input", "lo", "hi"], 0.0, 6.0),
    (["input", "", "hi"], -math.inf, 6.0),
    (["input", "lo"], 0.0, math.inf),
])
def test_import_clip(rng, ins, lo, hi):
    m = make_model([node("Clip", ins, "out")], {k: f32(v) for k, v in (("lo", 0.0), ("hi", 6.0)) if k in ins})
    g = matches_ort(m, 4 * rng.normal(size=(2, 3, 8, 8)))
    (n,) = g.nodes
    assert n.op == "clip" and n.attrs == {"lo": lo, "hi": hi}


def test_import_avgpool_maxpool_attrs(rng):
    m = make_model([
        node("AveragePool", ["input"], "a", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        node("MaxPool", ["a"], "out", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ])
    g = matches_ort(m, rng.normal(size=(2, 3, 8, 8)))
    assert [n.op for n in g.nodes] == ["avgpool", "maxpool"]
    assert g.nodes[0].attrs["count_include_pad"] == 0  # the ONNX default
    assert g.nodes[1].attrs == {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}


def test_import_removes_identity_and_dropout(rng):
    m = make_model([
        node("Identity", ["input"], "i0"),
        node("Conv", ["i0", "W"], "c", pads=[1, 1, 1, 1]),
        node("Dropout", ["c"], "d"),
        node("Relu", ["d"], "r"),
        node("Identity", ["r"], "out"),
    ], {"W": conv_w(rng, 4, 3)})
    g = import_onnx(m)
    assert [n.op for n in g.nodes] == ["conv", "relu"]
    conv, relu = g.nodes
    assert conv.inputs == ("input",) and relu.inputs == ("c",)
    assert g.outputs == ("r",)
    x = rng.normal(size=(2, 3, 8, 8))
    np.testing.assert_allclose(execute(g, {"input": x})["r"], run_ort(m, x), rtol=1e-5, atol=1e-5)


def test_import_flatten_reshape_concat(rng):
    m = make_model([
        node("Concat", ["input", "input"], "cat", axis=-3),
        node("Reshape", ["cat", "shape"], "rs"),
        node("Flatten", ["rs"], "out", axis=1),
    ], {"shape": i64(0, 6, -1)}, in_shape=("N", 3, 4, 4))
    g = matches_ort(m, rng.normal(size=(2, 3, 4, 4)).astype(np.float32), rtol=0, atol=0)
    assert [n.op for n in g.nodes] == ["concat", "reshape", "reshape"]
    assert g.nodes[0].attrs == {"axis": 1}
    assert g.shapes["rs"] == (-1, 6, 16) and g.shapes["out"] == (-1, 96)


def test_import_two_unsupported_ops_named_in_one_error(rng):
    m = make_model([
        node("Conv", ["input", "W"], "c"),
        node("Softmax", ["c"], "s", name="my_softmax_node", axis=1),
        node("Sigmoid", ["s"], "out", name="my_sigmoid_node"),
    ], {"W": conv_w(rng, 4, 3)})
    with pytest.raises(ModelError) as e:
        import_onnx(m)
    msg = str(e.value)
    assert "my_softmax_node" in msg and "my_sigmoid_node" in msg
    assert "Softmax" in msg and "Sigmoid" in msg


@pytest.mark.parametrize("nodes,inits,what", [
    ([node("Conv", ["input", "W"], "out", name="sameconv", auto_pad="SAME_UPPER")], "W", "auto_pad"),
    ([node("MaxPool", ["input"], "out", name="ceilpool", kernel_shape=[2, 2], ceil_mode=1)], None, "ceil_mode"),
    ([node("Add", ["input", "k"], "out", name="constadd")], "k", "constant operand"),
    ([node("Gemm", ["input", "W"], "out", name="gemmT", transA=1)], "G", "transA"),
    ([node("Relu", ["input"], "out", name="foreign", domain="com.example")], None, "domain"),
])
def test_import_unsupported_attributes(rng, nodes, inits, what):
    values = {"W": {"W": conv_w(rng, 4, 3)}, "k": {"k": f32(np.ones((1, 3, 8, 8)))},
              "G": {"W": f32(np.ones((12, 5)))}, None: {}}[inits]
    m = make_model(nodes, values, in_shape=("N", 12) if inits == "G" else ("N", 3, 8, 8))
    with pytest.raises(ModelError, match=f"{nodes[0].name}.*{what}"):
        import_onnx(m)


def test_import_dynamic_spatial_shape_raises(rng):
    m = make_model([node("Conv", ["input", "W"], "out")], {"W": conv_w(rng, 4, 3)}, in_shape=("N", 3, "H", "W"))
    with pytest.raises(ModelError, match="only the batch dimension may be dynamic"):
        import_onnx(m)


def test_import_static_batch_becomes_dynamic(rng):
    m = make_model([node("Conv", ["input", "W"], "out")], {"W": conv_w(rng, 4, 3)}, in_shape=(2, 3, 8, 8))
    g = import_onnx(m)
    assert g.shapes["input"] == (-1, 3, 8, 8) and g.shapes["out"] == (-1, 4, 6, 6)


def test_import_non_onnx_file_raises(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"this is not an ONNX model \x00\xff\xfe\x01 at all")
    with pytest.raises(ModelError):
        import_onnx(str(p))
    with pytest.raises(ModelError, match="does not exist"):
        import_onnx(str(tmp_path / "missing.onnx"))


def test_import_reads_path(tmp_path, rng):
    m = make_model([node("Relu", ["input"], "out")])
    p = tmp_path / "relu.onnx"
    onnx.save(m, str(p))
    g = import_onnx(p)
    assert [n.op for n in g.nodes] == ["relu"] and g.meta["opset"] == 17


@pytest.mark.parametrize("opset", [11, 12, 22])
def test_import_opset_out_of_range_raises(opset):
    m = make_model([node("Relu", ["input"], "out")], opset=opset)
    with pytest.raises(ModelError, match=f"opset {opset}"):
        import_onnx(m)


@pytest.mark.parametrize("opset", [13, 21])
def test_import_opset_bounds_accepted(opset):
    g = import_onnx(make_model([node("Relu", ["input"], "out")], opset=opset))
    assert g.meta["opset"] == opset


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


def test_fold_batchnorm_after_non_conv_raises(rng):
    m = make_model([node("Relu", ["input"], "r"), _bn("r", "out", name="lonely_bn")], _bn_inits(rng, 3))
    with pytest.raises(ModelError, match="lonely_bn"):
        fold_batchnorm(import_onnx(m))


def test_fold_batchnorm_on_graph_input_raises(rng):
    m = make_model([_bn("input", "out", name="input_bn")], _bn_inits(rng, 3))
    with pytest.raises(ModelError, match="input_bn"):
        fold_batchnorm(import_onnx(m))


def test_fold_batchnorm_conv_with_two_readers_raises(rng):
    m = make_model([node("Conv", ["input", "W"], "c", pads=[1, 1, 1, 1]), _bn("c", "b", name="shared_bn"),
                    node("Add", ["c", "b"], "out")], {"W": conv_w(rng, 3, 3), **_bn_inits(rng, 3)})
    with pytest.raises(ModelError, match="shared_bn"):
        fold_batchnorm(import_onnx(m))


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
    log_ig = run_passes(fg, graph_passes(CompileConfig(quiet=True), calib))
    # the float graph right before quantize_graph, for expected values
    pre = run_passes(fg, graph_passes(CompileConfig(quiet=True), calib)[:-1])
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
            assert ig.dtypes[t] in ("int8", "uint8", "int32")
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
    ig = run_passes(import_onnx(m), graph_passes(CompileConfig(quiet=True), calib))
    assert [n.op for n in ig.nodes] == ["qconv", "qconv", "requant", "requant", "concat"]
    assert ig.node("out").inputs == ("out/align0", "out/align1")
    assert ig.qparams["out"].bits == 16 and ig.dtypes["out"] == "int32"
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
    assert (q.bits, q.signed, q.dtype) == (16, True, "int32") and ig.dtypes["out"] == "int32"
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


# ============================================================================ verify (integer)


def _qconv_graph(w: np.ndarray, in_bits: int = 16, w_bits: int = 8, m=2 ** 30, s=40, b_dtype=np.int32,
                 out_dtype: str | None = None) -> Graph:
    cout = w.shape[0]
    qx, qy = QParams(0.01, in_bits, True), QParams(0.1, 8, True)
    n = Node("qconv", "big_conv", ("x",), ("y",),
             {"kernel": w.shape[2:], "strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1), "group": 1,
              "lo": -128, "hi": 127, "w_bits": w_bits, "a_bits": 8},
             {"W": w, "B": np.zeros(cout, b_dtype), "M": np.full(cout, m, np.int64), "S": np.full(cout, s, np.int64)})
    return Graph((n,), ("x",), ("y",), {"x": (-1, w.shape[1], 4, 4), "y": (-1, cout, 4, 4)},
                 {"x": qx.dtype, "y": out_dtype or qy.dtype}, qparams={"x": qx, "y": qy})


def test_verify_accepts_valid_graph():
    verify_integer_graph(_qconv_graph(np.full((2, 4, 3, 3), 127, np.int8)), after="ok")


def test_verify_accepts_compiled_graph(quantized):
    verify_integer_graph(quantized[2], after="quantize_graph")


def test_verify_int32_accumulator_overflow():
    # 16-bit input (|x| <= 32768) * 127 * 576 taps = 2.4e9 >= 2^31
    g = _qconv_graph(np.full((2, 64, 3, 3), 127, np.int8))
    with pytest.raises(VerificationError, match=r"after pass my_pass: big_conv: int32 accumulator can overflow"):
        verify_integer_graph(g, after="my_pass")


@pytest.mark.parametrize("m,s", [(2 ** 31, 31), (0, 31), (-5, 31), (2 ** 30, 0), (2 ** 30, 63)])
def test_verify_non_dyadic_rescale(m, s):
    g = _qconv_graph(np.ones((2, 4, 3, 3), np.int8), m=m, s=s)
    with pytest.raises(VerificationError, match=r"after pass quantize_graph: big_conv: rescale is not dyadic"):
        verify_integer_graph(g, after="quantize_graph")


def test_verify_requant_node_multiplier_too_large():
    q8 = QParams(0.1, 8, True)
    n = Node("requant", "rq", ("x",), ("y",), {"lo": -128, "hi": 127},
             {"M": np.array(2 ** 31, np.int64), "S": np.array(31, np.int64)})
    g = Graph((n,), ("x",), ("y",), {"x": (-1, 4), "y": (-1, 4)}, {"x": "int8", "y": "int8"},
              qparams={"x": q8, "y": q8})
    with pytest.raises(VerificationError, match="after pass align: rq: rescale is not dyadic"):
        verify_integer_graph(g, after="align")


def test_verify_weights_exceed_bits_and_bias_dtype():
    with pytest.raises(VerificationError, match="weights exceed 4 bits"):
        verify_integer_graph(_qconv_graph(np.full((1, 1, 3, 3), 8, np.int8), w_bits=4), after="p")
    with pytest.raises(VerificationError, match="bias is int64"):
        verify_integer_graph(_qconv_graph(np.ones((1, 1, 3, 3), np.int8), b_dtype=np.int64), after="p")


def test_verify_float_tensor_and_float_op():
    with pytest.raises(VerificationError, match="tensor y has dtype float32"):
        verify_integer_graph(_qconv_graph(np.ones((1, 1, 3, 3), np.int8), out_dtype="float32"), after="p")
    g = _qconv_graph(np.ones((1, 1, 3, 3), np.int8))
    g = g.replace(nodes=(g.nodes[0].replace(op="conv"),))
    with pytest.raises(VerificationError, match="op conv is not an integer op"):
        verify_integer_graph(g, after="p")
    with pytest.raises(VerificationError, match="after pass fuse: big_conv: op qconv is not a float-graph op"):
        verify_float_graph(g.replace(nodes=(g.nodes[0].replace(op="qconv"),)), after="fuse")


def test_verify_window_sum_overflow():
    q = QParams(1.0, 16, True)
    n = Node("qmean_hw", "gap", ("x",), ("y",), {"keepdims": 1, "lo": -128, "hi": 127},
             {"M": np.array(2 ** 30, np.int64), "S": np.array(50, np.int64)})
    g = Graph((n,), ("x",), ("y",), {"x": (-1, 2, 256, 256), "y": (-1, 2, 1, 1)}, {"x": "int32", "y": "int8"},
              qparams={"x": q, "y": QParams(1.0, 8, True)})
    with pytest.raises(VerificationError, match="gap: int32 window sum can overflow"):
        verify_integer_graph(g, after="p")


def test_run_passes_names_the_breaking_pass(rng):
    fg = import_onnx(make_model([node("Conv", ["input", "W"], "out")], {"W": conv_w(rng, 4, 3)}))
    calib = {"input": rng.normal(size=(4, 3, 8, 8)).astype(np.float32)}

    def evil(g: Graph) -> Graph:
        n = g.nodes[0]
        return g.replace(nodes=(n.replace(params={**n.params, "M": np.zeros_like(n.params["M"])}),))

    passes = graph_passes(CompileConfig(quiet=True), calib) + [("evil_pass", evil)]
    with pytest.raises(VerificationError, match="after pass evil_pass"):
        run_passes(fg, passes)


# ============================================================================ verify (lowered)


def _relax_module(dtype_in: str, cast_to: str | None = None):
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape=[2, 3], dtype=dtype_in))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(x, x))
            if cast_to:
                y = bb.emit(relax.op.astype(y, cast_to))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    assert isinstance(mod, tvm.IRModule)
    return mod


def test_verify_lowered_float_tensor_raises():
    with pytest.raises(VerificationError, match=r"after pass lower_to_relax: float types \['float32'\]"):
        verify_lowered(_relax_module("float32"))


def test_verify_lowered_hidden_float_cast_raises():
    with pytest.raises(VerificationError, match="float16"):
        verify_lowered(_relax_module("int8", cast_to="float16"), after="my_lowering")


def test_verify_lowered_integer_module_passes(quantized):
    from dyadic.lower import lower_to_relax

    verify_lowered(_relax_module("int32", cast_to="int64"))
    verify_lowered(lower_to_relax(quantized[2]))
