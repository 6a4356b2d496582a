"""Per-channel and broadcast integer ops on the packed CPU layout [N, C/16, H, W, 16] (`lowering`).

Resizes and moves of the H, W axes (`gather` along axis 2 or 3: nearest Resize, Pad reflect/edge,
Tile; linear `qresize`; ConvTranspose's `zero_insert`) index axes 2 and 3, which are H and W in
both layouts, so they run on the packed tensor as they are (the lane axis is carried along).
`qaffine` (per-channel multiplier, sign, offset and shift: `cpu_ops.affine_func`), `qmul` of an activation by a
per-channel gate ([N, C, 1, 1], the squeeze-excite product) or by a same-shape activation, and a
`qadd` whose second operand is a per-channel [N, C, 1, 1] tensor are layout-agnostic once their
per-channel operands are in the same layout: a per-channel constant of length C becomes
[1, C/16, 1, 1, 16] (zero-padded), a gate [N, C, 1, 1] is packed to [N, C/16, 1, 1, 16] and
broadcasts against [N, C/16, H, W, 16] exactly as [N, C, 1, 1] does against NCHW. The integer
formulas are the generic ones (`dyadic.ops.arith_ops`, `dyadic.backend.lower`), emitted as
elementwise Relax ops on the packed values (Relax fuses them into one loop nest), so results are
bit-exact and no NCHW copy is made. Padded channels get M = K = 0 and S = 1: they stay 0.
"""
from __future__ import annotations

import numpy as np
from tvm import relax

from dyadic.backend.kernels import cpu_ops
from dyadic.backend.kernels.spec import ceil_div
from dyadic.core.graph import Node


def packed_channels(v: np.ndarray, c: int, fill: int = 0) -> np.ndarray:
    """A per-channel vector of length C -> [1, C/16, 1, 1, 16] (padded with `fill`)."""
    cb = ceil_div(c, 16)
    out = np.full(cb * 16, fill, np.int64)
    out[:c] = np.broadcast_to(np.asarray(v, np.int64).reshape(-1), (c,))
    return out.reshape(1, cb, 1, 1, 16)


def _c64(v) -> relax.Constant:
    return relax.const(np.ascontiguousarray(np.asarray(v, np.int64)), "int64")


def _per_channel(k, t: str) -> bool:
    s = k.g.shapes[t]
    return len(s) == 4 and tuple(s[2:]) == (1, 1)


def _operands(k, n: Node, xs: list):
    """Packed values of a 4-D node's inputs, or None when this op should stay generic: the inputs
    must be same-shaped or per-channel [N, C, 1, 1] against the output, and one must already be packed."""
    out = k.g.shapes[n.output]
    if len(out) != 4:
        return None
    for t in n.inputs:
        s = k.g.shapes[t]
        if len(s) != 4 or s[1] != out[1] or not (tuple(s) == tuple(out) or _per_channel(k, t)):
            return None
    for t in n.inputs:
        if t in k.deferred:
            k.materialize(t)
    if not any(t in k.packed for t in n.inputs if tuple(k.g.shapes[t]) == tuple(out)):
        return None
    return [k.values[t] if t in k.packed else k.pack(t, x) for t, x in zip(n.inputs, xs)]


def _spatial(k, n: Node) -> bool:
    """A data movement / resize of the H, W axes only (axes 2, 3 in both layouts), on a packed input."""
    t = n.inputs[0]
    axes = {n.attrs["axis"]} if n.op == "gather" else set(n.attrs.get("axes", (2, 3)))
    return t in k.packed and len(k.g.shapes[t]) == 4 and axes <= {2, 3}


def lower(k, n: Node, xs: list):
    """The packed Relax value of n (`k` is the `CpuKernels`), or None."""
    if n.op in ("gather", "qresize", "zero_insert"):
        if not _spatial(k, n):
            return None
        from dyadic.ops import INT
        from dyadic.ops.convtranspose import lower_zero_insert
        from dyadic.ops.resize import lower_qresize

        x = k.values[n.inputs[0]]
        y = (INT["gather"].lower(k.L, n, [x]) if n.op == "gather" else lower_qresize(k.L, n, x, 5)
             if n.op == "qresize" else lower_zero_insert(k.L, n, x, packed=True))
        return k._result(n, y)
    if n.op == "qaffine":
        from dyadic.core.arith import rounding_term
        from dyadic.ops.arith_ops import affine_axis

        t = n.inputs[0]
        if t not in k.packed or len(k.g.shapes[t]) != 4 or affine_axis(n) != 1:
            return None
        p, a = n.params, n.attrs
        _, c, h, w = k.g.shapes[t]
        din, dout = k.g.dtypes[t], k.g.dtypes[n.output]
        s = packed_channels(p["S"], c, fill=1).reshape(-1)
        consts = [packed_channels(p["G"] * p["M"], c).reshape(-1), packed_channels(p["K"], c).reshape(-1),
                  rounding_term(s), s]
        key = ("affine", c, h, w, din, dout, a["lo"], a["hi"])
        return k._result(n, k._call(key, lambda: cpu_ops.affine_func(ceil_div(c, 16), h, w, din, dout, a["lo"],
                                                                     a["hi"]),
                                    [k.values[t], *map(_c64, consts)], k._pshape(n.output), dout))
    if n.op == "qmul":
        vs = _operands(k, n, xs)
        if vs is None:
            return None
        ts = list(n.inputs)
        if tuple(k.g.shapes[ts[0]]) != tuple(k.g.shapes[n.output]):  # the gate second (a b = b a)
            ts, vs = ts[::-1], vs[::-1]
        _, c, h, w = k.g.shapes[n.output]
        gate = tuple(k.g.shapes[ts[1]]) != tuple(k.g.shapes[n.output])
        da, db, dout = k.g.dtypes[ts[0]], k.g.dtypes[ts[1]], k.g.dtypes[n.output]
        m, s, lo, hi = int(n.params["M"]), int(n.params["S"]), n.attrs["lo"], n.attrs["hi"]
        key = ("qmul", c, h, w, gate, da, db, dout, m, s, lo, hi)
        return k._result(n, k._call(key, lambda: cpu_ops.qmul_func(ceil_div(c, 16), h, w, gate, da, db, dout,
                                                                   m, s, lo, hi), vs, k._pshape(n.output), dout))
    if n.op == "qadd" and k.g.shapes[n.inputs[0]] != k.g.shapes[n.inputs[1]]:
        vs = _operands(k, n, xs)
        if vs is None:
            return None
        p, a = n.params, n.attrs
        ya = k.L.emit(relax.op.multiply(k.L.emit(relax.op.astype(vs[0], "int64")), _c64(p["M"][0])))
        yb = k.L.emit(relax.op.multiply(k.L.emit(relax.op.astype(vs[1], "int64")), _c64(p["M"][1])))
        return k._result(n, k.L.shift_clip(k.L.emit(relax.op.add(ya, yb)), np.asarray(p["S"]), a["lo"], a["hi"],
                                           k.g.dtypes[n.output]))
    return None



def avgpool(k, n: Node):
    """Average pool on the packed layout (`cpu_ops.avgpool_func`): window sum, then requant."""
    from dyadic.core.arith import rounding_term

    t, a, p = n.inputs[0], n.attrs, n.params
    _, c, h, w = k.g.shapes[t]
    din, dout, per_pos = k.g.dtypes[t], k.g.dtypes[n.output], np.size(p["M"]) > 1
    q = np.array([int(rounding_term(p["S"])), int(p["S"])], np.int64)
    key = ("avgpool", c, h, w, tuple(a["kernel"]), tuple(a["strides"]), tuple(a["pads"]), din, dout,
           a["lo"], a["hi"], per_pos)
    make = lambda: cpu_ops.avgpool_func(ceil_div(c, 16), h, w, a["kernel"], a["strides"], a["pads"], din,  # noqa
                                        dout, a["lo"], a["hi"], per_pos)
    m = np.asarray(p["M"], np.int64).reshape(k.g.shapes[n.output][2:] if per_pos else (1,))
    y = k._call(key, make, [k.values[t], _c64(m), _c64(q)], k._pshape(n.output), dout)
    return k._result(n, y)


def mean(k, n: Node):
    """Global H, W mean of a packed tensor (`cpu_ops.mean_func`); writes the plain layout."""
    from dyadic.core.arith import rounding_term

    t, a, p = n.inputs[0], n.attrs, n.params
    _, c, h, w = k.g.shapes[t]
    din, dout, keep = k.g.dtypes[t], k.g.dtypes[n.output], bool(a["keepdims"])
    q = np.array([int(p["M"]), int(rounding_term(p["S"])), int(p["S"])], np.int64)
    key = ("mean", c, h, w, din, dout, a["lo"], a["hi"], keep)
    shape = [k.L.batch, c, 1, 1] if keep else [k.L.batch, c]
    return k._call(key, lambda: cpu_ops.mean_func(c, h, w, din, dout, a["lo"], a["hi"], keep),
                   [k.values[t], _c64(q)], shape, dout)


def concat(k, n: Node):
    """Channel concat of packed inputs, each a whole number of 16-channel blocks (`cpu_ops.concat_func`),
    in one vectorized copy; generic Relax concat there was a scalar loop."""
    _, _, h, w = k.g.shapes[n.output]
    blocks = tuple(k.g.shapes[t][1] // 16 for t in n.inputs)
    dt = k.g.dtypes[n.output]
    y = k._call(("concat", blocks, h, w, dt), lambda: cpu_ops.concat_func(blocks, h, w, dt),
                [k.values[t] for t in n.inputs], k._pshape(n.output), dt)
    return k._result(n, y)


def requant(k, n: Node):
    """A per-tensor `requant` of a packed tensor (`cpu_ops.requant_func`, M and S baked in)."""
    t, a = n.inputs[0], n.attrs
    m, s = int(n.params["M"]), int(n.params["S"])
    din, dout = k.g.dtypes[t], k.g.dtypes[n.output]
    shape = (None, *k._pshape(n.output)[1:])
    key = ("requant", tuple(shape), din, dout, m, s, a["lo"], a["hi"])
    return k._result(n, k._call(key, lambda: cpu_ops.requant_func(shape, din, dout, m, s, a["lo"], a["hi"]),
                                [k.values[t]], k._pshape(n.output), dout))
