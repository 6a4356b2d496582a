"""The Intel AMX kernels (`dyadic.backend.kernels.amx_conv`, `amx_layout`, `intrin_amx`) and their plumbing.

On any x86 host (no AMX needed; the emulated runs need AVX-512):
  * the numpy model of the tile program (`amx_model.run_program`: `tdpbusd` semantics on the staged
    activations and packed B tiles) equals the int64 conv, +128 compensation included;
  * the kernels built with the TIR emulation of the tile instructions (`emulate=True`: the same
    staging, addressing, packing and epilogue, only the instruction bodies differ) are bit-exact
    against the reference, and a whole model compiled with them passes the compile's self-check;
  * the kernels and a conv + dense model cross-compiled for `-mcpu=sapphirerapids` hold `tdpbusd`,
    `tileloadd`, `ldtilecfg`; model.json records the layer families and the CPU flags; a CPU without
    AMX refuses such a library at load (`dyadic.load` and the deploy runner), never SIGILL;
  * DYADIC_KERNELS=vnni keeps the VNNI path.
On an AMX host (amx_int8 in /proc/cpuinfo) the same kernels also run for real, bit-exact; elsewhere
those tests skip and say why. Nothing here times anything."""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from _tiny_onnx import bias, conv_w, i64, make_model, node

tvm = pytest.importorskip("tvm")

from dyadic.backend.kernels import amx_conv, epilogue, packing, x86_isa  # noqa: E402
from dyadic.backend.kernels.amx_layout import AmxConvSpec, AmxMode, weight  # noqa: E402
from dyadic.backend.kernels.amx_model import run_program, tdpbusd  # noqa: E402
from dyadic.backend.kernels.intrin_amx import MNEMONICS, TileOps  # noqa: E402
from dyadic.core.graph import Node  # noqa: E402
from dyadic.core.reference import run_int_node  # noqa: E402
from dyadic.runtime.cpu import cpu_flags  # noqa: E402
from test_kernels_x86 import HOST, _out_hw, _packed, _unpacked  # noqa: E402

SPR = {"kind": "llvm", "mcpu": "sapphirerapids"}
FLAGS = cpu_flags() or set()
HAS_AMX = {"amx_int8", "amx_tile"} <= FLAGS
needs_x86 = pytest.mark.skipif(x86_isa(HOST) is None, reason="host CPU is not x86 with AVX2")
#: the emulated tile kernels run their 512-bit epilogue (int32x16 requant, the residual add's `vpdpwssd`
#: pairs) on this host: LLVM cannot lower the pairs for an AVX2-only CPU (it aborts the process), and
#: every CPU with AMX has AVX-512
needs_avx512 = pytest.mark.skipif(x86_isa(HOST) not in ("avx512", "vnni"),
                                  reason="host CPU has no AVX-512: the emulated AMX kernels' epilogue needs it")
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX (amx_int8/amx_tile not in /proc/cpuinfo): "
                               "the real-tile runs need Sapphire Rapids or later")
no_amx = pytest.mark.skipif(HAS_AMX, reason="this CPU has AMX: the refusal path is for CPUs without it")

CASES = {
    "odd_nchw_signed": dict(c=5, h=9, w=7, o=21, k=3),
    "packed_unsigned": dict(c=20, h=8, w=10, o=40, k=3, packed=True, din="uint8"),
    "c70_stride2_rows": dict(c=70, h=9, w=11, o=33, k=3, stride=(2, 2), packed=True),
    "1x1_stride2_staged": dict(c=17, h=9, w=7, o=33, k=1, stride=(2, 2), pads=(0, 0, 0, 0), packed=True),
    "asym_pads_dilation_int32_out": dict(c=64, h=9, w=8, o=32, k=3, pads=(0, 1, 2, 0), dil=(2, 1), dout="int32",
                                         clip=(-32768, 32767)),
    "int64_requant": dict(c=12, h=5, w=5, o=19, k=3, shifts=(31, 41)),
    "residual_int32_form": dict(c=16, h=7, w=9, o=32, k=3, packed=True, din="uint8", residual=("uint8", 0, 255, 31)),
    "residual_int64_form": dict(c=16, h=7, w=9, o=32, k=3, packed=True, din="uint8", residual=("int32", 0, 255, 40)),
    "residual_signed_out": dict(c=24, h=5, w=6, o=24, k=1, pads=(0, 0, 0, 0), packed=True, dout="int8",
                                clip=(-128, 127), residual=("int8", -128, 127, 30)),
    "residual_pairs": dict(c=16, h=7, w=9, o=32, k=3, packed=True, din="uint8", residual=("uint8", 0, 255, 31),
                           pairs=True, clip=(-128, 127)),
    "residual_pairs_signed": dict(c=24, h=5, w=6, o=24, k=1, pads=(0, 0, 0, 0), packed=True, dout="int8",
                                  clip=(-128, 127), residual=("int8", -128, 127, 32), pairs=True),
    "w4_packed": dict(c=40, h=7, w=6, o=48, k=3, w4=True, packed=True),
    "w4_rows_stride2": dict(c=33, h=9, w=9, o=16, k=3, stride=(2, 2), w4=True),
    "dense_odd": dict(c=37, h=1, w=1, o=10, k=1, pads=(0, 0, 0, 0), dout="int32", clip=(-32768, 32767), batch=19,
                      dense=True),
    "dense_w4": dict(c=130, h=1, w=1, o=40, k=1, pads=(0, 0, 0, 0), batch=3, dense=True, w4=True),
    "taps_stem_7x7_s2": dict(c=3, h=19, w=23, o=20, k=7, stride=(2, 2), pads=(3, 3, 3, 3), taps=True),
    "taps_3x3_packed_unsigned": dict(c=16, h=9, w=10, o=33, k=3, packed=True, din="uint8", taps=True),
    "taps_w4_residual": dict(c=5, h=8, w=7, o=32, k=3, w4=True, taps=True, packed=True, din="uint8",
                             residual=("uint8", 0, 255, 31), pairs=True, clip=(-128, 127)),
    "blocking_1x1": dict(c=20, h=8, w=10, o=40, k=3, packed=True, mb=1, nb=1),
    "batch1_tiny_map": dict(c=64, h=2, w=2, o=32, k=3, batch=1),
}


def _spec_and_data(c, h, w, o, k, stride=(1, 1), pads=(1, 1, 1, 1), dil=(1, 1), packed=False, din="int8",
                   dout="uint8", clip=(0, 255), shifts=(34, 40), batch=2, w4=False, dense=False, residual=None,
                   mb=None, nb=2, seed=0, pairs=False, taps=False, wide=False):
    rng = np.random.default_rng(seed)
    oh, ow = _out_hw(h, w, k, stride, pads, dil)
    lo, hi = (-32768, 32767) if wide else (np.iinfo(din).min, np.iinfo(din).max)
    x = rng.integers(lo, hi + 1, (batch, c, h, w)).astype(din)
    x.reshape(-1)[:2] = lo, hi  # both ends of the range
    wm = 8 if w4 else 128
    wt = rng.integers(-wm, wm, (o, c, k, k)).astype(np.int8)
    b = rng.integers(-3000, 3000, o).astype(np.int32)
    m = rng.integers(2 ** 30, 2 ** 31, o).astype(np.int64)
    s = rng.integers(*shifts, o).astype(np.int64)
    attrs = {"strides": stride, "pads": pads, "dilations": dil, "group": 1, "lo": clip[0], "hi": clip[1]}
    want = run_int_node(Node("qconv", "c", ("x",), ("y",), attrs, {"W": wt, "B": b, "M": m, "S": s}), [x], None)
    res_spec, extra = None, []
    if residual is not None:
        rdt, lo2, hi2, s2 = residual
        lo_r, hi_r = (-32768, 32767) if rdt == "int32" else (np.iinfo(rdt).min, np.iinfo(rdt).max)
        r = rng.integers(lo_r, hi_r + 1, (batch, o, oh, ow)).astype(rdt)
        # pairs: one multiplier at the largest value the signed split takes (2^31 - 2^15 - 1)
        mab = (np.array([2 ** 31 - 2 ** 15 - 1, rng.integers(2 ** 29, 2 ** 31 - 2 ** 15)]) if pairs
               else rng.integers(2 ** 29, 2 ** 31, 2)).astype(np.int64)
        r32 = epilogue.int32_ok(clip, rdt, s2)
        assert not pairs or (r32 and epilogue.pairs_ok(mab))
        q = epilogue.pair_consts(mab, s2) if pairs else epilogue.consts(mab, s2, r32)
        res_spec, extra = (rdt, lo2, hi2, r32), [_packed(r), q]
        want = run_int_node(Node("qadd", "a", ("y", "r"), ("z",), {"lo": lo2, "hi": hi2},
                                 {"M": mab, "S": np.array(s2, np.int64)}), [want, r], None)
    ocb = -(-o // 16)
    mb = (1 if dense or wide else 2) if mb is None else mb
    sp = AmxConvSpec(c, h, w, o, k, k, stride, pads, dil, packed, din, dout, clip[0], clip[1], res_spec,
                     packing.hi32_ok(s), w4, mb, nb if ocb % nb == 0 else 1, dense, res_pairs=pairs, taps=taps,
                     wide=wide)
    op = ocb * 16
    consts = [v.astype("int32" if sp.hi32 else "int64") for v in packing.requant_consts(m, s, op, sp.hi32)]
    args = [_packed(x) if packed else x, weight(wt, sp), packing.bias(b, wt, sp.offset, op), *consts, *extra]
    return sp, args, want, (x, wt, b)


def _run(case: dict, emulate: bool, target=None):
    sp, args, want, _ = _spec_and_data(**case)
    lib = tvm.compile(tvm.IRModule({"main": amx_conv.conv_func(sp, emulate)}), target=tvm.target.Target(target or HOST))
    n = args[0].shape[0]
    oh, ow = (1, 1) if sp.dense else sp.out_hw
    out = tvm.runtime.empty((n, sp.ocb, oh, ow, 16), sp.out_dtype)
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], out)
    return _unpacked(out.numpy(), sp.o), want


def _conv64(x, w, stride, pads, dil):
    """int64 cross-correlation, NCHW (the accumulator the tile program must reproduce)."""
    n, c, h, ww = x.shape
    o, _, kh, kw = w.shape
    t, l, b, r = pads
    xp = np.zeros((n, c, h + t + b, ww + l + r), np.int64)
    xp[:, :, t:t + h, l:l + ww] = x
    oh, ow = _out_hw(h, ww, kh, stride, pads, dil)
    out = np.zeros((n, o, oh, ow), np.int64)
    for ry in range(kh):
        for rx in range(kw):
            y0, x0 = ry * dil[0], rx * dil[1]
            patch = xp[:, :, y0:y0 + stride[0] * (oh - 1) + 1:stride[0], x0:x0 + stride[1] * (ow - 1) + 1:stride[1]]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, ry, rx].astype(np.int64))
    return out


# ------------------------------------------------------------------ numpy model (any host)
def test_tdpbusd_model_matches_its_definition():
    """`amx_model.tdpbusd` is the instruction's definition: C[m, n] += sum_k,i u8 A[m, 4k+i] * s8 B[k, 4n+i]."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (7, 64)).astype(np.uint8)
    b = rng.integers(-128, 128, (16, 64)).astype(np.int8)
    c = rng.integers(-1000, 1000, (7, 16)).astype(np.int32)
    want = c.astype(np.int64).copy()
    for m in range(7):
        for n in range(16):
            want[m, n] += sum(int(a[m, 4 * k + i]) * int(b[k, 4 * n + i]) for k in range(16) for i in range(4))
    tdpbusd(c, a, b)
    np.testing.assert_array_equal(c, want)


@pytest.mark.parametrize("name", list(CASES))
def test_tile_program_in_numpy_is_the_conv(name):
    """Staging (padding, 64-channel blocks, +128 for int8), the B-tile layout and the tile addressing
    (`tile_base`, `tap`, `b_tile`) reproduce the int64 conv exactly once the corrected bias is added."""
    case = CASES[name]
    sp, args, _, (x, wt, b) = _spec_and_data(**case)
    acc = run_program(sp, x, args[1])
    got = acc[:, :sp.o].astype(np.int64) + args[2][:sp.o].reshape(1, -1, 1, 1)
    want = _conv64(x, wt, sp.stride, sp.pads, sp.dil) + b.reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_weight_layout_is_the_b_tile_formula():
    """B tile of (ob, ry, rx, kb), element [k, n, i] = W[16 ob + n, 64 kb + 4 k + i, ry, rx] (zero padded)."""
    rng = np.random.default_rng(2)
    wt = rng.integers(-128, 128, (21, 70, 3, 2)).astype(np.int8)
    sp = AmxConvSpec(70, 8, 8, 21, 3, 2, (1, 1), (1, 1, 1, 1), (1, 1), False, "uint8", "uint8", 0, 255)
    flat = weight(wt, sp)
    assert flat.size == sp.ocb * 3 * 2 * sp.kb * 1024
    for ob, ry, rx, kb, k, n, i in [(0, 0, 0, 0, 0, 0, 0), (1, 2, 1, 1, 1, 4, 2), (1, 1, 0, 0, 15, 15, 3),
                                    (0, 2, 1, 1, 0, 3, 1)]:
        ch, ci = 16 * ob + n, 64 * kb + 4 * k + i
        want = wt[ch, ci, ry, rx] if ch < 21 and ci < 70 else 0
        assert flat[sp.b_tile(ob, ry, rx, kb) * 1024 + k * 64 + n * 4 + i] == want


def test_modes_and_tile_config():
    flat = AmxConvSpec(64, 56, 56, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), True, "uint8", "uint8", 0, 255)
    rows = AmxConvSpec(64, 56, 56, 128, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), True, "uint8", "uint8", 0, 255)
    assert flat.mode is AmxMode.FLAT and flat.m == 16 and flat.ws == 58
    assert rows.mode is AmxMode.ROWS and rows.m == 14 and rows.tpr == 2  # 28 = 2 x 14 output pixels
    cfg = TileOps(14, 2, 2).config_bytes()
    assert cfg[0] == 1 and cfg[1:16] == [0] * 15 and cfg[32:48] == [0] * 16
    assert [cfg[16 + 2 * t] for t in range(8)] == [64] * 8 and cfg[17:32:2] == [0] * 8
    assert cfg[48:56] == [14, 14, 14, 14, 14, 14, 16, 16] and cfg[56:] == [0] * 8  # C 0-3, A 4-5, B 6-7


# ------------------------------------------------------------------ TIR kernels, emulated tiles (any x86 host)
@needs_avx512
@pytest.mark.parametrize("name", list(CASES))
def test_emulated_kernel_bitexact(name):
    check_emulated(CASES[name])


def check_emulated(case: dict) -> None:
    """The kernel of `case` on emulated tiles equals the reference (on a non-degenerate output)."""
    got, want = _run(case, emulate=True)
    assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)


def check_real_tiles(case: dict) -> None:
    """The kernel of `case` on this CPU's AMX tiles equals the reference."""
    from dyadic.runtime.cpu import request_amx_tile_data

    request_amx_tile_data("the test")
    got, want = _run(case, emulate=False, target=SPR)
    np.testing.assert_array_equal(got, want)


def _disasm(case: dict) -> str:
    sp, *_ = _spec_and_data(**case)
    lib = tvm.compile(tvm.IRModule({"main": amx_conv.conv_func(sp)}), target=tvm.target.Target(SPR))
    return lib.mod.inspect_source("asm")


@pytest.mark.parametrize("name", ["packed_unsigned", "dense_odd", "w4_packed"])
def test_cross_compiled_kernel_holds_amx_instructions(name):
    """Built for -mcpu=sapphirerapids on any host: LLVM's asm of the kernel has the tile instructions,
    one `ldtilecfg` per parallel task body."""
    asm = _disasm(CASES[name])
    for mn in MNEMONICS:
        assert mn in asm, mn
    assert asm.count("ldtilecfg") == 1 and asm.count("tdpbusd") >= 1


# ------------------------------------------------------------------ real tiles (AMX hosts only)
@needs_amx
@pytest.mark.parametrize("name", list(CASES))
def test_amx_kernel_bitexact_on_amx(name):
    check_real_tiles(CASES[name])


# ------------------------------------------------------------------ whole models
def _model(rng):
    """conv 3->48 (few channels: AMX in TAPS mode), conv 48->64, conv 64->64 stride 2, 1x1 conv + residual add, global
    mean, dense 64->10."""
    inits = {"w1": conv_w(rng, 48, 3), "b1": bias(rng, 48), "w2": conv_w(rng, 64, 48), "b2": bias(rng, 64),
             "w3": conv_w(rng, 64, 64), "b3": bias(rng, 64), "w4": conv_w(rng, 64, 64, 1), "b4": bias(rng, 64),
             "fw": rng.normal(0, 0.1, (64, 10)).astype(np.float32), "fb": bias(rng, 10), "shape": i64(-1, 64)}
    nodes = [node("Conv", ["input", "w1", "b1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             node("Conv", ["r1", "w2", "b2"], "c2", pads=[1, 1, 1, 1]), node("Relu", ["c2"], "r2"),
             node("Conv", ["r2", "w3", "b3"], "c3", pads=[1, 1, 1, 1], strides=[2, 2]), node("Relu", ["c3"], "r3"),
             node("Conv", ["r3", "w4", "b4"], "c4"), node("Add", ["c4", "r3"], "a4"), node("Relu", ["a4"], "r4"),
             node("GlobalAveragePool", ["r4"], "g"), node("Reshape", ["g", "shape"], "f"),
             node("MatMul", ["f", "fw"], "mm"), node("Add", ["mm", "fb"], "out")]
    return make_model(nodes, inits, in_shape=("N", 3, 12, 10))


def _compile(tmp, target="host:sapphirerapids"):
    import dyadic
    from dyadic.core.config import CompileConfig

    rng = np.random.default_rng(0)
    calib = {"input": rng.standard_normal((8, 3, 12, 10)).astype(np.float32)}
    return dyadic.compile(_model(rng), str(tmp), calib, CompileConfig(target=target, quiet=True))


@pytest.fixture(scope="module")
def spr_build(tmp_path_factory):
    d = tmp_path_factory.mktemp("spr") / "build"
    res = _compile(d)
    return d, res.plan


def test_sapphirerapids_build_records_kernels_and_requirements(spr_build):
    d, plan = spr_build
    t = plan["target"]
    assert t["preset"] == "host:sapphirerapids" and t["tvm"]["mcpu"] == "sapphirerapids"
    assert t["kernel_coverage"]["layer_kernels"] == {"c1": "amx", "c2": "amx", "c3": "amx", "c4": "amx", "mm": "amx"}
    assert t["requires"]["amx_tile_data"] is True
    assert {"amx_int8", "amx_tile", "avx512_vnni"} <= set(t["requires"]["cpu_flags"])
    assert t["dot_macs"]["by_instruction"]["tdpbusd"] > 0
    assert json.loads((d / "model.json").read_text())["target"]["requires"] == t["requires"]
    if shutil.which("objdump"):
        assert t["instructions"]["tdpbusd"] > 0 and t["instructions"]["ldtilecfg"] >= 4  # one per AMX kernel
        asm = subprocess.run(["objdump", "-d", str(d / "model.so")], capture_output=True, text=True).stdout
        assert "tdpbusd" in asm and "tileloadd" in asm and "ldtilecfg" in asm
    if not HAS_AMX:
        assert plan["self_check"].startswith("not run: this CPU lacks amx_int8")


@no_amx
def test_load_refuses_amx_library_without_amx(spr_build):
    import dyadic
    from dyadic.core.errors import BuildDirError

    with pytest.raises(BuildDirError, match="lacks amx_int8.*SIGILL"):
        dyadic.load(str(spr_build[0]))


def test_check_cpu_and_requires_schema():
    from dyadic.core.errors import BuildDirError
    from dyadic.runtime.cpu import check_cpu

    req = {"cpu_flags": ["avx2", "avx512f"], "amx_tile_data": True}
    with pytest.raises(BuildDirError, match="lacks amx_int8, amx_tile, avx512f"):
        check_cpu(req, flags={"avx2"})
    check_cpu(req, flags={"avx2", "avx512f", "amx_int8", "amx_tile"})
    check_cpu({"cpu_flags": [], "amx_tile_data": False}, flags=set())


def test_vnni_override_keeps_the_previous_path(monkeypatch, tmp_path):
    from dyadic.core.errors import TargetError
    from dyadic.backend.kernels import x86_amx

    monkeypatch.setenv("DYADIC_KERNELS", "vnni")
    assert not x86_amx(SPR)
    t = _compile(tmp_path / "b").plan["target"]
    assert set(t["kernel_coverage"]["layer_kernels"].values()) == {"vnni"}
    assert t["requires"]["amx_tile_data"] is False and "tdpbusd" not in t["dot_macs"]["by_instruction"]
    monkeypatch.setenv("DYADIC_KERNELS", "amx-please")
    with pytest.raises(TargetError, match="DYADIC_KERNELS"):
        x86_amx(SPR)
    monkeypatch.delenv("DYADIC_KERNELS")
    assert x86_amx(SPR) and not x86_amx({"kind": "llvm", "mcpu": "icelake-server"})


@needs_avx512
def test_whole_model_on_emulated_tiles_is_bitexact(monkeypatch, tmp_path):
    """The lowering glue (packed in/out, the residual add fused into the AMX conv, dense on the batch
    axis) on this host: AMX dispatch forced, tiles emulated; the compile's self-check is bit-exact."""
    import dyadic.backend.kernels as kernels
    import dyadic.runtime.cpu as cpu

    monkeypatch.setattr(kernels, "x86_amx", lambda t: True)
    monkeypatch.setattr(amx_conv, "conv_func", functools.partial(amx_conv.conv_func, emulate=True))
    monkeypatch.setattr(cpu, "prepare", lambda *a, **k: None)  # the emulated library has no tile instruction
    plan = _compile(tmp_path / "b", target="host").plan
    assert plan["self_check"].startswith("bit-exact")
    assert [k for k, v in plan["target"]["kernel_coverage"]["layer_kernels"].items() if v == "amx"] == \
        ["c1", "c2", "c3", "c4", "mm"]


@needs_amx
def test_default_compile_uses_amx_on_amx_host(tmp_path):
    plan = _compile(tmp_path / "b", target="host").plan
    assert plan["self_check"].startswith("bit-exact")
    assert plan["target"]["kernel_coverage"]["families"]["amx"] == 5


# ------------------------------------------------------------------ deploy runner, peak, presets
@needs_x86
@no_amx
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_runner_refuses_amx_library_without_amx(spr_build, tmp_path):
    import importlib.util

    import tvm_ffi

    from dyadic.targets.arm import RUNNER_SOURCE

    ffi = os.path.dirname(tvm_ffi.__file__)
    tlib = os.path.join(os.path.dirname(importlib.util.find_spec("tvm").origin), "lib")
    exe = tmp_path / "dyadic-run"
    subprocess.run(["g++", "-std=c++17", "-O1", "-I", os.path.join(ffi, "include"), str(RUNNER_SOURCE), "-o", str(exe),
                    "-L", os.path.join(ffi, "lib"), "-L", tlib, "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi",
                    f"-Wl,-rpath,{os.path.join(ffi, 'lib')}:{tlib}"], check=True)
    np.zeros((1, 3, 12, 10), np.int8).tofile(tmp_path / "in.bin")
    proc = subprocess.run([str(exe), str(spr_build[0] / "model.so"), "-i", f"{tmp_path / 'in.bin'}:int8:1x3x12x10",
                           "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "AMX" in proc.stderr and "does not have" in proc.stderr, proc.stderr


def test_amx_peak_kernel_holds_tdpbusd():
    from dyadic.backend.kernels.peak import amx_kernel

    asm = tvm.compile(tvm.IRModule({"main": amx_kernel(2)}), target=tvm.target.Target(SPR)).mod.inspect_source("asm")
    assert asm.count("tdpbusd") >= 4 and asm.count("ldtilecfg") == 1


def test_cpu_presets():
    from dyadic.core.errors import TargetError
    from dyadic.targets import preset_name, resolve

    assert preset_name("host", "sapphirerapids") == "host:sapphirerapids"
    assert resolve("host:sapphirerapids").tvm_target["mcpu"] == "sapphirerapids"
    with pytest.raises(TargetError, match="known: sapphirerapids"):
        preset_name("host", "pentium4")
    with pytest.raises(TargetError, match="only applies"):
        preset_name("cuda", "sapphirerapids")


def test_native_target_follows_what_the_os_reports(monkeypatch):
    """A VM whose CPU model implies AMX but whose /proc/cpuinfo has no amx_int8 (hidden by the
    hypervisor) gets a native target without AMX (-mattr), so its default build needs no flag it lacks;
    a VM that shows a generic model LLVM takes for an older core (a Sapphire Rapids guest seen as
    rocketlake) but reports amx_int8 gets AMX added, so its default build uses the tiles it has."""
    import dyadic.runtime.cpu as cpu
    from dyadic.backend.kernels import x86_amx
    from dyadic.targets.host import _match_cpuinfo

    base = {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512vbmi"}
    monkeypatch.setattr(cpu, "cpu_flags", lambda: base)
    tgt = _match_cpuinfo({"kind": "llvm", "mcpu": "sapphirerapids"})
    assert tgt["mattr"] == ["-amx-int8", "-amx-tile"] and not x86_amx(tgt)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: base | {"amx_int8", "amx_tile"})
    assert "mattr" not in _match_cpuinfo({"kind": "llvm", "mcpu": "sapphirerapids"})
    tgt = _match_cpuinfo({"kind": "llvm", "mcpu": "rocketlake"})
    assert tgt["mattr"] == ["+amx-int8", "+amx-tile"] and x86_amx(tgt)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2", "avx512f", "avx512bw", "avx512_vnni"})
    assert _match_cpuinfo({"kind": "llvm", "mcpu": "rocketlake"})["mattr"] == ["-avx512vbmi"]
