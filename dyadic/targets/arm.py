"""The arm target (aarch64 Linux, cross-compiled): core presets, the cross build, and deploy bundles.

Build: `relax.build` for `aarch64-linux-gnu` with the preset's `-mattr`; the library is linked with the
cross g++. Its dot-product instructions (sdot/udot/usdot/smmla...) are counted in the disassembly,
because they are the evidence of whether the int8 MACs use the core's int8 hardware.

Deploy bundles: a build directory a board can use as is, without Python or a TVM install.

An `--target arm` build directory holds, besides model.so and model.json:

    lib/libtvm_runtime.so, lib/libtvm_ffi.so   aarch64 TVM runtime (from the PyPI aarch64 wheels)
    bin/dyadic-run                              prebuilt aarch64 runner (source: dyadic/runtime/runner.cc)
    README.txt                                  how to run it on the board

Why the wheels: TVM publishes no standalone aarch64 runtime, but its manylinux aarch64 wheels hold
exactly the two runtime libraries, built from the same sources as the compiler we use. They are
fetched with `pip download` (no install) and cached under `dyadic.targets.toolchain.cache_dir()`. The runner
is compiled against the tvm-ffi headers of our own (host) tvm-ffi wheel, which are the same files.

The same runner runs the bundle here under qemu-user: that is the arm compile's bit-exact self-check.
Emulated timings mean nothing and are never reported.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dyadic.core.errors import TargetError, ToolchainError
from dyadic.targets import toolchain
from dyadic.targets.base import Built, Target, compare_outputs

TVM_VERSION = "0.27.0.post1"
TVM_FFI_VERSION = "0.1.14.post1"
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
RUNNER_SOURCE = Path(__file__).parents[1] / "runtime" / "runner.cc"
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


@dataclass(frozen=True)
class ArmCpu:
    """An aarch64 core. `mcpu` is LLVM's name for it; the features are the int8 extensions it has."""
    name: str
    dotprod: bool      #: Armv8.2 dot product: SDOT/UDOT (4 int8 products per int32 lane)
    i8mm: bool         #: Armv8.6 int8 matrix multiply: SMMLA/UMMLA/USMMLA and USDOT
    examples: str

    @property
    def mattr(self) -> tuple[str, ...]:
        return ("+neon",) + (("+dotprod",) if self.dotprod else ()) + (("+i8mm",) if self.i8mm else ())


ARM_CPUS: dict[str, ArmCpu] = {c.name: c for c in (
    ArmCpu("cortex-a76", dotprod=True, i8mm=False, examples="Raspberry Pi 5, RK3588 big cores"),
    ArmCpu("cortex-a55", dotprod=True, i8mm=False, examples="RK3588/RK3566 little cores, many phones"),
    ArmCpu("neoverse-n1", dotprod=True, i8mm=False, examples="AWS Graviton2, Ampere Altra"),
    ArmCpu("cortex-a72", dotprod=False, i8mm=False, examples="Raspberry Pi 4"),
    ArmCpu("neoverse-v1", dotprod=True, i8mm=True, examples="AWS Graviton3"),
)}
DEFAULT_ARM_CPU = "cortex-a76"
AARCH64_TRIPLE = "aarch64-linux-gnu"
ARM_DOT = ("sdot", "udot", "usdot", "sudot", "smmla", "ummla", "usmmla")


def count_arm_dot(so_path: str) -> dict[str, int]:
    objdump = toolchain.find(toolchain.AARCH64_OBJDUMP, "count instructions in an aarch64 library",
                             toolchain.APT_ARM)
    text = toolchain.run([objdump, "-d", "--no-show-raw-insn", so_path], "aarch64 objdump").stdout
    seen = Counter(parts[1].split()[0] for line in text.splitlines()
                   if len(parts := line.split("\t")) >= 2 and parts[1].strip())
    return {m: seen.get(m, 0) for m in ARM_DOT}


@dataclass(frozen=True)
class ArmTarget(Target):
    def export(self, built: Built, so_path: str) -> None:
        """Cross-links the aarch64 code with aarch64-linux-gnu-g++."""
        from tvm.support import cc

        cxx = toolchain.find(toolchain.AARCH64_CXX, "link an aarch64 library", toolchain.APT_ARM)
        built.executable.export_library(so_path, fcompile=cc.cross_compiler(cxx))

    def package(self, built: Built, out_dir: str, plan: dict) -> list[str]:
        return write_bundle(out_dir, plan)

    def count_instructions(self, built: Built, so_path: str) -> dict[str, int]:
        """Dot-product mnemonics in `objdump -d` of the library."""
        return count_arm_dot(so_path)

    def self_check(self, int_graph, build_dir: str, plan: dict, sample) -> str:
        """Run the bundle natively or under qemu-user and compare it with the int64 reference."""
        from dyadic.core.io import quantize_inputs
        from dyadic.runtime.bundle import can_run_bundle, run_bundle, runner_prefix

        if not can_run_bundle():
            return f"not run: qemu-aarch64-static not found ({toolchain.APT_ARM})"
        q = quantize_inputs(int_graph, sample)
        got, _ = run_bundle(build_dir, plan, q)
        how = "aarch64 natively" if not runner_prefix() else "aarch64 under qemu-user"
        compare_outputs(int_graph, q, got, self.kind)
        return f"bit-exact vs int64 reference ({len(next(iter(q.values())))} inputs, {how})"


def arm_target(cpu: str = DEFAULT_ARM_CPU) -> ArmTarget:
    if cpu not in ARM_CPUS:
        raise TargetError(f"unknown ARM CPU preset {cpu!r}; known: {', '.join(ARM_CPUS)}")
    c = ARM_CPUS[cpu]
    tgt = {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mcpu": c.name, "mattr": list(c.mattr)}
    return ArmTarget(f"arm:{c.name}", tgt, kind="arm", cpu=c)
