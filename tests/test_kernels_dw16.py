"""Depthwise convs on 16-bit codes on AVX512-VNNI (`ConvSpec.dw_pairs`, `intrin_avx2.DW_PAIRS_INTRIN`):
pairs of horizontal taps of 16 channels on one `vpdpwssd`. Bit-exact against the numpy int64 reference
(odd kernel widths padded to whole pairs, strides, asymmetric padding, a fused residual add, both requant
forms, inputs and weights at their bounds); the library holds `vpdpwssd`; width dilation keeps the
int32 fallback. Runs where the host has AVX512-VNNI, skips elsewhere."""
from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from dyadic.backend.kernels.cpu_conv import conv_func  # noqa: E402
from dyadic.backend.kernels.spec import ConvSpec, kernel_tile  # noqa: E402
from test_kernels_x86 import HOST, _out_hw, _run_conv, needs_vnni  # noqa: E402

W = dict(din="int32", depthwise=True, isa="vnni16", shifts=(40, 46))
CASES = {
    "3x3_packed": dict(c=40, h=11, w=9, o=40, k=3, packed=True, **W),
    "3x3_stride2_int8_out": dict(c=24, h=12, w=13, o=24, k=3, stride=(2, 2), packed=True, dout="int8",
                                 clip=(-128, 127), **W),
    "5x5_nchw_asym_pads": dict(c=5, h=9, w=9, o=5, k=5, pads=(2, 1, 2, 0), **{**W, "shifts": (31, 46)}),
    "3x3_int32_out": dict(c=32, h=7, w=8, o=32, k=3, packed=True, dout="int32", clip=(-32768, 32767), **W),
    "3x3_dilated_fallback": dict(c=20, h=9, w=9, o=20, k=3, pads=(2, 2, 2, 2), dil=(2, 2), packed=True, **W),
    "3x3_residual": dict(c=32, h=6, w=7, o=32, k=3, packed=True, residual=("int32", -32768, 32767, 40),
                         dout="int32", clip=(-32768, 32767), **W),
}


@needs_vnni
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("extreme", [False, True], ids=["random", "bounds"])
def test_dw_pairs_kernel_bitexact(name, extreme):
    """On the register tile the lowering picks (`spec.kernel_tile`)."""
    case = CASES[name]
    oh, ow = _out_hw(case["h"], case["w"], case["k"], case.get("stride", (1, 1)), case.get("pads", (1, 1, 1, 1)),
                     case.get("dil", (1, 1)))
    got, want = _run_conv(**case, extreme=extreme, tile=kernel_tile("vnni16", case["o"], oh, ow, True))
    if not extreme:
        assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)


def _spec(dil=(1, 1), k=3):
    return ConvSpec(32, 8, 10, 32, k, k, (1, 1), (1, 1, 1, 1), dil, True, "int32", "int32", -32768, 32767, None, True,
                    "vnni16", (1, 1, 4), True)


def test_dw_pairs_geometry():
    sp = _spec(k=5)
    assert sp.dw_pairs and sp.taps == 2 and sp.kwp == 6 and sp.operand_dtype == "int16" and sp.offset == 0
    assert sp.weight_shape() == (2, 5, 3, 16, 2)
    assert not _spec(dil=(1, 2)).dw_pairs  # the taps of a pair must be adjacent pixels


@needs_vnni
def test_dw_pairs_kernel_holds_vpdpwssd():
    lib = tvm.compile(tvm.IRModule({"main": conv_func(_spec())}), target=tvm.target.Target(HOST))
    asm = lib.mod.inspect_source("asm")
    assert "vpdpwssd" in asm or "vpmaddwd" in asm  # Intel tuning may split it (test_kernels_avx2)
    assert "vpmulld" not in asm  # not the int32 fallback
