"""The verifier that runs between passes: integer-graph invariants and the lowered module's types."""
from __future__ import annotations

import numpy as np
import pytest

from _tiny_onnx import conv_w, make_model, node
from dyadic.core.config import CompileConfig
from dyadic.core.errors import VerificationError
from dyadic.core.graph import Graph, Node, QParams
from dyadic.frontend import import_onnx
from dyadic.pipeline import graph_passes, run_passes
from dyadic.core.verify import verify_float_graph, verify_integer_graph, verify_lowered

from test_pass_quantize import quantized as quantized  # the module fixture, shared


# ============================================================================ verify (integer)


def _qconv_graph(w: np.ndarray, in_bits: int = 16, w_bits: int = 8, m=2 ** 30, s=40, b_dtype=np.int32,
                 out_dtype: str | None = None) -> Graph:
    cout = w.shape[0]
    qx, qy = QParams(0.01, in_bits, True), QParams(0.1, 8, True)
    n = Node("qconv", "big_conv", ("x",), ("y",),
             {"kernel": w.shape[2:], "strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1), "group": 1,
              "lo": -128, "hi": 127, "w_bits": w_bits, "a_bits": 8},
             {"W": w, "B": np.zeros(cout, b_dtype), "M": np.full(cout, m, np.int64), "S": np.full(cout, s, np.int64)})
    return Graph((n,), ("x",), ("y",), {"x": (-1, w.shape[1], 4, 4), "y": (-1, cout, 4, 4)},
                 {"x": qx.dtype, "y": out_dtype or qy.dtype}, qparams={"x": qx, "y": qy})


def test_verify_accepts_valid_graph():
    verify_integer_graph(_qconv_graph(np.full((2, 4, 3, 3), 127, np.int8)), after="ok")


def test_verify_accepts_compiled_graph(quantized):
    verify_integer_graph(quantized[2], after="quantize_graph")


def test_verify_int32_accumulator_overflow():
    # 16-bit input (|x| <= 32768) * 127 * 576 taps = 2.4e9 >= 2^31
    g = _qconv_graph(np.full((2, 64, 3, 3), 127, np.int8))
    with pytest.raises(VerificationError, match=r"after pass my_pass: big_conv: int32 accumulator can overflow"):
        verify_integer_graph(g, after="my_pass")


@pytest.mark.parametrize("m,s", [(2 ** 31, 31), (0, 31), (-5, 31), (2 ** 30, 0), (2 ** 30, 63)])
def test_verify_non_dyadic_rescale(m, s):
    g = _qconv_graph(np.ones((2, 4, 3, 3), np.int8), m=m, s=s)
    with pytest.raises(VerificationError, match=r"after pass quantize_graph: big_conv: rescale is not dyadic"):
        verify_integer_graph(g, after="quantize_graph")


def test_verify_requant_node_multiplier_too_large():
    q8 = QParams(0.1, 8, True)
    n = Node("requant", "rq", ("x",), ("y",), {"lo": -128, "hi": 127},
             {"M": np.array(2 ** 31, np.int64), "S": np.array(31, np.int64)})
    g = Graph((n,), ("x",), ("y",), {"x": (-1, 4), "y": (-1, 4)}, {"x": "int8", "y": "int8"},
              qparams={"x": q8, "y": q8})
    with pytest.raises(VerificationError, match="after pass align: rq: rescale is not dyadic"):
        verify_integer_graph(g, after="align")


def test_verify_weights_exceed_bits_and_bias_dtype():
    with pytest.raises(VerificationError, match="weights exceed 4 bits"):
        verify_integer_graph(_qconv_graph(np.full((1, 1, 3, 3), 8, np.int8), w_bits=4), after="p")
    with pytest.raises(VerificationError, match="bias is int64"):
        verify_integer_graph(_qconv_graph(np.ones((1, 1, 3, 3), np.int8), b_dtype=np.int64), after="p")


def test_verify_float_tensor_and_float_op():
    with pytest.raises(VerificationError, match="tensor y has dtype float32"):
        verify_integer_graph(_qconv_graph(np.ones((1, 1, 3, 3), np.int8), out_dtype="float32"), after="p")
    g = _qconv_graph(np.ones((1, 1, 3, 3), np.int8))
    g = g.replace(nodes=(g.nodes[0].replace(op="conv"),))
    with pytest.raises(VerificationError, match="op conv is not an integer op"):
        verify_integer_graph(g, after="p")
    with pytest.raises(VerificationError, match="after pass fuse: big_conv: op qconv is not a float-graph op"):
        verify_float_graph(g.replace(nodes=(g.nodes[0].replace(op="qconv"),)), after="fuse")


def test_verify_window_sum_overflow():
    q = QParams(1.0, 16, True)
    n = Node("qmean_hw", "gap", ("x",), ("y",), {"keepdims": 1, "lo": -128, "hi": 127},
             {"M": np.array(2 ** 30, np.int64), "S": np.array(50, np.int64)})
    g = Graph((n,), ("x",), ("y",), {"x": (-1, 2, 256, 256), "y": (-1, 2, 1, 1)}, {"x": "int32", "y": "int8"},
              qparams={"x": q, "y": QParams(1.0, 8, True)})
    with pytest.raises(VerificationError, match="gap: int32 window sum can overflow"):
        verify_integer_graph(g, after="p")


def test_run_passes_names_the_breaking_pass(rng):
    fg = import_onnx(make_model([node("Conv", ["input", "W"], "out")], {"W": conv_w(rng, 4, 3)}))
    calib = {"input": rng.normal(size=(4, 3, 8, 8)).astype(np.float32)}

    def evil(g: Graph) -> Graph:
        n = g.nodes[0]
        return g.replace(nodes=(n.replace(params={**n.params, "M": np.zeros_like(n.params["M"])}),))

    passes = graph_passes(CompileConfig(quiet=True), calib) + [("evil_pass", evil)]
    with pytest.raises(VerificationError, match="after pass evil_pass"):
        run_passes(fg, passes)


# ============================================================================ verify (lowered)


def _relax_module(dtype_in: str, cast_to: str | None = None):
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape=[2, 3], dtype=dtype_in))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(x, x))
            if cast_to:
                y = bb.emit(relax.op.astype(y, cast_to))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    assert isinstance(mod, tvm.IRModule)
    return mod


def test_verify_lowered_float_tensor_raises():
    with pytest.raises(VerificationError, match=r"after pass lower_to_relax: float types \['float32'\]"):
        verify_lowered(_relax_module("float32"))


def test_verify_lowered_hidden_float_cast_raises():
    with pytest.raises(VerificationError, match="float16"):
        verify_lowered(_relax_module("int8", cast_to="float16"), after="my_lowering")


def test_verify_lowered_integer_module_passes(quantized):
    from dyadic.backend.lower import lower_to_relax

    verify_lowered(_relax_module("int32", cast_to="int64"))
    verify_lowered(lower_to_relax(quantized[2]))
