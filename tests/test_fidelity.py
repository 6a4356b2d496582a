"""The compile's fidelity figures (`dyadic.core.fidelity`): the integer graph's dequantized outputs
against the float graph on the self-check's calibration inputs.

* the cosine measure: per sample and per step, zero vectors; the inputs spread over the file;
* a model whose 8-bit codes lose it (one channel's range swamps the others, which alone reach the
  output) gets a low cosine and the hint in the summary; 16-bit codes bring it to ~1, and the summary then
  says nothing; ResNet-20 (real weights) is above the warning line;
* the plan schema checks the record.
"""
from __future__ import annotations

import numpy as np
import pytest

from _tiny_onnx import bias, conv_w, make_model, node
from conftest import needs_shared

from dyadic.core.config import CompileConfig, CosineOver, WideActivations
from dyadic.core.fidelity import WARN_COSINE, cosines, fidelity_lines, mean_cosine


def test_cosine_per_sample_and_per_step():
    """A sure step (large, exact) hides a wrong unsure one in the flattened cosine, not per step."""
    zf = np.array([[[10.0, 0.0], [0.0, 1.0]]])   # 1 sample, 2 steps, 2 classes
    zq = np.array([[[10.0, 0.0], [1.0, 0.0]]])   # the second step's class flipped
    assert mean_cosine(zf, zq) == pytest.approx(100 / 101)
    assert mean_cosine(zf, zq, CosineOver.STEP) == pytest.approx(0.5)
    flat = np.array([[3.0, 4.0], [1.0, 0.0]])     # a classifier: both ways are the same
    assert mean_cosine(flat, flat[::-1]) == mean_cosine(flat, flat[::-1], CosineOver.STEP)
    # both zero: agree; one zero: not (an output rounded away entirely is no match)
    assert list(cosines(np.array([[0.0, 0.0], [1.0, 2.0]]), np.zeros((2, 2)))) == [1.0, 0.0]


def test_spread_covers_the_file():
    from dyadic.core.fidelity import spread

    x = {"a": np.arange(32)}
    assert list(spread(x, 4)["a"]) == [0, 10, 21, 31] and len(spread(x, 16)["a"]) == 16
    assert list(spread({"a": np.arange(3)}, 16)["a"]) == [0, 1, 2]
    assert len(spread(x, 32, batch=5)["a"]) == 30 and len(spread({"a": np.arange(3)}, 16, batch=4)["a"]) == 0


def _swamped(rng):
    """conv -> relu whose channel 0 is biased to ~3000 (a 16-bit code resolves the others, an 8-bit one
    rounds them to 0); the 1x1 conv reads only the other channels -> global pool -> dense."""
    b0 = bias(rng, 8)
    b0[0] = 3000.0
    w1 = conv_w(rng, 8, 8, 1)
    w1[:, 0] = 0.0
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]), node("Relu", ["c0"], "r0"),
             node("Conv", ["r0", "W1", "B1"], "c1"), node("GlobalAveragePool", ["c1"], "g"),
             node("Flatten", ["g"], "f"), node("Gemm", ["f", "Wd", "Bd"], "out", transB=1)]
    inits = {"W0": conv_w(rng, 8, 3), "B0": b0, "W1": w1, "B1": np.zeros(8, np.float32),
             "Wd": rng.normal(size=(10, 8)).astype(np.float32), "Bd": np.zeros(10, np.float32)}
    return make_model(nodes, inits, in_shape=("N", 3, 8, 8))


def test_compile_records_fidelity_and_hints_when_low():
    import dyadic
    from dyadic.cli.report import summary
    from dyadic.core.plan_schema import validate_plan

    rng = np.random.default_rng(3)
    model = _swamped(rng)
    calib = {"input": rng.normal(size=(16, 3, 8, 8)).astype(np.float32)}
    low = dyadic.compile(model, None, calib, CompileConfig(quiet=True)).plan
    fid = low["fidelity"]
    assert fid["inputs"] == 16 and fid["wide_activations"] == "none" and fid["integer"] == "library"
    (o,) = fid["outputs"]
    assert o["name"] == "out" and o["cosine_mean"] < WARN_COSINE and 0 <= o["top1_agreement"] <= 1
    text = summary(low)
    assert fid["reference"] == "onnxruntime fp32 (the ONNX file)"
    assert "vs onnxruntime fp32 on 16 calibration inputs" in text and "try --wide-activations auto" in text
    wide = dyadic.compile(model, None, calib, CompileConfig(quiet=True, wide_activations=WideActivations.ALL)).plan
    (w,) = wide["fidelity"]["outputs"]
    assert w["cosine_mean"] > 0.999 > o["cosine_mean"] and w["top1_agreement"] == 1.0
    assert "below" not in summary(wide)
    validate_plan(wide)
    from dyadic.core.errors import BuildDirError

    bad = {**wide, "fidelity": {**wide["fidelity"], "outputs": [{**w, "cosine_mean": 1.5}]}}
    with pytest.raises(BuildDirError, match="fidelity"):
        validate_plan(bad)


def test_float_graph_stands_in_where_onnxruntime_cannot():
    """A model onnxruntime refuses (here: not a model at all) is measured against the
    imported float graph, and the record says why; both references agree on a model both run."""
    from dyadic.core.fidelity import onnxruntime_runner, output_fidelity
    from dyadic.frontend import import_onnx

    rng = np.random.default_rng(3)
    model = _swamped(rng)
    calib = {"input": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)}
    import dyadic

    res = dyadic.compile(model, None, calib, CompileConfig(quiet=True))
    assert isinstance(onnxruntime_runner(model, ["nope", "nope2"]), str)
    renamed = onnxruntime_runner(model, ["softmax_0"])  # one output, renamed by the import: by position
    assert callable(renamed) and set(renamed({"input": calib["input"][:2]})) == {"softmax_0"}
    assert "cannot load" in onnxruntime_runner(b"not onnx", ["out"])
    fg = import_onnx(model)
    by_ort = output_fidelity(fg, res.int_graph, calib, model=model)
    by_graph = output_fidelity(fg, res.int_graph, calib, model=b"not onnx")
    assert by_ort["reference"].startswith("onnxruntime") and "cannot load" in by_graph["reference"]
    assert by_ort["integer"] == "int64 reference"
    assert by_graph["outputs"][0]["cosine_mean"] == pytest.approx(by_ort["outputs"][0]["cosine_mean"], abs=1e-5)


def test_hint_lines():
    fid = {"inputs": 4, "outputs": [{"name": "y", "cosine_mean": 0.9, "cosine_min": 0.5, "step_cosine_mean": 0.8}]}
    lines = fidelity_lines(fid)
    assert "per-step 0.8000" in lines[0] and "try --wide-activations auto" in lines[1]
    assert "check the calibration data" in fidelity_lines(fid, "all")[1]
    fid["outputs"][0]["cosine_mean"] = 0.995
    assert "below 0.95" in fidelity_lines(fid)[1]  # one input far off (min 0.5)
    fid["outputs"][0]["cosine_min"] = 0.97
    assert len(fidelity_lines(fid)) == 1


@needs_shared
def test_resnet20_fidelity_above_the_line(resnet20_build):
    res, _ = resnet20_build
    (o,) = res.plan["fidelity"]["outputs"]
    assert o["cosine_mean"] > WARN_COSINE and o["top1_agreement"] >= 0.75


def test_non_finite_outputs_count_as_no_match():
    assert list(cosines(np.array([[np.inf, 1.0], [1.0, 1.0]]), np.ones((2, 2)))) == [0.0, pytest.approx(1.0)]


def test_onnxruntime_reference_on_a_fixed_batch_file():
    """A file that declares batch 1 (most Paddle exports) while the library takes any batch: onnxruntime
    runs it one sample at a time."""
    from dyadic.core.fidelity import onnxruntime_runner

    rng = np.random.default_rng(4)
    model = _swamped(rng)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    run = onnxruntime_runner(model, ["out"])
    assert callable(run) and run({"input": rng.normal(size=(5, 3, 8, 8)).astype(np.float32)})["out"].shape == (5, 10)
