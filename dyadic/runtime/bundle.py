"""Running an arm deploy bundle (see `dyadic.targets.arm`) here: its prebuilt `bin/dyadic-run`, natively
on aarch64 or through qemu-user elsewhere. Emulated timings mean nothing and are never reported.
"""
from __future__ import annotations

import os
import platform
import tempfile

import numpy as np

from dyadic.core.errors import ToolchainError
from dyadic.targets import toolchain


def runner_prefix() -> list[str]:
    """How to start an aarch64 program here: directly on aarch64, else through qemu-user."""
    return [] if platform.machine() in ("aarch64", "arm64") else toolchain.qemu_command()


def can_run_bundle() -> bool:
    return platform.machine() in ("aarch64", "arm64") or toolchain.find_qemu() is not None


def run_bundle(bundle_dir: str, plan: dict, q_inputs: dict[str, np.ndarray], reps: int = 0,
               timeout: float = 600) -> tuple[list[np.ndarray], str]:
    """Run bin/dyadic-run of an arm bundle on integer inputs; returns (outputs, the runner's stdout)."""
    runner = os.path.join(bundle_dir, "bin", "dyadic-run")
    if not os.path.isfile(runner):
        raise ToolchainError(f"{bundle_dir} has no bin/dyadic-run: is it an `--target arm` build directory?")
    with tempfile.TemporaryDirectory(prefix="dyadic-run-") as d:
        cmd = runner_prefix() + [runner, os.path.join(bundle_dir, "model.so")]
        for spec in plan["inputs"]:
            a = np.ascontiguousarray(q_inputs[spec["name"]].astype(spec["dtype"]))
            path = os.path.join(d, f"in_{len(cmd)}.bin")
            a.tofile(path)
            cmd += ["-i", f"{path}:{spec['dtype']}:{'x'.join(map(str, a.shape))}"]
        cmd += ["-o", os.path.join(d, "out")] + (["-r", str(reps)] if reps else [])
        proc = toolchain.run(cmd, "the aarch64 runner" + (" under qemu" if runner_prefix() else ""), timeout=timeout)
        outs = []
        for k, line in enumerate(l for l in proc.stdout.splitlines() if l.startswith("output ")):
            _, _, dtype, shape, path = line.split()
            outs.append(np.fromfile(path, dtype=dtype).reshape([int(s) for s in shape.split("x")]))
        if len(outs) != len(plan["outputs"]):
            raise ToolchainError(f"the runner returned {len(outs)} outputs, the plan lists {len(plan['outputs'])}")
    return outs, proc.stdout
