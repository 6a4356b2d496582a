"""Every models/ network compiles, and its library equals the int64 reference bit for bit."""
import numpy as np
import pytest

import dyadic
from dyadic.core.config import CompileConfig
from dyadic.compiler import quantize_inputs
from dyadic.models import build
from dyadic.core.reference import run_reference

# Small inputs keep the numpy reference fast; the layer structure (what is being checked) is the same.
CASES = [("resnet20", {}), ("resnet18", {"image_size": 64}), ("resnet50", {"image_size": 64}),
         ("mobilenet_v2", {"image_size": 64}), ("inception_v3", {"image_size": 75})]


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_model_library_is_bit_exact(name, kw, tmp_path):
    model = build(name, **kw)
    res = dyadic.compile(model, str(tmp_path), calib=None, config=CompileConfig(quiet=True))
    ig = res.int_graph
    assert all(n.op.startswith("q") or n.op in ("maxpool", "pad", "slice", "reshape", "concat", "requant")
               for n in ig.nodes)
    lib = dyadic.load(str(tmp_path))
    shape = ig.shapes[ig.inputs[0]][1:]
    r = np.random.default_rng(1)
    x = {ig.inputs[0]: r.standard_normal((3,) + tuple(shape)).astype(np.float32) * 1.5}
    q = quantize_inputs(ig, x)
    got = lib.run_int(q)[0]
    want = run_reference(ig, q)[ig.outputs[0]]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.std() > 0
    np.testing.assert_array_equal(got, want)
