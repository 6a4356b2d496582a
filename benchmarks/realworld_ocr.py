"""Real pretrained OCR graphs that Paddle2ONNX wrote: PP-OCRv4 text detection and recognition.

    python benchmarks/realworld_ocr.py [--work /tmp/dyadic-ocr] [--models det,rec] [--n 64] [--bench]
        [--compile-args='' --compile-args='--wide-activations all --wide-weights auto' ...]

The models come inside the PyPI package `rapidocr-onnxruntime` (1.4.4: `ch_PP-OCRv4_det_infer.onnx`,
a DBNet with a PP-LCNetV3 backbone, Resize and ConvTranspose; `ch_PP-OCRv4_rec_infer.onnx`, an
SVTR-LCNet recognizer with attention, LayerNorm and a CTC head), fetched once with `pip download`
into --work. Both are opset 12 with dynamic H/W, compiled unmodified by the CLI with
`--input-shape` pinning the spatial dims (det 320x320, rec 48x320).

Data: real text pixels, the rendered text lines of `../shared/data/textlines_{calib,test}.npz`
(48x192 RGB). Detection pages are 320x320 light backgrounds with 4 lines pasted at seeded random
places; recognition inputs are the lines themselves padded to 48x320 with mid-grey (0 after the
models' (x/255 - 0.5)/0.5 normalisation, as PaddleOCR pads). Calibration uses the calib split, the
comparison the test split.

Reported against onnxruntime fp32 on the same inputs:
* det: cosine of the probability maps, and the IoU of the text masks at DB's threshold 0.3;
* rec: per-time-step logit cosine and argmax agreement (also on the steps where fp32's top
  probability is at least 0.5: the lines are English, the model Chinese, and many steps are close
  calls in fp32 itself); how many lines decode (greedy CTC: argmax,
  merge repeats, drop blanks) to the same character-index sequence, and the character error rate
  (edit distance over fp32's decoded characters), which counts one wrong character in a line as one
  error rather than as a wrong line.
The compile's own self-check proves each library bit-exact against the int64 reference.
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
SHARED = os.path.join(HERE, "..", "..", "shared")
PKG = "rapidocr-onnxruntime==1.4.4"
MODELS = {"det": ("ch_PP-OCRv4_det_infer.onnx", "x:1,3,320,320"),
          "rec": ("ch_PP-OCRv4_rec_infer.onnx", "x:1,3,48,320")}


def fetch_models(work: str) -> dict[str, str]:
    paths = {k: os.path.join(work, f) for k, (f, _) in MODELS.items()}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", PKG, "-d", work], check=True)
    whl = sorted(glob.glob(os.path.join(work, "rapidocr_onnxruntime-*.whl")))[-1]
    with zipfile.ZipFile(whl) as z:
        for k, (f, _) in MODELS.items():
            with open(paths[k], "wb") as out:
                out.write(z.read(f"rapidocr_onnxruntime/models/{f}"))
    return paths


def pages(lines: np.ndarray, n: int, seed: int, size: int | tuple[int, int] = 320, per_page: int = 4) -> np.ndarray:
    """n RGB pages of size x size (or (height, width)), each with `per_page` text lines at random
    non-overlapping rows."""
    rng = np.random.default_rng(seed)
    h, w = lines.shape[1:3]
    ph, pw = (size, size) if isinstance(size, int) else size
    out = np.empty((n, ph, pw, 3), np.uint8)
    rows = (ph - 8) // h
    for i in range(n):
        out[i] = rng.integers(200, 256, 3, dtype=np.uint8)
        for r in rng.choice(rows, per_page, replace=False):
            y, x = 4 + r * h, int(rng.integers(0, pw - w + 1))
            out[i, y:y + h, x:x + w] = lines[rng.integers(len(lines))]
    return out


def padded_lines(lines: np.ndarray, width: int = 320) -> np.ndarray:
    out = np.full((len(lines), lines.shape[1], width, 3), 128, np.uint8)
    out[:, :, :lines.shape[2]] = lines
    return out


def _nchw(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()


def _ctc(logits: np.ndarray) -> tuple:
    best = logits.argmax(-1)
    keep = np.concatenate([[True], best[1:] != best[:-1]]) & (best != 0)
    return tuple(best[keep].tolist())


def _edits(a: tuple, b: tuple) -> int:
    """Levenshtein distance between two index sequences (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def compare(kind: str, build: str, onnx_path: str, images: np.ndarray) -> dict:
    import onnxruntime as ort

    import dyadic

    lib = dyadic.load(build)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    x = _nchw(images)
    got, ref = [], []
    for i in range(len(x)):
        got.append(np.asarray(lib.run({"x": x[i:i + 1]}))[0])
        ref.append(sess.run(None, {"x": x[i:i + 1]})[0][0])
    got, ref = np.array(got), np.array(ref)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    if kind == "det":
        m1, m2 = got > 0.3, ref > 0.3
        iou = float((m1 & m2).sum() / max((m1 | m2).sum(), 1))
        return {"n": len(x), "map_cosine": round(float(np.mean([_cos(a, b) for a, b in zip(got, ref)])), 5),
                "mask_iou@0.3": round(iou, 4), "text_pixels_fp32": round(float(m2.mean()), 4)}
    cos = [_cos(a[t], b[t]) for a, b in zip(got, ref) for t in range(a.shape[0])]
    pairs = [(_ctc(a), _ctc(b)) for a, b in zip(got, ref)]
    same = [p == q for p, q in pairs]
    cer = sum(_edits(p, q) for p, q in pairs) / max(sum(len(q) for _, q in pairs), 1)
    top1 = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
    sure = ref.max(-1) >= 0.5  # steps fp32 itself is sure of: where a flip is the integer build's doing
    top1_sure = float(np.mean(got.argmax(-1)[sure] == ref.argmax(-1)[sure]))
    return {"n": len(x), "step_cosine_mean": round(float(np.mean(cos)), 5), "step_cosine_min": round(float(np.min(cos)), 5),
            "step_top1_agree": round(top1, 4), "sure_steps": round(float(sure.mean()), 4),
            "sure_step_top1_agree": round(top1_sure, 4), "same_decoding": round(float(np.mean(same)), 4),
            "cer_vs_fp32": round(cer, 4), "fp32_chars": int(sum(len(q) for _, q in pairs)),
            "nonempty_fp32": int(sum(len(q) > 0 for _, q in pairs))}


def host_description() -> str:
    """Model name, the AMD Zen generation where /proc/cpuinfo's family and model tell it, and the ISA."""
    info = open("/proc/cpuinfo").read()
    field = lambda k: next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith(k)), "?")  # noqa: E731
    host = field("model name")
    if "AMD" in host and field("cpu family").isdigit() and field("model").isdigit():
        fam, mod = int(field("cpu family")), int(field("model"))
        gen = ({23: "Zen 2" if mod >= 0x30 else "Zen+" if mod == 0x08 else "Zen 1",
                25: "Zen 4" if 0x10 <= mod < 0x20 or 0x60 <= mod < 0x80 or 0xa0 <= mod else "Zen 3",
                26: "Zen 5"}).get(fam)
        host += f" ({gen})" if gen and "Zen" not in host else ""
    return host + ", " + ("AMX" if "amx_int8" in info else "AVX-512 VNNI" if "avx512_vnni" in info else "AVX2 only")


def run_one(kind: str, model: str, build: str, cpath: str, test: np.ndarray, extra: list, bench: bool) -> dict:
    cmd = [sys.executable, "-m", "dyadic.cli", "compile", model, "-o", build, "--quiet", "--calib", cpath,
           "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--input-shape", MODELS[kind][1], *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        return {"compiles": "no", "compile_args": " ".join(extra), "error": " ".join(p.stderr.split())[-600:]}
    plan = json.load(open(os.path.join(build, "model.json")))
    r = {"compiles": "yes", "self_check": plan["self_check"], "compile_s": plan["timings_s"]["total"],
         "compile_args": " ".join(extra), "generic_ops": plan["target"].get("kernel_coverage", {}).get("generic_ops"),
         **compare(kind, build, model, test)}
    if bench:
        out = os.path.join(build, "bench.json")
        subprocess.run([sys.executable, "-m", "dyadic.cli", "bench", build, "--vs", model, "--threads", "1",
                        "--no-openvino", "--calib", cpath, "--json", out], check=True, capture_output=True)
        r["bench_1thread"] = bench_row(out)
    return r


def bench_row(path: str) -> dict:
    """The 1-thread figures of a `dyadic bench --json` file."""
    row = json.load(open(path))["rows"][0]
    return {k: round(row[k], 3) for k in ("dyadic_ms", "ort-int8_ms", "ort-fp32_ms", "vs_ort_int8", "vs_ort_fp32")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/dyadic-ocr")
    ap.add_argument("--models", default="det,rec")
    ap.add_argument("--n", type=int, default=64, help="test inputs compared per model")
    ap.add_argument("--calib-count", type=int, default=32)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "realworld_ocr.md"))
    ap.add_argument("--compile-args", action="append", default=None,
                    help="`dyadic compile` flags of one build, repeatable: one build per occurrence and model, "
                         "e.g. --compile-args='' --compile-args='--wide-activations all --wide-weights auto' "
                         "(default: one build with the default flags; builds go to KIND_build_<flags>)")
    ap.add_argument("--bench", action="store_true",
                    help="also time each build against onnxruntime int8 and fp32 (`dyadic bench`, 1 thread)")
    a = ap.parse_args(argv)
    configs = a.compile_args if a.compile_args is not None else [""]
    os.makedirs(a.work, exist_ok=True)
    paths = fetch_models(a.work)
    calib_lines = np.load(os.path.join(SHARED, "data", "textlines_calib.npz"))["images"]
    test_lines = np.load(os.path.join(SHARED, "data", "textlines_test.npz"))["images"]
    data = {"det": (pages(calib_lines, a.calib_count, 0), pages(test_lines, a.n, 1)),
            "rec": (padded_lines(calib_lines[:a.calib_count]), padded_lines(test_lines[:a.n]))}
    results = {}
    for kind in a.models.split(","):
        calib, test = data[kind]
        cpath = os.path.join(a.work, f"{kind}_calib.npz")
        np.savez(cpath, images=calib)
        for cfg in configs:
            extra = cfg.split()
            key = kind + "".join(" " + t for t in extra)
            build = os.path.join(a.work, f"{kind}_build" + "".join("_" + t.strip("-") for t in extra))
            results[key] = run_one(kind, paths[kind], build, cpath, test, extra, a.bench)
            print(key, json.dumps(results[key]), flush=True)
    host = host_description()
    with open(a.out.replace(".md", ".json"), "w") as f:
        json.dump({"host": host, "results": results}, f, indent=1)
    with open(a.out, "w") as f:
        f.write(table(results, host))
    return 0


def table(results: dict, host: str) -> str:
    lines = [f"# PP-OCRv4 (rapidocr-onnxruntime 1.4.4) through dyadic ({host})", "",
             "Compiled unmodified (`--input-shape`, calibration on 32 inputs made from "
             "`../shared/data/textlines_calib.npz`), compared with onnxruntime fp32 on inputs made from "
             "`textlines_test.npz` (`benchmarks/realworld_ocr.py`).", "",
             "| model | compiles | self-check | compared | result vs fp32 |", "|---|---|---|---|---|"]
    for key, r in results.items():
        kind = key.split()[0]
        name = MODELS[kind][0] + (f" `{r['compile_args']}`" if r.get("compile_args") else "")
        if r.get("compiles") != "yes":
            lines.append(f"| {name} | no | — | — | {r.get('error', '')[:200]} |")
            continue
        if kind == "det":
            res = f"probability-map cosine {r['map_cosine']}, text-mask IoU at 0.3: {r['mask_iou@0.3']}"
        else:
            res = (f"per-step logit cosine {r['step_cosine_mean']} (min {r['step_cosine_min']}), per-step argmax "
                   f"agreement {100 * r['step_top1_agree']:.1f} % ({100 * r['sure_step_top1_agree']:.1f} % on the "
                   f"{100 * r['sure_steps']:.0f} % of steps where fp32's top probability is >= 0.5); greedy CTC decoding: the same on "
                   f"{100 * r['same_decoding']:.1f} % of lines, character error rate {100 * r['cer_vs_fp32']:.1f} % "
                   f"against fp32's {r['fp32_chars']} characters")
        b = r.get("bench_1thread")
        if b:
            res += (f"; 1 thread {b['dyadic_ms']:.2f} ms against onnxruntime int8 {b['ort-int8_ms']:.2f} / fp32 "
                    f"{b['ort-fp32_ms']:.2f} ms ({b['vs_ort_int8']:.2f}x / {b['vs_ort_fp32']:.2f}x)")
        lines.append(f"| {name} | yes ({r['compile_s']:.0f} s) | {r['self_check']} | {r['n']} inputs | {res} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
