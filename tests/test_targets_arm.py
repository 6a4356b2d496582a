"""--target arm: aarch64 cross-builds, the deploy bundle, instruction counts, and bit-exact under qemu.

Needs aarch64-linux-gnu-g++ (and qemu-aarch64-static for the runs) and PyPI once for the aarch64
runtime wheels (then cached); `.ci/run` installs the apt packages. Emulated timings are never checked.
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import dyadic
from dyadic.runtime import bundle
from dyadic.targets import arm
from dyadic import targets
from dyadic.targets import toolchain
from dyadic.cli.main import main
from dyadic.compiler import quantize_inputs
from dyadic.core.config import CompileConfig
from dyadic.core.errors import DyadicError, TargetError, ToolchainError
from dyadic.models import build
from dyadic.core.reference import run_reference

needs_cross = pytest.mark.skipif(shutil.which(toolchain.AARCH64_CXX) is None,
                                 reason=f"{toolchain.AARCH64_CXX} not installed ({toolchain.APT_ARM})")
needs_qemu = pytest.mark.skipif(not bundle.can_run_bundle(),
                                reason=f"qemu-aarch64-static not installed ({toolchain.APT_ARM})")


def _compile_arm(name, out, target, **kw):
    try:
        return dyadic.compile(build(name, **kw), str(out), None, CompileConfig(target=target, quiet=True))
    except ToolchainError as e:
        if "pip download" in str(e):
            pytest.skip(f"aarch64 runtime wheels unavailable: {e}")
        raise


@pytest.fixture(scope="module")
def r20_arm(tmp_path_factory):
    if shutil.which(toolchain.AARCH64_CXX) is None:
        pytest.skip(f"{toolchain.AARCH64_CXX} not installed ({toolchain.APT_ARM})")
    out = tmp_path_factory.mktemp("r20arm")
    return _compile_arm("resnet20", out, "arm"), str(out)


def _objdump_count(so, mnemonic):
    text = subprocess.run([toolchain.AARCH64_OBJDUMP, "-d", so], capture_output=True, text=True, check=True).stdout
    return len(re.findall(rf"\t{mnemonic}\t", text))


def test_presets_set_only_features_the_core_has():
    assert targets.ARM_CPUS["cortex-a72"].mattr == ("+neon",)  # Raspberry Pi 4: no dot product
    assert targets.ARM_CPUS["cortex-a76"].mattr == ("+neon", "+dotprod")
    assert targets.ARM_CPUS["neoverse-n1"].mattr == ("+neon", "+dotprod")
    assert targets.ARM_CPUS["cortex-a55"].mattr == ("+neon", "+dotprod")
    assert "+i8mm" in targets.ARM_CPUS["neoverse-v1"].mattr
    t = targets.resolve("arm:cortex-a55")
    assert t.kind == "arm" and not t.runs_here
    assert t.tvm_target == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55",
                            "mattr": ["+neon", "+dotprod"]}
    assert targets.resolve("arm").cpu.name == targets.DEFAULT_ARM_CPU
    assert targets.preset_name("arm", cpu="neoverse-n1") == "arm:neoverse-n1"


@pytest.mark.parametrize("args", [("arm:cortex-a99",), ("host:x",), ("riscv",)])
def test_unknown_presets_are_target_errors(args):
    with pytest.raises(TargetError):
        targets.resolve(*args)


def test_cpu_flag_needs_arm(tmp_path, capsys):
    assert main(["compile", "resnet20", "-o", str(tmp_path / "o"), "--target", "host", "--cpu", "cortex-a76"]) == 2
    err = capsys.readouterr().err
    # --cpu also picks x86 presets for --target host (sapphirerapids, ...): an ARM core there is named
    assert "unknown x86 CPU preset 'cortex-a76' for --target host" in err and "use --target arm" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_missing_tools_are_clear_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError, match="apt-get install g"):
        toolchain.find(toolchain.AARCH64_CXX, "link an aarch64 library", toolchain.APT_ARM)
    assert issubclass(ToolchainError, DyadicError)


def test_offline_wheel_fetch_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DYADIC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(ToolchainError, match="Put both .whl files into"):
        arm.aarch64_runtime()


def test_bundle_is_complete(r20_arm):
    res, out = r20_arm
    assert sorted(os.listdir(out)) == ["README.txt", "bin", "lib", "model.json", "model.so"]
    assert sorted(os.listdir(os.path.join(out, "lib"))) == ["libtvm_ffi.so", "libtvm_runtime.so"]
    for f in ("model.so", "bin/dyadic-run", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so"):
        with open(os.path.join(out, f), "rb") as fh:
            head = fh.read(20)
        assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183, f  # EM_AARCH64
    assert "bin/dyadic-run model.so -i input.bin:int8:1x3x32x32" in open(os.path.join(out, "README.txt")).read()
    assert res.plan["target"]["preset"] == "arm:cortex-a76"
    assert res.plan["target"]["tvm"]["mattr"] == ["+neon", "+dotprod"]


def test_instruction_counts_are_what_objdump_says(r20_arm):
    res, out = r20_arm
    counts = res.plan["target"]["instructions"]
    assert set(counts) >= {"sdot", "udot", "usdot", "smmla"}
    so = os.path.join(out, "model.so")
    for m in ("sdot", "udot", "usdot", "smmla"):
        assert counts[m] == _objdump_count(so, m), m
    # cortex-a76 has dotprod: every conv/dense MAC goes through the sdot kernels (dyadic.kernels)
    assert counts["sdot"] >= 20, counts
    dm = res.plan["target"]["dot_macs"]
    assert dm["isa"] == "sdot" and dm["macs"] == dm["total_macs"] > 40_000_000, dm


@needs_qemu
def test_resnet20_bit_exact_under_qemu(r20_arm):
    res, out = r20_arm
    assert res.plan["self_check"].startswith("bit-exact vs int64 reference (4 inputs, aarch64")
    ig = res.int_graph
    x = {ig.inputs[0]: np.random.default_rng(7).standard_normal((3, 3, 32, 32)).astype(np.float32) * 1.5}
    q = quantize_inputs(ig, x)
    got, _ = bundle.run_bundle(out, res.plan, q)
    want = run_reference(ig, q)[ig.outputs[0]]
    assert got[0].dtype == want.dtype and want.std() > 0
    np.testing.assert_array_equal(got[0], want)


@needs_qemu
def test_cli_run_arm_bundle_reports_no_emulated_timing(r20_arm, tmp_path, capsys):
    _, out = r20_arm
    data = tmp_path / "d.npz"
    r = np.random.default_rng(0)
    np.savez(data, images=r.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), labels=r.integers(0, 10, 4))
    assert main(["run", out, "--data", str(data), "--reps", "3"]) == 0
    stdout = capsys.readouterr().out
    assert "qemu-user (emulated aarch64; no timing)" in stdout and "top1" in stdout
    assert "timing:" not in stdout


@needs_cross
@needs_qemu
def test_resnet18_for_raspberry_pi4_has_no_dot_instructions_and_is_bit_exact(tmp_path):
    """cortex-a72 has no dot-product extension: any sdot/udot/usdot/smmla would be SIGILL on a Pi 4."""
    res = _compile_arm("resnet18", tmp_path, "arm:cortex-a72", image_size=64)
    assert res.plan["self_check"].startswith("bit-exact")
    assert sum(res.plan["target"]["instructions"].values()) == 0
    so = str(tmp_path / "model.so")
    assert all(_objdump_count(so, m) == 0 for m in ("sdot", "udot", "usdot", "smmla"))
    ig = res.int_graph
    q = quantize_inputs(ig, {ig.inputs[0]: np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)})
    got, _ = bundle.run_bundle(str(tmp_path), res.plan, q)
    np.testing.assert_array_equal(got[0], run_reference(ig, q)[ig.outputs[0]])


@needs_cross
@needs_qemu
@pytest.mark.parametrize("cpu,bits,instr,size", [("neoverse-v1", "8", "usmmla", 56), ("cortex-a76", "4", "sdot", 32),
                                                ("neoverse-v1", "4", "usmmla", 32)],
                         ids=["i8mm-usmmla-int8", "dotprod-sdot-int4", "i8mm-usmmla-int4"])
def test_dot_kernels_bit_exact_under_qemu(cpu, bits, instr, size, tmp_path):
    """i8mm cores run stride-1 convs on `usmmla` (2 pixels x 2 output channels x 8 inputs per
    instruction) and the others (stride 2, the first layer) on u8 x s8 `usdot`; dotprod cores `sdot`
    (unsigned input -128); with 4-bit weights unpacked from nibbles and 4-bit activations on both.
    A ResNet-18 covers 3x3/1x1, strided, odd-width (7x7 at 56 px) and residual-fused convs; checked
    bit-exact on fresh inputs beyond the compile's self-check."""
    from dyadic.core.config import BitMode

    cfg = CompileConfig(target=f"arm:{cpu}", bits=BitMode(bits), pin_first_last=bits == "8", quiet=True)
    try:
        res = dyadic.compile(build("resnet18", image_size=size), str(tmp_path), None, cfg)
    except ToolchainError as e:
        pytest.skip(f"aarch64 runtime wheels unavailable: {e}")
    counts, dm = res.plan["target"]["instructions"], res.plan["target"]["dot_macs"]
    assert counts[instr] > 0 and dm["isa"] == instr and dm["fraction"] == 1.0, (counts, dm)
    if instr == "usmmla":
        assert counts["usdot"] > 0 and counts["sdot"] == 0  # strided convs and the first layer
        assert set(dm["by_instruction"]) == {"usmmla", "usdot"}
        assert dm["by_instruction"]["usmmla"] > 0.5 * dm["total_macs"]  # 1-pixel-wide layers: usdot
    else:
        assert counts["usdot"] == counts["usmmla"] == 0 and set(dm["by_instruction"]) == {"sdot"}
    ig = res.int_graph
    if bits == "4":
        assert all(n.attrs["w_bits"] == 4 for n in ig.nodes if n.op in ("qconv", "qdense"))
    q = quantize_inputs(ig, {ig.inputs[0]: np.random.default_rng(5).standard_normal((2, 3, size, size))
                             .astype(np.float32)})
    got, _ = bundle.run_bundle(str(tmp_path), res.plan, q)
    want = run_reference(ig, q)[ig.outputs[0]]
    assert want.std() > 0
    np.testing.assert_array_equal(got[0], want)
