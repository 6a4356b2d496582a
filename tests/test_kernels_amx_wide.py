"""16-bit activations on the AMX kernels (`amx_layout`, `wide`): codes split into a low (unsigned) and
a high (signed) byte plane, `tdpbusd` + `tdpbssd`, acc = 256 C_hi + C_lo.

Any x86 host (the emulated kernel: AVX-512 hosts): the numpy tile program and the kernel on emulated tiles equal the int64 conv at both
ends of the 16-bit range; the cross-compiled kernel holds `tdpbssd`; the lowering takes a 16-bit
layer only where the two-plane bound holds. AMX hosts: the same kernels on real tiles, and a whole
`--wide-activations all` model whose 16-bit convs run on AMX, bit-exact. Nothing here times anything."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from test_kernels_amx import (HAS_AMX, _conv64, _disasm, _spec_and_data, check_emulated, check_real_tiles,
                              needs_amx, needs_avx512)

tvm = pytest.importorskip("tvm")

from dyadic.backend.kernels.amx_layout import AmxConvSpec  # noqa: E402
from dyadic.backend.kernels.amx_model import run_program  # noqa: E402
from dyadic.backend.kernels.intrin_amx import TileOps  # noqa: E402

W = dict(din="int32", wide=True, shifts=(43, 48))
CASES = {
    "wide_3x3_nchw": dict(c=20, h=7, w=9, o=40, k=3, **W),
    "wide_packed_odd_ocb": dict(c=37, h=6, w=5, o=24, k=3, packed=True, **W),
    "wide_rows_stride2_int32_out": dict(c=70, h=9, w=11, o=32, k=3, stride=(2, 2), packed=True, dout="int32",
                                        clip=(-32768, 32767), **W),
    "wide_1x1_stride2": dict(c=17, h=9, w=7, o=33, k=1, stride=(2, 2), pads=(0, 0, 0, 0), packed=True, **W),
    "wide_int64_requant": dict(c=12, h=5, w=5, o=19, k=3, **{**W, "shifts": (31, 48)}),
    "wide_residual": dict(c=16, h=7, w=9, o=32, k=3, packed=True, residual=("int32", 0, 255, 40), **W),
    "wide_w4": dict(c=40, h=7, w=6, o=48, k=3, w4=True, packed=True, **W),
    "wide_dense": dict(c=130, h=1, w=1, o=40, k=1, pads=(0, 0, 0, 0), batch=19, dense=True, dout="int32",
                       clip=(-32768, 32767), **W),
}


@pytest.mark.parametrize("name", list(CASES))
def test_two_plane_tile_program_is_the_conv(name):
    sp, args, _, (x, wt, b) = _spec_and_data(**CASES[name])
    assert sp.wide and sp.offset == 0 and sp.pix_bytes == 2 * sp.cp
    acc = run_program(sp, x, args[1])
    got = acc[:, :sp.o].astype(np.int64) + args[2][:sp.o].reshape(1, -1, 1, 1)
    want = _conv64(x, wt, sp.stride, sp.pads, sp.dil) + b.reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_two_plane_tile_config():
    """Planes x (1 x 2 C + 1 A) + 2 B = the 8 tiles: C lo 0-1, C hi 2-3, A lo 4, A hi 5, B 6-7."""
    ops = TileOps(16, 1, 2, planes=2)
    assert [ops.c(0, 0), ops.c(0, 1), ops.c(0, 0, 1), ops.c(0, 1, 1), ops.a(0), ops.a(0, 1), ops.b(0), ops.b(1)] \
        == list(range(8))
    assert ops.config_bytes()[48:56] == [16] * 8
    with pytest.raises(AssertionError):
        TileOps(16, 2, 2, planes=2)
    with pytest.raises(AssertionError):  # two A tiles per plane do not fit beside 8 C tiles
        AmxConvSpec(16, 8, 8, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), False, "int32", "uint8", 0, 255, mb=2, wide=True)


@needs_avx512
@pytest.mark.parametrize("name", list(CASES))
def test_two_plane_emulated_kernel_bitexact(name):
    check_emulated(CASES[name])


def test_two_plane_kernel_holds_tdpbssd():
    asm = _disasm(CASES["wide_packed_odd_ocb"])
    assert asm.count("tdpbssd") >= 1 and asm.count("tdpbusd") >= 1 and asm.count("ldtilecfg") == 1


@needs_amx
@pytest.mark.parametrize("name", list(CASES))
def test_two_plane_kernel_bitexact_on_amx(name):
    check_real_tiles(CASES[name])


def _wide_build(tmp, target: str, **config):
    import dyadic
    from dyadic.core.config import CompileConfig, WideActivations
    from test_kernels_amx import _model

    rng = np.random.default_rng(0)
    calib = {"input": rng.standard_normal((8, 3, 12, 10)).astype(np.float32)}
    cfg = CompileConfig(target=target, quiet=True, wide_activations=WideActivations.ALL, **config)
    return dyadic.compile(_model(rng), str(tmp), calib, cfg).plan


def test_wide_model_puts_16bit_convs_on_amx(tmp_path):
    """`--wide-activations all` for -mcpu=sapphirerapids: every conv after the first (3 input channels,
    below `AmxPolicy.min_wide_channels`: on `vpdpwssd`) and the dense read 16-bit codes, on AMX;
    tdpbssd in the library.
    On an AMX host the compile's self-check runs it, bit-exact."""
    plan = _wide_build(tmp_path / "b", "host:sapphirerapids")
    kinds = plan["target"]["kernel_coverage"]["layer_kernels"]
    assert kinds == {"c1": "vnni16", "c2": "amx", "c3": "amx", "c4": "amx", "mm": "amx"}, kinds
    if shutil.which("objdump"):
        assert plan["target"]["instructions"]["tdpbssd"] >= 3  # one per 16-bit AMX kernel
    if HAS_AMX:
        assert plan["self_check"].startswith("bit-exact"), plan["self_check"]


def test_wide_weights_leave_the_tiles_for_vpdpwssd(tmp_path):
    """With `--wide-weights auto` the layers that get 9-12-bit weights cannot run on the byte planes
    (`tdpbusd` / `tdpbssd` read int8 weights): for -mcpu=sapphirerapids they are built on `vpdpwssd`
    with int16 weight operands, the rest stay on AMX. On an AMX host the self-check runs it, bit-exact."""
    from dyadic.core.config import WideWeights

    plan = _wide_build(tmp_path / "b", "host:sapphirerapids", wide_weights=WideWeights.AUTO)
    kinds = plan["target"]["kernel_coverage"]["layer_kernels"]
    wbits = {l["name"]: l["w_bits"] for l in plan["layers"] if "w_bits" in l}
    wide = {n for n, b in wbits.items() if b > 8}
    assert wide, wbits
    assert all(kinds[n] == "vnni16" for n in wide), (kinds, wbits)
    assert all(kinds[n] == "amx" for n, b in wbits.items() if b == 8 and n != "c1"), (kinds, wbits)
    if HAS_AMX:
        assert plan["self_check"].startswith("bit-exact"), plan["self_check"]
