"""Resize / Upsample with constant scales or sizes: nearest as integer gathers, linear in fixed point.

For each resized axis (input length L, output length L', scale s = scales[d], or L' / L when
sizes are given) an output index i maps back to a source coordinate u(i) (computed at compile time
in float32, as onnxruntime does):

    half_pixel        u = (i + 1/2) / s - 1/2
    pytorch_half_pixel u = (i + 1/2) / s - 1/2 if L' > 1 else 0
    align_corners     u = i (L - 1) / (L' - 1)   (0 if L' = 1)
    asymmetric        u = i / s
    tf_half_pixel_for_nn u = (i + 1/2) / s,  half_pixel_symmetric (opset 19) likewise per the spec

**nearest**: I[i] = clip(n(u(i)), 0, L - 1) with n the nearest_mode (round_prefer_floor: ceil(u - 1/2),
round_prefer_ceil: floor(u + 1/2), floor, ceil). The op is one `gather` per resized axis
(`dyadic.ops.indexmaps`): integers moved, scale kept, exact.

**linear** (separable, one axis after the other): u is clipped to [0, L - 1], i0 = floor(u),
i1 = min(i0 + 1, L - 1), and the fraction becomes a P-bit weight w1 = round((u - i0) 2^P),
w0 = 2^P - w1, P = min(10, floor((31 - bits(A)) / k)) for k resized axes and A = max |q| (10 for
8-bit inputs and two axes, 7 for 16-bit ones), so that acc < 2^31. With q the input codes,

    acc = Σ_axes-nested  (q[i0] w0 + q[i1] w1)            (int64; weight sum 2^(P k), k axes)
    q_y = clip((acc M + 2^(S-1)) >> S, lo, hi),  M / 2^S ≈ s_x / (s_y 2^(P k))

Error, beyond the input's quantization: each weight is within 2^-(P+1) of the true fraction, so an
interpolated value moves by at most k 2^-(P+1) (max - min of its taps) before the final rounding
(half an output LSB). Cubic mode, antialiasing, tf_crop_and_resize and the non-"stretch" aspect
policies are refused.
"""
from __future__ import annotations

import numpy as np

from dyadic.core.arith import dyadic
from dyadic.ops.base import IntOpDef, OpDef, importer, register_float, register_int
from dyadic.ops.indexmaps import gather_chain

_F = np.float32


def source_coords(mode: str, n_in: int, n_out: int, scale: float) -> np.ndarray:
    i = np.arange(n_out, dtype=_F)
    s = _F(scale)
    if mode == "half_pixel":
        return (i + _F(0.5)) / s - _F(0.5)
    if mode == "pytorch_half_pixel":
        return (i + _F(0.5)) / s - _F(0.5) if n_out > 1 else np.zeros(n_out, _F)
    if mode == "align_corners":
        return np.zeros(n_out, _F) if n_out == 1 else i * _F(n_in - 1) / _F(n_out - 1)
    if mode == "asymmetric":
        return i / s
    if mode == "tf_half_pixel_for_nn":
        return (i + _F(0.5)) / s
    if mode == "half_pixel_symmetric":
        adj = _F(n_out) / (s * _F(n_in))
        off = _F(n_in) / _F(2) * (_F(1) - adj)
        return off + (i + _F(0.5)) / s - _F(0.5)
    raise ValueError(f"coordinate_transformation_mode {mode!r}")


def nearest_index(u: np.ndarray, mode: str, n_in: int) -> np.ndarray:
    r = {"round_prefer_floor": lambda v: np.ceil(v - _F(0.5)), "round_prefer_ceil": lambda v: np.floor(v + _F(0.5)),
         "floor": np.floor, "ceil": np.ceil}[mode](u)
    return np.clip(r, 0, n_in - 1).astype(np.int64)


def linear_taps(u: np.ndarray, n_in: int, p: int):
    u = np.clip(u.astype(np.float64), 0, n_in - 1)
    i0 = np.floor(u).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.rint((u - i0) * (1 << p)).astype(np.int64)
    return i0, i1, w1


def _bshape(nd: int, ax: int) -> tuple:
    return tuple(-1 if d == ax else 1 for d in range(nd))


def _resize_float(node, xs):
    y = xs[0].astype(np.float64)
    for ax in node.attrs["axes"]:
        u = node.params[f"U{ax}"]
        n_in = y.shape[ax]
        i0 = np.floor(np.clip(u, 0, n_in - 1)).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        f = (np.clip(u.astype(np.float64), 0, n_in - 1) - i0).reshape(_bshape(y.ndim, ax))
        y = np.take(y, i0, axis=ax) * (1 - f) + np.take(y, i1, axis=ax) * f
    return y.astype(xs[0].dtype)


def _quantize_resize(ctx, node):
    from dyadic.core.graph import Node

    qx = ctx.qp[node.inputs[0]]
    q = ctx.qp[node.output] = ctx.out_q(node.output, qx.signed)
    amax = max(abs(qx.lo), abs(qx.hi))
    p = min(10, (31 - amax.bit_length()) // len(node.attrs["axes"]))  # acc < 2^31: acc M < 2^62
    params = {}
    for ax in node.attrs["axes"]:
        n_in = ctx.graph.shapes[node.inputs[0]][ax]
        params[f"I0_{ax}"], params[f"I1_{ax}"], params[f"W{ax}"] = linear_taps(node.params[f"U{ax}"], n_in, p)
    shift = p * len(node.attrs["axes"])
    m, s = dyadic(qx.scale / (q.scale * (1 << shift)))
    params.update(M=np.array(m, np.int64), S=np.array(s, np.int64))
    ctx.nodes.append(Node("qresize", node.name, node.inputs, node.outputs,
                          {"axes": node.attrs["axes"], "P": p, **ctx.clip_bounds(q)}, params))


def _qresize_ref(node, xs, out_shape):
    from dyadic.core.arith import requantize

    p, a = node.params, node.attrs
    y = xs[0].astype(np.int64)
    for ax in a["axes"]:
        w1 = p[f"W{ax}"].reshape(_bshape(y.ndim, ax))
        y = np.take(y, p[f"I0_{ax}"], axis=ax) * ((1 << a["P"]) - w1) + np.take(y, p[f"I1_{ax}"], axis=ax) * w1
    return requantize(y, p["M"], p["S"], a["lo"], a["hi"])


def lower_qresize(L, node, x, nd: int):
    """The linear resize of x (rank nd: 4 for NCHW, 5 for the packed CPU layout, same H, W axes)."""
    from tvm import relax

    p, a = node.params, node.attrs
    c64 = lambda v: relax.const(np.ascontiguousarray(np.asarray(v, np.int64)), "int64")  # noqa: E731
    y = L.emit(relax.op.astype(x, "int64"))
    for ax in a["axes"]:
        w1 = p[f"W{ax}"].reshape(_bshape(nd, ax))
        t0 = L.emit(relax.op.take(y, c64(p[f"I0_{ax}"]), axis=ax, mode="clip"))
        t1 = L.emit(relax.op.take(y, c64(p[f"I1_{ax}"]), axis=ax, mode="clip"))
        y = L.emit(relax.op.add(L.emit(relax.op.multiply(t0, c64((1 << a["P"]) - w1))),
                                L.emit(relax.op.multiply(t1, c64(w1)))))
    return L.requant(y, p["M"], p["S"], a["lo"], a["hi"], L.g.dtypes[node.output])


register_float(OpDef("resize_linear", _resize_float, _quantize_resize))
register_int(IntOpDef("qresize", _qresize_ref,
                     lambda L, n, xs: lower_qresize(L, n, xs[0], len(L.g.shapes[n.inputs[0]]))))


def _s(v, default: str) -> str:
    return v.decode() if isinstance(v, bytes) else str(v) if v is not None else default


@importer("Resize", "Upsample", doc="nearest: integer gathers; linear: fixed-point weights (2^10 per axis) "
                                    "+ dyadic requant; constant scales or sizes")
def _import_resize(c):
    from dyadic.core.graph import Node

    x, out = c.inputs[0], c.outputs[0]
    shape, oshape = c.shapes[x], c.shapes.get(out)
    rank = len(shape)
    mode = _s(c.attrs.get("mode"), "nearest")
    if c.op == "Upsample":
        coord, nmode = "asymmetric", "floor"
        mode = "linear" if mode in ("linear", "bilinear") else mode
        scales = c.attrs.get("scales")
        scales = np.asarray(scales if scales is not None else c.const(1), np.float64)
        sizes = None
    else:
        coord = _s(c.attrs.get("coordinate_transformation_mode"), "half_pixel")
        nmode = _s(c.attrs.get("nearest_mode"), "round_prefer_floor")
        if int(c.attrs.get("antialias", 0)):
            c.fail("antialias=1")
        if _s(c.attrs.get("keep_aspect_ratio_policy"), "stretch") != "stretch":
            c.fail("keep_aspect_ratio_policy other than stretch")
        scales, sizes = c.const(2, None), c.const(3, None)
        scales = None if scales is None or np.size(scales) == 0 else np.asarray(scales, np.float64)
        sizes = None if sizes is None or np.size(sizes) == 0 else np.asarray(sizes, np.int64)
        if c.attrs.get("axes") is not None:  # opset 18: scales/sizes for the listed axes only
            ax = [int(a) % rank for a in c.attrs["axes"]]
            if scales is not None:
                scales = np.array([scales[ax.index(d)] if d in ax else 1.0 for d in range(rank)])
            if sizes is not None:
                sizes = np.array([sizes[ax.index(d)] if d in ax else shape[d] for d in range(rank)])
    if mode not in ("nearest", "linear"):
        c.fail(f"mode {mode!r} (only nearest and linear)")
    if coord == "tf_crop_and_resize":
        c.fail("coordinate_transformation_mode tf_crop_and_resize")
    if scales is None and sizes is None:
        c.fail("neither scales nor sizes is a constant")
    if scales is not None and len(scales) != rank or sizes is not None and len(sizes) != rank:
        c.fail(f"scales/sizes must name all {rank} axes")
    n_out = [int(v) for v in sizes] if sizes is not None else [int(np.floor(n * s)) for n, s in zip(shape, scales)]
    if oshape and any(o > 0 and o != n for o, n in zip(oshape[1:], n_out[1:])):
        c.fail(f"output shape {list(oshape)} does not match the computed {n_out}")
    scl = list(scales) if scales is not None else [_F(o) / _F(n) for o, n in zip(n_out, shape)]
    axes = [d for d in range(1, rank) if n_out[d] != shape[d] or scl[d] != 1]
    if (scales is not None and scales[0] != 1) or (sizes is not None and shape[0] > 0 and sizes[0] != shape[0]):
        c.fail("resizing the batch dimension is not supported")
    try:
        us = {d: source_coords(coord, shape[d], n_out[d], scl[d]) for d in axes}
        if mode == "nearest":
            return gather_chain(c, x, out, {d: nearest_index(u, nmode, shape[d]) for d, u in us.items()})
    except (ValueError, KeyError) as e:
        c.fail(f"unsupported attribute: {e}")
    if not axes:
        return [Node("reshape", c.name, (x,), (out,))]
    return [Node("resize_linear", c.name, (x,), (out,), {"axes": tuple(axes)},
                 {f"U{d}": u.astype(np.float32) for d, u in us.items()})]
