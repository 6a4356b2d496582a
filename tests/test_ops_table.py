"""The op-table ops (`dyadic.ops`) as exporters write them: bit-exact libraries, faithful import.

Each case is a tiny ONNX model in the spelling an exporter uses (torch.onnx, paddle2onnx). It is
compiled (calibrated on N(0,1) data), run on batch 1 and 3 at the calibrated scale and at 3x
(saturation), and compared with the int64 reference with exact equality; the integer output is
also compared with onnxruntime fp32 on calibration-like inputs (logit cosine), which catches an
import rule that gets the op's meaning wrong.
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


def case_sigmoid(rng):
    return _wrap(rng, [node("Sigmoid", ["h"], "o")])


def case_hardsigmoid_paddle(rng):
    return _wrap(rng, [node("HardSigmoid", ["h"], "o", alpha=0.2, beta=0.5)])


def case_hardswish(rng):
    return _wrap(rng, [node("HardSwish", ["h"], "o")])


def case_hardswish_spelled(rng):
    """paddle2onnx: x * Clip(x + 3, 0, 6) / 6 -> one table."""
    return _wrap(rng, [node("Add", ["h", "three"], "a"), node("Clip", ["a", "zero", "six"], "cl"),
                       node("Mul", ["h", "cl"], "m"), node("Div", ["m", "six"], "o")],
                 {"three": f32(3.0), "zero": f32(0.0), "six": f32(6.0)})


def case_silu(rng):
    return _wrap(rng, [node("Sigmoid", ["h"], "s"), node("Mul", ["h", "s"], "o")])


def case_gelu_erf(rng):
    return _wrap(rng, [node("Div", ["h", "sq2"], "d"), node("Erf", ["d"], "e"), node("Add", ["e", "one"], "e1"),
                       node("Mul", ["h", "e1"], "m"), node("Mul", ["m", "half"], "o")],
                 {"sq2": f32(np.sqrt(2.0)), "one": f32(1.0), "half": f32(0.5)})


def case_mish(rng):
    return _wrap(rng, [node("Softplus", ["h"], "sp"), node("Tanh", ["sp"], "t"), node("Mul", ["h", "t"], "o")])


def case_leakyrelu_elu_tanh(rng):
    return _wrap(rng, [node("LeakyRelu", ["h"], "l", alpha=0.1), node("Elu", ["l"], "e"), node("Tanh", ["e"], "o")])


def case_batchnorm_preactivation(rng):
    c = 4
    p = {"g": f32(rng.uniform(0.5, 1.5, c)), "b": f32(rng.normal(0, 0.2, c)), "mu": f32(rng.normal(0, 0.2, c)),
         "var": f32(rng.uniform(0.5, 2, c))}
    return _wrap(rng, [node("Relu", ["h"], "r"), node("BatchNormalization", ["r", "g", "b", "mu", "var"], "bn"),
                       node("Relu", ["bn"], "o")], p, c=c)


def case_mul_add_per_channel(rng):
    """BN spelled as Mul/Add by [C,1,1] constants after a ReLU (so it cannot fold into the conv)."""
    return _wrap(rng, [node("Relu", ["h"], "r"), node("Mul", ["r", "s"], "m"), node("Add", ["m", "t"], "o")],
                 {"s": f32(rng.uniform(-1.5, 1.5, (4, 1, 1))), "t": f32(rng.normal(0, 0.3, (4, 1, 1)))})


def case_squeeze_excite(rng):
    fn, fi = _conv(rng, "g", "f", 4, 4, k=1, tag="f")
    return _wrap(rng, [node("GlobalAveragePool", ["h"], "g")] + fn
                 + [node("HardSigmoid", ["f"], "gate", alpha=0.2, beta=0.5), node("Mul", ["h", "gate"], "o")],
                 fi, relu=True)


def case_sub_max_min(rng):
    fn, fi = _conv(rng, "h", "h2", 4, 4, tag="b")
    return _wrap(rng, fn + [node("Sub", ["h", "h2"], "d"), node("Max", ["d", "h"], "mx"),
                            node("Min", ["mx", "h2"], "o")], fi)


def case_add_broadcast(rng):
    return _wrap(rng, [node("GlobalAveragePool", ["h"], "g"), node("Add", ["h", "g"], "o")])


def case_channel_shuffle(rng):
    return _wrap(rng, [node("Reshape", ["h", "s5"], "r"), node("Transpose", ["r"], "t", perm=[0, 2, 1, 3, 4]),
                       node("Reshape", ["t", "s4"], "o")], {"s5": i64(0, 2, 2, 8, 8), "s4": i64(0, 4, 8, 8)})


def case_split_concat_gather(rng):
    from onnx import helper

    split = helper.make_node("Split", ["h", "sp"], ["a", "b"], name="split", axis=1)
    return _wrap(rng, [split, node("Concat", ["b", "a"], "cat", axis=1), node("Gather", ["cat", "idx"], "o", axis=1)],
                 {"sp": i64(1, 3), "idx": i64(3, 0, 2, 1, 0)}, tail_c=5)


def case_pools_ceil(rng):
    return _wrap(rng, [node("MaxPool", ["h"], "mp", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
                       node("AveragePool", ["mp"], "o", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)], hw=(9, 9))


def case_global_max_unsqueeze(rng):
    return _wrap(rng, [node("GlobalMaxPool", ["h"], "g"), node("Squeeze", ["g", "ax"], "sq"),
                       node("Unsqueeze", ["sq", "ax"], "o")], {"ax": i64(2, 3)})


def case_softmax_head(rng):
    """conv -> mean -> flatten -> Gemm -> Softmax: the output is 16-bit probabilities."""
    hn, hi = _conv(rng, "input", "h", 3, 6, relu=True, tag="h")
    return (hn + [node("GlobalAveragePool", ["h"], "g"), node("Flatten", ["g"], "f"),
                  node("Gemm", ["f", "Wd", "Bd"], "z", transB=1), node("Softmax", ["z"], "out", axis=-1)],
            {**hi, "Wd": f32(rng.normal(0, 1, (5, 6))), "Bd": bias(rng, 5)}, ("N", 3, 8, 8))


def case_softmax_mid(rng):
    """an 8-bit Softmax over W inside the graph."""
    return _wrap(rng, [node("Softmax", ["h"], "o", axis=-1)])


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_table_op_bitexact_and_faithful(case, tmp_path):
    rng = np.random.default_rng(sorted(CASES).index(case) + 100)
    nodes, inits, in_shape = CASES[case](rng)
    model = make_model(nodes, inits, in_shape=in_shape)
    calib = {"input": rng.normal(size=(32,) + in_shape[1:]).astype(np.float32)}
    res = dyadic.compile(model, output_dir=str(tmp_path), calib=calib, config=CONFIG)
    ig = res.int_graph
    lib = dyadic.load(str(tmp_path))
    (out,) = ig.outputs
    for batch in (1, 3):
        for gain in (1.0, 3.0):
            x = gain * rng.normal(size=(batch,) + in_shape[1:]).astype(np.float32)
            q = quantize_inputs(ig, {"input": x})
            got, want = lib.run_int(q)[0], run_reference(ig, q)[out]
            assert got.shape == want.shape
            assert np.array_equal(got, want), f"{np.count_nonzero(got != want)} values differ"
    x = rng.normal(size=(16,) + in_shape[1:]).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    y = lib.run(x)
    assert y.shape == ref.shape
    cos = float(np.sum(y * ref) / (np.linalg.norm(y) * np.linalg.norm(ref)))
    assert cos > 0.98, f"cosine {cos:.4f} against onnxruntime fp32"


def test_chains_become_one_table():
    """hard-swish, SiLU, GELU and Mish spelled out are one `qlut` each."""
    for case in ("hardswish_spelled", "silu", "gelu_erf", "mish"):
        rng = np.random.default_rng(0)
        nodes, inits, in_shape = CASES[case](rng)
        res = dyadic.compile(make_model(nodes, inits, in_shape=in_shape), None,
                             calib={"input": rng.normal(size=(8,) + in_shape[1:]).astype(np.float32)}, config=CONFIG)
        assert [n.op for n in res.int_graph.nodes] == ["qconv", "qlut", "qconv"], case
