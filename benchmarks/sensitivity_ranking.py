"""Do the Hessian sensitivities rank layers well? (issue 4's check on the real ResNet-20)

For every weighted layer i of ResNet-20: make only layer i W4A8 (all others W8A8), compile, and
measure the top-1 drop against all-W8A8 with the compiled library on the first N test images.
Then report the Spearman correlation of that drop with Ω_i(W4A8) (Hessian-weighted) and with the
plain ‖Q_4(W_i) − W_i‖², plus each layer's trace with its standard error.

    python benchmarks/sensitivity_ranking.py [--images 2000] [--out sens.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

import dyadic
from dyadic.core.config import BitMode, CompileConfig
from dyadic.frontend.data import Normalize, load_npz
from dyadic.cli.evaluate import evaluate
from dyadic.frontend import import_onnx
from dyadic.pipeline import float_passes, run_passes

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
NORM = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def spearman(a, b) -> float:
    def rank(v):
        v = np.asarray(v, float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):  # average ranks of ties
            r[v == val] = r[v == val].mean()
        return r
    ra, rb = rank(a), rank(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--hessian-samples", type=int, default=32)
    ap.add_argument("--out", default=None, help="write the per-layer table as JSON here")
    a = ap.parse_args()
    model = os.path.join(SHARED, "models", "resnet20_cifar10.onnx")
    calib, _ = load_npz(os.path.join(SHARED, "data", "cifar10_calib.npz"), {"input": (-1, 3, 32, 32)}, NORM)
    x, y = load_npz(os.path.join(SHARED, "data", "cifar10_test.npz"), {"input": (-1, 3, 32, 32)}, NORM, a.images)
    t0 = time.perf_counter()
    prepared = run_passes(import_onnx(model), float_passes(
        CompileConfig(bits=BitMode.MIXED, hessian_samples=a.hessian_samples, quiet=True), calib))
    t_sens = time.perf_counter() - t0
    sens = prepared.meta["sensitivity"]

    def top1(layer_bits) -> float:
        with tempfile.TemporaryDirectory() as d:
            cfg = CompileConfig(bits=BitMode.INT8, layer_bits=layer_bits, quiet=True)
            dyadic.compile(model, d, calib, cfg, prepared=prepared)
            lib = dyadic.load(d)
            c, n = evaluate(lambda xs: lib.run(xs), x, y, 250, quiet=True)
        return c / n

    base = top1(())
    rows = []
    for name, s in sens.items():
        acc = top1(((name, 4, 8),))
        rows.append({"layer": name, "trace_w": s["trace_w"], "trace_w_se": s["trace_w_se"],
                     "omega_w4a8": s["omega"]["W4A8"], "weight_sq_err_4": s["weight_sq_err"]["4"],
                     "top1": acc, "drop": base - acc})
        print(f"{name:36s} Tr/n={s['trace_w']:.3e}±{s['trace_w_se']:.1e}  Ω4={s['omega']['W4A8']:.3e}  "
              f"‖ΔW‖²={s['weight_sq_err']['4']:.3e}  top1={100 * acc:.2f}  drop={100 * (base - acc):+.2f}",
              flush=True)
    drops = [r["drop"] for r in rows]
    rho_h = spearman([r["omega_w4a8"] for r in rows], drops)
    rho_w = spearman([r["weight_sq_err_4"] for r in rows], drops)
    info = prepared.meta["sensitivity_info"]
    print(f"\nall-W8A8 top-1 {100 * base:.2f}% on {len(y)} images; sensitivity pass {t_sens:.1f}s "
          f"({info['probes']} probes, {info['samples']} images, max rel. s.e. {info['max_rel_se_w']:.3f})")
    print(f"Spearman(Ω_i(W4A8), drop_i) = {rho_h:.3f}")
    print(f"Spearman(‖Q4(W_i) − W_i‖², drop_i) = {rho_w:.3f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"base_top1": base, "images": len(y), "rows": rows, "spearman_omega": rho_h,
                       "spearman_plain": rho_w, "sensitivity_info": info, "sensitivity_s": t_sens}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
