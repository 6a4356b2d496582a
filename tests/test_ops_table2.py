"""More op-table ops (issue 9, part 2) as exporters write them: bit-exact libraries, faithful import.

LRN, Resize/Upsample (nearest and linear, every coordinate mode exporters use), ConvTranspose
(grouped too, with a BN folded into it), Pad reflect/edge, ReduceMean/ReduceSum over any non-batch
axes, ArgMax, LogSoftmax, per-channel PRelu, Expand/Tile. Same harness as `test_ops_table`: each tiny
model is compiled, run at batch 1 and 3 at the calibrated scale and at 3x (saturation) and compared
with the int64 reference exactly, and its dequantized output is compared with onnxruntime fp32
(cosine). One more test lowers a graph with the new integer ops for arm and cuda (no build).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from _tiny_onnx import bias, conv_block as _conv, conv_w, f32, i64, make_model, node, wrap_op as _wrap

import dyadic
from dyadic.compiler import quantize_inputs
from dyadic.core.config import CompileConfig
from dyadic.core.reference import run_reference

pytest.importorskip("tvm")

CONFIG = CompileConfig(quiet=True)
EMPTY = ""


def case_lrn_alexnet(rng):
    return _wrap(rng, [node("LRN", ["h"], "o", size=5, alpha=1e-4, beta=0.75, bias=1.0)], c=8, relu=True)


def case_lrn_strong(rng):
    """a large alpha, so that the gain table really varies; signed input (onnxruntime: odd sizes only)."""
    return _wrap(rng, [node("LRN", ["h"], "o", size=3, alpha=2.0, beta=0.75, bias=2.0)], c=6)


def case_resize_nearest_torch(rng):
    """torch F.interpolate(scale_factor=2, mode="nearest"): asymmetric + floor, scales."""
    return _wrap(rng, [node("Resize", ["h", EMPTY, "sc"], "o", mode="nearest",
                            coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                 {"sc": f32([1, 1, 2, 2])})


def case_resize_nearest_modes(rng):
    """half_pixel + round_prefer_floor (sizes, 8 -> 12 x 5), then align_corners + round_prefer_ceil."""
    return _wrap(rng, [node("Resize", ["h", EMPTY, EMPTY, "sz"], "r", mode="nearest"),
                       node("Resize", ["r", EMPTY, EMPTY, "sz2"], "o", mode="nearest",
                            coordinate_transformation_mode="align_corners", nearest_mode="round_prefer_ceil")],
                 {"sz": i64(1, 4, 12, 5), "sz2": i64(1, 4, 7, 9)})


def case_resize_nearest_axes_opset18(rng):
    """opset 18 spelling: sizes for axes (2, 3) only."""
    return _wrap(rng, [node("Resize", ["h", EMPTY, EMPTY, "sz"], "o", mode="nearest", axes=[2, 3],
                            coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                 {"sz": i64(16, 12)})


def case_resize_linear_half_pixel(rng):
    """torch bilinear align_corners=False (half_pixel, x2), then pytorch_half_pixel to sizes."""
    return _wrap(rng, [node("Resize", ["h", EMPTY, "sc"], "r", mode="linear",
                            coordinate_transformation_mode="half_pixel"),
                       node("Resize", ["r", EMPTY, EMPTY, "sz"], "o", mode="linear",
                            coordinate_transformation_mode="pytorch_half_pixel")],
                 {"sc": f32([1, 1, 2, 2]), "sz": i64(1, 4, 11, 1)})


def case_resize_linear_corners_asym(rng):
    """bilinear align_corners=True (to sizes), then asymmetric (Paddle's align_mode=1) by 1.5."""
    return _wrap(rng, [node("Resize", ["h", EMPTY, EMPTY, "sz"], "r", mode="linear",
                            coordinate_transformation_mode="align_corners"),
                       node("Resize", ["r", EMPTY, "sc"], "o", mode="linear",
                            coordinate_transformation_mode="asymmetric")],
                 {"sz": i64(1, 4, 15, 13), "sc": f32([1, 1, 1.5, 1.5])})


def case_convtranspose_bn_relu(rng):
    """DCGAN-style k4 s2 p1 ConvTranspose + BatchNormalization (folded) + ReLU."""
    p = {"Wu": f32(rng.normal(0, 0.3, (4, 6, 4, 4))), "Bu": bias(rng, 6), "g": f32(rng.uniform(0.5, 1.5, 6)),
         "b": f32(rng.normal(0, 0.2, 6)), "mu": f32(rng.normal(0, 0.2, 6)), "var": f32(rng.uniform(0.5, 2, 6))}
    return _wrap(rng, [node("ConvTranspose", ["h", "Wu", "Bu"], "u", kernel_shape=[4, 4], strides=[2, 2],
                            pads=[1, 1, 1, 1]),
                       node("BatchNormalization", ["u", "g", "b", "mu", "var"], "bn"), node("Relu", ["bn"], "o")],
                 p, tail_c=6)


def case_convtranspose_grouped(rng):
    """group 2, k3 s2 p1 output_padding 1 (exact 2x), no bias, dilation on a second one."""
    return _wrap(rng, [node("ConvTranspose", ["h", "Wu"], "u", kernel_shape=[3, 3], strides=[2, 2],
                            pads=[1, 1, 1, 1], output_padding=[1, 1], group=2),
                       node("ConvTranspose", ["u", "Wv"], "o", kernel_shape=[2, 2], dilations=[2, 2])],
                 {"Wu": f32(rng.normal(0, 0.4, (4, 3, 3, 3))), "Wv": f32(rng.normal(0, 0.4, (6, 4, 2, 2)))})


def case_pad_reflect_edge(rng):
    return _wrap(rng, [node("Pad", ["h", "p1"], "r", mode="reflect"), node("Pad", ["r", "p2"], "o", mode="edge")],
                 {"p1": i64(0, 0, 2, 1, 0, 0, 1, 3), "p2": i64(0, 1, 1, 0, 0, 0, 2, 2)}, tail_c=5)


def case_reduce_channel_attention(rng):
    """CBAM-style: mean over C (keepdims) as a spatial gate; ReduceSum over W (opset 13 axes input)."""
    return _wrap(rng, [node("ReduceMean", ["h"], "m", axes=[1], keepdims=1), node("Sigmoid", ["m"], "s"),
                       node("Mul", ["h", "s"], "hm"), node("ReduceSum", ["hm", "ax"], "o", keepdims=1)],
                 {"ax": i64(3)}, hw=(8, 6))


def case_reduce_sum_hw_nokeep(rng):
    hn, hi = _conv(rng, "input", "h", 3, 5, relu=True, tag="h")
    return (hn + [node("ReduceSum", ["h", "ax"], "s", keepdims=0), node("Gemm", ["s", "Wd", "Bd"], "z", transB=1),
                  node("ReduceMean", ["z"], "out", axes=[1], keepdims=1)],
            {**hi, "ax": i64(2, 3), "Wd": f32(rng.normal(0, 0.3, (4, 5))), "Bd": bias(rng, 4)}, ("N", 3, 8, 8))


def case_logsoftmax_head(rng):
    """conv -> mean -> Gemm -> LogSoftmax: the output is 16-bit log-probabilities."""
    hn, hi = _conv(rng, "input", "h", 3, 6, relu=True, tag="h")
    return (hn + [node("GlobalAveragePool", ["h"], "g"), node("Flatten", ["g"], "f"),
                  node("Gemm", ["f", "Wd", "Bd"], "z", transB=1), node("LogSoftmax", ["z"], "out", axis=1)],
            {**hi, "Wd": f32(rng.normal(0, 1.5, (10, 6))), "Bd": bias(rng, 10)}, ("N", 3, 8, 8))


def case_logsoftmax_mid(rng):
    """an 8-bit LogSoftmax over C inside the graph."""
    return _wrap(rng, [node("LogSoftmax", ["h"], "o", axis=1)], c=7)


def case_prelu_per_channel(rng):
    return _wrap(rng, [node("PRelu", ["h", "sl"], "o")], {"sl": f32(np.array([0.25, -0.5, 0.0, 1.5]).reshape(4, 1, 1))})


def case_expand_tile(rng):
    return _wrap(rng, [node("GlobalAveragePool", ["h"], "g"), node("Expand", ["g", "shp"], "e"),
                       node("Add", ["h", "e"], "a"), node("Tile", ["a", "rep"], "o")],
                 {"shp": i64(1, 4, 8, 8), "rep": i64(1, 1, 2, 1)})



def case_packed_gate_affine_bcast(rng):
    """24 channels (not a multiple of 16): a squeeze-excite gate, a per-channel affine after a ReLU
    and a broadcast add of a [N, C, 1, 1] tensor, all on the packed CPU layout."""
    c = 24
    fn, fi = _conv(rng, "g", "f", c, c, k=1, tag="f")
    body = ([node("GlobalAveragePool", ["h"], "g")] + fn
            + [node("HardSigmoid", ["f"], "gate", alpha=0.2, beta=0.5), node("Mul", ["h", "gate"], "se"),
               node("Relu", ["se"], "r"), node("Mul", ["r", "s"], "m"), node("Add", ["m", "t"], "af"),
               node("Add", ["af", "g"], "o")])
    return _wrap(rng, body, {**fi, "s": f32(rng.uniform(-1.5, 1.5, (c, 1, 1))), "t": f32(rng.normal(0, 0.3, (c, 1, 1)))},
                 c=c, relu=True)


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}
OPSETS = {"resize_nearest_axes_opset18": 18}  # otherwise 17


def _index_outputs(model, names):
    """Declare the given graph outputs int64 (as an exporter writes an ArgMax output)."""
    from onnx import TensorProto

    for o in model.graph.output:
        if o.name in names:
            o.type.tensor_type.elem_type = TensorProto.INT64
    return model


def _compile(case, tmp_path, opset=17):
    rng = np.random.default_rng(sorted(CASES).index(case) + 200)
    nodes, inits, in_shape = CASES[case](rng)
    model = make_model(nodes, inits, in_shape=in_shape, opset=OPSETS.get(case, opset))
    if any(n.op_type == "ArgMax" for n in nodes):
        _index_outputs(model, ("out",))
    calib = {"input": rng.normal(size=(32,) + in_shape[1:]).astype(np.float32)}
    res = dyadic.compile(model, output_dir=str(tmp_path), calib=calib, config=CONFIG)
    return rng, model, in_shape, res, dyadic.load(str(tmp_path))


def _bitexact(rng, in_shape, ig, lib):
    (out,) = ig.outputs
    for batch in (1, 3):
        for gain in (1.0, 3.0):
            x = gain * rng.normal(size=(batch,) + in_shape[1:]).astype(np.float32)
            q = quantize_inputs(ig, {"input": x})
            got, want = lib.run_int(q)[0], run_reference(ig, q)[out]
            assert got.shape == want.shape
            assert np.array_equal(got, want), f"{np.count_nonzero(got != want)} values differ"


def _ort(model, x):
    """onnxruntime fp32, one sample at a time (a constant Resize `sizes` names batch 1, as a model
    exported with a pinned batch does)."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


@pytest.mark.parametrize("case", sorted(CASES))
def test_table2_op_bitexact_and_faithful(case, tmp_path):
    rng, model, in_shape, res, lib = _compile(case, tmp_path)
    _bitexact(rng, in_shape, res.int_graph, lib)
    x = rng.normal(size=(16,) + in_shape[1:]).astype(np.float32)
    ref, y = _ort(model, x), lib.run(x)
    assert y.shape == ref.shape
    cos = float(np.sum(y * ref) / (np.linalg.norm(y) * np.linalg.norm(ref)))
    assert cos > 0.98, f"cosine {cos:.4f} against onnxruntime fp32"


def test_upsample_opset9(tmp_path):
    """Upsample (opset 9, nearest, scales input), upgraded and imported as integer gathers."""
    CASES["_upsample"] = lambda rng: _wrap(rng, [node("Upsample", ["h", "sc"], "o", mode="nearest")],
                                           {"sc": f32([1, 1, 2, 3])})
    try:
        rng, model, in_shape, res, lib = _compile("_upsample", tmp_path, opset=9)
    finally:
        del CASES["_upsample"]
    assert {n.op for n in res.int_graph.nodes} == {"qconv", "gather"}
    _bitexact(rng, in_shape, res.int_graph, lib)
    x = rng.normal(size=(4,) + in_shape[1:]).astype(np.float32)
    np.testing.assert_allclose(lib.run(x), _ort(model, x), atol=0.15 * np.abs(_ort(model, x)).max())


def test_argmax_output(tmp_path):
    """conv head -> ArgMax over C: an int32 index output (scale 1), mostly the fp32 argmax."""
    CASES["_argmax"] = lambda rng: (_conv(rng, "input", "h", 3, 6, tag="h")[0]
                                    + [node("ArgMax", ["h"], "out", axis=1, keepdims=0)],
                                    _conv(rng, "input", "h", 3, 6, tag="h")[1], ("N", 3, 8, 8))
    try:
        rng, model, in_shape, res, lib = _compile("_argmax", tmp_path)
    finally:
        del CASES["_argmax"]
    ig = res.int_graph
    assert ig.dtypes[ig.outputs[0]] == "int32" and ig.qparams[ig.outputs[0]].scale == 1.0
    _bitexact(rng, in_shape, ig, lib)
    x = rng.normal(size=(8,) + in_shape[1:]).astype(np.float32)
    got, want = lib.run(x), _ort(model, x)
    assert got.shape == want.shape
    assert np.mean(got == want) > 0.9


def test_new_ops_lower_for_arm_and_cuda():
    """The generic lowering of every new integer op, for arm and cuda (no build, no GPU), has no float."""
    from dyadic import targets
    from dyadic.backend.lower import lower_to_relax
    from dyadic.compiler import build_graph
    from dyadic.core.verify import verify_lowered

    rng = np.random.default_rng(3)
    body = [node("LRN", ["h"], "l", size=3, alpha=0.5, beta=0.75, bias=1.0),
            node("Resize", ["l", EMPTY, "sc"], "r", mode="linear", coordinate_transformation_mode="half_pixel"),
            node("ConvTranspose", ["r", "Wu"], "u", kernel_shape=[2, 2], strides=[2, 2]),
            node("PRelu", ["u", "sl"], "p"), node("Pad", ["p", "pp"], "pr", mode="reflect"),
            node("ReduceSum", ["pr", "ax"], "m", keepdims=1), node("Sub", ["pr", "m"], "o")]
    nodes, inits, in_shape = _wrap(rng, body, {"sc": f32([1, 1, 2, 2]), "Wu": f32(rng.normal(0, 0.4, (4, 4, 2, 2))),
                                               "sl": f32(np.full((4, 1, 1), 0.1)), "pp": i64(0, 0, 1, 1, 0, 0, 1, 1),
                                               "ax": i64(1)})
    head = [node("ReduceMean", ["out"], "g", axes=[2, 3], keepdims=0), node("LogSoftmax", ["g"], "ls", axis=1),
            node("ArgMax", ["out"], "am", axis=1, keepdims=1)]
    model = _index_outputs(make_model(nodes + head, inits, in_shape=in_shape, outputs=("ls", "am")), ("am",))
    calib = {"input": rng.normal(size=(8,) + in_shape[1:]).astype(np.float32)}
    _, ig = build_graph(model, calib, CONFIG)
    ops = {n.op for n in ig.nodes}
    assert {"qlrn", "qresize", "zero_insert", "qprelu", "gather", "qreduce", "qlogsoftmax", "qarg"} <= ops, ops
    for name in ("arm", "cuda"):
        verify_lowered(lower_to_relax(ig, targets.resolve(name)), after=f"lower_to_relax ({name})")


@pytest.mark.parametrize("case", sorted(CASES))
def test_table2_float_import_matches_onnxruntime(case):
    """The imported float graph computes what onnxruntime computes (tight: catches an off-by-one
    index map or coordinate mode that a cosine would forgive)."""
    from _tiny_onnx import matches_ort

    rng = np.random.default_rng(5)
    nodes, inits, in_shape = CASES[case](rng)
    model = make_model(nodes, inits, in_shape=in_shape, opset=OPSETS.get(case, 17))
    matches_ort(model, rng.normal(size=(1,) + in_shape[1:]).astype(np.float32), rtol=1e-4, atol=1e-4)



def test_packed_layout_keeps_gates_affines_and_broadcast_adds_packed(tmp_path):
    """On a CPU with the packed kernels, the SE product, the per-channel affine and the broadcast add
    make no NCHW copy (the one `dyadic_unpack` call is the graph output's), and the library stays
    bit-exact."""
    import re

    from dyadic import targets
    from dyadic.backend import kernels
    from dyadic.backend.lower import lower_to_relax

    rng, model, in_shape, res, lib = _compile("packed_gate_affine_bcast", tmp_path)
    ig = res.int_graph
    assert {"qmul", "qaffine", "qadd"} <= {n.op for n in ig.nodes}
    _bitexact(rng, in_shape, ig, lib)
    host = targets.resolve("host")
    if kernels.x86_isa(host.tvm_target) is None:
        pytest.skip("no packed CPU kernels on this host")
    text = lower_to_relax(ig, host)["main"].script(show_meta=False)
    unpacks = [ln for ln in text.splitlines() if re.search(r"dyadic_unpack\d+", ln)]
    assert len(unpacks) == 1 and "(n, 3, 8, 8)" in unpacks[0], unpacks


def test_convtranspose_folds_batchnorm_and_relu():
    """ConvTranspose + BN + ReLU is one zero insertion and one integer conv (BN folded, ReLU fused)."""
    from dyadic.compiler import build_graph

    rng = np.random.default_rng(0)
    nodes, inits, in_shape = CASES["convtranspose_bn_relu"](rng)
    _, ig = build_graph(make_model(nodes, inits, in_shape=in_shape),
                        {"input": rng.normal(size=(4,) + in_shape[1:]).astype(np.float32)}, CONFIG)
    assert [n.op for n in ig.nodes] == ["qconv", "zero_insert", "qconv", "qconv"]
    up = ig.nodes[2]
    assert up.attrs["lo"] == 0 and ig.shapes[up.output][2:] == (16, 16)


@pytest.mark.parametrize("case", ["resize_nearest_torch", "resize_linear_half_pixel", "convtranspose_bn_relu",
                                  "expand_tile"])
def test_spatial_moves_stay_packed(case):
    """Nearest/linear resizes, zero insertion and H/W gathers run on the packed CPU layout: the only
    NCHW copy is the graph output's (bit-exactness: the compile tests above run the same lowering)."""
    import re

    from dyadic import targets
    from dyadic.backend import kernels
    from dyadic.backend.lower import lower_to_relax
    from dyadic.compiler import build_graph

    host = targets.resolve("host")
    if kernels.x86_isa(host.tvm_target) is None:
        pytest.skip("no packed CPU kernels on this host")
    rng = np.random.default_rng(0)
    nodes, inits, in_shape = CASES[case](rng)
    _, ig = build_graph(make_model(nodes, inits, in_shape=in_shape),
                        {"input": rng.normal(size=(4,) + in_shape[1:]).astype(np.float32)}, CONFIG)
    text = lower_to_relax(ig, host)["main"].script(show_meta=False)
    assert len(re.findall(r"dyadic_unpack\d+\(", text)) + len(re.findall(r"dyadic_unpack\d+,", text)) == 1
