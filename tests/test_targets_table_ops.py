"""The op-table ops on the other targets: an exporter-style block built for arm (bit-exact under qemu)
and for cuda (the generic lowering through dlight, built to PTX/fatbin without a GPU)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from _tiny_onnx import bias, conv_w, f32, i64, make_model, node

import dyadic
from dyadic.compiler import quantize_inputs
from dyadic.core.config import CompileConfig
from dyadic.core.errors import ToolchainError
from dyadic.core.reference import run_reference
from dyadic.runtime import bundle
from dyadic.targets import toolchain


def _block():
    """hard-swish spelled out, squeeze-excite with HardSigmoid, a free-standing BN, channel shuffle,
    a max of two branches, ceil-mode pooling, a Softmax head."""
    rng = np.random.default_rng(7)
    c = 8
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]),
             node("Add", ["c0", "three"], "a"), node("Clip", ["a", "zero", "six"], "cl"), node("Mul", ["c0", "cl"], "m"),
             node("Div", ["m", "six"], "hs"),
             node("GlobalAveragePool", ["hs"], "g"), node("Conv", ["g", "W1", "B1"], "f"),
             node("HardSigmoid", ["f"], "gate", alpha=0.2, beta=0.5), node("Mul", ["hs", "gate"], "se"),
             node("Relu", ["se"], "r"), node("BatchNormalization", ["r", "bg", "bb", "bm", "bv"], "bn"),
             node("Reshape", ["bn", "s5"], "r5"), node("Transpose", ["r5"], "t5", perm=[0, 2, 1, 3, 4]),
             node("Reshape", ["t5", "s4"], "sh"), node("Max", ["sh", "hs"], "mx"),
             node("MaxPool", ["mx"], "p", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             node("Sigmoid", ["p"], "sg"), node("Mul", ["p", "sg"], "silu"),
             node("GlobalAveragePool", ["silu"], "gp"), node("Flatten", ["gp"], "fl"),
             node("Gemm", ["fl", "Wd", "Bd"], "z", transB=1), node("Softmax", ["z"], "out")]
    inits = {"W0": conv_w(rng, c, 3), "B0": bias(rng, c), "three": f32(3.0), "zero": f32(0.0), "six": f32(6.0),
             "W1": conv_w(rng, c, c, 1), "B1": bias(rng, c), "bg": f32(rng.uniform(0.5, 1.5, c)),
             "bb": f32(rng.normal(0, 0.2, c)), "bm": f32(rng.normal(0, 0.2, c)), "bv": f32(rng.uniform(0.5, 2, c)),
             "s5": i64(0, 2, c // 2, 9, 9), "s4": i64(0, c, 9, 9), "Wd": f32(rng.normal(0, 1, (5, c))),
             "Bd": bias(rng, 5)}
    return make_model(nodes, inits, in_shape=("N", 3, 9, 9)), rng


def _compile(target, out):
    model, rng = _block()
    calib = {"input": rng.normal(size=(16, 3, 9, 9)).astype(np.float32)}
    try:
        return dyadic.compile(model, str(out), calib, CompileConfig(target=target, quiet=True)), rng
    except ToolchainError as e:
        pytest.skip(f"toolchain unavailable: {e}")


@pytest.mark.skipif(shutil.which(toolchain.AARCH64_CXX) is None or not bundle.can_run_bundle(),
                    reason=f"aarch64 g++ / qemu-aarch64-static not installed ({toolchain.APT_ARM})")
def test_table_ops_arm_bit_exact_under_qemu(tmp_path):
    res, rng = _compile("arm:cortex-a76", tmp_path)
    assert res.plan["self_check"].startswith("bit-exact")
    ig = res.int_graph
    assert {"qlut", "qmul", "qaffine", "transpose", "qbinary", "qsoftmax"} <= {n.op for n in ig.nodes}
    q = quantize_inputs(ig, {"input": 3 * rng.normal(size=(3, 3, 9, 9)).astype(np.float32)})
    got, _ = bundle.run_bundle(str(tmp_path), res.plan, q)
    np.testing.assert_array_equal(got[0], run_reference(ig, q)[ig.outputs[0]])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_table_ops_cuda_build(tmp_path):
    res, _ = _compile("cuda:sm_75", tmp_path)
    assert (tmp_path / "cuda" / "kernels.ptx").is_file()
    assert res.plan["self_check"].startswith(("not run", "bit-exact"))


def _encoder(target, out):
    from _tiny_xfmr import encoder_block

    rng = np.random.default_rng(7)
    calib = {"ids": rng.integers(0, 50, (16, 8)).astype(np.int64)}
    try:
        return dyadic.compile(encoder_block(rng), str(out), calib, CompileConfig(target=target, quiet=True)), rng
    except ToolchainError as e:
        pytest.skip(f"toolchain unavailable: {e}")


@pytest.mark.skipif(shutil.which(toolchain.AARCH64_CXX) is None or not bundle.can_run_bundle(),
                    reason=f"aarch64 g++ / qemu-aarch64-static not installed ({toolchain.APT_ARM})")
def test_encoder_block_arm_bit_exact_under_qemu(tmp_path):
    """a transformer block for an i8mm core: its linears (16-bit inputs on the generic matmul, 8-bit
    ones on the kernels' GEMM), the products of two activations, the softmax's per-row reciprocal and
    the LayerNorm, bit-exact under qemu"""
    res, rng = _encoder("arm:neoverse-v1", tmp_path)
    assert res.plan["self_check"].startswith("bit-exact")
    ig = res.int_graph
    assert {"qlinear", "qmatmul", "qsoftmax", "qlayernorm"} <= {n.op for n in ig.nodes}
    q = quantize_inputs(ig, {"ids": rng.integers(0, 50, (3, 8)).astype(np.int64)})
    got, _ = bundle.run_bundle(str(tmp_path), res.plan, q)
    np.testing.assert_array_equal(got[0], run_reference(ig, q)[ig.outputs[0]])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_encoder_block_cuda_build(tmp_path):
    """a transformer block (LayerNorm's bit-by-bit square root included) builds for cuda: dlight's
    fallback inlines each fused function's elementwise steps, which without the per-round barriers
    made the square root one expression doubling per round (the build ran out of memory)"""
    res, _ = _encoder("cuda:sm_75", tmp_path)
    assert "qlayernorm" in {n.op for n in res.int_graph.nodes}
    assert (tmp_path / "cuda" / "kernels.ptx").is_file()
    assert res.plan["self_check"].startswith(("not run", "bit-exact"))


def test_encoder_block_with_chain_barriers_bit_exact_on_host(tmp_path, monkeypatch):
    """the cuda form of the generic lowering (a barrier after every square-root round) computes the
    same integers: built for this CPU with the barriers forced, the self-check is bit-exact"""
    import dataclasses

    from dyadic import targets

    resolve = targets.resolve
    monkeypatch.setattr(targets, "resolve",
                        lambda name: dataclasses.replace(resolve(name), inlines_elementwise_chains=True))
    res, rng = _encoder("host", tmp_path)
    assert res.plan["self_check"].startswith("bit-exact")
    ig = res.int_graph
    q = quantize_inputs(ig, {"ids": rng.integers(0, 50, (3, 8)).astype(np.int64)})
    np.testing.assert_array_equal(dyadic.load(str(tmp_path)).run_int(q)[0], run_reference(ig, q)[ig.outputs[0]])


def _dense_block():
    """ResNeXt/RegNet/DenseNet patterns: a grouped 3x3 conv (4-channel and 16-channel groups), a concat
    of the block input with the new features (nested twice, DenseNet-style), a pre-activation BN +
    ReLU before the 1x1 conv, a global-pool head."""
    rng = np.random.default_rng(11)
    c = 32
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]), node("Relu", ["c0"], "r0"),
             node("Conv", ["r0", "Wg4"], "g4", pads=[1, 1, 1, 1], group=8), node("Relu", ["g4"], "rg4"),
             node("Concat", ["r0", "rg4"], "cat1", axis=1),
             node("BatchNormalization", ["cat1", "bg", "bb", "bm", "bv"], "bn"), node("Relu", ["bn"], "rb"),
             node("Conv", ["rb", "W1"], "f1"),
             node("Conv", ["f1", "Wg16"], "g16", pads=[1, 1, 1, 1], group=2),
             node("Concat", ["r0", "rg4", "g16"], "cat2", axis=1),
             node("GlobalAveragePool", ["cat2"], "gp"), node("Flatten", ["gp"], "fl"),
             node("Gemm", ["fl", "Wd", "Bd"], "out", transB=1)]
    inits = {"W0": conv_w(rng, c, 3), "B0": bias(rng, c), "Wg4": conv_w(rng, c, 4), "W1": conv_w(rng, c, 2 * c, 1),
             "Wg16": conv_w(rng, c, 16), "bg": f32(rng.uniform(0.5, 1.5, 2 * c)),
             "bb": f32(rng.normal(0, 0.2, 2 * c)), "bm": f32(rng.normal(0, 0.2, 2 * c)),
             "bv": f32(rng.uniform(0.5, 2, 2 * c)), "Wd": f32(rng.normal(0, 1, (5, 3 * c))), "Bd": bias(rng, 5)}
    model = make_model(nodes, inits, in_shape=("N", 3, 10, 10))
    calib = {"input": rng.normal(size=(16, 3, 10, 10)).astype(np.float32)}
    return model, calib, rng


@pytest.mark.parametrize("target", [
    "host", pytest.param("arm:cortex-a76", marks=pytest.mark.skipif(
        shutil.which(toolchain.AARCH64_CXX) is None or not bundle.can_run_bundle(),
        reason=f"aarch64 g++ / qemu-aarch64-static not installed ({toolchain.APT_ARM})"))])
def test_grouped_conv_and_concat_block_bit_exact(target, tmp_path):
    """The block on the host and on an arm dotprod core (under qemu): bit-exact on fresh inputs; no
    aligning requant is left, the BN's ReLU is fused, and on x86 every conv (grouped ones included)
    runs on a dot-product kernel."""
    import platform

    model, calib, rng = _dense_block()
    try:
        res = dyadic.compile(model, str(tmp_path), calib, CompileConfig(target=target, quiet=True))
    except ToolchainError as e:
        pytest.skip(f"toolchain unavailable: {e}")
    assert res.plan["self_check"].startswith("bit-exact")
    ig = res.int_graph
    ops = [n.op for n in ig.nodes]
    assert "requant" not in ops and ops.count("concat") == 2 and ops.count("qaffine") == 1
    q = quantize_inputs(ig, {"input": rng.normal(size=(3, 3, 10, 10)).astype(np.float32)})
    want = run_reference(ig, q)[ig.outputs[0]]
    if target == "host":
        got = dyadic.load(str(tmp_path)).run_int(q)[0]
        if platform.machine() == "x86_64":
            generic = res.plan["target"]["kernel_coverage"].get("generic_ops", {})
            assert not {"qconv", "concat", "qaffine"} & set(generic), generic
    else:
        got = bundle.run_bundle(str(tmp_path), res.plan, q)[0][0]
        assert res.plan["target"]["dot_macs"]["fraction"] > 0.9
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
def test_byte_tables_run_on_vpermt2b_where_the_host_has_vbmi(tmp_path):
    """On an AVX512-VBMI host the block's 8-bit tables (hard-swish, sigmoids) are `vpermt2b` lookups
    (`intrin_vbmi`), and the library stays bit-exact; elsewhere no such instruction is emitted."""
    import subprocess

    import tvm

    from dyadic.backend.kernels import x86_has

    res, rng = _compile("host", tmp_path)
    assert res.plan["self_check"].startswith("bit-exact")
    asm = subprocess.run(["objdump", "-d", str(tmp_path / "model.so")], capture_output=True, text=True).stdout
    host = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}
    has = "vpermt2b" in asm or "vpermi2b" in asm
    assert has == x86_has(host, "avx512vbmi")
    ig = res.int_graph
    q = quantize_inputs(ig, {"input": 3 * rng.normal(size=(3, 3, 9, 9)).astype(np.float32)})
    np.testing.assert_array_equal(dyadic.load(str(tmp_path)).run_int(q)[0], run_reference(ig, q)[ig.outputs[0]])
