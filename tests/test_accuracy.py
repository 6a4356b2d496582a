"""Accuracy of the integer ResNet-20 on real CIFAR-10 test images (float-vs-int: explicit tolerances)."""
import numpy as np
import onnxruntime as ort
import pytest

import dyadic
from dyadic.compiler import quantize_inputs
from dyadic.frontend.data import load_npz
from dyadic.core.reference import run_reference

from conftest import needs_shared, shared_path

pytestmark = needs_shared


def _fp32_logits(x):
    sess = ort.InferenceSession(shared_path("models", "resnet20_cifar10.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_bit_exact_on_real_images(resnet20_build, cifar_norm):
    res, out = resnet20_build
    ig = res.int_graph
    x, _ = load_npz(shared_path("data", "cifar10_test.npz"), {"input": ig.shapes["input"]}, cifar_norm, limit=64)
    q = quantize_inputs(ig, x)
    got = dyadic.load(out).run_int(q)[0]
    np.testing.assert_array_equal(got, run_reference(ig, q)["logits"])


def test_accuracy_on_1000_real_images(resnet20_build, cifar_norm):
    _, out = resnet20_build
    x, y = load_npz(shared_path("data", "cifar10_test.npz"), {"input": (-1, 3, 32, 32)}, cifar_norm, limit=1000)
    lib = dyadic.load(out)
    pred = np.concatenate([lib.run(x["input"][i:i + 250]).argmax(1) for i in range(0, 1000, 250)])
    ref = _fp32_logits(x["input"]).argmax(1)
    int_acc, fp_acc = (pred == y).mean(), (ref == y).mean()
    # On these 1000 images fp32 scores 91.3 %; allow the int8 model at most 1 point below it.
    assert int_acc >= fp_acc - 0.010, (int_acc, fp_acc)
    assert (pred == ref).mean() >= 0.97


@pytest.mark.slow
def test_accuracy_full_test_set(resnet20_build, cifar_norm):
    """The issue's bar: >= 91.60 % top-1 on all 10,000 test images (fp32: 91.73 %)."""
    _, out = resnet20_build
    x, y = load_npz(shared_path("data", "cifar10_test.npz"), {"input": (-1, 3, 32, 32)}, cifar_norm)
    lib = dyadic.load(out)
    pred = np.concatenate([lib.run(x["input"][i:i + 500]).argmax(1) for i in range(0, len(y), 500)])
    assert (pred == y).mean() >= 0.9160
