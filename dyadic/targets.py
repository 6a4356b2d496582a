"""Target presets -> TVM target descriptions. Only the host CPU so far."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class TargetSpec:
    name: str
    tvm_target: dict

    def describe(self) -> dict:
        return {"preset": self.name, "tvm": self.tvm_target}


def host_target() -> TargetSpec:
    from tvm.target import codegen

    cpu = codegen.llvm_get_system_cpu()
    return TargetSpec("host", {"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1})


PRESETS = {"host": host_target}


def resolve(name: str) -> TargetSpec:
    if name not in PRESETS:
        raise ValueError(f"unknown target {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()
