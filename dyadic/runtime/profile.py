"""Where a compiled library's time goes: dyadic's own kernels, TVM's generic lowering, the VM.

    prof = profile("build/", threads=1, batch=1, iters=20)
    prof.outside_share      # fraction of the plain run time not spent inside dyadic's kernels

TVM 0.27's Relax VM has no profiler, but it calls an *instrument* before and after every packed
function it invokes (`set_instrument`). This module times each call there with `perf_counter`
and groups the functions by name:

* ``kernel``: dyadic's fused kernels (PrimFuncs named ``dyadic_*`` by `backend.kernels`);
* ``generic``: PrimFuncs of TVM's generic lowering (the ops `kernel_coverage` lists), grouped by
  op name with the numeric suffixes dropped (``add3`` -> ``add``, ``fused_cast3_add1`` -> ``fused_cast_add``);
* ``runtime``: the VM's builtins (``vm.builtin.*``: allocation, shape checks, reshape views).

The instrument itself costs a Python call on each side of every invocation, so the instrumented
run is slower than a plain one. The shares are therefore taken against a *plain* run measured in
the same process (no instrument): ``outside_share = 1 - kernel_ms / plain_ms``, clamped to [0, 1].
What is neither kernel nor generic nor runtime time (the VM's dispatch between calls, the copy of
inputs and outputs) is thereby counted as outside the kernels, which is where it belongs.
The kernel time itself is exact up to two `perf_counter` reads per call (well under 1 us).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Profile:
    plain_ms: float                    # median per-run time without the instrument
    instrumented_ms: float             # median per-run time with it (for reference)
    by_function: dict = field(default_factory=dict)   # name -> (calls per run, ms per run)
    by_group: dict = field(default_factory=dict)      # "kernel" / "generic" / "runtime" -> ms per run
    generic_ops: dict = field(default_factory=dict)   # generic op name -> ms per run

    @property
    def kernel_ms(self) -> float:
        return self.by_group.get("kernel", 0.0)

    @property
    def outside_share(self) -> float:
        return min(1.0, max(0.0, 1.0 - self.kernel_ms / self.plain_ms)) if self.plain_ms > 0 else 0.0

    def as_dict(self) -> dict:
        return {"plain_ms": round(self.plain_ms, 4), "instrumented_ms": round(self.instrumented_ms, 4),
                "kernel_ms": round(self.kernel_ms, 4), "outside_share": round(self.outside_share, 4),
                "by_group": {k: round(v, 4) for k, v in self.by_group.items()},
                "generic_ops": {k: round(v, 4) for k, v in self.generic_ops.items()}}


def group_of(name: str) -> str:
    if name.startswith("dyadic_"):
        return "kernel"
    if name.startswith("vm.") or "." in name:
        return "runtime"
    return "generic"


def op_of(name: str) -> str:
    """`add3` -> `add`; a fused group `fused_cast3_multiply1_add` -> `fused_cast_multiply_add`."""
    return re.sub(r"(?<=[a-z])\d+", "", name) or name


def example_inputs(plan: dict, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random integer inputs inside each input's [lo, hi], at `batch` where the batch is dynamic."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in plan["inputs"]:
        shape = [batch if i == 0 and d < 0 else d for i, d in enumerate(spec["shape"])]
        out[spec["name"]] = rng.integers(spec["lo"], spec["hi"] + 1, size=shape).astype(spec["dtype"])
    return out


def profile(build_dir: str, threads: int | None = 1, batch: int = 1, iters: int = 20, warmup: int = 3,
            inputs: dict | None = None) -> Profile:
    """Time the library in `build_dir` plainly and instrumented (see the module docstring).
    `threads` only takes effect if this process has not run a TVM library before."""
    from dyadic.runtime.loader import load

    model = load(build_dir, threads=threads)
    q = inputs if inputs is not None else example_inputs(model.plan, batch)
    for _ in range(warmup):
        model.run_int(q)

    spent: dict[str, float] = {}
    calls: dict[str, int] = {}
    started: list[float] = []

    def instrument(func, name, before, ret, *args):
        if before:
            started.append(time.perf_counter())
        else:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started.pop()
            calls[name] = calls.get(name, 0) + 1
        return 0  # VMInstrumentReturnKind::kNoOp

    vm = model._vm
    plain, inst = [], []
    try:
        # plain and instrumented runs alternate, so that drift in the machine's load hits both alike
        for i in range(iters + 1):
            vm["set_instrument"](None)
            t = time.perf_counter()
            model.run_int(q)
            plain.append(time.perf_counter() - t)
            vm["set_instrument"](instrument)
            if i == 0:  # one untimed instrumented pass, so every function has been resolved
                model.run_int(q)
                spent.clear()
                calls.clear()
                continue
            t = time.perf_counter()
            model.run_int(q)
            inst.append(time.perf_counter() - t)
    finally:
        vm["set_instrument"](None)
    plain = plain[1:]

    by_fn = {k: (calls[k] // iters, spent[k] / iters * 1e3) for k in sorted(spent, key=lambda k: -spent[k])}
    groups: dict[str, float] = {}
    generic: dict[str, float] = {}
    for name, (_, ms) in by_fn.items():
        g = group_of(str(name))
        groups[g] = groups.get(g, 0.0) + ms
        if g == "generic":
            generic[op_of(str(name))] = generic.get(op_of(str(name)), 0.0) + ms
    return Profile(float(np.median(plain)) * 1e3, float(np.median(inst)) * 1e3, by_fn, groups,
                   dict(sorted(generic.items(), key=lambda kv: -kv[1])))


def format_profile(p: Profile, top: int = 12) -> str:
    lines = [f"plain run {p.plain_ms:.3f} ms (instrumented {p.instrumented_ms:.3f} ms)",
             f"inside dyadic's kernels: {p.kernel_ms:.3f} ms; outside: {100 * p.outside_share:.1f} % of the plain run"]
    for g in ("kernel", "generic", "runtime"):
        if g in p.by_group:
            lines.append(f"  {g:8s} {p.by_group[g]:9.3f} ms")
    if p.generic_ops:
        lines.append("generic lowering by op: " + ", ".join(f"{k} {v:.3f} ms" for k, v in
                                                             list(p.generic_ops.items())[:top]))
    lines.append("slowest functions:")
    for name, (n, ms) in list(p.by_function.items())[:top]:
        lines.append(f"  {name:40s} x{n:<4d} {ms:9.3f} ms")
    return "\n".join(lines)
