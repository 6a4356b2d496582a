"""CPU kernels for ops on tensors of any layout, packed or not (`lowering` dispatches here):
table lookups (`qlut`, `cpu_ops.lut_func`; whole-range byte tables on AVX512-VBMI `vpermt2b`,
`intrin_vbmi`), the residual add of non-4-D tensors (`qadd`,
`cpu_ops.add_any_func`) and the last-axis Softmax (`qsoftmax`, `cpu_softmax`),
with the per-tensor `requant` that is its only reader fused in (`CpuKernels.passthrough`: that
requant's value is then its input's).

Both build their PrimFunc from the Relax value's own shape (static dims as ints, the batch
symbolic), so one kernel serves a [N, S, D] GELU, a packed [N, C/16, H, W, 16] hard-swish and a
[N, H, S, S] attention softmax alike. Either returns None (the generic lowering runs) where the
value's shape is unknown, or where Softmax's int32 bounds do not hold.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from dyadic.backend.kernels import cpu_ops, cpu_softmax, epilogue
from dyadic.core.graph import Node


def _c(v: np.ndarray, dtype: str):
    return relax.const(np.ascontiguousarray(np.asarray(v).astype(dtype)), dtype)


def _shape(x):
    """(dims with None for symbolic ones, the Relax shape values) of a value, or None if unknown."""
    sh = getattr(getattr(x, "ty", None), "shape", None)
    if sh is None or not hasattr(sh, "values"):
        return None
    return [int(d) if isinstance(d, (int, tvm.tirx.IntImm)) else None for d in sh.values], list(sh.values)


def lut(k, n: Node, x):
    """A table lookup in one pass on the tensor as it is (packed or not)."""
    t, tab = n.inputs[0], n.params["T"]
    got = _shape(x)
    if got is None:
        return None
    dims, values = got
    din, dout = k.g.dtypes[t], k.g.dtypes[n.output]
    m = int(np.prod(dims[1:])) if all(d is not None for d in dims[1:]) else 0
    flat = None  # (kernel key, its PrimFunc maker, the table argument): kernels over [N, m] codes
    if (k.vbmi and {din, dout} <= {"int8", "uint8"} and tab.size == 256 and m >= 64
            and n.attrs["in_lo"] == np.iinfo(din).min):  # a whole-range byte table: `intrin_vbmi`
        from dyadic.backend.kernels.intrin_vbmi import lut8_func

        flat = ("lut8", m, din, dout), lambda: lut8_func(m, din, dout), tab
    elif k.gather and din == "int16" and dout in ("int8", "uint8", "int16") and m >= 16:  # `intrin_gather`
        from dyadic.backend.kernels.intrin_gather import lut16_func, padding

        lo = n.attrs["in_lo"]
        flat = (("lut16", m, tab.size, lo, dout), lambda: lut16_func(m, din, tab.size, lo, dout),
                np.concatenate([tab.astype(dout), np.zeros(padding(dout), dout)]))
    if flat is None and m and m % 16 == 0:  # the scalar lookup on a flat view (`cpu_ops.lut_rows_func`)
        lo = n.attrs["in_lo"]
        flat = ("lut_rows", m, din, tab.size, lo, dout), lambda: cpu_ops.lut_rows_func(m, din, tab.size, lo, dout), tab
    if flat is not None:
        key, make, table = flat
        x2 = k.L.emit(relax.op.reshape(x, [values[0], m]))
        y = k.L.emit(relax.op.reshape(k._call(key, make, [x2, _c(table, dout)], [values[0], m], dout), values))
        return k._result(n, y) if t in k.packed else y
    key = ("lut", tuple(dims), din, tab.size, n.attrs["in_lo"], dout)
    y = k._call(key, lambda: cpu_ops.lut_func(tuple(dims), din, tab.size, n.attrs["in_lo"], dout),
                [x, _c(tab, dout)], values, dout)
    return k._result(n, y) if t in k.packed else y


def softmax(k, n: Node, xs: list):
    """Softmax on the last axis as one row-parallel kernel where its int32 bounds hold."""
    shape, tab, a = k.g.shapes[n.inputs[0]], n.params["E"], n.attrs
    got = _shape(xs[0])
    if (got is None or a["axis"] != len(shape) - 1
            or not cpu_softmax.fits_int32(int(shape[-1]), int(tab.max()), a["Q"])):
        return None
    dims, values = got
    bias = n.params.get("BQ")
    bshape = None if bias is None else tuple(bias.shape)
    mask = None
    if len(n.inputs) > 1:
        mask = (tuple(int(d) for d in k.g.shapes[n.inputs[1]]), k.g.dtypes[n.inputs[1]], a["B0"], a["B1"])
    din, dout = k.g.dtypes[n.inputs[0]], k.g.dtypes[n.output]
    cons = k.consumers.get(n.output, [])
    rq = None
    if len(cons) == 1 and cons[0].op == "requant" and np.size(cons[0].params["M"]) == 1 \
            and n.output not in k.g.outputs:  # the narrowing for P·V: fused, one pass
        rq, dout = epilogue.post_of(cons[0]), k.g.dtypes[cons[0].output]
    key = ("softmax", tuple(dims), din, tab.size, int(tab.max()), a["Q"], dout, bshape, mask, rq)
    args = [xs[0]] + ([_c(bias, "int32")] if bias is not None else []) + ([xs[1]] if mask else []) + [_c(tab, "int32")]
    y = k._call(key, lambda: cpu_softmax.softmax_func(tuple(dims), din, tab.size, int(tab.max()), a["Q"], dout,
                                                      bshape, mask, rq), args, values, dout)
    if rq is not None:
        k.passthrough.add(cons[0].output)
    return y


def add(k, n: Node, xs: list):
    """A same-shape `qadd` that is not on the packed layout (the residual stream of a transformer)."""
    ta, tb = n.inputs
    if tuple(k.g.shapes[ta]) != tuple(k.g.shapes[tb]) or any(t in k.packed or t in k.deferred for t in n.inputs):
        return None
    got = _shape(xs[0])
    if got is None:
        return None
    dims, values = got
    m, s, a = np.asarray(n.params["M"]).reshape(-1), int(np.asarray(n.params["S"])), n.attrs
    da, db, dout = k.g.dtypes[ta], k.g.dtypes[tb], k.g.dtypes[n.output]
    key = ("addr", tuple(dims), da, db, dout, int(m[0]), int(m[1]), s, a["lo"], a["hi"])
    return k._call(key, lambda: cpu_ops.add_any_func(tuple(dims), da, db, dout, int(m[0]), int(m[1]), s, a["lo"],
                                                     a["hi"]), xs, values, dout)
