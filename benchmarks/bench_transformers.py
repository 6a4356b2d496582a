"""Transformers end to end: torchvision ViT-B/16, Swin-T, ConvNeXt-T (random init, opset 17).

    python benchmarks/bench_transformers.py [--models convnext_tiny,vit_b_16,swin_t] [--calib 8] [--out /tmp/dyadic-xfmr]

Each model is exported with torch.onnx.export by a separate python that has torch/torchvision
(`--zoo-python`, default /work/zoo-venv/bin/python; the `[zoo]` extra of pyproject), then
compiled unmodified by `dyadic.compile` on N(0,1) calibration inputs; the compile's own
self-check runs the library against the int64 reference (bit-exact or it fails), and this script
then reports the logit cosine against onnxruntime fp32 and both latencies (batch 1).
Only what ran is printed; a model that does not compile prints the compiler's grouped error.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="convnext_tiny,vit_b_16,swin_t")
    ap.add_argument("--out", default="/tmp/dyadic-xfmr")
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--check", type=int, default=2, help="inputs for the bit-exactness self-check")
    ap.add_argument("--zoo-python", default="/work/zoo-venv/bin/python")
    args = ap.parse_args()
    import onnxruntime as ort

    import dyadic
    from dyadic.compiler import quantize_inputs
    from dyadic.core.config import CompileConfig
    from dyadic.core.errors import DyadicError
    from dyadic.core.reference import run_reference

    models = args.models.split(",")
    zoo = os.path.join(args.out, "onnx")
    subprocess.run([args.zoo_python, os.path.join(HERE, "_export_torchvision.py"), zoo, *models], check=True)
    rng = np.random.default_rng(0)
    results = {}
    for name in models:
        path = os.path.join(zoo, f"{name}.onnx")
        calib = {"input": rng.normal(size=(args.calib, 3, 224, 224)).astype(np.float32)}
        t0 = time.perf_counter()
        try:
            res = dyadic.compile(path, os.path.join(args.out, name), calib=calib,
                                 config=CompileConfig(quiet=True, check_samples=args.check))
        except DyadicError as e:
            results[name] = {"compiled": False, "error": str(e)[:1500]}
            print(f"{name}: does not compile: {str(e)[:1500]}", flush=True)
            continue
        t_compile = time.perf_counter() - t0
        lib = dyadic.load(os.path.join(args.out, name))
        ig = res.int_graph
        static = bool(ig.meta.get("static_batch"))  # e.g. ViT: nn.MultiheadAttention moves the batch axis
        x = rng.normal(size=(2, 3, 224, 224)).astype(np.float32)
        exact = True
        for xb in ([x[:1], x[1:]] if static else [x]):
            q = quantize_inputs(ig, {"input": xb})
            exact &= bool(np.array_equal(lib.run_int(q)[0], run_reference(ig, q)[ig.outputs[0]]))
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        ref = sess.run(None, {"input": x[:1]})[0]
        y = lib.run(x[:1])
        t1 = time.perf_counter()
        for _ in range(3):
            lib.run(x[:1])
        ms_lib = (time.perf_counter() - t1) / 3 * 1e3
        t1 = time.perf_counter()
        for _ in range(3):
            sess.run(None, {"input": x[:1]})
        ms_ort = (time.perf_counter() - t1) / 3 * 1e3
        r = {"compiled": True, "static_batch": static, "bit_exact": exact, "self_check": res.plan.get("self_check"),
             # torchvision's ViT zero-initializes its head: random-init logits are all 0 (cosine undefined)
             "cosine_vs_ort_fp32": round(_cos(y, ref), 5) if np.abs(ref).max() > 0 else None,
             "max_abs_diff_vs_ort": float(np.abs(y - ref).max()), "top1_agree": bool(np.argmax(y) == np.argmax(ref)),
             "compile_s": round(t_compile, 1), "latency_ms_batch1": round(ms_lib, 1),
             "ort_fp32_ms_batch1": round(ms_ort, 1)}
        results[name] = r
        print(f"{name}: {json.dumps(r)}", flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
