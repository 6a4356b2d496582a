"""The torchvision model-zoo table: compile what torch.onnx.export writes, unmodified, and measure it.

    python benchmarks/model_zoo.py --torch-python /path/to/venv-with-torch/bin/python [--models a,b] \
        [--threads 1] [--no-timing] [--out benchmarks/results/model_zoo.md]

For each model: export it (random init, BatchNorm statistics from forward passes, opset 17, dynamic
batch; `benchmarks/zoo_export.py`, run by --torch-python, which needs torch + torchvision: the
`[zoo]` extra), compile it with the CLI in a fresh process (timed; calibrated on 32 N(0,1) inputs,
which is what these random-init models see), read the compile's bit-exact self-check from
model.json, run 16 fresh N(0,1) inputs through the library and through onnxruntime fp32 for the
logit cosine, and (unless --no-timing) time dyadic against onnxruntime fp32 and int8
(`dyadic.cli.bench.run`: each runner in its own process, order rotated). Nothing here runs in the
test suite; torch is never imported by dyadic itself.
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
sys.path.insert(0, HERE)
from zoo_export import MODELS  # noqa: E402


def cosine(build: str, onnx_path: str, n: int = 16) -> float:
    import onnxruntime as ort

    import dyadic

    m = dyadic.load(build)
    spec = m.inputs[0]
    x = np.random.default_rng(1).standard_normal([n] + spec["shape"][1:]).astype(np.float32)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {spec["name"]: x[i:i + 1]})[0] for i in range(n)]).reshape(n, -1)
    got = np.asarray(m.run({spec["name"]: x}), np.float64).reshape(n, -1)
    return float(np.mean((got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))))


def one(name: str, work: str, torch_python: str, threads: list[int], timing: bool) -> dict:
    onnx_path = os.path.join(work, f"{name}.onnx")
    row = {"model": name}
    if not os.path.exists(onnx_path):
        p = subprocess.run([torch_python, os.path.join(HERE, "zoo_export.py"), work, name], capture_output=True, text=True)
        if p.returncode:
            return {**row, "compiles": "export failed", "error": p.stderr[-500:]}
    out = os.path.join(work, f"{name}_build")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "dyadic.cli", "compile", onnx_path, "-o", out, "--quiet"],
                       capture_output=True, text=True)
    row["compile_s"] = round(time.perf_counter() - t0, 1)
    if p.returncode:
        return {**row, "compiles": "no", "error": " ".join(p.stderr.split())[-600:]}
    plan = json.load(open(os.path.join(out, "model.json")))
    row.update(compiles="yes", bitexact="yes" if str(plan.get("self_check", "")).startswith("bit-exact") else "no",
               cosine=round(cosine(out, onnx_path), 5))
    if timing:
        from dyadic.cli import bench

        res = bench.run(out, onnx_path, threads=tuple(threads), batch=1, repeat=2, iters=10)
        row["timing"] = res
    return row


def table(rows: list[dict], host: str) -> str:
    lines = [f"# torchvision models through dyadic ({host})", "",
             "Random-init torchvision models exported with `torch.onnx.export` (opset 17, dynamic batch), "
             "compiled unmodified with `dyadic compile MODEL.onnx` (32 synthetic N(0,1) calibration inputs). "
             "Bit-exact: the compile's self-check against the int64 reference. Cosine: mean logit cosine "
             "against onnxruntime fp32 on 16 fresh N(0,1) inputs.", "",
             "| model | compiles | bit-exact | compile s | cosine vs fp32 | ms dyadic / ort-fp32 / ort-int8 (1 thread) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        t = r.get("timing")
        ms = "—"
        if t:
            med = {k: v["1"]["median_ms"] if isinstance(v, dict) and "1" in v else None for k, v in t.get("ms", {}).items()}
            ms = " / ".join(f"{med.get(k):.2f}" if med.get(k) else "?" for k in ("dyadic", "ort-fp32", "ort-int8"))
        lines.append(f"| {r['model']} | {r['compiles']} | {r.get('bitexact', '—')} | {r.get('compile_s', '—')} | "
                     f"{r.get('cosine', '—')} | {ms} |")
    errs = [r for r in rows if r.get("error")]
    if errs:
        lines += ["", "Failures (last part of the error):", ""]
        lines += [f"- **{r['model']}**: {r['error']}" for r in errs]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch-python", default=sys.executable, help="a python with torch and torchvision")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--work", default="/tmp/dyadic-zoo", help="where the .onnx files and builds go")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "model_zoo.md"))
    a = ap.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    host = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    flags = open("/proc/cpuinfo").read()
    host += ", " + ("AMX" if "amx_int8" in flags else "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2 only")
    rows = []
    for name in a.models.split(","):
        rows.append(one(name, a.work, a.torch_python, [int(t) for t in a.threads.split(",")], not a.no_timing))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "timing"}), flush=True)
        with open(a.out, "w") as f:
            f.write(table(rows, host))
    with open(a.out.replace(".md", ".json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
