"""Helpers for the tests: tiny float32 ONNX models built with onnx.helper."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT64_MAX = np.iinfo(np.int64).max


def node(op: str, inputs: Sequence[str], output: str, name: str | None = None, **attrs) -> onnx.NodeProto:
    """One ONNX node; its name defaults to its output tensor's name."""
    return helper.make_node(op, list(inputs), [output], name=name or output, **attrs)


def make_model(nodes: Iterable[onnx.NodeProto], inits: dict[str, np.ndarray] | None = None,
               in_shape: Sequence = ("N", 3, 8, 8), outputs: Sequence[str] = ("out",),
               opset: int = 17, input_name: str = "input") -> onnx.ModelProto:
    """A model with one float32 input (dynamic batch "N" by default) and float32 outputs whose
    shapes are left to ONNX shape inference."""
    g = helper.make_graph(
        list(nodes), "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    m.ir_version = 8
    return m


def conv_w(rng: np.random.Generator, cout: int, cin_per_group: int, k: int = 3, gain: float = 1.0) -> np.ndarray:
    fan_in = cin_per_group * k * k
    return (rng.normal(0.0, gain * np.sqrt(2.0 / fan_in), (cout, cin_per_group, k, k))).astype(np.float32)


def bias(rng: np.random.Generator, n: int, std: float = 0.1) -> np.ndarray:
    return rng.normal(0.0, std, n).astype(np.float32)


def i64(*v) -> np.ndarray:
    return np.array(v, np.int64)


def f32(v) -> np.ndarray:
    return np.array(v, np.float32)


def run_ort(model: onnx.ModelProto, x: np.ndarray, out: str = "out") -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([out], {"input": x.astype(np.float32)})[0]


def matches_ort(model, x, rtol=1e-5, atol=1e-5):
    """The imported float graph, executed by dyadic.float_exec, computes what onnxruntime computes."""
    from dyadic.core.float_exec import execute
    from dyadic.frontend import import_onnx

    g = import_onnx(model)
    got = execute(g, {"input": x})[g.outputs[0]]
    want = run_ort(model, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return g


def conv_block(rng, x, out, cin, cout, k=3, relu=False, tag="c"):
    nodes = [node("Conv", [x, f"W{tag}", f"B{tag}"], out + "_pre" if relu else out, pads=[k // 2] * 4)]
    if relu:
        nodes.append(node("Relu", [out + "_pre"], out))
    return nodes, {f"W{tag}": conv_w(rng, cout, cin, k), f"B{tag}": bias(rng, cout)}


def wrap_op(rng, body, inits=None, c=4, tail_c=None, relu=False, hw=(8, 8)):
    """The op-table tests' sandwich: input -> conv -> body (reads "h", writes "o") -> 1x1 conv -> out."""
    hn, hi = conv_block(rng, "input", "h", 3, c, relu=relu, tag="h")
    tn, ti = conv_block(rng, "o", "out", tail_c or c, 3, k=1, tag="t")
    return hn + body + tn, {**hi, **ti, **(inits or {})}, ("N", 3) + hw
