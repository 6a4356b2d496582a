"""The CUDA tensor-core GEMM kernels (`dyadic.backend.kernels.cuda_gemm`), checked on the CPU.

No GPU runs here, so what is checked is the kernel's index logic: the *same* loop nest (tiling,
implicit im2col with padding/stride/dilation, shared-memory tiles, per-lane fragment loads, the
fused requant epilogue, the host weight packing) built with `emulate=True` for llvm: thread loops
serial, fragments with (warp, lane) dimensions, and each `mma.sync` replaced by its definition
over the PTX fragment maps. Compared bit-exactly with the numpy int64 reference. The hardware MMA
instructions themselves (and that the fragment maps match the silicon) are not checked here.
"""
import numpy as np
import pytest
import tvm

from dyadic.core import npops
from dyadic.core.arith import requantize
from dyadic.backend.kernels.cuda_gemm import gemm_func
from dyadic.backend.kernels.cuda_lowering import kernel_args, make_spec

_BC = (1, -1, 1, 1)


def _case(rng, c, h, w, o, k, stride, pad, dil, in_dtype, w_bits, a_bits, sm, batch=2, dense=False):
    wlim = 8 if w_bits == 4 else 128
    if a_bits == 4:
        alo, ahi = (0, 15) if in_dtype == "uint8" else (-8, 7)
    else:
        alo, ahi = (0, 255) if in_dtype == "uint8" else (-128, 127)
    if dense:
        x = rng.integers(alo, ahi + 1, (batch, c)).astype(in_dtype)
        wt = rng.integers(-wlim, wlim, (o, c)).astype(np.int8)
        attrs = {"w_bits": w_bits, "lo": -128, "hi": 127}
    else:
        x = rng.integers(alo, ahi + 1, (batch, c, h, w)).astype(in_dtype)
        wt = rng.integers(-wlim, wlim, (o, c, k, k)).astype(np.int8)
        attrs = {"w_bits": w_bits, "strides": (stride, stride), "pads": (pad,) * 4, "dilations": (dil, dil),
                 "lo": -128, "hi": 127}
    p = {"W": wt, "B": rng.integers(-500, 500, o).astype(np.int32), "M": rng.integers(1 << 29, 1 << 30, o)}
    if dense:
        acc = npops.dense(x, wt, exact=True) + p["B"].astype(np.int64)
    else:
        acc = npops.conv2d(x, wt, (stride,) * 2, (pad,) * 4, (dil,) * 2, 1, exact=True) + p["B"].reshape(_BC)
    acc = acc.reshape(batch, o, -1)
    # shifts that map each channel's accumulator range onto about [-128, 127]: few outputs clip
    p["S"] = np.array([30 + max(int(np.abs(acc[:, j]).max()).bit_length() - 7, 1) for j in range(o)], np.int64)
    ref = requantize(acc, p["M"].reshape(1, -1, 1), p["S"].reshape(1, -1, 1), -128, 127)
    sp = make_spec(x.shape, wt.shape, attrs, in_dtype, "int8", sm, a_bits)
    oh, ow = sp.out_hw
    return sp, x.reshape(batch, c, 1, 1) if dense else x, kernel_args(p, sp), \
        ref.reshape(batch, o, oh, ow).astype(np.int8)


CASES = {  # id: (c, h, w, o, k, stride, pad, dil, in dtype, w_bits, a_bits, sm)
    "u8-3x3-sm80": (5, 7, 6, 20, 3, 1, 1, 1, "uint8", 8, 8, 80),
    "s8-3x3-stride2-sm80": (19, 9, 9, 40, 3, 2, 1, 1, "int8", 8, 8, 80),
    "u8-3x3-sm75": (3, 8, 8, 70, 3, 1, 1, 1, "uint8", 8, 8, 75),
    "s8-1x1-stride2-sm75": (33, 6, 5, 17, 1, 2, 0, 1, "int8", 8, 8, 75),
    "u8-dil2-sm90": (6, 9, 8, 16, 3, 1, 2, 2, "uint8", 8, 8, 90),
    "u4-int4mma-sm80": (37, 6, 6, 24, 3, 1, 1, 1, "uint8", 4, 4, 80),
    "s4-int4mma-sm75": (21, 5, 7, 9, 3, 2, 1, 1, "int8", 4, 4, 75),
    "w4a4-unpacked-sm90": (37, 6, 6, 24, 3, 1, 1, 1, "uint8", 4, 4, 90),
    "w4a8-unpacked-sm86": (13, 5, 5, 33, 3, 1, 1, 1, "int8", 4, 8, 86),
}


def _run(sp, x, consts):
    lib = tvm.compile(gemm_func(sp, emulate=True), target="llvm")
    oh, ow = sp.out_hw
    out = tvm.runtime.empty((x.shape[0], sp.o, oh, ow), sp.out_dtype)
    lib(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in [x, *consts]], out)
    return out.numpy()


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_mma_gemm_emulated_bitexact(case):
    sp, x, consts, ref = _case(np.random.default_rng(len(case)), *CASES[case])
    assert sp.a4 == ("int4mma" in case) and sp.w_unpack == ("unpacked" in case)
    assert np.mean((ref > -128) & (ref < 127)) > 0.9, "the test data should not saturate"
    np.testing.assert_array_equal(_run(sp, x, consts), ref)


@pytest.mark.parametrize("sm,w_bits,a_bits", [(80, 8, 8), (75, 4, 4)], ids=["s8-sm80", "s4-sm75"])
def test_mma_gemm_emulated_dense(sm, w_bits, a_bits):
    sp, x, consts, ref = _case(np.random.default_rng(7), 100, 1, 1, 10, 1, 1, 0, 1, "int8", w_bits, a_bits, sm,
                               batch=3, dense=True)
    np.testing.assert_array_equal(_run(sp, x, consts), ref)


def test_weight_words_layout():
    """Word i of a row holds elements 4i..4i+3 (bytes) or 8i..8i+7 (nibbles), lowest element lowest."""
    from dyadic.backend.kernels.cuda_lowering import pack_words

    w = np.array([[1, -2, 3, -4, 5, -6, 7, -8]])
    assert pack_words(w, 1, 8, 8)[0, 0] == 0xFC03FE01
    assert pack_words(w, 1, 8, 4)[0, 0] == 0x87A5C3E1


def test_resnet20_w4a4_lowering_emulated_bitexact():
    """The whole CUDA lowering of ResNet-20 W4A4 for sm_75 (int4 MMA inside, int8 MMA for the pinned
    first conv and the dense; weight packing, kernel arguments, dense reshapes) built with the
    emulated kernels for llvm: bit-exact against the reference executor."""
    from tvm import relax

    from dyadic.frontend import data
    from dyadic.compiler import build_graph, input_shapes, quantize_inputs
    from dyadic.core.config import BitMode, CompileConfig
    from dyadic.backend.kernels.cuda_lowering import CudaKernels
    from dyadic.backend.lower import _Lowerer
    from dyadic.models import build
    from dyadic.frontend import import_onnx
    from dyadic.core.reference import run_reference

    model = build("resnet20")
    calib = data.synthetic(input_shapes(import_onnx(model)))
    _, ig = build_graph(model, calib, CompileConfig(bits=BitMode.INT4, quiet=True))
    lw = _Lowerer(ig, None)
    lw.kernels = kern = CudaKernels(lw, "sm_75", emulate=True)
    mod = lw.run()
    layers = [n for n in ig.nodes if n.op in ("qconv", "qdense")]
    assert len(kern.specs) == len(layers)
    assert {(s.a4, s.w_unpack) for s in kern.specs} == {(True, False), (False, False)}
    vm = relax.VirtualMachine(relax.build(mod, tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    q = quantize_inputs(ig, {k: v[:2] for k, v in calib.items()})
    got = vm["main"](*[tvm.runtime.tensor(q[t]) for t in ig.inputs]).numpy()
    assert got.std() > 0
    np.testing.assert_array_equal(got, run_reference(ig, q)[ig.outputs[0]])
