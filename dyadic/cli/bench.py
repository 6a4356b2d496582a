"""`dyadic bench BUILD --vs MODEL.onnx`: time the integer library against onnxruntime, same machine.

The runners, on the same model, batch size and thread count, float input to float output:
  * dyadic:   the compiled library (`dyadic.load(BUILD).run`: numpy input quantization, the
              integer library, output dequantization), threads set with TVM_NUM_THREADS;
  * ort-int8: onnxruntime on a QDQ model from `quantize_static` (per-channel, uint8 activations,
              int8 weights), made from MODEL after `quant_pre_process` (batch-norm folded) and
              calibrated on the data the library was calibrated on (or --calib);
  * ort-fp32: onnxruntime on MODEL itself;
  * ov-int8, ov-fp32 (when `openvino` and `nncf` import: `pip install dyadic[peers]`): OpenVINO on
              NNCF's post-training `nncf.quantize` of MODEL, calibrated on the same data as ort-int8,
              and on MODEL itself; both compiled for "CPU" with INFERENCE_NUM_THREADS = T, one stream,
              the LATENCY hint, inputs reshaped to the batch, and INFERENCE_PRECISION_HINT f32 (on AMX
              hosts OpenVINO would otherwise run the fp32 model in bf16).
onnxruntime sessions use intra_op_num_threads = T, one inter-op thread, and
'session.intra_op.allow_spinning' = '0' (idle spinning workers would steal the other core).
The dyadic worker goes through `dyadic.load`, which requests AMX tile data for a library with AMX
kernels; the peak measurement of an AMX host (`peak.amx_peak_gmacs`) requests it too.

Every (runner, threads) measurement runs in its own subprocess; the whole set is repeated
`repeat` times with the runner order rotated, because on small VMs a process can land in a slow
mode (seen here with 2 threads). The table reports the median over all timed iterations of all
repeats, the ratios ORT / dyadic (> 1: dyadic is faster), and the library's integer throughput as
a fraction of the VNNI peak *measured* on this machine with the same thread count
(`dyadic.backend.kernels.peak`: independent `vpdpbusd` chains, no memory traffic; on an AVX2-only host
`vpmaddwd` chains, the instruction its kernels run). The nominal peak from
the /proc/cpuinfo clock is not used: boosting cores exceed it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

RUNNERS = ("dyadic", "ort-int8", "ort-fp32")


def runners(openvino: bool | None = None) -> tuple[str, ...]:
    """The runners of one bench: the onnxruntime peers always, OpenVINO's where installed (or asked)."""
    from dyadic.cli.bench_openvino import OV_RUNNERS, openvino_available

    return RUNNERS + (OV_RUNNERS if (openvino_available() if openvino is None else openvino) else ())
# ------------------------------------------------------------------------- worker (subprocess side)
def _worker(kind: str, path: str, threads: int, batch: int, iters: int, warmup: int,
            dims: tuple[int, ...] = ()) -> dict:
    """dims: the build's input dims after the batch, for a peer model whose dims are dynamic."""
    rng = np.random.default_rng(0)
    if kind == "dyadic":
        import dyadic

        m = dyadic.load(path)
        spec = m.inputs[0]
        # float in, float out like the onnxruntime runners: the input quantization and the output
        # dequantization (numpy) are timed too
        x = {spec["name"]: rng.standard_normal([batch] + spec["shape"][1:]).astype(np.float32)}
        call = lambda: m.run(x)  # noqa: E731
    elif kind.startswith("ov-"):
        from dyadic.cli.bench_openvino import openvino_call

        call = openvino_call(path, threads, batch, rng)
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [batch] + [d if isinstance(d, int) else (dims[k] if k < len(dims) else 1)
                           for k, d in enumerate(inp.shape[1:])]
        x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
        call = lambda: sess.run(None, x)  # noqa: E731
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"times_ms": times}


# ------------------------------------------------------------------------- preparation
def quantize_for_ort(model_path: str, out_dir: str, calib: dict[str, np.ndarray], count: int = 32) -> str:
    """The onnxruntime int8 baseline: QDQ, per-channel, u8 activations / s8 weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    pre = os.path.join(out_dir, "pre.onnx")
    mp = onnx.load(model_path)
    opset = next((o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:  # per-channel DequantizeLinear (its axis) is opset 13: the quantizer writes it regardless
        from onnx import version_converter

        model_path = os.path.join(out_dir, "opset13.onnx")
        onnx.save(version_converter.convert_version(mp, 13), model_path)
    quant_pre_process(model_path, pre, skip_symbolic_shape=True)
    samples = [{k: v[i:i + 1] for k, v in calib.items()} for i in range(min(count, len(next(iter(calib.values())))))]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    out = os.path.join(out_dir, "int8.onnx")
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def model_macs(model_path: str, shapes: dict[str, tuple[int, ...]] | None = None) -> int:
    """Multiply-accumulates of one sample in the convolutions and dense layers (`shapes`: the dims the
    build pinned, for a model with dynamic ones)."""
    from dyadic.frontend import import_onnx

    g = import_onnx(model_path, shapes)
    total = 0
    for n in g.nodes:
        if n.op == "conv":
            o, cg, kh, kw = n.params["W"].shape
            total += int(np.prod(g.shapes[n.output][1:])) * cg * kh * kw
        elif n.op == "dense":
            total += int(np.prod(n.params["W"].shape))
    return total


def measured_peaks(threads) -> dict[int, float]:
    """{threads: measured GMAC/s of `vpdpbusd` (AVX512-VNNI) or `vpmaddwd` (AVX2-only)}, else empty."""
    from dyadic.backend.kernels.peak import host_peak

    fn = host_peak()[1]
    if fn is None:
        return {}
    peaks = {}
    for t in threads:  # in a subprocess: TVM's thread pool size is fixed per process (TVM_NUM_THREADS)
        code = (f"from dyadic.runtime.loader import set_threads; set_threads({int(t)}); "
                f"from dyadic.backend.kernels.peak import {fn}; print({fn}({int(t)}))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        peaks[t] = float(proc.stdout.strip().splitlines()[-1])
    return peaks


# ------------------------------------------------------------------------- driver
def _measure(kind: str, path: str, threads: int, batch: int, iters: int, warmup: int,
             dims: tuple[int, ...] = ()) -> list[float]:
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "dyadic.cli.bench", "--worker", kind, path, str(threads), str(batch), str(iters),
           str(warmup), ",".join(map(str, dims))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        from dyadic.core.errors import DyadicError

        raise DyadicError(f"bench worker {kind} ({threads} threads) failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["times_ms"]


def run(build_dir: str, model_path: str, threads=(1, 2), batch: int = 1, repeat: int = 3, iters: int = 20,
        warmup: int = 3, calib: dict[str, np.ndarray] | None = None, log=print, openvino: bool | None = None) -> dict:
    """Measure the runners (`runners(openvino)`); returns {"rows": [...], "meta": {...}} (and prints via `log`)."""
    from dyadic.backend.kernels.peak import host_peak
    from dyadic.frontend import data
    from dyadic.runtime.loader import load

    plan = load(build_dir).plan
    shapes = {i["name"]: tuple(i["shape"]) for i in plan["inputs"]}
    if calib is None:
        calib = data.synthetic(shapes)
    dims = tuple(int(d) for d in shapes[plan["inputs"][0]["name"]][1:])  # the peers run at the build's pinned dims
    macs = model_macs(model_path, {k: (1,) + tuple(v[1:]) for k, v in shapes.items()}) * batch
    peaks = measured_peaks(threads)
    times: dict[tuple[str, int], list[float]] = {}
    per_repeat: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="dyadic-bench-") as tmp:
        log(f"bench: quantizing {os.path.basename(model_path)} for onnxruntime int8 (QDQ, per-channel, u8/s8)")
        try:
            int8 = quantize_for_ort(model_path, tmp, calib)
        except Exception as e:  # onnxruntime's quantizer rejects the model: say so, in one paragraph
            from dyadic.core.errors import DyadicError

            raise DyadicError(f"onnxruntime cannot quantize {model_path!r} for the int8 baseline: "
                              f"{type(e).__name__}: {e}") from None
        paths = {"dyadic": build_dir, "ort-int8": int8, "ort-fp32": model_path}
        from dyadic.cli.bench_openvino import quantize_for_openvino

        kinds = runners(openvino)
        if "ov-int8" in kinds:
            log(f"bench: quantizing {os.path.basename(model_path)} for OpenVINO int8 (nncf.quantize)")
            try:
                paths["ov-int8"] = quantize_for_openvino(model_path, tmp, calib)
            except Exception as e:
                from dyadic.core.errors import DyadicError

                raise DyadicError(f"NNCF cannot quantize {model_path!r} for the OpenVINO int8 peer: "
                                  f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
            paths["ov-fp32"] = model_path
        for rep in range(repeat):
            for t in threads:
                order = kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]
                for kind in order:
                    ts = _measure(kind, paths[kind], t, batch, iters, warmup, dims)
                    times.setdefault((kind, t), []).extend(ts)
                    per_repeat.setdefault((kind, t), []).append(float(np.median(ts)))
                    log(f"bench: repeat {rep + 1}/{repeat}, {t} thread(s), {kind:8s} median {np.median(ts):8.2f} ms")
    rows = []
    for t in threads:
        med = {k: float(np.median(times[(k, t)])) for k in kinds}
        row = {"threads": t, "batch": batch, **{f"{k}_ms": med[k] for k in kinds},
               **{f"{k}_min_ms": float(np.min(times[(k, t)])) for k in kinds},
               **{f"vs_{k.replace('-', '_')}": med[k] / med["dyadic"] for k in kinds if k != "dyadic"},
               "gmacs": macs / med["dyadic"] / 1e6,
               "repeat_medians_ms": {k: per_repeat[(k, t)] for k in kinds}}
        if t in peaks:
            row["peak_gmacs"] = peaks[t]
            row["peak_fraction"] = row["gmacs"] / peaks[t]
        rows.append(row)
    return {"rows": rows, "meta": {"build": build_dir, "model": model_path, "macs": macs,
                                   "peak_gmacs": {str(t): p for t, p in peaks.items()},
                                   "peak_instruction": host_peak()[0] if peaks else None,
                                   "repeat": repeat, "iters": iters, "runners": list(kinds)}}


def format_table(res: dict) -> str:
    m = res["meta"]
    peak = ", ".join(f"{t} thr {p:.0f}" for t, p in m["peak_gmacs"].items()) or "n/a (no VNNI or AVX2)"
    ins = m.get("peak_instruction") or "vpdpbusd"
    label = {"vpdpbusd": "VNNI", "vpmaddwd": "AVX2", "tdpbusd": "AMX"}.get(ins, ins)
    peers = [k for k in m.get("runners", RUNNERS) if k != "dyadic"]
    lines = [f"{os.path.basename(m['model'])}: {m['macs'] / 1e9:.3f} GMAC per run, measured {ins} peak GMAC/s: "
             f"{peak}; medians of {m['repeat']} x {m['iters']} runs",
             "threads  batch  dyadic ms  " + "".join(f"{k + ' ms':>11}  " for k in peers)
             + "".join(f"{k + '/dyadic':>15}  " for k in peers)
             + f"GMAC/s  of {label} peak"]
    for r in res["rows"]:
        lines.append(f"{r['threads']:7d}  {r['batch']:5d}  {r['dyadic_ms']:9.2f}  "
                     + "".join(f"{r[k + '_ms']:11.2f}  " for k in peers)
                     + "".join(f"{r['vs_' + k.replace('-', '_')]:14.2f}x  " for k in peers)
                     + f"{r['gmacs']:6.0f}  {100 * r.get('peak_fraction', float('nan')):11.0f}%")
    return "\n".join(lines)


# ------------------------------------------------------------------------- CLI
def add_subparser(sub) -> None:
    b = sub.add_parser("bench", help="time a build against onnxruntime (and OpenVINO) fp32 and int8 on this machine",
                       description="Time the compiled library against onnxruntime fp32 and onnxruntime int8 (QDQ, "
                       "per-channel, u8 activations, s8 weights), and OpenVINO fp32 and int8 (NNCF) when installed, "
                       "on the same model, batch size and thread "
                       "count; each measurement in its own process, repeated with the order rotated. Prints "
                       "medians, ratios and the fraction of the measured VNNI / AVX2 / AMX peak.")
    b.add_argument("build", help="a build directory from `dyadic compile`")
    b.add_argument("--vs", metavar="MODEL.onnx", help="the ONNX model the build was compiled from (required "
                                                    "unless --rpc)")
    b.add_argument("--rpc", metavar="HOST:PORT", help="time the build on the TVM RPC server at HOST:PORT (a board "
                   "or GPU box); onnxruntime peers cannot run over TVM RPC: run `dyadic bench` on the device for "
                   "ratios")
    b.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    b.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    b.add_argument("--repeat", type=int, default=3, help="rounds over all runners (default 3)")
    b.add_argument("--iters", type=int, default=20, help="timed runs per process (default 20)")
    b.add_argument("--calib", help=".npz calibration data for the onnxruntime int8 model (default: the synthetic "
                                   "data `dyadic compile` uses without --calib)")
    b.add_argument("--json", help="also write the results to this file")
    b.add_argument("--no-openvino", action="store_true", help="leave out the OpenVINO peers (by default they run "
                   "when openvino and nncf are installed: pip install 'dyadic[peers]')")


def run_remote(build_dir: str, addr: str, batch: int, repeat: int, iters: int) -> dict:
    """Time the build on an RPC device: `repeat` rounds of `iters` timed runs on synthetic input."""
    from dyadic.frontend import data
    from dyadic.runtime.remote import run_build
    from dyadic.runtime.loader import quantize_plan_inputs

    plan = _plan(build_dir)
    shapes = {i["name"]: tuple(i["shape"]) for i in plan["inputs"]}
    q = quantize_plan_inputs(plan["inputs"], data.synthetic(shapes, batch))
    medians, mins = [], []
    for _ in range(repeat):
        _, timing, _ = run_build(build_dir, q, addr, iters)
        medians.append(timing["median_ms"])
        mins.append(timing["min_ms"])
    return {"rpc": addr, "batch": batch, "median_ms": float(np.median(medians)), "min_ms": float(min(mins)),
            "repeat_medians_ms": medians, "target": plan["target"]["preset"]}


def _plan(build_dir: str) -> dict:
    with open(os.path.join(build_dir, "model.json")) as f:
        return json.load(f)


def cmd(a) -> int:
    from dyadic.core.errors import DyadicError

    if a.rpc:
        from dyadic.runtime.remote import parse_address

        parse_address(a.rpc)
        if not os.path.isfile(os.path.join(a.build, "model.json")):
            raise DyadicError(f"{a.build!r} is not a build directory of `dyadic compile` (no model.json)")
        res = run_remote(a.build, a.rpc, a.batch, a.repeat, a.iters)
        print(f"{res['target']} build on {a.rpc} over TVM RPC, batch {a.batch}: median {res['median_ms']:.3f} ms, "
              f"min {res['min_ms']:.3f} ms ({a.repeat} x {a.iters} runs, timed on the device). onnxruntime peers "
              "are not run over RPC: run `dyadic bench BUILD --vs MODEL.onnx` on the device for ratios.")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
        return 0
    if not a.vs:
        raise DyadicError("--vs MODEL.onnx is required (the peers are timed on the same model), unless --rpc")
    if not os.path.isfile(a.vs):
        raise DyadicError(f"--vs {a.vs!r} is not a file")
    if not os.path.isfile(os.path.join(a.build, "model.so")):
        raise DyadicError(f"{a.build!r} is not a build directory of `dyadic compile` (no model.so)")
    calib = None
    if a.calib:
        from dyadic.frontend.data import load_npz
        from dyadic.runtime.loader import load

        shapes = {i["name"]: tuple(i["shape"]) for i in load(a.build).plan["inputs"]}
        calib, _ = load_npz(a.calib, shapes)
    threads = tuple(int(t) for t in a.threads.split(","))
    res = run(a.build, a.vs, threads, a.batch, a.repeat, a.iters, calib=calib,
              log=lambda s: print(s, file=sys.stderr), openvino=False if a.no_openvino else None)
    print(format_table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        k, p, t, b, n, w = sys.argv[2:8]
        dims = tuple(int(v) for v in sys.argv[8].split(",")) if len(sys.argv) > 8 and sys.argv[8] else ()
        print(json.dumps(_worker(k, p, int(t), int(b), int(n), int(w), dims)))
