"""Which conv / dense layers run on the AMX kernels (`amx_conv`), and their `AmxConvSpec`.

`CpuKernels` (`lowering`) on an AMX target asks `conv_spec` / `dense_spec` per layer; None keeps the
layer on the VNNI kernels. The policy (`AmxPolicy`) is a first guess; its thresholds have not been
tuned by timings (TAPS mode and the task count were measured on ResNet-50 on a 2-core AMX Xeon):
  * depthwise and grouped convs stay on VNNI (one input channel per output: no K to tile);
  * fewer than `min_channels` input channels (a first layer) run in TAPS mode (`amx_layout`: a kernel
    row's taps x channels in one A row) where they fit 64 bytes, else on VNNI (`rowtaps`);
  * fewer than `min_pixels` output pixels per image (e.g. 2x2 maps): most of the 16 rows of an A tile
    would be padding;
  * dense layers with fewer than `min_dense_k` inputs;
  * 16-bit input (int16 storage) runs as two byte planes (`amx_layout`, `wide`) where its accumulator
    bound holds (`wide_ok`), with its channels padded to 64 even where they are fewer than `min_channels`
    (no TAPS mode), from `min_wide_channels` on: torchvision mobilenet_v2 with `--wide-activations auto`
    (2-core AMX Xeon, 1 thread, `dyadic profile`): its 1x1 16 -> 96 conv at 112x112 took 0.50 ms on
    the planes against 0.35 on `vpdpwssd` (the 16 channels padded to 64, int32 input staged), its
    24 -> 144 ones at 56x56 0.30 against 0.38 (2 calls); googlenet's (64 and more) 3-5x less.
Register blocking: 2 x 2 tiles (32 pixels x 32 channels per macro tile) where the channel blocks
pair up and there are at least two pixel tiles; dense: one row tile (16 samples) x 2 channel blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dyadic.backend.kernels.amx_layout import AmxConvSpec
from dyadic.backend.kernels.spec import ceil_div

_8BIT = ("uint8", "int8")


@dataclass(frozen=True)
class AmxPolicy:
    min_channels: int = 32
    min_wide_channels: int = 17
    min_pixels: int = 16
    min_dense_k: int = 64


POLICY = AmxPolicy()


def _blocking(ocb: int, pixel_tiles: int, one_a_tile: bool) -> tuple[int, int]:
    """(mb, nb); one_a_tile: dense layers (16 samples) and 16-bit input (an A tile per byte plane)."""
    nb = 2 if ocb % 2 == 0 else 1
    mb = 1 if one_a_tile or pixel_tiles < 2 else 2
    return mb, nb


def wide_ok(kern, t: str, w: np.ndarray) -> bool:
    """Whether 16-bit codes of tensor t can feed weights w as two byte planes: (max|x| + 255) max_o sum|W[o]|
    < 2^31 bounds 256 C_hi and C_lo (`amx_layout`), so no partial sum leaves int32."""
    if kern.g.dtypes[t] not in ("int16", "int32"):
        return False
    q = kern.g.qparams.get(t)
    amax = max(-q.lo, q.hi) if q is not None else 1 << 31
    rows = int(np.abs(w.astype(np.int64)).reshape(len(w), -1).sum(axis=1).max(initial=0))
    return amax <= 1 << 15 and (amax + 255) * rows < 1 << 31


def conv_spec(kern, n, residual, out_dtype: str, res_m=None, policy: AmxPolicy = POLICY) -> AmxConvSpec | None:
    """The AMX spec of conv node n (residual: the fused add's (dtype, lo, hi, int32 form); res_m: its
    multipliers, whose `epilogue.pairs_ok` puts the add on `vpdpwssd`), or None."""
    from dyadic.backend.kernels import epilogue, packing

    t, p, a = n.inputs[0], n.params, n.attrs
    _, c, h, w = kern.g.shapes[t]
    o, cg, kh, kw = p["W"].shape
    oh, ow = kern.g.shapes[n.output][2:]
    wide = wide_ok(kern, t, p["W"])
    if a["group"] != 1 or cg != c or a["w_bits"] not in (4, 8) or not (kern.g.dtypes[t] in _8BIT or wide):
        return None
    # a first layer: its taps fill the A rows instead (TAPS mode), if they fit; 16-bit input has no TAPS
    # mode, and pads its channels to 64 where they are not too few
    taps = c < policy.min_channels and not wide
    if taps and not AmxConvSpec.taps_fit(c, kw, a["dilations"][1]) or oh * ow < policy.min_pixels \
            or wide and c < policy.min_wide_channels:
        return None
    base = dict(c=c, h=h, w=w, o=o, kh=kh, kw=kw, stride=tuple(a["strides"]), pads=tuple(a["pads"]),
                dil=tuple(a["dilations"]), packed_in=t in kern.packed, in_dtype=kern.g.dtypes[t], out_dtype=out_dtype,
                lo=a["lo"], hi=a["hi"], residual=residual, hi32=packing.hi32_ok(p["S"]), w4=a["w_bits"] == 4,
                taps=taps, wide=wide)
    base["res_pairs"] = bool(residual and residual[3] and base["hi32"] and epilogue.pairs_ok(res_m))
    probe = AmxConvSpec(**base, mb=1, nb=1)
    mb, nb = _blocking(probe.ocb, probe.tiles, wide)
    sp = AmxConvSpec(**base, mb=mb, nb=nb)
    assert sp.out_hw == (oh, ow)
    return sp


def dense_spec(kern, n, policy: AmxPolicy = POLICY) -> AmxConvSpec | None:
    """The AMX spec of dense node n (x [N, K]), or None."""
    from dyadic.backend.kernels import packing

    p, a, t = n.params, n.attrs, n.inputs[0]
    k, o = kern.g.shapes[t][1], p["W"].shape[0]
    wide = wide_ok(kern, t, p["W"])
    if k < policy.min_dense_k or a["w_bits"] not in (4, 8) or not (kern.g.dtypes[t] in _8BIT or wide):
        return None
    mb, nb = _blocking(ceil_div(o, 16), 1, True)
    return AmxConvSpec(k, 1, 1, o, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), False, kern.g.dtypes[t], kern.g.dtypes[n.output],
                       a["lo"], a["hi"], None, packing.hi32_ok(p["S"]), a["w_bits"] == 4, mb, nb, dense=True,
                       wide=wide)
