"""The CPU Softmax kernel (`dyadic.backend.kernels.cpu_softmax`): bit-exact against the op's own
int64 reference (`ops/softmax._qsoftmax_ref`) on random codes, with and without the folded bias and
the input mask, 8-bit and 16-bit outputs, rows of odd length, a symbolic batch; and the int32
bounds it relies on."""
from __future__ import annotations

import math

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from dyadic.backend.kernels.cpu_softmax import fits_int32, softmax_func  # noqa: E402
from dyadic.core.arith import requantize  # noqa: E402
from dyadic.core.graph import Node  # noqa: E402
from dyadic.ops.softmax import _qsoftmax_ref  # noqa: E402
from test_kernels_x86 import HOST, needs_avx2  # noqa: E402


def _table(span, scale):
    return np.rint(np.exp(-np.arange(span + 1) * scale) * (1 << 15)).astype(np.int32)


@needs_avx2
@pytest.mark.parametrize("case", ["int8_plain", "int16_mask_q16", "int8_bias", "odd_row_bias_mask",
                                  "int16_mask_q16_requant"])
def test_softmax_kernel_bitexact(case):
    rng = np.random.default_rng(len(case))
    shape = {"odd_row_bias_mask": (2, 3, 5, 37)}.get(case, (2, 4, 16, 128))
    din, lo, hi = ("int32", -32768, 32767) if "int16" in case else ("int8", -128, 127)
    scale = 8.0 / (hi - lo)
    q = 32767 if "q16" in case else 255
    x = rng.integers(lo, hi + 1, shape)
    attrs, params, xs = {"axis": len(shape) - 1, "Q": q}, {}, [x]
    span = hi - lo
    bias = mask = None
    if "bias" in case:
        bias = rng.integers(-300, 300, (1, shape[1], shape[2], shape[3])).astype(np.int32)
        bias[0, 0, 0, :3] = -(1 << 20)  # masked entries: exp = 0 exactly
        params["BQ"] = bias
        span = span + int(bias.max()) - int(bias.min())
    if "mask" in case:
        m = rng.integers(0, 2, (shape[0], 1, 1, shape[3])).astype(np.int64)
        m[:, :, :, 0] = 1  # at least one key per row
        attrs.update(B0=-(1 << 20), B1=0)
        xs.append(m)
        mask = (m.shape, "int64", -(1 << 20), 0)
        span = span + (1 << 20)
    span = min(span, int(math.floor(16 * math.log(2) / scale)) + 2 + (hi - lo))
    table = _table(span, scale)
    want = _qsoftmax_ref(Node("qsoftmax", "s", ("x",), ("y",), attrs, {"E": table, **params}), xs, shape)
    dout = "int32" if q > 255 else "uint8"
    rq = None
    if "requant" in case:  # the 16-bit probabilities narrowed to 13 bits for P·V, in the same pass
        rq = (1 << 30, 32, 0, 8191)
        want = requantize(want, np.int64(rq[0]), np.int64(rq[1]), rq[2], rq[3])
    assert fits_int32(shape[-1], int(table.max()), q)
    f = softmax_func((None, *shape[1:]), din, table.size, int(table.max()), q, dout,
                     None if bias is None else bias.shape, mask, rq)
    lib = tvm.compile(tvm.IRModule({"main": f}), target=tvm.target.Target(HOST))
    args = [x.astype(din)] + ([bias] if bias is not None else []) + ([xs[1]] if mask else []) + [table]
    out = tvm.runtime.empty(shape, dout)
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], out)
    np.testing.assert_array_equal(out.numpy(), want.astype(dout))
    assert len(np.unique(want)) > 10, "degenerate case"


def test_int32_bounds():
    assert fits_int32(128, 1 << 15, 32767) and fits_int32(65535, 1 << 15, 255)
    assert not fits_int32(65536, 1 << 15, 255) and not fits_int32(70000, 1 << 15, 32767)
