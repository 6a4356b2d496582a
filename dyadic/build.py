"""Lower the integer graph to Relax, verify it holds no float, and build it with TVM for a target."""
from __future__ import annotations

import tvm
from tvm import relax

from dyadic.graph import Graph
from dyadic.lower import lower_to_relax
from dyadic.targets import TargetSpec
from dyadic.verify import verify_lowered


def lower_and_verify(graph: Graph, target: TargetSpec | None = None) -> tvm.IRModule:
    mod = lower_to_relax(graph, target)
    verify_lowered(mod)
    return mod


def build(mod: tvm.IRModule, target: TargetSpec):
    return relax.build(mod, tvm.target.Target(target.tvm_target))
