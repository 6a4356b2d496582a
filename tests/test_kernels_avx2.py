"""AVX2 `vpmaddwd` conv / dense kernels (`dyadic.backend.kernels.intrin_avx2`, `ConvSpec.pmadd`): bit-exact
against the numpy int64 reference (odd channels, padding, strides, dilation, fused residual add, dense,
both requant forms, forced tiles, operands at their bounds), and the library really holds `vpmaddwd`.
Built for a Haswell target (AVX2, no AVX-512), run on this host: skipped where it has no AVX2.
The default compile on an AVX2-only host is checked in test_kernels_x86 (`vpmaddwd` in resnet20)."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from dyadic.backend.kernels.cpu_conv import conv_func  # noqa: E402
from dyadic.backend.kernels.spec import ConvSpec, choose_tile  # noqa: E402
from test_kernels_x86 import CONV_CASES, HASWELL, _run_conv, needs_avx2  # noqa: E402

AVX2_CASES = [nm for nm in CONV_CASES if not nm.startswith("depthwise")]


@needs_avx2
@pytest.mark.parametrize("name", AVX2_CASES)
def test_avx2_pmadd_kernel_bitexact(name):
    """conv / dense on AVX2 `vpmaddwd` (`intrin_avx2`: int16 weights, two ymm per accumulator)."""
    got, want = _run_conv(**CONV_CASES[name], isa="avx2", target=HASWELL)
    assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)


@needs_avx2
@pytest.mark.parametrize("name,tile", [("3x3_packed_unsigned", (3, 1, 1)), ("1x1_stride2_signed_packed", (1, 2, 3)),
                                       ("residual_int32_form", (2, 2, 1)), ("3x3_pad1_signed_nchw_odd", (1, 1, 5))])
def test_avx2_pmadd_other_tiles(name, tile):
    """Tiles the cost model does not pick (several channel blocks per step, rows of pixels)."""
    got, want = _run_conv(**CONV_CASES[name], isa="avx2", target=HASWELL, tile=tile)
    np.testing.assert_array_equal(got, want)


@needs_avx2
@pytest.mark.parametrize("name", ["3x3_packed_unsigned", "int64_requant_small_shifts", "dense_as_1x1"])
def test_avx2_pmadd_extreme_operands(name):
    """Inputs and weights only at their bounds (255 x -128 products, long sums, saturating clips): where
    `vpmaddubsw` would saturate its int16 pair sums, `vpmaddwd` on widened operands stays exact."""
    got, want = _run_conv(**CONV_CASES[name], isa="avx2", target=HASWELL, extreme=True)
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
