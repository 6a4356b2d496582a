"""The host-CPU benchmark table: dyadic int8 vs onnxruntime int8 (QDQ u8/s8 per-channel) and fp32.

    python benchmarks/bench_host.py [--models resnet50,...] [--threads 1,2] [--repeat 3] [--out results.json]

For each model (built-in seeded weights, `dyadic.models`): write the ONNX file, compile it with the
CLI in a fresh process (timed: that is the compile time reported), then run `dyadic.cli.bench.run`
(each runner in its own subprocess, repeated with the order rotated) and print one table. Default
set: ResNet-18, ResNet-50, MobileNetV2 at 224x224 and InceptionV3 at 299x299, batch 1; ResNet-20
(CIFAR) at batch 1 and 64. `resnet50_b64` (ResNet-50 at batch 64) is asked for by name. With the
`[peers]` extra installed, OpenVINO fp32 and int8 (NNCF) columns are added.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CONFIGS = {  # label: (builder name, batch)
    "resnet18": ("resnet18", 1),
    "resnet50": ("resnet50", 1),
    "mobilenet_v2": ("mobilenet_v2", 1),
    "inception_v3": ("inception_v3", 1),
    "resnet20": ("resnet20", 1),
    "resnet20_b64": ("resnet20", 64),
    "resnet50_b64": ("resnet50", 64),
}


def compile_model(name: str, work: str) -> tuple[str, str, float]:
    from dyadic.models import save

    onnx_path = os.path.join(work, f"{name}.onnx")
    if not os.path.exists(onnx_path):
        save(name, onnx_path)
    out = os.path.join(work, f"{name}_build")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dyadic.cli", "compile", onnx_path, "-o", out, "--quiet"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"compile of {name} failed:\n{proc.stderr[-2000:]}")
    return onnx_path, out, seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(k for k in CONFIGS if k != "resnet50_b64"), help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--work", default=None, help="directory for the ONNX files and builds (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write all results as JSON here")
    a = ap.parse_args(argv)
    from dyadic.cli import bench

    threads = tuple(int(t) for t in a.threads.split(","))
    work = a.work or tempfile.mkdtemp(prefix="dyadic-bench-host-")
    os.makedirs(work, exist_ok=True)
    compiled: dict[str, tuple] = {}
    results = []
    for label in a.models.split(","):
        name, batch = CONFIGS[label]
        if name not in compiled:
            compiled[name] = compile_model(name, work)
            print(f"compiled {name} in {compiled[name][2]:.1f} s (CLI, fresh process)", file=sys.stderr)
        onnx_path, build_dir, compile_s = compiled[name]
        res = bench.run(build_dir, onnx_path, threads, batch, a.repeat, a.iters,
                        log=lambda s: print(s, file=sys.stderr))
        print(bench.format_table(res), file=sys.stderr)
        for row in res["rows"]:
            results.append({"model": label, "compile_s": compile_s, **row})
    ov = all("ov-int8_ms" in r for r in results)  # OpenVINO peers (the [peers] extra) ran
    from dyadic.backend.kernels.peak import host_peak

    peak = {"tdpbusd": "AMX", "vpdpbusd": "VNNI", "vpmaddwd": "AVX2"}.get(host_peak()[0], "")
    print("| model | batch | threads | dyadic ms | " + ("OV int8 ms | OV fp32 ms | " if ov else "")
          + "ORT int8 ms | ORT fp32 ms | " + ("OV int8 / dyadic | " if ov else "")
          + f"ORT int8 / dyadic | ORT fp32 / dyadic | GMAC/s | of {peak} peak | compile s |")
    print("|---" * (13 if ov else 11) + "|")
    for r in results:
        ovc = f"{r['ov-int8_ms']:.2f} | {r['ov-fp32_ms']:.2f} | " if ov else ""
        ovr = f"{r['vs_ov_int8']:.2f}x | " if ov else ""
        print(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['dyadic_ms']:.2f} | {ovc}{r['ort-int8_ms']:.2f} | "
              f"{r['ort-fp32_ms']:.2f} | {ovr}{r['vs_ort_int8']:.2f}x | {r['vs_ort_fp32']:.2f}x | {r['gmacs']:.0f} | "
              f"{100 * r.get('peak_fraction', float('nan')):.0f}% | {r['compile_s']:.0f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
