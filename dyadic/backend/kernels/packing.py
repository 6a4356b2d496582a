"""Compile-time (numpy) packing of weights and per-channel constants into the kernels' layouts.

* conv/dense weights W[O, C, KH, KW] -> [O/16/t, C/cb, KH, KW, cb/4, t, 16, 4] (t = the tile's
  ocbi channel blocks): element [g, ib, y, x, k4, u, j, i] = W[16 (t g + u) + j, cb ib + 4 k4 + i, y, x],
  zero where the channel is padding. The innermost 16 x 4 block is one `vpdpbusd` weight operand
  (64 bytes; for `usmmla` 16 x 8: eight 16-byte operands of two output channels x 8 inputs); the t operands one reduction step of a tile needs are adjacent, so a layer's weights
  are read as one sequential stream.
* AVX2 `vpmaddwd` (`ConvSpec.pmadd`): the same blocks, each 16 x 4 operand stored as [2 input pairs,
  16 outputs, 2 inputs] (`intrin_avx2` sign-extends each 16-byte half to int16 next to its use).
* grouped convs with square groups (`ConvSpec.gcb`): first widened to super-groups of max(16, C/g)
  channels (`group_weight`), then packed as above with the super-group's blocks as the input blocks.
* first layers on few-channel NCHW input (`rowtaps`): [O/16, C, KH, KW/4, 16, 4], 4 horizontal taps
  per `vpdpbusd` (zero-padded).
* depthwise weights W[C, 1, KH, KW] -> [C/16, KH, KW, 16], or for VNNI [C/16, KH, KW/4, 16, 4] (taps
  in groups of 4, zero-padded: one `vpdpbusd` per group).
* 4-bit weights (`ConvSpec.w4`): each 16 x kg operand above (16 kg values in [-8, 7], flat index
  e = kg j + i) as 8 kg bytes: byte k holds e = k in its low nibble and e = k + 8 kg in its high one, so
  the kernel unpacks an operand with two vector shifts per half ((b << 4) >> 4, b >> 4), no shuffle.
* bias: int32, padded to whole blocks of 16; for signed (int8) input the VNNI kernel adds 128 to
  every input byte, so 128 * sum_k W[o, k] is subtracted here (exact, see `cpu_conv`).
* requant multipliers m, rounding terms 2^(s-1) and shifts s: int64, padded with m = 0, s = 1
  (a padded channel computes clip(0) and nobody reads it); when every s >= 33, the int32 constants
  (m, 2^(s-33), s-32) of the cheaper form in `intrin.REQUANT_INTRIN`.
"""
from __future__ import annotations

import numpy as np

from dyadic.core.arith import rounding_term


def _pad_to(v: np.ndarray, n: int, fill) -> np.ndarray:
    v = np.asarray(v).reshape(-1)
    return np.concatenate([v, np.full(n - v.size, fill, v.dtype)]) if v.size < n else v


def conv_weight(w: np.ndarray, cb: int, ocbi: int = 1, kg: int = 4) -> np.ndarray:
    """[O/16/t, C/cb, KH, KW, cb/kg, t, 16, kg]: kg = 4 (dot products), 8 (`usmmla`)."""
    o, c, kh, kw = w.shape
    ocb, icb = -(-o // 16), -(-c // cb)
    full = np.zeros((ocb * 16, icb * cb, kh, kw), w.dtype)
    full[:o, :c] = w
    blocks = full.reshape(ocb // ocbi, ocbi, 16, icb, cb // kg, kg, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 3, 6, 7, 4, 1, 2, 5))


def rowtaps_weight(w: np.ndarray) -> np.ndarray:
    """[O/16, C, KH, KW/4, 16, 4]: element [ob, c, y, g, j, t] = W[16 ob + j, c, y, 4 g + t] (zero past KW)."""
    o, c, kh, kw = w.shape
    kwp = -(-kw // 4) * 4
    full = np.zeros((-(-o // 16) * 16, c, kh, kwp), w.dtype)
    full[:o, :, :, :kw] = w
    return np.ascontiguousarray(full.reshape(-1, 16, c, kh, kwp // 4, 4).transpose(0, 2, 3, 4, 1, 5))


def group_weight(w: np.ndarray, sg: int) -> np.ndarray:
    """A grouped conv's W[O, C/g, KH, KW] (square groups of cg = C/g channels) -> W'[O, sg, KH, KW] over
    super-groups of sg = max(16, cg) channels: output o reads the sg inputs of its super-group, with
    zeros where they belong to another (original) group (block-diagonal when cg < 16)."""
    o, cg, kh, kw = w.shape
    out = np.zeros((o, sg, kh, kw), w.dtype)
    for oc in range(o):
        lo = (oc // cg) * cg - (oc // sg) * sg  # the group's first input, local to the super-group
        out[oc, lo:lo + cg] = w[oc]
    return out


def weight(w: np.ndarray, sp) -> np.ndarray:
    """The packed weights for a `cpu_conv.ConvSpec` (4-bit ones two per byte when `sp.w4`)."""
    if sp.gcb:
        w = group_weight(w, 16 * sp.gcb)
    if sp.pmadd:
        return pmadd_weight(rowtaps_weight(w) if sp.rowtaps else conv_weight(w, sp.cb, sp.tile[0]))
    if sp.depthwise:
        wp = depthwise_weight(w, sp.taps if sp.dw_vnni or sp.dw_pairs else 1)
    else:
        wp = rowtaps_weight(w) if sp.rowtaps else conv_weight(w, sp.cb, sp.tile[0], 8 if sp.mmla else 4)
    return nibbles(wp) if sp.w4 else wp


def pmadd_weight(wp: np.ndarray) -> np.ndarray:
    """[..., 16, 4] int8 operands -> [..., 2, 16, 2]: element [..., p, j, e] = wp[..., j, 2p + e]."""
    pairs = wp.reshape(*wp.shape[:-1], 2, 2)  # [..., j, p, e]
    return np.ascontiguousarray(np.swapaxes(pairs, -3, -2))


def nibbles(wp: np.ndarray) -> np.ndarray:
    """[..., 16, kg] int8 operands in [-8, 7] -> [..., 8 kg] bytes (layout in the module docstring)."""
    n = 16 * wp.shape[-1]
    flat = np.asarray(wp, np.int8).reshape(*wp.shape[:-2], n)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError("4-bit weights out of [-8, 7]")
    lo, hi = flat[..., :n // 2].astype(np.uint8) & 0x0F, (flat[..., n // 2:].astype(np.uint8) & 0x0F) << 4
    return np.ascontiguousarray((lo | hi).view(np.int8))


def unnibble(b: np.ndarray) -> np.ndarray:
    """Inverse of `nibbles` (the kernel's unpack, in numpy): [..., 8 kg] -> [..., 16, kg]."""
    b = np.asarray(b, np.int8)
    lo, hi = (b << 4).astype(np.int8) >> 4, b >> 4
    return np.concatenate([lo, hi], axis=-1).reshape(*b.shape[:-1], 16, b.shape[-1] // 8)


def depthwise_weight(w: np.ndarray, taps: int = 1) -> np.ndarray:
    """[C/16, KH, KW, 16]; grouped taps (`vpdpbusd`: 4, `vpdpwssd`: 2): [C/16, KH, KW/taps, 16, taps],
    zero taps beyond KW."""
    c, _, kh, kw = w.shape
    kwp = -(-kw // taps) * taps
    full = np.zeros((-(-c // 16) * 16, kh, kwp), np.int16 if w.dtype == np.int16 else np.int8)  # int16: `w16`
    full[:c, :, :kw] = w[:, 0]
    if taps > 1:
        return np.ascontiguousarray(full.reshape(-1, 16, kh, kwp // taps, taps).transpose(0, 2, 3, 1, 4))
    return np.ascontiguousarray(full.reshape(-1, 16, kh, kw).transpose(0, 2, 3, 1))


def bias(b: np.ndarray, w: np.ndarray | None, offset: int, o_pad: int) -> np.ndarray:
    """int32 bias minus offset * row sums of w (the signed-input correction), padded to o_pad."""
    b = np.asarray(b, np.int64).reshape(-1)
    if offset:
        b = b - offset * w.astype(np.int64).reshape(w.shape[0], -1).sum(axis=1)
    if np.abs(b).max(initial=0) >= 2 ** 31:
        raise OverflowError("corrected bias does not fit int32")
    return _pad_to(b.astype(np.int32), o_pad, 0)


def hi32_ok(s) -> bool:
    """Whether the int32 requant of `intrin.REQUANT_INTRIN` applies: every shift is at least 33."""
    return bool(np.asarray(s).min() >= 33)


def hi32_preshift(s, w: np.ndarray, b: np.ndarray, amax: int) -> int | None:
    """The pre-shift u of the int32 requant (`intrin.REQUANT_INTRIN`) of a conv with weights w, bias b and
    inputs |x| <= amax, or None where only the int64 form applies.

    u = 0 where every shift s >= 33 (`hi32_ok`). For smaller shifts (16-bit outputs: rescales near 1)
    the sum is shifted left first: ((acc + b) 2^u m + 2^(s+u-1)) >> (s+u) = ((acc + b) m + 2^(s-1)) >> s
    (numerator and denominator times 2^u), which is the int32 form with the shifts s + u >= 33 when
    u = 33 - min(s). It needs (acc + b) 2^u to fit int32, |acc + b| <= sum |w| amax + |b| per output
    channel, and max(s) + u <= 63 (the form's int32 shift s + u - 32 at most 31)."""
    s = np.asarray(s, np.int64)
    u = max(0, 33 - int(s.min()))
    if u == 0:
        return 0
    bound = np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(axis=1) * amax + np.abs(np.asarray(b, np.int64))
    if int(s.max()) + u > 63 or int(bound.max()) << u >= 2 ** 31:
        return None
    return u


def requant_consts(m, s, o_pad: int, hi32: bool = False, pre: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m, 2^(s-1), s) as int64 arrays of length o_pad (scalars are broadcast to every channel);
    hi32: (m, 2^(s+pre-33), s+pre-32) as int32, for ((((acc + b) << pre) * m) >> 32 + 2^(s+pre-33)) >> (s+pre-32)
    (`hi32_preshift`)."""
    m = np.broadcast_to(np.asarray(m, np.int64).reshape(-1), (o_pad,)) if np.size(m) == 1 else m
    s = np.broadcast_to(np.asarray(s, np.int64).reshape(-1), (o_pad,)) if np.size(s) == 1 else s
    s = np.asarray(s, np.int64) + (pre - 32 if hi32 else 0)
    m, s = _pad_to(np.asarray(m, np.int64), o_pad, 0), _pad_to(s, o_pad, 1)
    dt = np.int32 if hi32 else np.int64
    return m.astype(dt), rounding_term(s).astype(dt), s.astype(dt)
