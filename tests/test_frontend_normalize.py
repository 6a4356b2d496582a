"""Graph normalization (`dyadic.frontend.normalize`): Before/Expected on the spellings exporters write."""
from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from _tiny_onnx import conv_w, f32, i64, make_model, node

from dyadic.frontend import import_onnx
from dyadic.frontend.normalize import normalize

LIGHT = sorted(glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "*.onnx")))


def _ops(m):
    return [n.op_type for n in m.graph.node]


def _same_as_ort(m, x, out="out"):
    g = import_onnx(m)
    from dyadic.core.float_exec import execute

    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(execute(g, {"input": x})[out], ref, rtol=1e-5, atol=1e-5)
    return g


def test_flatten_chain_folds_to_constant_reshape(rng):
    """torch.flatten as Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    m = make_model([node("Conv", ["input", "W"], "c"), node("Shape", ["c"], "s"),
                    node("Gather", ["s", "zero"], "n", axis=0), node("Unsqueeze", ["n", "ax"], "nu"),
                    node("Concat", ["nu", "minus1"], "shp", axis=0), node("Reshape", ["c", "shp"], "out")],
                   {"W": conv_w(rng, 4, 3), "zero": i64(0).reshape(()), "ax": i64(0), "minus1": i64(-1)})
    out = normalize(m)
    assert _ops(out) == ["Conv", "Reshape"]
    g = _same_as_ort(m, rng.normal(size=(2, 3, 8, 8)).astype(np.float32))
    assert g.shapes["out"] == (-1, 144)


def test_constants_constant_of_shape_and_cast_fold(rng):
    w = helper.make_node("ConstantOfShape", ["wshape"], ["w0"], value=numpy_helper.from_array(f32([0.05])))
    m = make_model([helper.make_node("Constant", [], ["k"], value_float=2.0), w,
                    node("Cast", ["w0"], "w", to=TensorProto.FLOAT), node("Conv", ["input", "w"], "c"),
                    node("Mul", ["c", "k"], "out")], {"wshape": i64(4, 3, 3, 3)})
    assert _ops(normalize(m)) == ["Conv", "Mul"]
    _same_as_ort(m, rng.normal(size=(1, 3, 8, 8)).astype(np.float32))


def test_initializer_listed_as_input_is_a_constant(rng):
    m = make_model([node("Conv", ["input", "W"], "out")], {"W": conv_w(rng, 4, 3)})
    m.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3, 3, 3]))
    g = import_onnx(m)
    assert g.inputs == ("input",) and [n.op for n in g.nodes] == ["conv"]


def test_nary_sum_and_dropout_and_identity(rng):
    m = make_model([node("Relu", ["input"], "a"), node("Sigmoid", ["input"], "b"), node("Identity", ["a"], "ai"),
                    helper.make_node("Dropout", ["b", "ratio"], ["bd", "mask"], name="drop"),
                    helper.make_node("Sum", ["ai", "bd", "input"], ["out"], name="sum3")], {"ratio": f32(0.5)})
    out = normalize(m)
    assert _ops(out) == ["Relu", "Sigmoid", "Add", "Add"]
    _same_as_ort(m, rng.normal(size=(2, 3, 8, 8)).astype(np.float32))


def test_names_made_unique():
    m = make_model([node("Relu", ["input"], "a", name="same"), node("Relu", ["a"], "b", name="same"),
                    helper.make_node("Relu", ["b"], ["out"])])
    names = [n.name for n in normalize(m).graph.node]
    assert len(set(names)) == 3 and all(names)


def test_opset_11_is_upgraded(rng):
    m = make_model([node("Conv", ["input", "W"], "c"), node("Softmax", ["c"], "out", axis=1)],
                   {"W": conv_w(rng, 4, 3, 1)}, in_shape=("N", 3, 1, 1), opset=11)
    assert normalize(m).opset_import[0].version == 13


@pytest.mark.skipif(not LIGHT, reason="the onnx package ships no light_* model-zoo graphs")
@pytest.mark.parametrize("path", LIGHT, ids=[os.path.basename(p)[6:-5] for p in LIGHT])
def test_model_zoo_light_graphs_import(path):
    """The 9 ONNX model-zoo graphs the onnx package ships (opset 9, IR 3) import unmodified."""
    g = import_onnx(path)
    assert len(g.nodes) > 10 and g.inputs


@pytest.mark.skipif(not LIGHT, reason="the onnx package ships no light_* model-zoo graphs")
@pytest.mark.parametrize("name", ["squeezenet", "shufflenet"])
def test_model_zoo_light_graphs_compile_bitexact(name):
    import dyadic
    from dyadic.core.config import CompileConfig

    path = next(p for p in LIGHT if p.endswith(f"light_{name}.onnx"))
    res = dyadic.compile(path, None, config=CompileConfig(quiet=True, check_samples=2))
    assert res.plan["self_check"].startswith("bit-exact")
