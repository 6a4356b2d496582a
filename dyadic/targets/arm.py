"""Deploy bundles: a build directory a board can use as is, without Python or a TVM install.

An `--target arm` build directory holds, besides model.so and model.json:

    lib/libtvm_runtime.so, lib/libtvm_ffi.so   aarch64 TVM runtime (from the PyPI aarch64 wheels)
    bin/dyadic-run                              prebuilt aarch64 runner (source: dyadic/runner.cc)
    README.txt                                  how to run it on the board

Why the wheels: TVM publishes no standalone aarch64 runtime, but its manylinux aarch64 wheels hold
exactly the two runtime libraries, built from the same sources as the compiler we use. They are
fetched with `pip download` (no install) and cached under `dyadic.toolchain.cache_dir()`. The runner
is compiled against the tvm-ffi headers of our own (host) tvm-ffi wheel, which are the same files.

The same runner runs the bundle here under qemu-user: that is the arm compile's bit-exact self-check.
Emulated timings mean nothing and are never reported.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from dyadic import toolchain
from dyadic.errors import ToolchainError

TVM_VERSION = "0.27.0.post1"
TVM_FFI_VERSION = "0.1.14.post1"
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
RUNNER_SOURCE = Path(__file__).with_name("runner.cc")
RUNTIME_LIBS = {"tvm/lib/libtvm_runtime.so": "libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so": "libtvm_ffi.so"}

_README = """dyadic deploy bundle for {preset} ({examples})

Run on the board (aarch64 Linux, glibc >= 2.34 and libstdc++ of GCC >= 11, e.g. Debian 12, Ubuntu 22.04, Raspberry Pi OS bookworm):
  bin/dyadic-run model.so -i input.bin:{in_dtype}:{in_shape} -o out -r 20
input.bin is the quantized input, raw {in_dtype} in NCHW order: q = clip(round_half_even(x / {in_scale}), {in_lo}, {in_hi})
(model.json "inputs"). The runner writes out0.bin (raw {out_dtype}, {out_shape}); logits = out0 * {out_scale}.
With -r N it prints the median and min wall time of N further runs of `main`.
Libraries: lib/ holds the aarch64 TVM runtime (apache-tvm {tvm}, apache-tvm-ffi {ffi}); bin/dyadic-run finds it via RPATH.
"""


def aarch64_runtime() -> Path:
    """A cached directory with lib/ (the two aarch64 runtime .so) and include/ (tvm-ffi headers)."""
    root = toolchain.cache_dir("aarch64-runtime", f"tvm-{TVM_VERSION}-ffi-{TVM_FFI_VERSION}")
    if all((root / "lib" / n).is_file() for n in RUNTIME_LIBS.values()):
        return root
    wheels = toolchain.cache_dir("wheels", WHEEL_PLATFORM)
    pins = {"apache_tvm": TVM_VERSION, "apache_tvm_ffi": TVM_FFI_VERSION}
    have = {d: next(iter(wheels.glob(f"{d}-{v}-*.whl")), None) for d, v in pins.items()}
    if None in have.values():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform",
               WHEEL_PLATFORM, "--python-version", "3.11", "-d", str(wheels), "--disable-pip-version-check",
               f"apache-tvm=={TVM_VERSION}", f"apache-tvm-ffi=={TVM_FFI_VERSION}"]
        try:
            toolchain.run(cmd, "pip download of the aarch64 TVM runtime wheels", timeout=900)
        except ToolchainError as e:
            raise ToolchainError(f"the arm bundle needs the aarch64 wheels of apache-tvm {TVM_VERSION} and "
                                 f"apache-tvm-ffi {TVM_FFI_VERSION} from PyPI, and fetching them failed ({e}). "
                                 f"Put both .whl files into {wheels} to work offline") from None
        have = {d: next(iter(wheels.glob(f"{d}-{v}-*.whl")), None) for d, v in pins.items()}
        if None in have.values():
            raise ToolchainError(f"pip download left no aarch64 wheels of apache-tvm/apache-tvm-ffi in {wheels}")
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=root.parent))
    for wheel in (have["apache_tvm"], have["apache_tvm_ffi"]):
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name in RUNTIME_LIBS:
                    (staging / "lib").mkdir(exist_ok=True)
                    (staging / "lib" / RUNTIME_LIBS[name]).write_bytes(z.read(name))
                elif name.startswith("tvm_ffi/include/") and not name.endswith("/"):
                    dest = staging / "include" / name[len("tvm_ffi/include/"):]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(z.read(name))
    if not all((staging / "lib" / n).is_file() for n in RUNTIME_LIBS.values()):
        shutil.rmtree(staging, ignore_errors=True)
        raise ToolchainError(f"the wheels in {wheels} do not hold {', '.join(RUNTIME_LIBS)}; delete them and retry")
    shutil.rmtree(root)
    os.replace(staging, root)
    return root


def aarch64_runner() -> Path:
    """bin/dyadic-run for aarch64, compiled once per runner source and runtime version (cached)."""
    rt = aarch64_runtime()
    key = hashlib.sha256(RUNNER_SOURCE.read_bytes() + TVM_FFI_VERSION.encode()).hexdigest()[:16]
    out = toolchain.cache_dir("aarch64-runner", key) / "dyadic-run"
    if out.is_file():
        return out
    cxx = toolchain.find(toolchain.AARCH64_CXX, "build the aarch64 runner", toolchain.APT_ARM)
    tmp = out.with_name(f"dyadic-run.{os.getpid()}")
    toolchain.run([cxx, "-std=c++17", "-O2", "-I", str(rt / "include"), str(RUNNER_SOURCE), "-o", str(tmp),
                   "-L", str(rt / "lib"), "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi",
                   "-Wl,-rpath,$ORIGIN/../lib"], "compiling the aarch64 runner")
    os.replace(tmp, out)
    return out


def write_bundle(out_dir: str, plan: dict) -> list[str]:
    """Add the runtime, runner and README of an arm build to `out_dir`; returns the added paths."""
    rt = aarch64_runtime()
    os.makedirs(os.path.join(out_dir, "lib"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "bin"), exist_ok=True)
    for name in RUNTIME_LIBS.values():
        shutil.copy2(rt / "lib" / name, os.path.join(out_dir, "lib", name))
    shutil.copy2(aarch64_runner(), os.path.join(out_dir, "bin", "dyadic-run"))
    i, o, t = plan["inputs"][0], plan["outputs"][0], plan["target"]
    cpu = t.get("cpu", {})
    with open(os.path.join(out_dir, "README.txt"), "w") as f:
        f.write(_README.format(preset=t["preset"], examples=cpu.get("examples", ""), in_dtype=i["dtype"],
                               in_shape="x".join(map(str, [1] + i["shape"][1:])), in_scale=i["scale"],
                               in_lo=i["lo"], in_hi=i["hi"], out_dtype=o["dtype"],
                               out_shape="x".join(map(str, [1] + o["shape"][1:])), out_scale=o["scale"],
                               tvm=TVM_VERSION, ffi=TVM_FFI_VERSION))
    return ["lib", "bin", "README.txt"]


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


def write_files(out_dir: str, built, plan: dict) -> list[str]:
    """The files a target adds beside model.so/model.json; returns their top-level names."""
    if built.target.kind == "arm":
        return write_bundle(out_dir, plan)
    for rel, text in built.files.items():  # cuda: kernels.cu and kernels.ptx, for inspection
        os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
        with open(os.path.join(out_dir, rel), "w") as f:
            f.write(text)
    return sorted({rel.split("/")[0] for rel in built.files})


def self_check_target(graph, build_dir: str, plan: dict, sample: dict[str, np.ndarray]) -> str:
    """Run a cross-built library where possible (arm: natively or under qemu; cuda: on a local GPU)
    and compare it with the int64 reference. Returns the status line recorded in the plan."""
    from dyadic.compiler import quantize_inputs
    from dyadic.errors import VerificationError
    from dyadic.reference import run_reference

    kind = plan["target"]["kind"]
    if kind == "arm" and not can_run_bundle():
        return f"not run: qemu-aarch64-static not found ({toolchain.APT_ARM})"
    if kind == "cuda":
        from dyadic import remote

        if not remote.local_cuda_available():
            return "not run: no CUDA GPU here (run benchmarks/gpu_check.py on a GPU machine)"
    q = quantize_inputs(graph, sample)
    if kind == "arm":
        got, _ = run_bundle(build_dir, plan, q)
        how = "aarch64 natively" if not runner_prefix() else "aarch64 under qemu-user"
    else:
        got, how = remote.run_local(os.path.join(build_dir, "model.so"), plan, q, "cuda")[0], "on the local GPU"
    want = run_reference(graph, q)
    for o, g in zip(graph.outputs, got):
        if g.shape != want[o].shape or not np.array_equal(g, want[o]):
            raise VerificationError(f"self-check: the {kind} library's output {o!r} differs from the int64 "
                                    f"reference in {int((g != want[o]).sum())} of {g.size} values")
    return f"bit-exact vs int64 reference ({len(next(iter(q.values())))} inputs, {how})"

