"""The op table: each op of dyadic is one entry that says, in one place, everything about it.

An `OpDef` (float graph) holds its ONNX import rule(s), its float semantics (numpy, used by
calibration) and its quantization (float node -> integer nodes). An `IntOpDef` (integer graph)
holds its int64 reference semantics and its generic Relax lowering, and whether it is elementwise
(so the CPU kernels may run it on their packed layout unchanged). `dyadic.frontend` looks ONNX op
types up in `IMPORTERS`, `dyadic.core` and `passes/` look ops up in `FLOAT` / `INT`, and the
README's supported-op table is generated from `IMPORTERS` (`python -m dyadic.ops`).

The modules beside this one register their entries when `dyadic.ops` is imported; the oldest ops
(conv, dense, add, pooling, the pass-through moves) are still written out in the frontend,
reference and lowering modules and are listed in `LEGACY_ONNX`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dyadic.core.errors import ModelError


@dataclass(frozen=True)
class OpDef:
    name: str                                   #: op name in the float graph
    run_float: Callable                         #: (node, [float arrays]) -> float array
    quantize: Callable | None                   #: (QuantContext, node) -> None: appends integer nodes
    passthrough: bool = False                   #: moves values unchanged: the output keeps the input's scale


@dataclass(frozen=True)
class IntOpDef:
    name: str                                   #: op name in the integer graph
    run_int: Callable                           #: (node, [int arrays], out_shape) -> int64 array
    lower: Callable                             #: (lowerer, node, [relax values]) -> relax value
    elementwise: bool = False                   #: layout-agnostic (runs on the packed CPU layout as is)
    verify: Callable | None = None              #: (graph, node) -> [problem strings]: overflow bounds etc.


@dataclass(frozen=True)
class Importer:
    onnx_op: str
    convert: Callable                           #: (ImportContext) -> list of Nodes
    doc: str                                    #: one line for the README's op table


FLOAT: dict[str, OpDef] = {}
INT: dict[str, IntOpDef] = {}
IMPORTERS: dict[str, Importer] = {}


def register_float(d: OpDef) -> OpDef:
    FLOAT[d.name] = d
    return d


def register_int(d: IntOpDef) -> IntOpDef:
    INT[d.name] = d
    return d


def importer(*onnx_ops: str, doc: str):
    def deco(fn):
        for o in onnx_ops:
            IMPORTERS[o] = Importer(o, fn, doc)
        return fn
    return deco


@dataclass
class ImportContext:
    """What an import rule sees of one ONNX node."""
    op: str                                     #: ONNX op type
    name: str                                   #: unique node name
    inputs: list[str]                           #: input tensor names ("" = absent optional input)
    outputs: list[str]
    attrs: dict[str, Any]
    consts: dict[str, np.ndarray]               #: every constant tensor of the model
    shapes: dict[str, tuple[int, ...]]          #: inferred shapes (batch as in the file, or 1)
    static_batch: bool = False                  #: every shape static: axis 0 is not special (`import_onnx`)

    def const(self, i: int, default=None):
        if i < len(self.inputs) and self.inputs[i]:
            if self.inputs[i] not in self.consts:
                raise ModelError(f"{self.name} ({self.op}): input {i} ({self.inputs[i]!r}) must be a constant")
            return self.consts[self.inputs[i]]
        return default

    def is_const(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] in self.consts

    @property
    def activations(self) -> list[str]:
        return [t for t in self.inputs if t and t not in self.consts]

    def rank(self, t: str | None = None) -> int:
        shp = self.shapes.get(t if t is not None else self.activations[0])
        if not shp:
            raise ModelError(f"{self.name} ({self.op}): shape inference gave tensor "
                             f"{t or self.activations[0]!r} no shape")
        return len(shp)

    def axis(self, a: int, t: str | None = None, batch_ok: bool = False) -> int:
        r = self.rank(t)
        if not -r <= int(a) < r:
            raise ModelError(f"{self.name} ({self.op}): axis {a} is out of range for rank {r}")
        a = int(a) % r
        if a == 0 and not batch_ok and not self.static_batch:
            raise ModelError(f"{self.name} ({self.op}): operating along the batch axis is not supported")
        return a

    def fail(self, why: str):
        raise ModelError(f"{self.name} ({self.op}): {why}")


@dataclass
class QuantContext:
    """What a quantization rule needs from `passes/quantize_graph`."""
    graph: Any                                  #: the float graph being quantized
    qp: dict                                    #: tensor -> QParams chosen so far
    out_q: Callable                             #: (tensor, signed=None) -> QParams for a produced tensor
    nodes: list = field(default_factory=list)   #: integer nodes emitted so far (append to it)

    @staticmethod
    def clip_bounds(q, act=None) -> dict:
        lo, hi = q.lo, q.hi
        if act is not None:
            if math.isfinite(act[0]):
                lo = max(lo, math.ceil(act[0] / q.scale))
            if math.isfinite(act[1]):
                hi = min(hi, math.floor(act[1] / q.scale))
        return {"lo": int(lo), "hi": int(hi)}
