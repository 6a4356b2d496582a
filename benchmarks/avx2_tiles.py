"""Register tiles of the int16-step conv kernel (`intrin_avx2`, `spec.choose_tile`) timed on this host.

    python benchmarks/avx2_tiles.py [--isa avx2] [--rounds 5] [--out benchmarks/results/avx2_tiles.md]

For each 3x3 conv of ResNet-18's stages and two of Inception-v3's sizes (packed uint8 input, batch 1) every tile that fits the
register file is built once for the isa and timed (30 calls, median) at 1 thread
(TVM_NUM_THREADS=1, set before tvm loads), in rounds that alternate the tiles so a drift of the host
hits them alike; the table gives the median of the rounds' medians, GMAC/s and which tile
`choose_tile` picks. Numbers only, no pass/fail: the tests check the tiles' results bit-exact.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ["TVM_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# (channels in, out, H, W, kernel): ResNet-18's 3x3 stages, Inception-v3's 35x35 and 17x17, a 5x5 map, and
# MiniLM's linears as 1x1 convs over 128 rows
LAYERS = [(64, 64, 56, 56, 3), (128, 128, 28, 28, 3), (256, 256, 14, 14, 3), (512, 512, 7, 7, 3),
          (96, 96, 35, 35, 3), (192, 192, 17, 17, 3), (256, 256, 5, 5, 3), (384, 384, 1, 128, 1),
          (384, 1536, 1, 128, 1)]
TARGETS = {"avx2": {"kind": "llvm", "mcpu": "haswell"}}


def tiles(isa: str, o: int, oh: int, ow: int):
    from dyadic.backend.kernels.spec import MAX_ACC, REGFILE, ceil_div

    nregs, per_acc, per_w, per_b = REGFILE[isa]
    out = []
    for ocbi in (1, 2):
        for ohi in (1, 2, 3):
            for owi in range(1, 8):
                acc = ocbi * ohi * owi
                if ceil_div(o, 16) % ocbi or acc > MAX_ACC or ohi > oh or owi > ow:
                    continue
                if acc * per_acc + ocbi * per_w + (ohi * owi * per_b if ocbi > 1 else 0) <= nregs - 1 and acc >= 2:  # choose_tile's bound
                    out.append((ocbi, ohi, owi))
    return out


def build(isa: str, c: int, o: int, h: int, w: int, k: int, tile):
    import tvm

    from dyadic.backend.kernels import packing
    from dyadic.backend.kernels.cpu_conv import conv_func
    from dyadic.backend.kernels.spec import ConvSpec

    p = k // 2
    sp = ConvSpec(c, h, w, o, k, k, (1, 1), (p, p, p, p), (1, 1), True, "uint8", "uint8", 0, 255, None, True,
                  isa, tile)
    lib = tvm.compile(tvm.IRModule({"main": conv_func(sp)}), target=tvm.target.Target(TARGETS[isa]))
    rng, dev = np.random.default_rng(0), tvm.cpu()
    op = sp.ocb * 16
    x = np.zeros((1, -(-c // 16) * 16, h, w), "uint8")
    x[:, :c] = rng.integers(0, 256, (1, c, h, w))
    x = x.reshape(1, -1, 16, h, w).transpose(0, 1, 3, 4, 2)  # NCHW16c
    wt = rng.integers(-128, 128, (o, c, k, k)).astype(np.int8)
    b = rng.integers(-3000, 3000, o).astype(np.int32)
    m, s = np.full(o, 1 << 30, np.int64), np.full(o, 40, np.int64)
    consts = [v.astype("int32") for v in packing.requant_consts(m, s, op, True)]
    args = [x, packing.weight(wt, sp), packing.bias(b, wt, sp.offset, op), *consts]
    out = tvm.runtime.empty((1, sp.ocb, h, w, 16), "uint8")
    bufs = [tvm.runtime.tensor(np.ascontiguousarray(v)) for v in args] + [out]
    return lib, bufs, dev


def _median_ms(lib, bufs, iters: int = 30) -> float:
    lib(*bufs)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        lib(*bufs)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", default="avx2", choices=sorted(TARGETS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "avx2_tiles.md"))
    a = ap.parse_args()
    sys.path.insert(0, HERE)
    from realworld_ocr import host_description  # noqa: E402

    from dyadic.backend.kernels.spec import choose_tile

    rows = []
    for c, o, h, w, k in LAYERS:
        cands = tiles(a.isa, o, h, w)
        built = {t: build(a.isa, c, o, h, w, k, t) for t in cands}
        times = {t: [] for t in cands}
        for _ in range(a.rounds):
            for t, (lib, bufs, dev) in built.items():
                times[t].append(_median_ms(lib, bufs))
        macs = c * o * k * k * h * w
        pick = choose_tile(o, h, w, isa=a.isa)
        for t in cands:
            ms = float(np.median(times[t]))
            rows.append((f"{c}->{o} {k}x{k} @{h}x{w}", t, ms, macs / ms / 1e6, t == pick))
            print(rows[-1][0], t, f"{ms:.3f} ms", f"{macs / ms / 1e6:.1f} GMAC/s", "<- choose_tile" if t == pick else "",
                  flush=True)
    with open(a.out, "w") as f:
        f.write(f"# int16-step conv tiles ({a.isa}) on {host_description()}\n\n"
                f"`python benchmarks/avx2_tiles.py --isa {a.isa} --rounds {a.rounds}`: convs, stride 1, "
                "packed uint8 in and out, batch 1, 1 thread, median of the rounds' medians of 30 calls.\n\n"
                "| layer | tile (ocbi, ohi, owi) | ms | GMAC/s | choose_tile |\n|---|---|---|---|---|\n")
        for layer, t, ms, g, p in rows:
            f.write(f"| {layer} | {t} | {ms:.3f} | {g:.1f} | {'yes' if p else ''} |\n")
        f.write(f"\n{platform.python_version()}, numpy {np.__version__}\n")
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
