"""Small helper for assembling float32 ONNX CNN graphs with seeded parameters.

`GraphBuilder` accumulates nodes and initializers, enforces unique names and
draws every parameter from one ``numpy.random.default_rng(seed)`` stream, in
construction order, so a builder run with the same seed yields identical bytes.

Initialisation (chosen for non-degenerate activations, not for accuracy):
conv weights He-normal ``N(0, sqrt(2 / fan_in))``; BatchNormalization
gamma ``U(0.5, 1.5)``, beta ``N(0, 0.1)``, running_mean ``N(0, 0.1)``,
running_var ``U(0.5, 1.5)``; Gemm weight ``N(0, 1 / sqrt(in))``, bias
``N(0, 0.01)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
PRODUCER = "dyadic.models"
INT64_MAX = np.iinfo(np.int64).max


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


class GraphBuilder:
    """Accumulates an ONNX graph; each op method returns its output tensor name.

    A node's output tensor carries the node's name unless ``out`` is given.
    """

    def __init__(self, graph_name: str, seed: int = 0):
        self.graph_name = graph_name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._consts: dict[str, str] = {}
        self.input = self._claim("input")

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate name {name!r}")
        self._names.add(name)
        return name

    def initializer(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, self._claim(name)))
        return name

    def shared_const(self, name: str, array: np.ndarray) -> str:
        """An initializer created once and reused by every later request."""
        if name not in self._consts:
            self._consts[name] = self.initializer(name, array)
        return self._consts[name]

    def node(self, op: str, inputs: Sequence[str], name: str,
             out: str | None = None, **attrs) -> str:
        out = self._claim(out or name)
        if out != name:
            self._claim(name)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    def _normal(self, std: float, shape) -> np.ndarray:
        return self.rng.normal(0.0, std, size=shape).astype(np.float32)

    def _uniform(self, lo: float, hi: float, shape) -> np.ndarray:
        return self.rng.uniform(lo, hi, size=shape).astype(np.float32)

    def conv(self, x: str, cin: int, cout: int, kernel, name: str, stride=1,
             pad=0, groups: int = 1, bias: bool = False) -> str:
        kh, kw = _pair(kernel)
        ph, pw = _pair(pad)
        fan_in = (cin // groups) * kh * kw
        w = self.initializer(f"{name}.weight",
                             self._normal(np.sqrt(2.0 / fan_in), (cout, cin // groups, kh, kw)))
        inputs = [x, w]
        if bias:
            inputs.append(self.initializer(f"{name}.bias", self._normal(0.01, (cout,))))
        return self.node("Conv", inputs, name, kernel_shape=[kh, kw],
                         strides=list(_pair(stride)), pads=[ph, pw, ph, pw],
                         dilations=[1, 1], group=groups)

    def batchnorm(self, x: str, channels: int, name: str, eps: float = 1e-5) -> str:
        gamma = self._uniform(0.5, 1.5, (channels,))
        beta = self._normal(0.1, (channels,))
        mean = self._normal(0.1, (channels,))
        var = self._uniform(0.5, 1.5, (channels,))
        inputs = [x] + [self.initializer(f"{name}.{suffix}", arr) for suffix, arr in
                        (("weight", gamma), ("bias", beta),
                         ("running_mean", mean), ("running_var", var))]
        return self.node("BatchNormalization", inputs, name, epsilon=float(eps),
                         momentum=0.9)

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], name)

    def relu6(self, x: str, name: str) -> str:
        lo = self.shared_const("relu6.min", np.array(0.0, dtype=np.float32))
        hi = self.shared_const("relu6.max", np.array(6.0, dtype=np.float32))
        return self.node("Clip", [x, lo, hi], name)

    def add(self, a: str, b: str, name: str) -> str:
        return self.node("Add", [a, b], name)

    def concat(self, xs: Sequence[str], name: str, axis: int = 1) -> str:
        return self.node("Concat", list(xs), name, axis=axis)

    def maxpool(self, x: str, name: str, kernel=3, stride=2, pad=0) -> str:
        ph, pw = _pair(pad)
        return self.node("MaxPool", [x], name, kernel_shape=list(_pair(kernel)),
                         strides=list(_pair(stride)), pads=[ph, pw, ph, pw])

    def avgpool(self, x: str, name: str, kernel=3, stride=1, pad=1,
                count_include_pad: bool = True) -> str:
        ph, pw = _pair(pad)
        return self.node("AveragePool", [x], name, kernel_shape=list(_pair(kernel)),
                         strides=list(_pair(stride)), pads=[ph, pw, ph, pw],
                         count_include_pad=int(count_include_pad))

    def global_avgpool_flatten(self, x: str, name: str = "avgpool") -> str:
        pooled = self.node("GlobalAveragePool", [x], name)
        return self.node("Flatten", [pooled], "flatten", axis=1)

    def slice(self, x: str, name: str, axis: int, start: int = 0,
              end: int = INT64_MAX, step: int = 1) -> str:
        consts = [self.initializer(f"{name}.{k}", np.array([v], dtype=np.int64))
                  for k, v in (("starts", start), ("ends", end), ("axes", axis), ("steps", step))]
        return self.node("Slice", [x, *consts], name)

    def pad_channels(self, x: str, name: str, before: int, after: int) -> str:
        pads = self.initializer(f"{name}.pads",
                                np.array([0, before, 0, 0, 0, after, 0, 0], dtype=np.int64))
        zero = self.initializer(f"{name}.value", np.array(0.0, dtype=np.float32))
        return self.node("Pad", [x, pads, zero], name, mode="constant")

    def gemm(self, x: str, fin: int, fout: int, name: str = "fc",
             out: str | None = "logits") -> str:
        w = self.initializer(f"{name}.weight", self._normal(1.0 / np.sqrt(fin), (fout, fin)))
        b = self.initializer(f"{name}.bias", self._normal(0.01, (fout,)))
        return self.node("Gemm", [x, w, b], name, out=out, alpha=1.0, beta=1.0, transB=1)

    def build_model(self, output: str, image_size, num_classes: int,
                    doc: str = "") -> onnx.ModelProto:
        h, w = _pair(image_size)
        inp = helper.make_tensor_value_info(self.input, TensorProto.FLOAT, ["N", 3, h, w])
        outp = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", num_classes])
        graph = helper.make_graph(self.nodes, self.graph_name, [inp], [outp],
                                  initializer=self.initializers, doc_string=doc)
        model = helper.make_model(graph, producer_name=PRODUCER,
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        return model
