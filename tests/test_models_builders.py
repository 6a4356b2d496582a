"""Tests for the reference ONNX model builders in ``dyadic.models``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dyadic.models import BUILDERS, build, save

ort = pytest.importorskip("onnxruntime")

# torchvision's sum(p.numel() for p in model.parameters()); BN running stats excluded.
# Inception3: 27,161,264 with aux logits minus InceptionAux's 3,326,696
# (conv0 1x1 768->128 + BN, conv1 5x5 128->768 + BN, fc 768->1000) = 23,834,568.
# ResNet-20: 432+32 stem, 14,016 / 51,072 / 203,520 per stage (convs + BN gamma/beta),
# 650 linear = 269,722.
EXPECTED_PARAMS = {
    "resnet20": 269_722,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "inception_v3": 23_834_568,
}
TEST_SIZE = {"resnet20": 32, "resnet18": 64, "resnet50": 64,
             "mobilenet_v2": 64, "inception_v3": 75}
CLASSES = {"resnet20": 10}
PARAM_INPUTS = {"Conv": (1, 2), "BatchNormalization": (1, 2), "Gemm": (1, 2)}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def built(request):
    name = request.param
    return name, build(name, seed=0, image_size=TEST_SIZE[name])


def _trainable_param_count(model: onnx.ModelProto) -> int:
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    names = {node.input[i] for node in model.graph.node
             for i in PARAM_INPUTS.get(node.op_type, ()) if i < len(node.input)}
    return sum(sizes[n] for n in names)


def test_registry():
    assert set(BUILDERS) == set(EXPECTED_PARAMS)
    with pytest.raises(KeyError):
        build("vgg16")


def test_checker_full(built):
    _, model = built
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


def test_interface(built):
    name, model = built
    size = TEST_SIZE[name]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and out.name == "logits"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = inp.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "N"
    assert [d.dim_value for d in in_dims[1:]] == [3, size, size]
    out_dims = out.type.tensor_type.shape.dim
    assert out_dims[0].dim_param == "N"
    assert out_dims[1].dim_value == CLASSES.get(name, 1000)


def test_names_unique_and_bn_explicit(built):
    name, model = built
    nodes = [n.name for n in model.graph.node]
    assert all(nodes) and len(set(nodes)) == len(nodes)
    inits = [t.name for t in model.graph.initializer]
    assert len(set(inits)) == len(inits)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) == len(convs) and all(len(n.input) == 2 for n in convs)
    eps = 1e-3 if name == "inception_v3" else 1e-5
    for bn in bns:
        (attr,) = [a for a in bn.attribute if a.name == "epsilon"]
        assert attr.f == pytest.approx(eps)


def test_param_count(built):
    name, model = built
    assert _trainable_param_count(model) == EXPECTED_PARAMS[name]


def test_onnxruntime_forward(built):
    name, model = built
    size = TEST_SIZE[name]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(123).standard_normal((2, 3, size, size)).astype(np.float32)
    (y,) = sess.run(["logits"], {"input": x})
    assert y.shape == (2, CLASSES.get(name, 1000)) and y.dtype == np.float32
    assert np.all(np.isfinite(y))
    assert y.std() > 0
    assert not np.allclose(y[0], y[1])


def test_resnet20_option_a_shortcut():
    model = build("resnet20")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Slice") == 4 and ops.count("Pad") == 2
    assert "ReduceMean" in ops and "GlobalAveragePool" not in ops


def test_mobilenet_relu6_is_clip():
    model = build("mobilenet_v2", image_size=64)
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert clips and all(len(n.input) == 3 for n in clips)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert {float(inits[clips[0].input[1]]), float(inits[clips[0].input[2]])} == {0.0, 6.0}
    depthwise = [n for n in model.graph.node if n.op_type == "Conv"
                 and next(a.i for a in n.attribute if a.name == "group") > 1]
    assert len(depthwise) == 17
    assert sum(n.op_type == "Add" for n in model.graph.node) == 10


def test_determinism_same_seed():
    a = build("resnet20", seed=7).SerializeToString()
    b = build("resnet20", seed=7).SerializeToString()
    assert a == b


def test_different_seed_different_weights():
    a = {t.name: numpy_helper.to_array(t) for t in build("resnet20", seed=0).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in build("resnet20", seed=1).graph.initializer}
    assert a.keys() == b.keys()
    assert not np.array_equal(a["conv1.weight"], b["conv1.weight"])
    assert not np.array_equal(a["linear.weight"], b["linear.weight"])


def test_save_roundtrip(tmp_path):
    path = tmp_path / "r20.onnx"
    model = save("resnet20", path, seed=3)
    assert onnx.load(str(path)).SerializeToString() == model.SerializeToString()


def test_inception_rejects_too_small_input():
    with pytest.raises(ValueError):
        build("inception_v3", image_size=74)
