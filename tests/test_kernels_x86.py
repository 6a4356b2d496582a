"""The x86 kernel layer (`dyadic.kernels`): bit-exact against the numpy int64 reference on random
shapes (odd channel counts, padding, strides, dilation, signed and unsigned input, fused residual
add, both requant forms, VNNI, AVX2 `vpmaddwd` and the int32-lane fallback), chosen from the target's
features, and really used by the default compile (the library's disassembly holds `vpdpbusd`, or
`vpmaddwd` on an AVX2-only host).
No timing here: speed is measured with `dyadic bench`."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from _tiny_onnx import bias, conv_w, make_model, node

tvm = pytest.importorskip("tvm")

from dyadic.core.graph import Node  # noqa: E402
from dyadic.backend.kernels import epilogue, packing, x86_isa  # noqa: E402
from dyadic.backend.kernels.spec import ConvSpec, choose_tile  # noqa: E402
from dyadic.backend.kernels.cpu_conv import conv_func  # noqa: E402
from dyadic.core.reference import run_int_node  # noqa: E402
from dyadic.targets import TargetSpec  # noqa: E402

HOST = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}
HOST_ISA = x86_isa(HOST)
needs_vnni = pytest.mark.skipif(HOST_ISA != "vnni", reason="host CPU has no AVX512-VNNI")
needs_avx2 = pytest.mark.skipif(HOST_ISA is None, reason="host CPU is not x86 with AVX2")
HASWELL = {"kind": "llvm", "mcpu": "haswell"}  # AVX2, no AVX-512: the fallback kernels


def _out_hw(h, w, k, stride, pads, dil):
    oh = (h + pads[0] + pads[2] - (k - 1) * dil[0] - 1) // stride[0] + 1
    ow = (w + pads[1] + pads[3] - (k - 1) * dil[1] - 1) // stride[1] + 1
    return oh, ow


def _packed(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    cb = -(-c // 16)
    full = np.zeros((n, cb * 16, h, w), x.dtype)
    full[:, :c] = x
    return np.ascontiguousarray(full.reshape(n, cb, 16, h, w).transpose(0, 1, 3, 4, 2))


def _unpacked(y: np.ndarray, c: int) -> np.ndarray:
    n, cb, h, w, _ = y.shape
    return y.transpose(0, 1, 4, 2, 3).reshape(n, cb * 16, h, w)[:, :c]


def _run_conv(c, h, w, o, k, stride=(1, 1), pads=(1, 1, 1, 1), dil=(1, 1), packed=False, din="int8",
              dout="uint8", clip=(0, 255), residual=None, shifts=(34, 40), isa="vnni", target=None,
              depthwise=False, batch=2, seed=0, w4=False, tile=None, extreme=False, groups=1, wbits=8, pre=False):
    """Build one kernel, run it on random data, return (got, want) in NCHW (extreme: every input and
    weight at a bound of its type, the largest products and sums; tile: force the register tile;
    wbits > 8: int16 weights (`ConvSpec.w16`) as wide as the int32 bound allows over this input, up
    to wbits)."""
    rng = np.random.default_rng(seed)
    o = c if depthwise else o
    oh, ow = _out_hw(h, w, k, stride, pads, dil)
    info = np.iinfo("int16" if din == "int32" else din)  # int32 storage holds 16-bit codes
    x = rng.integers(info.min, info.max + 1, (batch, c, h, w)).astype(din)
    wmax, wdt = (8 if w4 else 128), np.int8
    if wbits > 8:  # |x| max_o sum|W[o]| + max|B| < 2^31 at every weight bound
        wmax = min(1 << (wbits - 1), (2 ** 31 - 3000) // (max(-info.min, info.max) * (c // groups) * k * k))
        assert wmax > 128, "the case leaves no room for weights wider than 8 bits"
        wdt = np.int16
    wt = rng.integers(-wmax, wmax, (o, 1 if depthwise else c // groups, k, k)).astype(wdt)
    gcb = max(16, c // groups) // 16 if groups > 1 else 0  # `ConvSpec.gcb`: square super-groups
    if extreme:
        x = np.where(rng.random(x.shape) < 0.5, info.min, info.max).astype(din)
        wt = np.where(rng.random(wt.shape) < 0.5, -wmax, wmax - 1).astype(wdt)
    b = rng.integers(-3000, 3000, o).astype(np.int32)
    m = rng.integers(2 ** 30, 2 ** 31, o).astype(np.int64)
    s = rng.integers(*shifts, o).astype(np.int64)
    attrs = {"strides": stride, "pads": pads, "dilations": dil, "group": c if depthwise else groups,
             "lo": clip[0], "hi": clip[1]}
    want = run_int_node(Node("qconv", "c", ("x",), ("y",), attrs, {"W": wt, "B": b, "M": m, "S": s}), [x], None)
    hi32, shift = packing.hi32_ok(s), 0
    if pre:  # the int32 requant of shifts below 33 (`packing.hi32_preshift`)
        shift = packing.hi32_preshift(s, wt, b, max(-info.min, info.max))
        assert shift and not hi32, "the case does not exercise the pre-shift"
        hi32 = True
    if tile is None:
        pm = isa in ("avx2", "vnni16") and not depthwise and not w4  # the int16 step: the lowering's tile
        to = 16 if depthwise else 16 * gcb if gcb else o
        tile = choose_tile(to, oh, ow, isa=isa) if isa == "vnni" or pm else (1, 1, 4)
    res_spec, extra = None, []
    if residual is not None:
        rdt, lo2, hi2, s2 = residual
        lo_r, hi_r = (-32768, 32767) if rdt == "int32" else (np.iinfo(rdt).min, np.iinfo(rdt).max)  # 16-bit
        r = rng.integers(lo_r, hi_r + 1, (batch, o, oh, ow)).astype(rdt)
        mab = rng.integers(2 ** 29, 2 ** 31, 2).astype(np.int64)
        r32 = epilogue.int32_ok(clip, rdt, s2)
        res_spec = (rdt, lo2, hi2, r32)
        q = epilogue.consts(mab, s2, r32)
        extra = [_packed(r), q]
        want = run_int_node(Node("qadd", "a", ("y", "r"), ("z",), {"lo": lo2, "hi": hi2},
                                 {"M": mab, "S": np.array(s2, np.int64)}), [want, r], None)
    sp = ConvSpec(c, h, w, o, k, k, stride, pads, dil, packed, din, dout, clip[0], clip[1], res_spec, hi32, isa,
                  tile, depthwise, w4, gcb=gcb, w16=wbits > 8, pre=shift)
    lib = tvm.compile(tvm.IRModule({"main": conv_func(sp)}), target=tvm.target.Target(target or HOST))
    op = sp.ocb * 16
    wp = packing.weight(wt, sp)
    consts = [v.astype("int32" if hi32 else "int64") for v in packing.requant_consts(m, s, op, hi32, shift)]
    args = [_packed(x) if packed else x, wp, packing.bias(b, wt, sp.offset, op), *consts, *extra]
    out = tvm.runtime.empty((batch, sp.ocb, oh, ow, 16), dout)
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], out)
    return _unpacked(out.numpy(), o), want


CONV_CASES = {
    "3x3_pad1_signed_nchw_odd": dict(c=5, h=9, w=7, o=21, k=3),
    "3x3_packed_unsigned": dict(c=20, h=8, w=10, o=40, k=3, packed=True, din="uint8"),
    "1x1_packed_direct": dict(c=32, h=6, w=6, o=48, k=1, pads=(0, 0, 0, 0), packed=True, din="uint8"),
    "1x1_stride2_signed_packed": dict(c=17, h=9, w=7, o=33, k=1, stride=(2, 2), pads=(0, 0, 0, 0), packed=True),
    "7x7_stride2_first_layer": dict(c=3, h=23, w=19, o=8, k=7, stride=(2, 2), pads=(3, 3, 3, 3)),
    "asym_pads_int32_out": dict(c=4, h=9, w=8, o=5, k=3, stride=(2, 2), pads=(0, 1, 2, 0), dout="int32",
                                clip=(-32768, 32767)),
    "dilation2_relu6_clip": dict(c=3, h=9, w=7, o=4, k=3, pads=(2, 2, 2, 2), dil=(2, 2), clip=(0, 97)),
    "int64_requant_small_shifts": dict(c=12, h=5, w=5, o=19, k=3, shifts=(31, 41)),
    "residual_int32_form": dict(c=16, h=7, w=9, o=32, k=3, packed=True, din="uint8",
                                residual=("uint8", 0, 255, 31)),
    "residual_int64_form": dict(c=16, h=7, w=9, o=32, k=3, packed=True, din="uint8",
                                residual=("int32", 0, 255, 40)),  # a 16-bit residual: int64 form
    "residual_signed_out": dict(c=24, h=5, w=6, o=24, k=1, pads=(0, 0, 0, 0), packed=True, dout="int8",
                                clip=(-128, 127), residual=("int8", -128, 127, 30)),
    "dense_as_1x1": dict(c=37, h=1, w=1, o=10, k=1, pads=(0, 0, 0, 0), dout="int32", clip=(-32768, 32767),
                         batch=3),
    "grouped_4ch_packed": dict(c=64, h=7, w=9, o=64, k=3, packed=True, din="uint8", groups=16),  # ResNeXt's 4-wide
    "grouped_8ch_stride2_signed": dict(c=48, h=9, w=8, o=48, k=3, stride=(2, 2), packed=True, groups=6),  # RegNet's 8
    "grouped_8ch_part_block": dict(c=40, h=6, w=7, o=40, k=3, packed=True, din="uint8", groups=5),  # RegNet's 104, 440
    "grouped_32ch_residual": dict(c=64, h=6, w=7, o=64, k=3, packed=True, din="uint8", groups=2,
                                  residual=("uint8", 0, 255, 31)),
    "grouped_16ch_nchw_1x1": dict(c=32, h=5, w=5, o=32, k=1, pads=(0, 0, 0, 0), groups=2),
    "depthwise_packed": dict(c=40, h=11, w=9, o=40, k=3, packed=True, din="uint8", depthwise=True),
    "depthwise_stride2_signed": dict(c=24, h=12, w=12, o=24, k=3, stride=(2, 2), packed=True, dout="int8",
                                     clip=(-128, 127), depthwise=True),
    "depthwise_dilated_int32_lanes": dict(c=20, h=9, w=9, o=20, k=3, pads=(2, 2, 2, 2), dil=(2, 2), packed=True,
                                          depthwise=True),
    "depthwise_residual": dict(c=32, h=6, w=7, o=32, k=3, packed=True, din="uint8", depthwise=True,
                               residual=("uint8", 0, 255, 31)),
    "depthwise_5x5_nchw": dict(c=5, h=9, w=9, o=5, k=5, pads=(2, 1, 2, 0), depthwise=True, shifts=(31, 44)),
}


@needs_vnni
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv_kernel_bitexact(name):
    got, want = _run_conv(**CONV_CASES[name])
    assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)


W4_CASES = ["3x3_pad1_signed_nchw_odd", "3x3_packed_unsigned", "1x1_stride2_signed_packed", "7x7_stride2_first_layer",
            "residual_int32_form", "dense_as_1x1", "depthwise_packed", "depthwise_5x5_nchw"]


@needs_vnni
@pytest.mark.parametrize("name", W4_CASES)
def test_conv_kernel_w4_bitexact(name):
    """4-bit weights read two per byte and unpacked next to their `vpdpbusd` (`ConvSpec.w4`)."""
    got, want = _run_conv(**CONV_CASES[name], w4=True)
    assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)


@needs_avx2
@pytest.mark.parametrize("name", ["depthwise_packed", "depthwise_dilated_int32_lanes", "depthwise_residual"])
def test_fallback_kernel_bitexact(name):
    """The int32-lane fallback (depthwise on an AVX2 CPU; everything on AVX-512 without VNNI) is exact too."""
    got, want = _run_conv(**CONV_CASES[name], isa="avx2", target=HASWELL)
    np.testing.assert_array_equal(got, want)


def test_isa_from_target_features():
    assert x86_isa({"kind": "llvm", "mcpu": "znver4"}) == "vnni"
    assert x86_isa({"kind": "llvm", "mcpu": "cascadelake"}) == "vnni"
    assert x86_isa({"kind": "llvm", "mcpu": "skylake-avx512"}) == "avx512"
    assert x86_isa(HASWELL) == "avx2"
    assert x86_isa({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}) is None
    assert x86_isa({"kind": "cuda", "arch": "sm_75"}) is None


def test_tile_choice_fits_registers():
    for o, oh, ow in [(64, 56, 56), (2048, 7, 7), (16, 32, 32), (10, 1, 1), (96, 149, 149), (24, 5, 3)]:
        ocbi, ohi, owi = choose_tile(o, oh, ow)
        assert -(-o // 16) % ocbi == 0 and ocbi * ohi * owi <= 15 and ohi <= oh and owi <= ow
        ocbi, ohi, owi = choose_tile(o, oh, ow, isa="avx2")  # 16 ymm: 2 per accumulator, 4 per weight operand
        acc = ocbi * ohi * owi
        assert 2 * acc + 4 * ocbi + (2 * ohi * owi if ocbi > 1 else 0) <= 15 and ohi <= oh and owi <= ow


def test_avx2_tile_counts_chains_and_registers():
    """AVX2 accumulators are two ymm (two add chains), and 5 of them leave no ymm for a pixel's broadcasts
    and the step's products; the picks follow the timings of `benchmarks/results/avx2_tiles.md`:
    14x14 and 17x17 (1, 2, 2), 5x5 (1, 1, 5) (no waste), 56x56, 35x35, 7x7 and 128 rows (1, 1, 4).
    The other isas keep their tiles."""
    assert [choose_tile(256, hw, hw, isa="avx2") for hw in (14, 17, 5, 56, 35, 7)] == \
        [(1, 2, 2), (1, 2, 2), (1, 1, 5), (1, 1, 4), (1, 1, 4), (1, 1, 4)]
    assert choose_tile(384, 1, 128, isa="avx2") == (1, 1, 4)
    assert choose_tile(256, 14, 14, isa="vnni16") == (1, 1, 14) and choose_tile(256, 14, 14) == (2, 1, 7)
    assert choose_tile(48, 5, 5, isa="vnni16") == (3, 1, 5)  # 31 of 32 zmm: vpdpwssd needs no temporaries


def _tiny_net(rng):
    """conv (odd channels) -> relu -> conv s2 -> residual add with a 1x1 s2 conv -> maxpool ->
    depthwise -> global mean -> dense: every fast kernel and layout change in a few ops."""
    nodes = [node("Conv", ["input", "W1", "B1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             node("Conv", ["r1", "W2", "B2"], "c2", pads=[1, 1, 1, 1], strides=[2, 2]),
             node("Conv", ["r1", "W3", "B3"], "c3", strides=[2, 2]),
             node("Add", ["c2", "c3"], "a"), node("Relu", ["a"], "ra"),
             node("MaxPool", ["ra"], "mp", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
             node("Conv", ["mp", "Wd", "Bd"], "dw", pads=[1, 1, 1, 1], group=24), node("Relu", ["dw"], "rd"),
             node("GlobalAveragePool", ["rd"], "g"), node("Flatten", ["g"], "f"),
             node("Gemm", ["f", "G", "GB"], "out", transB=1)]
    inits = {"W1": conv_w(rng, 7, 3), "B1": bias(rng, 7), "W2": conv_w(rng, 24, 7), "B2": bias(rng, 24),
             "W3": conv_w(rng, 24, 7, 1), "B3": bias(rng, 24), "Wd": conv_w(rng, 24, 1), "Bd": bias(rng, 24),
             "G": rng.normal(0, 0.3, (5, 24)).astype(np.float32), "GB": bias(rng, 5)}
    return make_model(nodes, inits, ("N", 3, 11, 13))


@needs_avx2
@pytest.mark.parametrize("tgt", ["host", "haswell"])
def test_small_net_bitexact_and_uses_kernels(tgt, tmp_path):
    from tvm import relax

    import dyadic
    from dyadic.backend import build
    from dyadic.compiler import quantize_inputs
    from dyadic.core.config import CompileConfig
    from dyadic.backend.kernels.lowering import CpuKernels
    from dyadic.backend.lower import _Lowerer
    from dyadic.core.reference import run_reference

    rng = np.random.default_rng(3)
    res = dyadic.compile(_tiny_net(rng), None, config=CompileConfig(quiet=True))  # host build + self-check
    ig = res.int_graph
    spec = TargetSpec(tgt, HOST if tgt == "host" else HASWELL)
    low = _Lowerer(ig, spec)
    assert isinstance(low.kernels, CpuKernels)
    mod = low.run()
    names = [gv.name_hint for gv in mod.functions if gv.name_hint.startswith("dyadic_")]
    assert sum(n.startswith("dyadic_conv") for n in names) >= 3  # conv, fused conv+add, dense
    assert any(n.startswith("dyadic_dwconv") for n in names)  # the depthwise one, named for `dyadic profile`
    assert any(n.startswith("dyadic_maxpool") for n in names) and any(n.startswith("dyadic_mean") for n in names)
    vm = relax.VirtualMachine(build.build(mod, spec), tvm.cpu())
    x = {"input": rng.standard_normal((3, 3, 11, 13)).astype(np.float32) * 2}
    q = quantize_inputs(ig, x)
    got = vm["main"](tvm.runtime.tensor(q["input"])).numpy()
    np.testing.assert_array_equal(got, run_reference(ig, q)[ig.outputs[0]])


@pytest.fixture(scope="module")
def r20_build(tmp_path_factory):
    import dyadic
    from dyadic.core.config import CompileConfig
    from dyadic.models import save

    d = tmp_path_factory.mktemp("r20")
    save("resnet20", d / "resnet20.onnx")
    dyadic.compile(str(d / "resnet20.onnx"), str(d / "build"), config=CompileConfig(quiet=True))
    return d


@needs_vnni
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
def test_default_compile_uses_vnni(r20_build):
    """Every conv of the 20 is a VNNI kernel (several vpdpbusd per tile); on an AMX host an AMX one."""
    from dyadic.runtime.cpu import cpu_flags

    amx = {"amx_int8", "amx_tile"} <= (cpu_flags() or set())
    asm = subprocess.run(["objdump", "-d", str(r20_build / "build" / "model.so")], capture_output=True,
                         text=True).stdout
    assert asm.count("tdpbusd" if amx else "vpdpbusd") >= 20
    assert ("<dyadic_amxconv" if amx else "<dyadic_conv") in asm


@pytest.mark.skipif(HOST_ISA != "avx2", reason="host CPU is not AVX2-only")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
def test_default_compile_uses_vpmaddwd_on_avx2(r20_build):
    import json

    asm = subprocess.run(["objdump", "-d", str(r20_build / "build" / "model.so")], capture_output=True,
                         text=True).stdout
    assert asm.count("vpmaddwd") >= 20
    dm = json.loads((r20_build / "build" / "model.json").read_text())["target"]["dot_macs"]
    assert dm["isa"] == "avx2" and dm["fraction"] > 0.99 and set(dm["by_instruction"]) == {"vpmaddwd"}


@needs_avx2
def test_bench_command_prints_table(r20_build, capsys):
    """`dyadic bench` runs all three runners and prints the table (a smoke test: no speed claim)."""
    from dyadic.cli.main import main

    code = main(["bench", str(r20_build / "build"), "--vs", str(r20_build / "resnet20.onnx"), "--threads", "1",
                 "--repeat", "1", "--iters", "2"])
    out = capsys.readouterr().out
    assert code == 0
    header, row = out.strip().splitlines()[-2:]
    assert "ort-int8 ms" in header and "ort-fp32 ms" in header
    # the measured peak of the instruction the build's kernels run: tdpbusd, vpdpbusd or vpmaddwd
    assert any(f"of {isa} peak" in header for isa in ("AMX", "VNNI", "AVX2"))
    assert row.split()[0] == "1" and row.strip().endswith("%")


@needs_vnni
def test_measured_vnni_peak_is_plausible():
    """The bench's "of peak" denominator is measured, not nominal: within 64 MACs/instruction x
    1-2 instructions/cycle x 0.5-6 GHz per thread."""
    from dyadic.backend.kernels.peak import vnni_peak_gmacs

    one = vnni_peak_gmacs(1)
    assert 64 * 0.5 < one < 2 * 64 * 6.0, one


def test_generic_lowering_on_request(monkeypatch):
    from dyadic.backend.kernels import for_lowerer

    class L:
        target = TargetSpec("host", {"kind": "llvm", "mcpu": "znver4"})
    monkeypatch.setenv("DYADIC_KERNELS", "generic")
    assert for_lowerer(L()) is None


@needs_avx2
@pytest.mark.parametrize("case", ["avgpool_excl_pad", "avgpool_incl_pad", "avgpool_excl_pad_relu_s2"])
def test_avgpool_takes_the_packed_kernel(case, tmp_path):
    """An average pool after a conv runs on the packed layout (window sum + requant by the
    per-position multiplier map, `cpu_ops.avgpool_func`), not the generic depthwise-conv lowering;
    its bit-exactness is checked by tests/test_ops_bitexact.py's avgpool cases, which use this path."""
    import dyadic
    from dyadic.core.config import CompileConfig
    from dyadic.backend.lower import lower_to_relax
    from dyadic.targets import resolve
    from test_ops_bitexact import CASES, _data

    rng = np.random.default_rng(3)
    nodes, inits, in_shape = CASES[case](rng)
    res = dyadic.compile(make_model(nodes, inits, in_shape=in_shape), str(tmp_path), {"input": _data(rng, in_shape, 8, "signed")},
                         CompileConfig(quiet=True))
    names = {gv.name_hint for gv in lower_to_relax(res.int_graph, resolve("host")).functions}
    assert any(nm.startswith("dyadic_avgpool") for nm in names), names
    assert not any("conv2d" in nm for nm in names), names


PRE_CASES = {  # shifts below 33 (16-bit outputs: rescales near 1) on the int32 requant, acc + bias shifted first
    "pre_3x3_packed": dict(c=20, h=8, w=10, o=40, k=3, packed=True, din="uint8", shifts=(29, 40)),
    "pre_1x1_signed_int16_out": dict(c=24, h=6, w=7, o=32, k=1, pads=(0, 0, 0, 0), packed=True, dout="int16",
                                     clip=(-32768, 32767), shifts=(30, 33)),
    "pre_depthwise_residual": dict(c=32, h=6, w=7, o=32, k=3, packed=True, din="uint8", depthwise=True, shifts=(31, 37),
                                   residual=("uint8", 0, 255, 31)),
}


@pytest.mark.parametrize("extreme", [False, True], ids=["random", "bounds"])
@pytest.mark.parametrize("isa", [pytest.param("vnni", marks=needs_vnni), pytest.param("avx2", marks=needs_avx2)])
@pytest.mark.parametrize("name", list(PRE_CASES))
def test_conv_kernel_requant_preshift_bitexact(name, isa, extreme):
    """((acc + b) 2^u m + 2^(s+u-1)) >> (s+u) on the int32 requant equals the int64 form for shifts below 33."""
    got, want = _run_conv(**PRE_CASES[name], isa=isa, target=HOST if isa == "vnni" else HASWELL, extreme=extreme,
                          pre=True)
    if not extreme:
        assert len(np.unique(want)) > 3, "degenerate case"
    np.testing.assert_array_equal(got, want)


def test_requant_preshift_rule():
    w, b = np.full((2, 4, 1, 1), 100, np.int8), np.array([5, -7], np.int32)
    assert packing.hi32_preshift(np.array([33, 40]), w, b, 255) == 0
    assert packing.hi32_preshift(np.array([30, 40]), w, b, 255) == 3  # |acc + b| <= 102,007: 2^3 of room
    assert packing.hi32_preshift(np.array([30, 61]), w, b, 255) is None  # 61 + 3 - 32 > 31
    assert packing.hi32_preshift(np.array([15, 40]), w, b, 255) is None  # 2^18 x 102,007 >= 2^31
