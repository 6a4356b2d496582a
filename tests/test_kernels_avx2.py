"""The int16-step conv / dense / batched-matmul kernels (`dyadic.backend.kernels.intrin_avx2`, `ConvSpec.pmadd`):
AVX2 `vpmaddwd` and, for 16-bit codes on AVX512-VNNI, `vpdpwssd` (`vnni16`). Bit-exact against the numpy
int64 reference (odd channels, padding, strides, dilation, fused residual add, dense, both requant forms,
forced tiles, operands at their bounds), and the library really holds `vpmaddwd` / `vpdpwssd`.
The AVX2 cases are built for a Haswell target (AVX2, no AVX-512), the vnni16 ones for this host; each runs
on this host and skips where it lacks the instructions.
The default compile on an AVX2-only host is checked in test_kernels_x86 (`vpmaddwd` in resnet20)."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from dyadic.backend.kernels.cpu_conv import conv_func  # noqa: E402
from dyadic.backend.kernels.spec import ConvSpec, choose_tile  # noqa: E402
from test_kernels_x86 import CONV_CASES, HASWELL, HOST, _run_conv, needs_avx2, needs_vnni  # noqa: E402

AVX2_CASES = [nm for nm in CONV_CASES if not nm.startswith("depthwise")]
# the int16 step on both isas: AVX2 `vpmaddwd` (a Haswell build) and AVX512-VNNI `vpdpwssd` (a host build)
INT16 = [pytest.param("avx2", id="avx2", marks=needs_avx2), pytest.param("vnni16", id="vnni16", marks=needs_vnni)]
TARGET = {"avx2": HASWELL, "vnni16": HOST}


@pytest.mark.parametrize("isa", INT16)
@pytest.mark.parametrize("name", AVX2_CASES)
def test_avx2_pmadd_kernel_bitexact(name, isa):
    """conv / dense on the int16 step (`intrin_avx2`: int8 weights sign-extended; two ymm per accumulator
    on AVX2, one zmm on vnni16)."""
    got, want = _run_conv(**CONV_CASES[name], isa=isa, target=TARGET[isa])
    assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", INT16)
@pytest.mark.parametrize("name,tile", [("3x3_packed_unsigned", (3, 1, 1)), ("1x1_stride2_signed_packed", (1, 2, 3)),
                                       ("residual_int32_form", (2, 2, 1)), ("3x3_pad1_signed_nchw_odd", (1, 1, 5))])
def test_avx2_pmadd_other_tiles(name, tile, isa):
    """Tiles the cost model does not pick (several channel blocks per step, rows of pixels)."""
    got, want = _run_conv(**CONV_CASES[name], isa=isa, target=TARGET[isa], tile=tile)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", INT16)
@pytest.mark.parametrize("name", ["3x3_packed_unsigned", "int64_requant_small_shifts", "dense_as_1x1"])
def test_avx2_pmadd_extreme_operands(name, isa):
    """Inputs and weights only at their bounds (255 x -128 products, long sums, saturating clips): where
    `vpmaddubsw` would saturate its int16 pair sums, `vpmaddwd` on widened operands stays exact."""
    got, want = _run_conv(**CONV_CASES[name], isa=isa, target=TARGET[isa], extreme=True)
    np.testing.assert_array_equal(got, want)


@needs_avx2
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
def test_avx2_kernel_disassembly_has_vpmaddwd(tmp_path):
    sp = ConvSpec(20, 8, 10, 40, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), True, "uint8", "uint8", 0, 255, None, True,
                  "avx2", choose_tile(40, 8, 10, isa="avx2"))
    assert sp.pmadd
    lib = tvm.compile(tvm.IRModule({"main": conv_func(sp)}), target=tvm.target.Target(HASWELL))
    lib.export_library(str(tmp_path / "k.so"))
    asm = subprocess.run(["objdump", "-d", str(tmp_path / "k.so")], capture_output=True, text=True).stdout
    assert asm.count("vpmaddwd") >= 4 and "zmm" not in asm


@needs_vnni
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
def test_vnni16_kernel_disassembly_has_vpdpwssd(tmp_path):
    """16-bit codes on an AVX512-VNNI target: the step is `vpdpwssd` on zmm. For AMD's tuning (znver4)
    LLVM keeps every one, so no `vpmaddwd`; for Intel's it splits most into `vpmaddwd` + `vpaddd` (a
    shorter accumulator chain: the same wrapping int32 sums), so there only some remain."""
    sp = ConvSpec(20, 8, 10, 40, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), True, "int32", "uint8", 0, 255, None, True,
                  "vnni16", choose_tile(40, 8, 10, isa="vnni16"))
    assert sp.pmadd and sp.operand_dtype == "int16"
    for tgt in ({"kind": "llvm", "mcpu": "znver4"}, HOST):
        lib = tvm.compile(tvm.IRModule({"main": conv_func(sp)}), target=tvm.target.Target(tgt))
        lib.export_library(str(tmp_path / "k.so"))
        asm = subprocess.run(["objdump", "-d", str(tmp_path / "k.so")], capture_output=True, text=True).stdout
        assert asm.count("vpdpwssd") >= 2, tgt
        if tgt["mcpu"] == "znver4":
            assert "vpmaddwd" not in asm


def _run_rows_dense(k, o, rows, din, extreme, seed=0, shifts=(34, 40), tile=None, post=None, isa="avx2"):
    """A linear's GEMM as a 1x1 conv on NHWC input whose width is the rows (`ops/matmul._cpu_dense`)."""
    from dyadic.backend.kernels import packing
    from dyadic.core.arith import requantize

    rng = np.random.default_rng(seed)
    lo, hi = (-32768, 32767) if din == "int32" else (np.iinfo(din).min, np.iinfo(din).max)
    x = rng.integers(lo, hi + 1, (2, 1, rows, k))
    wt = rng.integers(-128, 128, (o, k, 1, 1)).astype(np.int8)
    if extreme:  # every product at +-32768 x 127 or 32767 x -128, long sums of one sign
        x = np.where(rng.random(x.shape) < 0.5, lo, hi)
        wt = np.where(rng.random(wt.shape) < 0.5, -128, 127).astype(np.int8)
    x = x.astype(din)
    b = rng.integers(-3000, 3000, o).astype(np.int32)
    m = rng.integers(2 ** 30, 2 ** 31, o).astype(np.int64)
    s = rng.integers(*shifts, o).astype(np.int64)
    acc = x.reshape(-1, k).astype(np.int64) @ wt.reshape(o, k).T.astype(np.int64) + b
    want = requantize(acc, m, s, -32768, 32767).reshape(2, rows, o)
    if post is not None:  # a narrowing requant fused into the epilogue
        want = requantize(want, np.int64(post[0]), np.int64(post[1]), post[2], post[3])
    hi32 = packing.hi32_ok(s)
    sp = ConvSpec(k, 1, rows, o, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), False, din, "int32", -32768, 32767, None, hi32,
                  isa, tile or choose_tile(o, 1, rows, isa=isa), nhwc=True, post=post)
    assert sp.pmadd and sp.operand_dtype == "int16"
    lib = tvm.compile(tvm.IRModule({"main": conv_func(sp)}), target=tvm.target.Target(TARGET[isa]))
    op = sp.ocb * 16
    consts = [v.astype("int32" if hi32 else "int64") for v in packing.requant_consts(m, s, op, hi32)]
    args = [x, packing.weight(wt, sp), packing.bias(b, wt, sp.offset, op), *consts]
    out = tvm.runtime.empty((2, 1, rows, op), "int32")  # channels last
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], out)
    got = out.numpy().reshape(2, rows, op)[:, :, :o]
    return got, want


@pytest.mark.parametrize("isa", INT16)
@pytest.mark.parametrize("k,o,rows,din,extreme", [(40, 33, 7, "int32", False), (384, 48, 128, "int32", False),
                                                  (256, 20, 9, "int32", True), (37, 17, 5, "int8", False),
                                                  (64, 32, 13, "uint8", True)])
def test_avx2_rows_dense_bitexact(k, o, rows, din, extreme, isa):
    """A linear over rows (NHWC input, rows as width): 16-bit codes in int32 storage read as int16 pairs,
    and 8-bit input; with K = 256 at the 16-bit bounds a sum can reach 256 x 32768 x 128 = 2^30."""
    got, want = _run_rows_dense(k, o, rows, din, extreme, isa=isa)
    assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", INT16)
@pytest.mark.parametrize("shifts,post", [((34, 40), (1 << 30, 33, -4096, 4095)), ((36, 42), (1500000000, 32, -8192, 8191))])
def test_avx2_rows_dense_with_fused_requant(shifts, post, isa):
    """A query/key/value narrowed for its attention product: the requant fused into the linear's epilogue
    (`ConvSpec.post`), at the narrow code's bounds too."""
    got, want = _run_rows_dense(64, 48, 13, "int32", False, shifts=shifts, post=post, isa=isa)
    assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", INT16)
@pytest.mark.parametrize("g,i,k,j,adt,bdt,extreme", [
    (12, 128, 32, 128, "int8", "int8", False), (3, 128, 128, 32, "int32", "int8", False),
    (2, 7, 5, 19, "uint8", "int8", False), (1, 9, 37, 40, "int32", "int8", True), (4, 13, 64, 16, "int8", "int8", True),
    (3, 128, 32, 128, "int32", "int32", False), (2, 11, 30, 21, "int32", "int32", True)])
def test_avx2_batched_matmul_bitexact(g, i, k, j, adt, bdt, extreme, isa):
    """Q·Kᵀ and P·V (`cpu_bmm`): both operands packed at run time, K and J padded (K % 4, J % 16 != 0),
    16-bit codes in int32 storage on either side (A up to 2^15, B 11-bit: with K < 64 the int32 bound
    holds), symbolic batch; extreme: operands only at their bounds."""
    rng = np.random.default_rng(i * j + k)
    lo, hi = (0, 32767) if adt == "int32" else (np.iinfo(adt).min, np.iinfo(adt).max)
    blo, bhi = (-1024, 1023) if bdt == "int32" else (-128, 127)
    a = rng.integers(lo, hi + 1, (2, g, i, k))
    b = rng.integers(blo, bhi + 1, (2, g, k, j))
    if extreme:
        a, b = np.where(rng.random(a.shape) < 0.5, lo, hi), np.where(rng.random(b.shape) < 0.5, blo, bhi)
    a, b = a.astype(adt), b.astype(bdt)
    m, s = int(rng.integers(2 ** 30, 2 ** 31)), 36 if adt == "int32" else 30
    s += 6 if bdt == "int32" else 0
    _check_bmm(a, b, m, s, isa)


def _check_bmm(a: np.ndarray, b: np.ndarray, m: int, s: int, isa: str) -> None:
    """`cpu_bmm` on a [2, G, I, K] x [2, G, K, J] pair against the int64 product, requantized to 16 bits."""
    from dyadic.backend.kernels.cpu_bmm import BmmSpec, bmm_func
    from dyadic.core.arith import requantize

    _, g, i, k = a.shape
    j = b.shape[-1]
    want = requantize(np.matmul(a.astype(np.int64), b.astype(np.int64)), np.int64(m), np.int64(s), -32768, 32767)
    sp = BmmSpec(None, g, i, k, j, str(a.dtype), str(b.dtype), "int32", m, s, -32768, 32767, isa)
    lib = tvm.compile(tvm.IRModule({"main": bmm_func(sp)}), target=tvm.target.Target(TARGET[isa]))
    out = tvm.runtime.empty((2, g, i, sp.jb, 16), "int32")
    lib(tvm.runtime.tensor(a), tvm.runtime.tensor(b), out)
    got = out.numpy().reshape(2, g, i, -1)[..., :j]
    assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)


WIDE_CASES = {  # 16-bit codes in int32 storage (`passes/widen_activations`), on the AVX2 kernels
    "3x3_packed": dict(c=20, h=8, w=10, o=40, k=3, packed=True),
    "3x3_nchw_rowtaps": dict(c=5, h=9, w=7, o=21, k=3),
    "1x1_packed": dict(c=32, h=6, w=6, o=48, k=1, pads=(0, 0, 0, 0), packed=True),
    "depthwise_packed": dict(c=40, h=11, w=9, o=40, k=3, packed=True, depthwise=True),
    "depthwise_stride2_signed_out": dict(c=24, h=12, w=12, o=24, k=3, stride=(2, 2), packed=True, dout="int8",
                                         clip=(-128, 127), depthwise=True),
}


@pytest.mark.parametrize("isa", INT16)
@pytest.mark.parametrize("extreme", [False, True], ids=["random", "bounds"])
@pytest.mark.parametrize("name", list(WIDE_CASES))
def test_avx2_conv_on_16bit_codes_bitexact(name, extreme, isa):
    """convs whose input holds 16-bit codes in int32 storage: narrowed to int16 pairs for `vpmaddwd`
    (plain convs) or multiplied in int32 (depthwise), random and at the int16 bounds"""
    got, want = _run_conv(**WIDE_CASES[name], din="int32", isa=isa, target=TARGET[isa], extreme=extreme)
    assert len(np.unique(want)) > 3 or extreme, "degenerate case"
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa", INT16)
@pytest.mark.parametrize("k,extreme", [(128, True), (128, False), (77, True)])
def test_batched_matmul_probabilities_by_16bit_values(k, extreme, isa):
    """P·V with both operands 16-bit (`ops/matmul` a_rowsum): probability rows (codes >= 0 summing to at
    most Q + K/2, one-hot rows at Q included) against values at +-2^15; K max|a| max|b| would be 2^37,
    but every pair sum and partial sum stays below (Q + K/2) 2^15 < 2^31."""
    rng = np.random.default_rng(k)
    g, i, j, q = 3, 19, 40, 32767
    w = rng.exponential(1.0, (2, g, i, k)) ** 3
    a = np.floor(w / w.sum(-1, keepdims=True) * q + 0.5).astype(np.int64)  # at most Q + K/2 per row
    a[0, 0, 0] = 0
    a[0, 0, 0, 5] = q  # one-hot
    a[1, 0, 1] = q // k + 1  # flat, every code rounded up
    assert a.sum(-1).max() <= q + k // 2 + 1
    b = rng.integers(-32768, 32768, (2, g, k, j))
    if extreme:
        b = np.where(rng.random(b.shape) < 0.5, -32768, 32767)
        b[1, 0, :, 0] = -32768  # against the flat row: the largest sum of one sign
    _check_bmm(a.astype("int32"), b.astype("int32"), int(rng.integers(2 ** 30, 2 ** 31)), 46, isa)


# 16-bit codes with 9-16-bit weights (`passes/widen_weights`): int16 weight operands loaded as they are
WIDE_W_CASES = ["3x3_pad1_signed_nchw_odd", "3x3_packed_unsigned", "1x1_stride2_signed_packed",
                "7x7_stride2_first_layer", "int64_requant_small_shifts", "residual_int32_form", "dense_as_1x1"]


@pytest.mark.parametrize("isa", INT16)
@pytest.mark.parametrize("extreme", [False, True], ids=["random", "bounds"])
@pytest.mark.parametrize("name", WIDE_W_CASES)
def test_int16_weights_kernel_bitexact(name, extreme, isa):
    """int16 codes x int16 weights (up to 12 bits, as wide as each case's int32 bound allows: 9.5 bits
    for a 3x3 over 20 channels, 12 for a 1x1 over 17) on the int16 step; with `bounds` every code and
    weight sits at a bound, so the sums reach the int32 limit the verifier allows."""
    # accumulators near 2^31: shifts that bring them back into the output range (one below 33 keeps
    # the int64 requant form of the `int64_requant` case)
    case = {**CONV_CASES[name], "din": "int16", "shifts": (31, 60) if name.startswith("int64") else (50, 60)}
    got, want = _run_conv(**case, isa=isa, target=TARGET[isa], wbits=12, extreme=extreme)
    assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)


def test_int16_weights_need_the_int16_step():
    """`w16` is refused on a step that reads int8 weights (the VNNI byte step)."""
    with pytest.raises(ValueError, match="int16 step"):
        ConvSpec(20, 8, 10, 40, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), True, "uint8", "uint8", 0, 255, None, True,
                 "vnni", (1, 1, 8), w16=True)


DW_CASES = [nm for nm in CONV_CASES if nm.startswith("depthwise")]
W16 = dict(din="int32", shifts=(40, 46))  # 16-bit codes in int32 storage (`passes/widen_activations`)
DW16_CASES = {
    "dw16_3x3_packed": dict(c=40, h=11, w=9, o=40, k=3, packed=True, depthwise=True, **W16),
    "dw16_5x5_nchw_int64_requant": dict(c=5, h=9, w=9, o=5, k=5, pads=(2, 1, 2, 0), depthwise=True,
                                        **{**W16, "shifts": (31, 46)}),
    "dw16_dilated_residual": dict(c=32, h=8, w=9, o=32, k=3, pads=(2, 2, 2, 2), dil=(2, 2), packed=True, depthwise=True,
                                  residual=("int32", -32768, 32767, 40), dout="int32", clip=(-32768, 32767), **W16),
}


@needs_avx2
@pytest.mark.parametrize("extreme", [False, True], ids=["random", "bounds"])
@pytest.mark.parametrize("name", DW_CASES + list(DW16_CASES))
def test_avx2_depthwise_pmadd_bitexact(name, extreme):
    """Depthwise on AVX2 (`ConvSpec.dw_pmadd`): one `vpmaddwd` per tap of 8 channels, the weight zero-extended
    above its 16 bits, for 8-bit codes and 16-bit codes (narrowed from int32 storage by the copy), with
    dilation, strides, both requant forms and a fused residual add, also at every operand's bound."""
    case = {**CONV_CASES, **DW16_CASES}[name]
    got, want = _run_conv(**case, isa="avx2", target=HASWELL, extreme=extreme)
    if not extreme:
        assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)


@needs_avx2
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
@pytest.mark.parametrize("din", ["uint8", "int32"])
def test_avx2_depthwise_and_requant_instructions(tmp_path, din):
    """The AVX2 depthwise kernel multiplies on `vpmaddwd`, not `vpmulld`, and its int32 requant forms each
    32 x 32 product with one `vpmuldq`: no three-`vpmuludq` emulation of a 64-bit multiply."""
    sp = ConvSpec(32, 8, 10, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), True, din, "uint8", 0, 255, None, True,
                  "avx2", (1, 1, 4), True)
    assert sp.dw_pmadd
    lib = tvm.compile(tvm.IRModule({"main": conv_func(sp)}), target=tvm.target.Target(HASWELL))
    lib.export_library(str(tmp_path / "k.so"))
    asm = subprocess.run(["objdump", "-d", str(tmp_path / "k.so")], capture_output=True, text=True).stdout
    assert asm.count("vpmaddwd") >= 8 and "vpmulld" not in asm
    assert asm.count("vpmuldq") >= 4 and "vpmuludq" not in asm


@pytest.mark.parametrize("isa", INT16)
@pytest.mark.parametrize("extreme", [False, True], ids=["random", "bounds"])
@pytest.mark.parametrize("name", list(DW16_CASES))
def test_depthwise_int16_weights_bitexact(name, extreme, isa):
    """Depthwise convs on 16-bit codes with 9-12-bit weights (`passes/widen_weights`: PP-LCNetV3's
    re-parameterized depthwise kernels): int16 weight operands, on the AVX2 `vpmaddwd` tap step (the
    weight zero-extended above its 16 bits) and on AVX512-VNNI's 2-tap `vpdpwssd` step (`dw_pairs`; the
    dilated case on the int32 fallback), random and with every code and weight at a bound (sums at
    the int32 limit)."""
    case = {**DW16_CASES[name], "shifts": (32, 56) if "int64" in name else (46, 56)}  # a shift < 33: the int64 form
    got, want = _run_conv(**case, isa=isa, target=TARGET[isa], wbits=12, extreme=extreme)
    if not extreme:
        assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)
    sp = ConvSpec(32, 8, 10, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), True, "int32", "int32", -32768, 32767, None, True,
                  isa, (1, 1, 4), True, w16=True)
    assert sp.w_dtype == "int16" and sp.dw_pairs == (isa == "vnni16") and sp.dw_pmadd == (isa == "avx2")


def test_depthwise_int16_weights_vpdpwssd_codegen():
    """Built (not run) for an AVX512-VNNI cpu on any host: the 2-tap step reads int16 weights as they
    are (no `vpmovsxbw` widening, no `vpmulld` fallback), int8 weights are widened."""
    counts = {}
    for w16 in (False, True):
        sp = ConvSpec(32, 8, 10, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), True, "int32", "int32", -32768, 32767, None,
                      True, "vnni16", (1, 1, 4), True, w16=w16)
        assert sp.dw_pairs
        lib = tvm.compile(tvm.IRModule({"main": conv_func(sp)}),
                          target=tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server"}))
        asm = lib.mod.inspect_source("asm")
        counts[w16] = [asm.count(i) for i in ("vpdpwssd", "vpmovsxbw", "vpmulld")]
    assert counts[False][0] > 0 and counts[False][1] > 0 and counts[False][2] == 0
    assert counts[True][0] > 0 and counts[True][1:] == [0, 0]
