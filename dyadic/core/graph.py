"""The one graph type of dyadic, used from ONNX import to lowering.

A `Graph` is an immutable, topologically ordered list of `Node`s over named tensors. Constant
tensors (weights, biases, dyadic multipliers and shifts) live in `Node.params`, so `Node.inputs`
only names activations. The same type holds

* the *float graph* (ops in `FLOAT_OPS`), produced by import and rewritten by the float passes, and
* the *integer graph* (ops in `INT_OPS`), produced by `quantize_graph`. Every tensor of it is an
  integer (`dtypes`), and every rescale is a dyadic multiply-and-shift (see `dyadic.arith`).

Shapes keep the batch dimension as -1 (any batch size); all other dimensions are static.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

FLOAT_OPS = frozenset({
    "conv", "batchnorm", "relu", "clip", "add", "dense", "maxpool", "avgpool", "mean_hw",
    "flatten", "reshape", "concat", "pad", "slice",
})
INT_OPS = frozenset({
    "qconv", "qdense", "qadd", "qavgpool", "qmean_hw", "requant",
    "maxpool", "flatten", "reshape", "concat", "pad", "slice",
})
#: Ops that move integers without changing their scale; they are the same op in both graphs.
PASSTHROUGH_OPS = frozenset({"maxpool", "flatten", "reshape", "concat", "pad", "slice"})
INT_DTYPES = frozenset({"int8", "uint8", "int16", "int32"})


@dataclass(frozen=True)
class QParams:
    """How a real tensor x is stored as integers q: x ≈ scale * q, q in [lo, hi], zero-point 0."""

    scale: float
    bits: int
    signed: bool

    @property
    def lo(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def dtype(self) -> str:
        if self.bits <= 8:
            return "int8" if self.signed else "uint8"
        # signed codes up to 16 bits (`--wide-activations`, LayerNorm / GELU outputs) as int16: half the
        # bytes of int32 for every reader and writer; wider codes (token ids) as int32
        return "int16" if self.bits <= 16 and self.signed else "int32"


@dataclass(frozen=True)
class Node:
    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return self.outputs[0]

    def replace(self, **changes: Any) -> "Node":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]
    #: calibrated (min, max) of each float tensor; filled by `calibrate_ranges`
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: integer representation of each tensor; filled by `quantize_graph`
    qparams: Mapping[str, QParams] = field(default_factory=dict)
    #: per-node bit-widths {node name: (weight bits, activation bits)}; filled by `assign_bitwidths`
    bits: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "Graph":
        return dataclasses.replace(self, **changes)

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                users.setdefault(i, []).append(n)
        for o in self.outputs:
            users.setdefault(o, [])
        return users

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def static_batch_size(self) -> int | None:
        """The one batch size a static-batch graph runs at (`meta["static_batch"]`, `import_onnx`), else None."""
        return int(self.shapes[self.inputs[0]][0]) if self.meta.get("static_batch") else None

    def weighted_nodes(self) -> list[Node]:
        """Nodes that carry a weight matrix (the layers whose bit-width is chosen)."""
        return [n for n in self.nodes if n.op in ("conv", "dense", "qconv", "qdense")]


def rename_uses(nodes: tuple[Node, ...], old: str, new: str) -> tuple[Node, ...]:
    """Make every node that reads `old` read `new` instead."""
    return tuple(
        n.replace(inputs=tuple(new if i == old else i for i in n.inputs)) if old in n.inputs else n
        for n in nodes
    )
