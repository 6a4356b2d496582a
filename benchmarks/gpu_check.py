"""GPU check for `--target cuda` builds: bit-exact on a real GPU, and timed against float baselines.

CUDA libraries are built on machines without a GPU (see dyadic/targets/cuda.py), so nothing there proves
that they run or are right. This script is that proof, on a machine with an NVIDIA GPU, nvcc and
this package installed:

    python benchmarks/gpu_check.py [--models resnet20,resnet18] [--image-size 224] [--batch 1,16]
                                   [--reps 50] [--json results.json]

For each model it compiles a cuda build for this GPU's architecture (the compile's self-check then
runs on the GPU), checks a fresh random batch against the numpy int64 reference, and times, on the
same model with device-resident inputs: the dyadic int8 library (TVM time_evaluator), onnxruntime
fp32 (CUDA execution provider if installed, else its CPU provider, labelled so) and PyTorch fp16
(if torch with CUDA is installed; a small ONNX-to-torch executor, eager mode). Exit status 1 if any
output differs from the reference. Without a GPU it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np


def gpu_compute_version() -> str | None:
    from dyadic.runtime.remote import local_cuda_available

    if not local_cuda_available():
        return None
    import tvm

    return tvm.cuda(0).compute_version


def pick_arch(cv: str) -> str:
    """Exact preset, else the newest older one (same major: its SASS runs; newer major: PTX JIT)."""
    from dyadic.targets import CUDA_ARCHS

    want = int(cv.replace(".", ""))
    older = [a for a in CUDA_ARCHS if int(a[3:]) <= want]
    if not older:
        raise SystemExit(f"gpu_check: compute capability {cv} is older than every preset ({', '.join(CUDA_ARCHS)})")
    return max(older, key=lambda a: int(a[3:]))


def time_ms(fn, reps: int, sync=lambda: None) -> float:
    for _ in range(3):
        fn()
    sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def ort_ms(model, x: np.ndarray, reps: int) -> tuple[str, float]:
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    sess = ort.InferenceSession(model.SerializeToString(),
                                providers=["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    if not cuda:
        return "onnxruntime fp32 (CPU EP: no CUDA EP installed)", time_ms(lambda: sess.run(None, {name: x}), reps)
    io = sess.io_binding()
    io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    for o in sess.get_outputs():
        io.bind_output(o.name, "cuda")
    return "onnxruntime fp32 (CUDA EP)", time_ms(lambda: sess.run_with_iobinding(io), reps, io.synchronize_outputs)


def torch_fp16_ms(model, x: np.ndarray, reps: int) -> float | None:
    """Eager fp16 on the GPU with a minimal executor of the ops the built-in models use."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    run = torch_executor(model, "cuda", torch.float16)
    xin = torch.from_numpy(x).to("cuda", torch.float16)
    try:
        with torch.no_grad():
            return time_ms(lambda: run(xin), reps, torch.cuda.synchronize)
    except NotImplementedError as e:
        print(f"  torch fp16: op {e} not in the mini executor; skipped")
        return None


def torch_executor(model, dev: str, h):
    """ONNX graph -> a function of the input tensor, op by op with torch.nn.functional."""
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w = {k: torch.from_numpy(v.copy()).to(dev, h if v.dtype == np.float32 else None) for k, v in init.items()}

    def attrs(n):
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in n.attribute}

    def run(inp):
        env = {model.graph.input[0].name: inp, **w}
        for n in model.graph.node:
            a, xs = attrs(n), [env[i] if i else None for i in n.input]
            op, p = n.op_type, a.get("pads", [0, 0, 0, 0])
            if op == "Conv":
                y = F.conv2d(F.pad(xs[0], (p[1], p[3], p[0], p[2])), xs[1], xs[2] if len(xs) > 2 else None,
                             a.get("strides", 1), 0, a.get("dilations", 1), a.get("group", 1))
            elif op == "BatchNormalization":
                y = F.batch_norm(xs[0], xs[3], xs[4], xs[1], xs[2], False, 0.0, a.get("epsilon", 1e-5))
            elif op == "Relu":
                y = F.relu(xs[0])
            elif op == "Clip":
                y = torch.clamp(xs[0], float(init[n.input[1]]), float(init[n.input[2]]))
            elif op == "Add":
                y = xs[0] + xs[1]
            elif op == "MaxPool":
                y = F.max_pool2d(F.pad(xs[0], (p[1], p[3], p[0], p[2]), value=-65504.0), a["kernel_shape"], a["strides"])
            elif op in ("GlobalAveragePool", "ReduceMean"):
                y = xs[0].mean(dim=tuple(a.get("axes", (2, 3))), keepdim=bool(a.get("keepdims", 1)))
            elif op == "Flatten":
                y = torch.flatten(xs[0], 1)
            elif op == "Gemm":
                y = F.linear(xs[0], xs[1] if a.get("transB", 0) else xs[1].t(), xs[2] if len(xs) > 2 else None)
            elif op == "Pad":
                q = [int(v) for v in init[n.input[1]]]
                y = F.pad(xs[0], [v for d in reversed(range(len(q) // 2)) for v in (q[d], q[d + len(q) // 2])])
            elif op == "Slice":
                st, en, ax = (init[n.input[k]].tolist() for k in (1, 2, 3))
                sp = init[n.input[4]].tolist() if len(n.input) > 4 else [1] * len(st)
                sl = [slice(None)] * xs[0].dim()
                for s, e, d, k in zip(st, en, ax, sp):
                    sl[d] = slice(s, min(e, xs[0].shape[d]), k)
                y = xs[0][tuple(sl)]
            else:
                raise NotImplementedError(op)
            env[n.output[0]] = y
        return env[model.graph.output[0].name]

    return run


def check_model(name: str, image_size: int | None, arch: str, batches: list[int], reps: int) -> list[dict]:
    import dyadic
    from dyadic.compiler import quantize_inputs
    from dyadic.core.config import CompileConfig
    from dyadic.models import build
    from dyadic.core.reference import run_reference
    from dyadic.runtime.remote import run_local

    model = build(name, **({"image_size": image_size} if image_size and name != "resnet20" else {}))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        res = dyadic.compile(model, d, None, CompileConfig(target=f"cuda:{arch}", quiet=True))
        print(f"{name}: compiled for {arch} in {time.perf_counter() - t0:.1f}s; self-check: {res.plan['self_check']}")
        ig, plan = res.int_graph, res.plan
        shape = tuple(ig.shapes[ig.inputs[0]][1:])
        for b in batches:
            x = np.random.default_rng(b).standard_normal((b,) + shape).astype(np.float32)
            q = quantize_inputs(ig, {ig.inputs[0]: x})
            outs, timing = run_local(f"{d}/model.so", plan, q, "cuda", reps)
            want = run_reference(ig, q)[ig.outputs[0]]
            exact = bool(np.array_equal(outs[0], want))
            ort_label, ort_t = ort_ms(model, x, reps)
            row = {"model": name, "arch": arch, "batch": b, "dyadic_int8_ms": timing["median_ms"],
                   "bit_exact": exact, "ort_label": ort_label, "ort_ms": ort_t,
                   "torch_fp16_ms": torch_fp16_ms(model, x, reps), "instructions": plan["target"]["instructions"]}
            rows.append(row)
            print(f"  batch {b}: dyadic int8 {row['dyadic_int8_ms']:.3f} ms ({'bit-exact' if exact else 'MISMATCH'}), "
                  f"{ort_label} {ort_t:.3f} ms, torch fp16 "
                  + (f"{row['torch_fp16_ms']:.3f} ms" if row["torch_fp16_ms"] is not None else "n/a"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet20,resnet18")
    ap.add_argument("--image-size", type=int, default=224, help="input size of the ImageNet models")
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    cv = gpu_compute_version()
    if cv is None:
        print("gpu_check: no CUDA GPU found (the TVM CUDA runtime sees no device); nothing to check on this "
              "machine. Run it on a machine with an NVIDIA GPU and nvcc.")
        return 0
    arch = pick_arch(cv)
    print(f"gpu_check: GPU compute capability {cv}, building for {arch}")
    rows = []
    for name in a.models.split(","):
        rows += check_model(name, a.image_size, arch, [int(b) for b in a.batch.split(",")], max(a.reps, 1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
