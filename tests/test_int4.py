"""int4: packing, 4-bit weights and activations bit-exact per op, and a smaller library."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import dyadic
from dyadic.core.arith import pack_int4, unpack_int4
from dyadic.compiler import quantize_inputs
from dyadic.core.config import BitMode, CompileConfig
from dyadic.models import build
from dyadic.core.reference import run_reference

from _tiny_onnx import make_model
from test_ops_bitexact import CASES, _data

W4A4 = CompileConfig(bits=BitMode.INT4, pin_first_last=False, quiet=True)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.int8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9), elements=st.integers(-8, 7)))
def test_pack_unpack_roundtrip(q):
    packed = pack_int4(q)
    assert packed.dtype == np.int8 and packed.shape[-1] == (q.shape[-1] + 1) // 2
    np.testing.assert_array_equal(unpack_int4(packed, q.shape[-1]), q)


INT4_CASES = ["conv3x3_pad1", "conv_stride2_asym_pads", "conv_dilation2", "conv_group2", "conv_depthwise",
              "conv_odd_channels", "gemm", "matmul", "add_branches_relu", "concat_ranges", "conv_relu_conv"]


@pytest.mark.parametrize("case", INT4_CASES)
def test_int4_op_bitexact(case, tmp_path):
    rng = np.random.default_rng(100 + INT4_CASES.index(case))
    nodes, inits, in_shape = CASES[case](rng)
    res = dyadic.compile(make_model(nodes, inits, in_shape=in_shape), str(tmp_path),
                         {"input": _data(rng, in_shape, 16, "signed")}, W4A4)
    ig = res.int_graph
    layers = [n for n in ig.nodes if n.op in ("qconv", "qdense")]
    assert layers and all(n.attrs["w_bits"] == 4 and n.attrs["a_bits"] == 4 for n in layers)
    for n in layers:
        assert np.abs(n.params["W"]).max() <= 7
        assert ig.qparams[n.inputs[0]].bits == 4  # the layer really reads 4-bit activations
    lib = dyadic.load(str(tmp_path))
    for batch in (1, 3):
        q = quantize_inputs(ig, {"input": 2.0 * _data(rng, in_shape, batch, "signed")})
        got = lib.run_int(q)[0]
        assert got.std() > 0
        np.testing.assert_array_equal(got, run_reference(ig, q)[ig.outputs[0]])


def test_int4_library_is_smaller(tmp_path):
    sizes = {}
    for mode in (BitMode.INT8, BitMode.W4A8):
        out = tmp_path / mode.value
        res = dyadic.compile(build("resnet20"), str(out), None, CompileConfig(bits=mode, quiet=True))
        sizes[mode] = res.plan["library_bytes"]["constants"]  # weights, biases, requant tables stored
        if mode is BitMode.W4A8:
            w4 = sum(n.params["W"].size for n in res.int_graph.nodes if n.attrs.get("w_bits") == 4)
    # packing saves half a byte per 4-bit weight; allow 10 % slack for code-size differences
    assert sizes[BitMode.INT8] - sizes[BitMode.W4A8] >= 0.9 * w4 / 2, (sizes, w4)


def test_int4_layers_take_the_vnni_kernel(tmp_path):
    """On a VNNI host a W4 conv is lowered to the `vpdpbusd` (AMX: `tdpbusd`) kernel reading packed nibbles, not to the
    generic TE loop nest (which was 20-60x slower); the grouped conv (no fast kernel) stays generic."""
    from dyadic import targets
    from dyadic.backend.kernels import x86_isa
    from dyadic.backend.lower import lower_to_relax

    host = targets.resolve("host")
    if x86_isa(host.tvm_target) != "vnni":
        pytest.skip("host CPU has no AVX512-VNNI")
    names = {}
    for case in ("conv3x3_pad1", "conv_group2"):
        rng = np.random.default_rng(7)
        nodes, inits, in_shape = CASES[case](rng)
        res = dyadic.compile(make_model(nodes, inits, in_shape=in_shape), str(tmp_path / case),
                             {"input": _data(rng, in_shape, 16, "signed")}, W4A4)
        names[case] = {gv.name_hint for gv in lower_to_relax(res.int_graph, host).functions}
    assert any(n.startswith(("dyadic_conv", "dyadic_amxconv")) for n in names["conv3x3_pad1"]), names  # AMX hosts: tiles
    assert not any("int4" in n for n in names["conv3x3_pad1"]), names
    assert any("conv2d_int4" in n for n in names["conv_group2"]), names
