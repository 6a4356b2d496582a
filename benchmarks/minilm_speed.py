"""all-MiniLM-L6-v2 latency, batch 1, seq 128: dyadic's integer library against onnxruntime fp32 and
onnxruntime int8 (`quantize_dynamic`, its standard transformer path), at 1 and 2 threads.

    python benchmarks/minilm_speed.py --build /tmp/dyadic-minilm/build --onnx /tmp/dyadic-minilm/minilm_seq128.onnx
                                      [--data /tmp/dyadic-minilm/minilm_seq128_data.npz] [--iters 50]

The build and the ONNX file come from `bench_minilm.py` (which exports the model with torch, from the
optional extra). Each (runner, threads) pair runs in its own fresh process (`--runner`), so thread
pools and caches do not leak between runners: 5 warm-up runs, then the median of `--iters`. The
share of dyadic's time by function class comes from `dyadic profile` (1 thread): dyadic's linear
(1x1 GEMM) kernels, its attention-product kernels, its Softmax and table (GELU) kernels, and TVM's
generic lowering of the rest (LayerNorm, residual adds, the narrowing requants and layout moves),
whose top functions are listed by name.
Writes benchmarks/results/minilm_speed.{md,json}.
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


def host() -> str:
    with open("/proc/cpuinfo") as f:
        txt = f.read()
    name = next((ln.split(":", 1)[1].strip() for ln in txt.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in txt.splitlines() if ln.startswith("flags")), []))
    isa = "AMX-INT8" if "amx_int8" in flags else "AVX512-VNNI" if "avx512_vnni" in flags else \
        "AVX-512 (no VNNI)" if "avx512bw" in flags else "AVX2 only" if "avx2" in flags else "no AVX2"
    try:  # the core generation (znver3, sapphirerapids...): /proc/cpuinfo's name does not say it
        import tvm

        name += f" ({tvm.target.codegen.llvm_get_system_cpu()})"
    except Exception:
        pass
    return f"{os.cpu_count()}-core {name}, {isa}"


def _feeds(data: str):
    d = np.load(data)
    return {"input_ids": d["input_ids"][-1:], "attention_mask": d["attention_mask"][-1:]}


def run_one(kind: str, path: str, data: str, threads: int, iters: int) -> float:
    f = _feeds(data)
    if kind == "dyadic":
        import dyadic

        lib = dyadic.load(path, threads=threads)
        q = lib.quantize_inputs(f)
        fn = lambda: lib.run_int(q)  # noqa: E731
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        fn = lambda: sess.run(None, {k: f[k] for k in names})  # noqa: E731
    for _ in range(5):
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="/tmp/dyadic-minilm/build")
    ap.add_argument("--onnx", default="/tmp/dyadic-minilm/minilm_seq128.onnx")
    ap.add_argument("--data", default=None)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--runner", nargs=3, metavar=("KIND", "PATH", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = args.data or args.onnx.replace(".onnx", "_data.npz")
    if args.runner:
        kind, path, th = args.runner
        print(json.dumps({"ms": run_one(kind, path, data, int(th), args.iters)}))
        return 0
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = os.path.join(os.path.dirname(args.build.rstrip("/")), "minilm_int8_dynamic.onnx")
    if not os.path.exists(int8):
        quantize_dynamic(args.onnx, int8, weight_type=QuantType.QInt8)
    runners = {"dyadic": args.build, "ort_fp32": args.onnx, "ort_int8": int8}
    ms: dict[str, dict[int, float]] = {k: {} for k in runners}
    for th in (1, 2):
        for kind, path in runners.items():
            out = subprocess.run([sys.executable, __file__, "--data", data, "--iters", str(args.iters),
                                  "--runner", kind, path, str(th)], capture_output=True, text=True, check=True)
            ms[kind][th] = round(json.loads(out.stdout.strip().splitlines()[-1])["ms"], 2)
    from dyadic.runtime.profile import profile

    pr = profile(args.build, threads=1, batch=1, iters=20, inputs=None)
    prof = {**pr.as_dict(), "functions": {k: round(v[1], 4) for k, v in pr.by_function.items()},
            "calls": {k: v[0] for k, v in pr.by_function.items()}}
    layers = json.load(open(os.path.join(args.build, "model.json")))["layers"]
    prof["layernorms"] = sum(1 for layer in layers if layer["op"] == "qlayernorm")
    result = {"host": host(), "seq": 128, "batch": 1, "iters": args.iters, "ms": ms, "profile": prof}
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "minilm_speed.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    with open(os.path.join(args.results, "minilm_speed.md"), "w") as fh:
        fh.write(_markdown(result))
    print(_markdown(result))
    return 0


def _markdown(r: dict) -> str:
    ms, p = r["ms"], r["profile"]
    rows = "".join(f"| {th} | {ms['dyadic'][th]} | {ms['ort_int8'][th]} | {ms['ort_fp32'][th]} | "
                   f"{ms['ort_int8'][th] / ms['dyadic'][th]:.2f}x | {ms['ort_fp32'][th] / ms['dyadic'][th]:.2f}x |\n"
                   for th in (1, 2))
    fns = p.get("functions") or {}
    total = sum(fns.values()) or 1.0
    lin = sum(v for k, v in fns.items() if k.startswith("dyadic_conv"))
    att = sum(v for k, v in fns.items() if k.startswith("dyadic_bmm"))
    smx = sum(v for k, v in fns.items() if k.startswith("dyadic_softmax"))
    lut = sum(v for k, v in fns.items() if k.startswith("dyadic_lut"))
    # LayerNorm's generic passes (mean, variance, square root, reciprocal, normalize) are the generic
    # functions called once per LayerNorm in all (one variant per LN where its constants differ, as the
    # square root's); no other op of this model occurs 13 times
    from dyadic.runtime.profile import op_of

    nln, per_op = p.get("layernorms", 0), {}
    for k, v in fns.items():
        if not k.startswith(("dyadic_", "vm.")):
            c, t = per_op.get(op_of(k), (0, 0.0))
            per_op[op_of(k)] = (c + p.get("calls", {}).get(k, 0), t + v)
    ln = sum(t for c, t in per_op.values() if nln and c == nln)
    gen = sorted(((v, k) for k, v in p.get("generic_ops", {}).items()), reverse=True)[:8]
    top = "".join(f"| {k[:90]} | {v:.2f} | {100 * v / total:.1f} % |\n" for v, k in gen)
    return (f"# all-MiniLM-L6-v2 latency, batch 1, seq 128\n\nHost: {r['host']}. Written by "
            "`benchmarks/minilm_speed.py`: median of "
            f"{r['iters']} runs after 5 warm-ups, each runner in its own process.\n\n"
            "| threads | dyadic ms | onnxruntime int8 (dynamic) ms | onnxruntime fp32 ms | vs int8 | vs fp32 |\n"
            "|---|---|---|---|---|---|\n" + rows +
            f"\nWhere dyadic's time goes (`dyadic profile`, 1 thread, instrumented total {total:.1f} ms): "
            f"linears (dyadic's 1x1 GEMM kernels) {100 * lin / total:.1f} %, attention products Q·Kᵀ and P·V "
            f"(dyadic's batched-matmul kernels) {100 * att / total:.1f} %, Softmax (dyadic's row kernel) "
            f"{100 * smx / total:.1f} %, GELU tables (dyadic's table kernel) {100 * lut / total:.1f} %, "
            f"LayerNorm (generic: the functions called once per LayerNorm) {100 * ln / total:.1f} %, TVM's generic "
            f"lowering in all {100 * p['by_group'].get('generic', 0) / total:.1f} %, VM runtime "
            f"{100 * p['by_group'].get('runtime', 0) / total:.1f} %. The top generic functions (fused by TVM; "
            "the names list the Relax ops inside):\n\n| function | ms | share |\n|---|---|---|\n" + top)


if __name__ == "__main__":
    raise SystemExit(main())
