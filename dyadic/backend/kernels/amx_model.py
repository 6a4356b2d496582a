"""The AMX tile program of `amx_conv` in numpy: what `tdpbusd` / `tdpbssd` compute on the layouts of
`amx_layout` (the staged operand, the B tiles, the addressing of `AmxConvSpec`). The tests check the
kernel against this model on emulated tiles and on real ones, and this model against a plain conv.
"""
from __future__ import annotations

import dataclasses as dc

import numpy as np

from dyadic.backend.kernels.amx_layout import ROW_BYTES, ROWS_MAX, AmxConvSpec
from dyadic.backend.kernels.spec import ceil_div


def stage(sp: AmxConvSpec, x: np.ndarray) -> np.ndarray:
    """The staged operand xa [N, HX, WS, CP] uint8 from NCHW input x (numpy model of the kernel's copy)."""
    n = x.shape[0]
    if sp.wide:  # the two planes side by side in each pixel: [.., lo (CP bytes), hi (CP bytes)]
        x, byte = x.astype(np.int64), dc.replace(sp, wide=False, in_dtype="uint8")
        return np.concatenate([stage(byte, x & 255), stage(byte, (x >> 8) & 255)], axis=-1)
    if sp.dense:
        xa = np.full((ceil_div(n, ROWS_MAX) * ROWS_MAX, sp.cp), sp.offset, np.uint8)
        xa[:n, :sp.c] = (x.reshape(n, -1).astype(np.int32) + sp.offset).astype(np.uint8)
        return xa
    t, l, _, _ = sp.pads
    xa = np.full((n, sp.hx, sp.ws, sp.pix_bytes), sp.offset, np.uint8)
    ys = np.arange(sp.hx) * sp.sub[0] - t
    xs = np.arange(sp.ws) * sp.sub[1] - l
    yi, xi = (ys >= 0) & (ys < sp.h), (xs >= 0) & (xs < sp.w)
    v = (x.astype(np.int32) + sp.offset).astype(np.uint8).transpose(0, 2, 3, 1)  # NHWC
    xa[:, np.flatnonzero(yi)[:, None], np.flatnonzero(xi)[None, :], :sp.c] = v[:, ys[yi]][:, :, xs[xi]]
    if sp.taps:  # the slack after the last image (its bytes meet zero weights: any value)
        return np.concatenate([xa.reshape(-1), np.full(ROW_BYTES, sp.offset, np.uint8)])
    return xa


def tdpbusd(c: np.ndarray, a: np.ndarray, b: np.ndarray, signed: bool = False) -> None:
    """C[M, 16] int32 += A[M, 64] u8 . B[16, 64] s8 in the instruction's own terms (module docstring);
    signed: `tdpbssd`, A read as s8."""
    a = a.view(np.int8) if signed else a
    for k in range(b.shape[0]):
        for i in range(4):
            c += a[:, 4 * k + i, None].astype(np.int32) * b[None, k, i::4].astype(np.int32)


def _tile(flat: np.ndarray, base: int, rows: int, stride: int, cols: int = ROW_BYTES) -> np.ndarray:
    """`tileloadd`: rows x cols bytes at base, rows `stride` bytes apart."""
    return np.stack([flat[base + r * stride: base + r * stride + cols] for r in range(rows)])


def run_program(sp: AmxConvSpec, x: np.ndarray, wflat: np.ndarray) -> np.ndarray:
    """The kernel's tile program in numpy: int32 accumulators [N, 16 OCB, OH, OW] (no bias, no requant).
    Reads xa and the B tiles only through the spec's addressing (`tile_base`, `tap`, `b_tile`)."""
    from dyadic.backend.kernels.packing import unnibble

    n = x.shape[0]
    oh, ow = (1, 1) if sp.dense else sp.out_hw
    xa = stage(sp, x).reshape(-1)
    acc = np.zeros((n, sp.ocb * 16, oh, ow), np.int32)
    img = sp.img_bytes
    images, tiles = (1, ceil_div(n, ROWS_MAX)) if sp.dense else (n, sp.tiles)
    for b in range(images):
        for t in range(tiles):
            for ob in range(sp.ocb):
                cs = [np.zeros((sp.m, 16), np.int32) for _ in range(sp.planes)]
                for ry in range(sp.kh):
                    for rx in range(sp.kws):
                        for kb in range(sp.kb):
                            off = sp.b_tile(ob, ry, rx, kb) * sp.b_bytes
                            raw = wflat[off: off + sp.b_bytes]
                            bt = unnibble(raw.reshape(16, 32)).reshape(16, 64) if sp.w4 else raw.reshape(16, 64)
                            for pl in range(sp.planes):
                                a = _tile(xa, b * img + sp.dense_offset(t, kb, pl) if sp.dense
                                          else b * img + sp.a_offset(t, ry, rx, kb, pl), sp.m, sp.a_stride)
                                tdpbusd(cs[pl], a, bt, signed=pl == 1)
                c = cs[0] if sp.planes == 1 else (cs[1] << 8) + cs[0]
                for r in range(sp.m):
                    if sp.dense:
                        if t * ROWS_MAX + r < n:
                            acc[t * ROWS_MAX + r, ob * 16:(ob + 1) * 16, 0, 0] = c[r]
                        continue
                    y, z = sp.out_pixel(t, r)
                    if y < oh and z < ow:
                        acc[b, ob * 16:(ob + 1) * 16, y, z] = c[r]
    return acc
