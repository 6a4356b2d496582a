"""The AMX conv / dense tile program (`amx_conv`): its geometry and its weight layout (the same
program in numpy, the tests' model of the kernel, is `amx_model`).

`tdpbusd C, A, B` (AMX-INT8) on tiles of at most 16 rows x 64 bytes, per row m of A and int32
column n of C:   C[m, n] += sum_{k < K/4} sum_{i < 4} u8(A[m, 4k + i]) * s8(B[k, 4n + i])
A: M rows (pixels) x K = 64 bytes (input channels, unsigned); B: K/4 = 16 rows x N*4 = 64 bytes
(16 output channels x 4 inputs, signed); C: M x 16 int32. One instruction: M x 16 x 64 MACs.

Implicit GEMM. The input is first staged (`amx_conv`, a parallel copy) into xa[n, HX, WS, CP]
uint8: NHWC with the channels padded to CP = 64 ceil(C / 64) and the spatial zero padding applied,
signed int8 input moved to u = x + 128 (pad value 128, the image of 0) with the row-sum correction
in the bias, B' = B - 128 sum_k w (`packing.bias`, exactly as the VNNI path). A row of an A tile is
64 channels of one staged pixel, so a tile is `tileloadd(base, stride)` with a row stride of whole
pixels. Reduction steps: (ry, rx, kb) = kernel row, kernel column, 64-channel block.
  * FLAT (stride 1, and every 1x1 conv): pixel p of the flattened staged image, p = Y WS + X,
    computes the output at (Y, X); tap (ry, rx) reads pixel p + ry dh WS + rx dw, so the 16 rows of a
    tile are 16 consecutive pixels (stride CP bytes) across output rows. Outputs with X >= OW are
    computed on padding and not stored (waste (WS - OW) / WS). A strided 1x1 conv is staged
    subsampled (xa[Y, X] = x[Y sh - t, X sw - l]) and runs as a 1x1 stride-1 conv.
  * ROWS (strided k x k): a tile is M <= 16 consecutive output pixels of one output row (M splits OW
    evenly), row stride sw pixels.
  * TAPS (few input channels: a network's first conv, c kw <= 64): the input is staged as plain
    NHWC, c bytes per pixel (no channel padding), and one A row is the 64 bytes from output pixel
    (y, z)'s top-left tap in kernel row ry: its kw taps x c channels are contiguous (stride 1 dilation
    in x), so one reduction step per kernel row, K = kw c of the 64 (a 7x7 RGB stem: 21). The rest of
    the row is the next pixels' bytes, multiplied by zero weight rows. Rows of a tile are M output
    pixels of one output row (as ROWS), sw c bytes apart: overlapping rows, which `tileloadd` allows.
    The staged buffer ends with 64 bytes of slack, for the last row's tail.
Dense: the batch is the pixel axis (16 samples per tile), K = the input features.
16-bit input (`wide`: codes |x| <= 2^15 in int16 (or int32) storage, `passes/widen_activations`): AMX has no
16-bit product, so x = 256 hi + lo is staged as two byte planes per pixel, lo = x & 255 (unsigned)
then hi = x >> 8 (signed), CP bytes each (pad value 0 in both), and every reduction step runs
C_lo += `tdpbusd`(A_lo, B), C_hi += `tdpbssd`(A_hi, B) (signed x signed): acc = 256 C_hi + C_lo,
exactly. The lowering takes a layer only where (max|x| + 255) max_o sum|W[o]| < 2^31, so neither
256 C_hi nor the sum leaves int32. Twice the tile products of an 8-bit layer; one A tile per plane,
so the blocking is 1 x nb (2 planes x 1 x 2 C + 2 A + 2 B = 8 tiles). Not in TAPS mode.
Weights [O/16, KH, KW, KB, 16 (k), 16 (n), 4 (i)]: one B tile = 1024 contiguous bytes per (output
block, ry, rx, kb), element [.., k, n, i] = W[16 ob + n, 64 kb + 4 k + i, ry, rx] (zero padding);
TAPS: [O/16, KH, 16, 16, 4] with element [.., k, n, i] = W[16 ob + n, ci, ry, rx] at 4 k + i = rx c + ci;
4-bit weights: each 64-byte row as 32 bytes (`packing.nibbles`), unpacked into an int8 tile next
to its use. Accumulators: |sum| <= 255 * 128 * K < 2^31 for K < 65,000 (as VNNI).
Register blocking: `mb` A tiles x `nb` B tiles -> mb nb C tiles (2 x 2: tiles 0-3 C, 4-5 A, 6-7 B).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from dyadic.backend.kernels.spec import KernelIO, ceil_div

ROWS_MAX, ROW_BYTES, B_TILE = 16, 64, 1024


class AmxMode(enum.Enum):
    FLAT = "flat"
    ROWS = "rows"
    TAPS = "taps"


@dataclass(frozen=True)
class AmxConvSpec(KernelIO):
    """Everything that determines one AMX conv / dense kernel (weights and constants are arguments)."""

    w4: bool = False
    mb: int = 2                       # A (pixel) tiles per macro tile
    nb: int = 2                       # B (output-channel) tiles per macro tile
    dense: bool = False               # x [N, K, 1, 1]: the batch is the pixel axis
    res_pairs: bool = False           # the fused residual add on `vpdpwssd` (`epilogue.add_pairs`)
    taps: bool = False                # TAPS mode (module docstring): kw x c input bytes per A row
    wide: bool = False                # 16-bit codes as two byte planes (module docstring)

    def __post_init__(self):
        assert not self.wide or (self.mb == 1 and not self.taps and self.in_dtype in ("int16", "int32")), self

    @property
    def planes(self) -> int:
        return 2 if self.wide else 1

    @staticmethod
    def taps_fit(c: int, kw: int, dil_w: int) -> bool:
        """Whether a kernel row's taps x channels fit one 64-byte A row contiguously (TAPS mode)."""
        return dil_w == 1 and kw * c <= ROW_BYTES

    @property
    def ocb(self) -> int:
        return ceil_div(self.o, 16)

    @property
    def kb(self) -> int:
        return 1 if self.taps else ceil_div(self.c, ROW_BYTES)

    @property
    def kws(self) -> int:
        """Reduction steps over the kernel's columns (TAPS: all in one A row)."""
        return 1 if self.taps else self.kw

    @property
    def pix_bytes(self) -> int:
        """Bytes per staged pixel: the padded channels (per plane), or (TAPS) the channels as they are."""
        return self.c if self.taps else self.planes * self.cp

    @property
    def cp(self) -> int:
        return self.kb * ROW_BYTES

    @property
    def offset(self) -> int:
        return 128 if self.in_dtype == "int8" else 0

    @property
    def one_by_one(self) -> bool:
        return self.kh == self.kw == 1

    @property
    def mode(self) -> AmxMode:
        if self.taps:
            return AmxMode.TAPS
        return AmxMode.FLAT if self.dense or self.stride == (1, 1) or self.one_by_one else AmxMode.ROWS

    @property
    def sub(self) -> tuple[int, int]:
        """Staging subsampling: a strided 1x1 conv is staged at its output grid."""
        return self.stride if self.one_by_one and not self.dense and not self.taps else (1, 1)

    @property
    def m(self) -> int:
        """Rows (pixels) of an A / C tile."""
        if self.mode is AmxMode.FLAT:
            return ROWS_MAX
        ow = self.out_hw[1]
        return ceil_div(ow, ceil_div(ow, ROWS_MAX))

    @property
    def tpr(self) -> int:
        """ROWS: tiles per output row."""
        return ceil_div(self.out_hw[1], self.m)

    @property
    def ws(self) -> int:
        """Staged width (pixels)."""
        oh, ow = self.out_hw
        t, l, b, r = self.pads
        if self.one_by_one and not self.taps:
            return ow
        if self.mode is AmxMode.FLAT:
            return self.w + l + r
        return max(self.w + l + r, (self.tpr * self.m - 1) * self.stride[1] + (self.kw - 1) * self.dil[1] + 1)

    @property
    def tiles(self) -> int:
        """Pixel tiles per image, padded to whole macro tiles."""
        oh, _ = self.out_hw
        raw = ceil_div(oh * self.ws, ROWS_MAX) if self.mode is AmxMode.FLAT else oh * self.tpr
        return ceil_div(raw, self.mb) * self.mb

    @property
    def hx(self) -> int:
        """Staged rows: the padded input, plus what the last (padded) tiles read."""
        t, _, b, _ = self.pads
        if self.mode is AmxMode.FLAT:
            last = self.tiles * ROWS_MAX - 1 + self.tap(self.kh - 1, self.kw - 1)
            need = last // self.ws + 1
            return max(need, self.out_hw[0] if self.one_by_one else self.h + t + b)
        ymax = (self.tiles - 1) // self.tpr
        return max(self.h + t + b, ymax * self.stride[0] + (self.kh - 1) * self.dil[0] + 1)

    @property
    def row_step(self) -> int:
        """Pixels between two rows of an A tile."""
        return 1 if self.mode is AmxMode.FLAT else self.stride[1]

    @property
    def a_stride(self) -> int:
        """Bytes between two rows of an A tile."""
        return self.row_step * self.pix_bytes

    @property
    def img_bytes(self) -> int:
        """Staged bytes per image."""
        return self.hx * self.ws * self.pix_bytes

    def staged_bytes(self, n):
        """The staged buffer (n images; TAPS: + 64 bytes of slack for the last A row's tail)."""
        return n * self.img_bytes + (ROW_BYTES if self.taps else 0)

    def a_offset(self, t, ry, rx, kb, plane: int = 0):
        """Byte offset (in its image) of row 0 of pixel tile t's A tile at reduction step (ry, rx, kb)."""
        return (self.tile_base(t) + self.tap(ry, rx)) * self.pix_bytes + plane * self.cp + kb * ROW_BYTES

    def dense_offset(self, t, kb, plane: int = 0):
        """Dense: byte offset of row 0 of sample tile t's A tile at input block kb."""
        return t * ROWS_MAX * self.pix_bytes + plane * self.cp + kb * ROW_BYTES

    def tap(self, ry, rx):
        """Staged-pixel offset of kernel tap (ry, rx)."""
        if self.one_by_one and not self.taps:
            return 0
        return ry * self.dil[0] * self.ws + rx * self.dil[1]

    def tile_base(self, t):
        """Staged pixel (image-relative) of row 0 of pixel tile t (ints or TIR expressions)."""
        if self.mode is AmxMode.FLAT:
            return t * ROWS_MAX
        return (t // self.tpr) * self.stride[0] * self.ws + (t % self.tpr) * self.m * self.stride[1]

    def out_pixel(self, t, r):
        """Output (y, z) that row r of pixel tile t computes (valid when y < OH and z < OW)."""
        if self.mode is AmxMode.FLAT:
            p = t * ROWS_MAX + r
            return p // self.ws, p % self.ws
        return t // self.tpr, (t % self.tpr) * self.m + r

    @property
    def ksteps(self) -> int:
        return self.kh * self.kws * self.kb

    def b_tile(self, ob, ry, rx, kb):
        """Index of the B tile of output block ob at reduction step (ry, rx, kb)."""
        return ((ob * self.kh + ry) * self.kws + rx) * self.kb + kb

    @property
    def b_bytes(self) -> int:
        """Stored bytes of one B tile (512 with 4-bit weights)."""
        return B_TILE // 2 if self.w4 else B_TILE


def weight(w: np.ndarray, sp: AmxConvSpec) -> np.ndarray:
    """W[O, C, KH, KW] -> the flat B-tile array of the module docstring (`nibbles` when w4)."""
    from dyadic.backend.kernels.packing import nibbles

    o, c, kh, kw = w.shape
    if sp.taps:  # [o, ry, rx c + ci] -> [ob, ry, k, n, i]
        full = np.zeros((sp.ocb * 16, kh, ROW_BYTES), np.int8)
        full[:o, :, :kw * c] = w.transpose(0, 2, 3, 1).reshape(o, kh, kw * c)
        t = np.ascontiguousarray(full.reshape(sp.ocb, 16, kh, 16, 4).transpose(0, 2, 3, 1, 4))
        return (nibbles(t) if sp.w4 else t).reshape(-1)
    full = np.zeros((sp.ocb * 16, sp.cp, kh, kw), np.int8)
    full[:o, :c] = w
    t = full.reshape(sp.ocb, 16, sp.kb, 16, 4, kh, kw).transpose(0, 5, 6, 2, 3, 1, 4)  # [ob, y, x, kb, k, n, i]
    t = np.ascontiguousarray(t)
    return (nibbles(t) if sp.w4 else t).reshape(-1)
