"""Per-op bit-exactness: the compiled TVM library equals the numpy int64 reference exactly.

Each case is a tiny ONNX model (float32 input with dynamic batch "N", seeded random weights). It is
compiled twice: calibrated on signed (normal) data, so the input is int8, and on non-negative data,
so the input is uint8. Most cases put a convolution before the op under test and a 1x1 convolution
after it, so that the op runs on 8-bit tensors (the graph output and the tensors reshaped into it are
16-bit). The library is run on batch sizes 1 and 3, on inputs inside and outside the calibrated
range (saturation), and compared with `dyadic.core.reference.run_reference` with `np.array_equal`.
"""
from __future__ import annotations

import numpy as np
import pytest

from _tiny_onnx import INT64_MAX, bias, conv_w, f32, i64, make_model, node

import dyadic
from dyadic.compiler import quantize_inputs
from dyadic.core.config import CompileConfig
from dyadic.core.reference import run_reference

pytest.importorskip("tvm")

CONFIG = CompileConfig(quiet=True)
P1 = [1, 1, 1, 1]


def _head(rng, cin, cout, x="input", relu=False, gain=1.0, k=3, out="h"):
    """A conv (pad k//2) that produces the 8-bit tensor the op under test reads."""
    p = k // 2
    nodes = [node("Conv", [x, "Wh", "Bh"], out + "_c" if relu else out, pads=[p] * 4)]
    if relu:
        nodes.append(node("Relu", [out + "_c"], out))
    return nodes, {"Wh": conv_w(rng, cout, cin, k, gain), "Bh": bias(rng, cout)}


def _tail(rng, x, cin, cout=3):
    """A 1x1 conv reading the op's output, so that output stays 8-bit."""
    return [node("Conv", [x, "Wt", "Bt"], "out")], {"Wt": conv_w(rng, cout, cin, 1), "Bt": bias(rng, cout)}


def _sandwich(rng, op_nodes, op_inits=None, cin=3, mid=4, out_c=None, relu=False, gain=1.0, in_hw=(8, 8)):
    """conv(input) -> op_nodes (reading "h", writing "o") -> 1x1 conv -> out."""
    hn, hi = _head(rng, cin, mid, relu=relu, gain=gain)
    tn, ti = _tail(rng, "o", out_c or mid)
    return hn + op_nodes + tn, {**hi, **ti, **(op_inits or {})}, ("N", cin) + tuple(in_hw)


def case_conv3x3_pad1(rng):
    return [node("Conv", ["input", "W", "B"], "out", pads=P1)], {"W": conv_w(rng, 4, 3), "B": bias(rng, 4)}, ("N", 3, 8, 8)


def case_conv_stride2_asym_pads(rng):
    return ([node("Conv", ["input", "W", "B"], "out", strides=[2, 2], pads=[0, 1, 2, 0])],
            {"W": conv_w(rng, 4, 3), "B": bias(rng, 4)}, ("N", 3, 9, 8))


def case_conv1x1(rng):
    return [node("Conv", ["input", "W", "B"], "out")], {"W": conv_w(rng, 6, 3, 1), "B": bias(rng, 6)}, ("N", 3, 6, 6)


def case_conv_dilation2(rng):
    return ([node("Conv", ["input", "W", "B"], "out", dilations=[2, 2], pads=[2, 2, 2, 2])],
            {"W": conv_w(rng, 4, 3), "B": bias(rng, 4)}, ("N", 3, 8, 8))


def case_conv_group2(rng):
    return ([node("Conv", ["input", "W", "B"], "out", group=2, pads=P1)],
            {"W": conv_w(rng, 6, 2), "B": bias(rng, 6)}, ("N", 4, 8, 8))


def case_conv_depthwise(rng):
    return _sandwich(rng, [node("Conv", ["h", "Wd", "Bd"], "o", group=4, pads=P1)],
                     {"Wd": conv_w(rng, 4, 1), "Bd": bias(rng, 4)}, relu=True)


def case_conv_odd_channels(rng):
    return ([node("Conv", ["input", "W", "B"], "c", pads=P1), node("Conv", ["c", "W2", "B2"], "out", pads=P1)],
            {"W": conv_w(rng, 5, 3), "B": bias(rng, 5), "W2": conv_w(rng, 7, 5), "B2": bias(rng, 7)}, ("N", 3, 7, 7))


def case_conv_relu(rng):
    return ([node("Conv", ["input", "W", "B"], "c", pads=P1), node("Relu", ["c"], "out")],
            {"W": conv_w(rng, 4, 3), "B": bias(rng, 4)}, ("N", 3, 8, 8))


def case_conv_relu_conv(rng):
    """A conv reading an unsigned (post-ReLU) tensor."""
    return _sandwich(rng, [node("Conv", ["h", "W", "B"], "o", pads=P1)], {"W": conv_w(rng, 4, 4), "B": bias(rng, 4)},
                     relu=True)


def case_conv_relu6(rng):
    # gain 4: a good share of the conv outputs is above 6 and clipped
    return ([node("Conv", ["input", "W", "B"], "c", pads=P1), node("Clip", ["c", "lo", "hi"], "r6"),
             node("Conv", ["r6", "W2"], "out")],
            {"W": conv_w(rng, 4, 3, gain=4.0), "B": bias(rng, 4), "lo": f32(0.0), "hi": f32(6.0),
             "W2": conv_w(rng, 3, 4, 1)}, ("N", 3, 8, 8))


def case_conv_relu6_output(rng):
    return ([node("Conv", ["input", "W", "B"], "c", pads=P1), node("Clip", ["c", "lo", "hi"], "out")],
            {"W": conv_w(rng, 4, 3, gain=4.0), "B": bias(rng, 4), "lo": f32(0.0), "hi": f32(6.0)}, ("N", 3, 8, 8))


def case_gemm(rng):
    return ([node("Gemm", ["input", "G", "GB"], "out", transB=1)],
            {"G": rng.normal(0, 0.3, (5, 12)).astype(np.float32), "GB": bias(rng, 5)}, ("N", 12))


def case_gemm_relu_gemm(rng):
    return ([node("Gemm", ["input", "G", "GB"], "g", transB=0), node("Relu", ["g"], "r"),
             node("Gemm", ["r", "G2", "GB2"], "out", transB=1, alpha=0.5)],
            {"G": rng.normal(0, 0.3, (12, 9)).astype(np.float32), "GB": bias(rng, 9),
             "G2": rng.normal(0, 0.3, (4, 9)).astype(np.float32), "GB2": bias(rng, 4)}, ("N", 12))


def case_matmul(rng):
    return [node("MatMul", ["input", "M"], "out")], {"M": rng.normal(0, 0.3, (10, 7)).astype(np.float32)}, ("N", 10)


def case_add_branches_relu(rng):
    return ([node("Conv", ["input", "Wa", "Ba"], "a", pads=P1), node("Conv", ["input", "Wb", "Bb"], "b", pads=P1),
             node("Add", ["a", "b"], "s"), node("Relu", ["s"], "out")],
            {"Wa": conv_w(rng, 4, 3), "Ba": bias(rng, 4), "Wb": conv_w(rng, 4, 3, gain=3.0), "Bb": bias(rng, 4)},
            ("N", 3, 8, 8))


def case_add_residual_mid(rng):
    """A signed residual add feeding another conv (8-bit qadd with two differently scaled inputs)."""
    return ([node("Conv", ["input", "Wa", "Ba"], "a", pads=P1), node("Relu", ["a"], "ra"),
             node("Conv", ["ra", "Wb", "Bb"], "b", pads=P1), node("Add", ["a", "b"], "s"),
             node("Conv", ["s", "Wt"], "out")],
            {"Wa": conv_w(rng, 4, 3), "Ba": bias(rng, 4), "Wb": conv_w(rng, 4, 4, gain=2.0), "Bb": bias(rng, 4),
             "Wt": conv_w(rng, 3, 4, 1)}, ("N", 3, 8, 8))


def case_maxpool_3x3_s2_p1(rng):
    """Signed maxpool with padding: the pad value must be the int8 minimum, not 0."""
    return _sandwich(rng, [node("MaxPool", ["h"], "o", kernel_shape=[3, 3], strides=[2, 2], pads=P1)])


def case_maxpool_relu(rng):
    return _sandwich(rng, [node("MaxPool", ["h"], "o", kernel_shape=[3, 3], strides=[2, 2], pads=P1)], relu=True)


def case_maxpool_on_input(rng):
    """The op reads the (then 16-bit) input and writes the output directly."""
    return [node("MaxPool", ["input"], "out", kernel_shape=[2, 2], strides=[2, 2])], {}, ("N", 3, 8, 8)


def case_avgpool_incl_pad(rng):
    return _sandwich(rng, [node("AveragePool", ["h"], "o", kernel_shape=[3, 3], strides=[1, 1], pads=P1,
                                count_include_pad=1)])


def case_avgpool_excl_pad(rng):
    return _sandwich(rng, [node("AveragePool", ["h"], "o", kernel_shape=[3, 3], strides=[1, 1], pads=P1,
                                count_include_pad=0)])


def case_avgpool_excl_pad_relu_s2(rng):
    return _sandwich(rng, [node("AveragePool", ["h"], "o", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0],
                                count_include_pad=0)], relu=True, in_hw=(7, 7))


def case_global_avgpool(rng):
    hn, hi = _head(rng, 3, 4, relu=True)
    return (hn + [node("GlobalAveragePool", ["h"], "g"), node("Flatten", ["g"], "f"),
                  node("Gemm", ["f", "G", "GB"], "out", transB=1)],
            {**hi, "G": rng.normal(0, 0.5, (5, 4)).astype(np.float32), "GB": bias(rng, 5)}, ("N", 3, 8, 8))


def case_reduce_mean(rng):
    hn, hi = _head(rng, 3, 4)
    return (hn + [node("ReduceMean", ["h"], "g", axes=[2, 3], keepdims=0),
                  node("Gemm", ["g", "G", "GB"], "out", transB=1)],
            {**hi, "G": rng.normal(0, 0.5, (5, 4)).astype(np.float32), "GB": bias(rng, 5)}, ("N", 3, 6, 6))


def case_concat_ranges(rng):
    """Branches with very different ranges (one unsigned): each input is requantized to the concat's scale."""
    return ([node("Conv", ["input", "Wa"], "a", pads=P1), node("Relu", ["a"], "ra"),
             node("Conv", ["input", "Wb", "Bb"], "b", pads=P1), node("Concat", ["ra", "b"], "cat", axis=1),
             node("Conv", ["cat", "Wt"], "out")],
            {"Wa": conv_w(rng, 4, 3, gain=0.3), "Wb": conv_w(rng, 2, 3, gain=5.0), "Bb": bias(rng, 2),
             "Wt": conv_w(rng, 3, 6, 1)}, ("N", 3, 8, 8))


def case_concat_output(rng):
    return ([node("Conv", ["input", "Wa"], "a", pads=P1), node("Conv", ["input", "Wb"], "b", pads=P1),
             node("Relu", ["b"], "rb"), node("Concat", ["a", "rb", "a"], "out", axis=1)],
            {"Wa": conv_w(rng, 2, 3), "Wb": conv_w(rng, 3, 3, gain=4.0)}, ("N", 3, 8, 8))


def case_pad_channels(rng):
    return _sandwich(rng, [node("Pad", ["h", "pp"], "o")], {"pp": i64(0, 1, 0, 0, 0, 2, 0, 0)}, out_c=7)


def case_slice_step2(rng):
    return _sandwich(rng, [node("Slice", ["h", "ss", "se", "sa", "sp"], "o")],
                     {"ss": i64(1, 0), "se": i64(INT64_MAX, 7), "sa": i64(2, 3), "sp": i64(2, 2)})


def case_slice_reverse_channels(rng):
    # channels 3, 2, 1 (the end index 0 is exclusive)
    return _sandwich(rng, [node("Slice", ["h", "ss", "se", "sa", "sp"], "o")],
                     {"ss": i64(-1), "se": i64(0), "sa": i64(1), "sp": i64(-1)}, out_c=3)


def case_flatten(rng):
    hn, hi = _head(rng, 3, 4, relu=True)
    return (hn + [node("Flatten", ["h"], "f"), node("Gemm", ["f", "G", "GB"], "out", transB=1)],
            {**hi, "G": rng.normal(0, 0.1, (5, 4 * 6 * 6)).astype(np.float32), "GB": bias(rng, 5)}, ("N", 3, 6, 6))


def case_reshape(rng):
    hn, hi = _head(rng, 3, 4)
    return (hn + [node("Reshape", ["h", "shape"], "f"), node("Gemm", ["f", "G", "GB"], "out", transB=1)],
            {**hi, "shape": i64(0, -1), "G": rng.normal(0, 0.1, (5, 4 * 6 * 6)).astype(np.float32),
             "GB": bias(rng, 5)}, ("N", 3, 6, 6))


def case_reshape_output(rng):
    hn, hi = _head(rng, 3, 4)
    return hn + [node("Reshape", ["h", "shape"], "out")], {**hi, "shape": i64(0, 2, -1)}, ("N", 3, 6, 6)


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


def _data(rng, shape, n, kind):
    x = rng.normal(size=(n,) + tuple(shape[1:])).astype(np.float32)
    return np.abs(x) if kind == "nonneg" else x


def _compile(case: str, kind: str, out_dir):
    rng = np.random.default_rng(sorted(CASES).index(case))
    nodes, inits, in_shape = CASES[case](rng)
    model = make_model(nodes, inits, in_shape=in_shape)
    calib = {"input": _data(rng, in_shape, 16, kind)}
    res = dyadic.compile(model, output_dir=str(out_dir), calib=calib, config=CONFIG)
    return res, in_shape, rng


@pytest.mark.parametrize("kind", ["signed", "nonneg"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_op_bitexact(case, kind, tmp_path):
    res, in_shape, rng = _compile(case, kind, tmp_path)
    ig = res.int_graph
    lib = dyadic.load(str(tmp_path))
    (out,) = ig.outputs
    if ig.qparams["input"].bits == 8:
        assert ig.dtypes["input"] == ("int8" if kind == "signed" else "uint8")
    assert ig.dtypes[out] == "int16" and ig.qparams[out].bits == 16
    for batch in (1, 3):
        for gain in (1.0, 3.0):  # 3x: beyond the calibrated range, so the input and layers saturate
            x = gain * _data(rng, in_shape, batch, kind)
            q = quantize_inputs(ig, {"input": x})
            got = lib.run_int(q)[0]
            want = run_reference(ig, q)[out]
            assert got.shape == want.shape == (batch,) + tuple(ig.shapes[out][1:])
            assert got.dtype == want.dtype
            if not np.array_equal(got, want):
                diff = got.astype(np.int64) - want
                pytest.fail(f"{case}/{kind} batch {batch} gain {gain}: {np.count_nonzero(diff)} of {diff.size} "
                            f"values differ (max |diff| {np.abs(diff).max()})")
            if batch == 3 and gain == 1.0:
                assert want.std() > 0 and len(np.unique(want)) > 2, "degenerate case: constant output"
            # the float API is the integer output times the output scale
            np.testing.assert_array_equal(lib.run(x), got.astype(np.float32) * np.float32(ig.qparams[out].scale))


def test_bitexact_check_is_sensitive(tmp_path):
    """The comparison above can fail: outputs vary with the input, and changing one multiplier of the
    integer graph by one changes the reference output the compiled library is compared with."""
    res, in_shape, rng = _compile("conv3x3_pad1", "signed", tmp_path)
    ig, lib = res.int_graph, dyadic.load(str(tmp_path))
    x = _data(rng, in_shape, 3, "signed")
    q = quantize_inputs(ig, {"input": x})
    got = lib.run_int(q)[0]
    assert got.std() > 0 and len(np.unique(got)) > 100
    assert not np.array_equal(got, lib.run_int(quantize_inputs(ig, {"input": -x}))[0])
    (n,) = ig.nodes
    m = n.params["M"].copy()
    m[0] += 1 << 12  # a relative change of ~4e-6 in channel 0's rescale
    bumped = ig.replace(nodes=(n.replace(params={**n.params, "M": m}),))
    want = run_reference(bumped, q)["out"]
    assert not np.array_equal(got, want)
    assert np.array_equal(got[:, 1:], want[:, 1:])
