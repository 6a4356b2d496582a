"""NCHW tensor ops in numpy, shared by the float executor (float32) and the integer reference (exact).

Integer convolutions and matrix products are computed in float64 and converted back: every product
and partial sum is an integer below 2^53 (the verifier bounds accumulators by 2^31), so float64 BLAS
is exact here whatever its summation order, and much faster than numpy's int64 matmul.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def pad_hw(x: np.ndarray, pads, value=0) -> np.ndarray:
    """pads = (top, left, bottom, right) as in ONNX."""
    t, l, b, r = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


def windows(x: np.ndarray, kernel, strides, dilations=(1, 1)) -> np.ndarray:
    """[N, C, Ho, Wo, kh, kw] view of the (already padded) input."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    v = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return v[:, :, ::sh, ::sw, ::dh, ::dw]


def conv2d(x, w, strides, pads, dilations, group, exact: bool) -> np.ndarray:
    """Grouped 2-D convolution. exact=True: integer inputs, int64 result computed exactly;
    otherwise float32, or float64 for float64 inputs (gradient checks, Hessian estimates)."""
    dt = np.float64 if exact or x.dtype == np.float64 else np.float32
    x = pad_hw(x.astype(dt, copy=False), pads)
    w = w.astype(dt, copy=False)
    o, cg, kh, kw = w.shape
    win = windows(x, (kh, kw), strides, dilations)
    n, c, ho, wo = win.shape[:4]
    if cg == 1 and group == c and o == c:  # depthwise: 9 fused multiply-adds beat a batched matmul
        out = np.zeros((n, c, ho, wo), dt)
        for i in range(kh):
            for j in range(kw):
                out += win[..., i, j] * w[:, 0, i, j][None, :, None, None]
    else:
        og = o // group
        outs = []
        for g in range(group):
            cols = win[:, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cg * kh * kw)
            outs.append(cols @ w[g * og:(g + 1) * og].reshape(og, -1).T)
        out = np.concatenate(outs, axis=1).reshape(n, ho, wo, o).transpose(0, 3, 1, 2)
    return np.rint(out).astype(np.int64) if exact else out


def dense(x, w, exact: bool) -> np.ndarray:
    dt = np.float64 if exact or x.dtype == np.float64 else np.float32
    out = x.reshape(x.shape[0], -1).astype(dt) @ w.astype(dt).T
    return np.rint(out).astype(np.int64) if exact else out


def maxpool(x, kernel, strides, pads) -> np.ndarray:
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    return windows(pad_hw(x, pads, low), kernel, strides).max(axis=(-2, -1))


def window_sum(x, kernel, strides, pads) -> np.ndarray:
    dt = x.dtype if x.dtype.kind == "f" else np.int64
    return windows(pad_hw(x.astype(dt), pads), kernel, strides).sum(axis=(-2, -1))


def window_counts(shape_hw, kernel, strides, pads) -> np.ndarray:
    """How many real (non-pad) inputs each output position of a pooling window covers: [Ho, Wo]."""
    ones = np.ones((1, 1) + tuple(shape_hw), np.int64)
    return window_sum(ones, kernel, strides, pads)[0, 0]


def avgpool(x, kernel, strides, pads, count_include_pad) -> np.ndarray:
    s = window_sum(x, kernel, strides, pads)
    if count_include_pad:
        return s / s.dtype.type(kernel[0] * kernel[1])
    return s / window_counts(x.shape[2:], kernel, strides, pads).astype(s.dtype)


def slice_nd(x, spec) -> np.ndarray:
    idx = [slice(None)] * x.ndim
    for ax, s, e, st in spec:
        idx[ax] = slice(s, e if e >= 0 else None, st)
    return x[tuple(idx)]


def pad_nd(x, pads) -> np.ndarray:
    return np.pad(x, pads, constant_values=0)


def reshape_batch(x, shape) -> np.ndarray:
    """Reshape keeping the batch (shape[0] == -1), or to the static shape of a static-batch graph."""
    if shape and shape[0] != -1:
        return x.reshape(tuple(shape))
    return x.reshape((x.shape[0],) + tuple(shape[1:]))
