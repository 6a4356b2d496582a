"""Lower the integer graph to Relax, verify it holds no float, and what a build says about the result
whatever the target: MACs on dot-product instructions, library and constant sizes.

Building, exporting and instruction counts are the target's (`dyadic.targets`: `Target.build`,
`Target.export`, `Target.count_instructions`); `build`, `build_for`, `export` and
`count_instructions` here only hand over to it.
"""
from __future__ import annotations

import tvm
from tvm import relax

from dyadic.backend.lower import lower_to_relax
from dyadic.core.graph import Graph
from dyadic.core.verify import verify_lowered
from dyadic.targets.base import Built, TargetSpec


def lower_and_verify(graph: Graph, target: TargetSpec | None = None) -> tvm.IRModule:
    mod = lower_to_relax(graph, target)
    verify_lowered(mod)
    return mod


def build(mod: tvm.IRModule, target: TargetSpec):
    """The executable only (the host path's historical signature)."""
    return build_for(mod, target).executable


def build_for(mod: tvm.IRModule, target: TargetSpec) -> Built:
    return target.build(mod)


def export(built: Built, so_path: str) -> None:
    """Write the shared library with the target's linker."""
    built.target.export(built, so_path)


def count_instructions(built: Built, so_path: str) -> dict[str, int]:
    """The target's int8 MAC instructions in the library (`Target.count_instructions`)."""
    return built.target.count_instructions(built, so_path)


def dot_macs(mod: tvm.IRModule, graph: Graph) -> dict | None:
    """MACs per image of the conv/dense layers, and how many of them the kernel family runs on its
    int8 dot-product / MMA instructions (`vpdpbusd`, `sdot`, `usdot`, `usmmla`, `mma.sync`: recorded
    by the lowering, per layer)."""
    from dyadic.passes.measure_costs import macs

    layers = [n for n in graph.nodes if n.op in ("qconv", "qdense")]
    total = sum(macs(graph, n) for n in layers)
    info = mod.attrs.get("dyadic_dot") if mod.attrs is not None else None
    if info is None:
        return {"isa": None, "macs": 0, "total_macs": total, "fraction": 0.0}
    by_layer = {n.name: macs(graph, n) for n in layers}
    by_instr: dict[str, int] = {}
    for name, ins in info["layers"].items():
        by_instr[str(ins)] = by_instr.get(str(ins), 0) + by_layer.get(str(name), 0)
    dot = sum(by_instr.values())
    return {"isa": str(info["isa"]), "macs": dot, "total_macs": total, "fraction": round(dot / max(total, 1), 4),
            "by_instruction": by_instr}


def kernel_coverage(mod: tvm.IRModule) -> dict:
    """How many integer-graph nodes run on dyadic's own kernels, and which ops (with counts) were left
    to TVM's generic lowering (its default schedules): where a model's time outside our kernels goes.
    `layer_kernels`: the kernel family (amx, vnni, avx2, ...) each conv / dense layer ran on;
    `families`: their counts."""
    info = mod.attrs.get("dyadic_coverage") if mod.attrs is not None else None
    counts = {str(k): int(v) for k, v in (info or {}).items()}
    ours = counts.pop("kernel", 0)
    fam = mod.attrs.get("dyadic_families") if mod.attrs is not None else None
    layers = {str(k): str(v) for k, v in (fam or {}).items()}
    by_family: dict[str, int] = {}
    for v in layers.values():
        by_family[v] = by_family.get(v, 0) + 1
    return {"kernel_nodes": ours, "generic_nodes": sum(counts.values()), "generic_ops": dict(sorted(counts.items())),
            "families": dict(sorted(by_family.items())), "layer_kernels": layers}


def amx_layers(mod: tvm.IRModule) -> int:
    """Conv / dense layers that run on AMX tiles: a library with any needs tile-data permission at load."""
    fam = mod.attrs.get("dyadic_families") if mod.attrs is not None else None
    return sum(1 for v in (fam or {}).values() if str(v) == "amx")


def library_bytes(so_path: str) -> dict[str, int]:
    """Size of the library file and of its serialized executable (constants, i.e. the stored
    weights, plus VM bytecode): the `__tvm_ffi__library_bin` symbol, read with `nm -S`."""
    import os
    import shutil
    import subprocess

    out = {"file": os.path.getsize(so_path)}
    nm = shutil.which("nm")
    if nm:
        res = subprocess.run([nm, "-S", so_path], capture_output=True, text=True)
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[3] == "__tvm_ffi__library_bin":
                out["executable_blob"] = int(parts[1], 16)
    return out


def constant_bytes(mod) -> int:
    """Bytes of all constants bound into the Relax module: the weights, biases and requantization
    tables the library stores (serialized as they are into the executable)."""
    seen: dict[int, int] = {}

    def visit(e):
        if isinstance(e, tvm.ir.GenericConst):
            v = e.value
            if hasattr(v, "numpy"):
                seen.setdefault(e.__hash__(), v.numpy().nbytes)

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return int(sum(seen.values()))
