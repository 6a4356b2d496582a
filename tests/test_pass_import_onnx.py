"""Before/expected tests of `import_onnx`: every supported op against onnxruntime, and every
kind of bad input named in one clear error."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from _tiny_onnx import matches_ort, run_ort, INT64_MAX, bias, conv_w, f32, i64, make_model, node
from dyadic.core.errors import ModelError
from dyadic.core.float_exec import execute
from dyadic.frontend import import_onnx

ort = pytest.importorskip("onnxruntime")


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
        node("Hardmax", ["c"], "s", name="my_hardmax_node", axis=1),
        node("Shrink", ["s"], "out", name="my_shrink_node"),
    ], {"W": conv_w(rng, 4, 3)})
    with pytest.raises(ModelError) as e:
        import_onnx(m)
    msg = str(e.value)
    assert "my_hardmax_node" in msg and "my_shrink_node" in msg
    assert "Hardmax" in msg and "Shrink" in msg


def test_import_unsupported_ops_grouped_with_counts(rng):
    """Many unsupported nodes: one line per op type with a count and the first names, kept short."""
    nodes = [node("Conv", ["input", "W"], "c0")]
    for i in range(200):
        nodes.append(node("Hardmax" if i % 2 else "Shrink", [f"c{i}"], f"c{i + 1}", name=f"bad{i}"))
    nodes.append(node("Relu", ["c200"], "out"))
    with pytest.raises(ModelError) as e:
        import_onnx(make_model(nodes, {"W": conv_w(rng, 4, 3)}))
    msg = str(e.value)
    assert len(msg) < 2000
    assert "Hardmax x100 (bad1, bad3, bad5, ...): op not supported" in msg
    assert "Shrink x100 (bad0, bad2, bad4, ...): op not supported" in msg


@pytest.mark.parametrize("nodes,inits,what", [
    ([node("Conv", ["input", "W"], "out", name="sameconv", auto_pad="SAME_UPPER")], "W", "auto_pad"),
    ([node("AveragePool", ["input"], "out", name="ceilpool", kernel_shape=[2, 2], ceil_mode=1,
           count_include_pad=1)], None, "ceil_mode"),
    ([node("Add", ["input", "k"], "out", name="constadd")], "k", "varies along axis"),
    ([node("Gemm", ["input", "W"], "out", name="gemmT", transA=1)], "G", "transA"),
    ([node("Relu", ["input"], "out", name="foreign", domain="com.example")], None, "domain"),
])
def test_import_unsupported_attributes(rng, nodes, inits, what):
    values = {"W": {"W": conv_w(rng, 4, 3)}, "k": {"k": f32(np.ones((1, 3, 8, 8)))},
              "G": {"W": f32(np.ones((12, 5)))}, None: {}}[inits]
    m = make_model(nodes, values, in_shape=("N", 12) if inits == "G" else ("N", 3, 8, 8))
    with pytest.raises(ModelError) as e:
        import_onnx(m)
    assert nodes[0].name in str(e.value) and what in str(e.value)


def test_import_dynamic_spatial_shape_raises(rng):
    m = make_model([node("Conv", ["input", "W"], "out")], {"W": conv_w(rng, 4, 3)}, in_shape=("N", 3, "H", "W"))
    with pytest.raises(ModelError, match="dynamic dimension 2.*--input-shape input:N,3,H,W"):
        import_onnx(m)


def test_import_pinned_spatial_shape(rng):
    m = make_model([node("Conv", ["input", "W"], "out")], {"W": conv_w(rng, 4, 3)}, in_shape=("N", 3, "H", "W"))
    g = import_onnx(m, {"input": (1, 3, 10, 12)})
    assert g.shapes["input"] == (-1, 3, 10, 12) and g.shapes["out"] == (-1, 4, 8, 10)
    with pytest.raises(ModelError, match="does not fit the declared shape"):
        import_onnx(m, {"input": (1, 4, 10, 12)})
    with pytest.raises(ModelError, match="model's inputs are"):
        import_onnx(m, {"images": (1, 3, 10, 12)})


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


@pytest.mark.parametrize("opset", [6, 22])
def test_import_opset_out_of_range_raises(opset):
    m = make_model([node("Relu", ["input"], "out")], opset=opset)
    with pytest.raises(ModelError, match=f"opset {opset}"):
        import_onnx(m)


@pytest.mark.parametrize("opset", [9, 11, 13, 21])
def test_import_opset_bounds_accepted(opset):
    g = import_onnx(make_model([node("Relu", ["input"], "out")], opset=opset))
    assert g.meta["opset"] == opset
