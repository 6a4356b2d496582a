"""The quantization plan `model.json`: the single record of every decision of a compile.

It holds the input/output quantization (what a runtime needs besides the library), each layer's
bit-widths, scales, dyadic multipliers and shifts, the calibration ranges, the target and the
versions of the tools used.
"""
from __future__ import annotations

import importlib.metadata as md
import platform

import numpy as np

from dyadic.core.graph import Graph, QParams

PLAN_VERSION = 2  #: 2: `library` (size and sha256 of model.so, checked by the loader before dlopen)


def sha256_file(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_record(so_path: str) -> dict:
    """What the loader checks before it maps the library: its file name, size and sha256."""
    import os

    return {"file": os.path.basename(so_path), "bytes": os.path.getsize(so_path), "sha256": sha256_file(so_path)}


def _q(q: QParams) -> dict:
    return {"scale": q.scale, "bits": q.bits, "signed": q.signed, "dtype": q.dtype, "lo": q.lo, "hi": q.hi}


def _list(a) -> list:
    return np.asarray(a).tolist()


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("dyadic", "apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "numpy", "pulp"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def make_plan(graph: Graph, target: dict, calibration: dict, timings: dict) -> dict:
    layers = []
    for n in graph.nodes:
        entry = {"name": n.name, "op": n.op, "inputs": list(n.inputs), "output": n.output,
                 "in": [_q(graph.qparams[i]) for i in n.inputs], "out": _q(graph.qparams[n.output])}
        if n.op in ("qconv", "qdense"):
            entry.update(w_bits=n.attrs["w_bits"], a_bits=n.attrs["a_bits"],
                         weight_shape=list(n.params["W"].shape))
            for key in ("sensitivity", "costs"):  # mixed precision: Ω and costs of every candidate
                if n.name in graph.meta.get(key, {}):
                    entry[key] = graph.meta[key][n.name]
            if n.name in graph.meta.get("weight_quant", {}).get("layers", {}):  # passes/round_weights.py
                entry["weight_quant"] = graph.meta["weight_quant"]["layers"][n.name]
        if "M" in n.params:
            entry.update(multiplier=_list(n.params["M"]), shift=_list(n.params["S"]),
                         clip=[n.attrs["lo"], n.attrs["hi"]])
        if n.output in graph.ranges:
            entry["calib_range"] = list(graph.ranges[n.output])
            cal = graph.meta.get("act_calibration", {})  # dyadic/calibrators.py: range per bit-width
            if n.output in cal.get("tensors", {}):
                entry["calibration"] = {"method": cal["method"], "ranges": cal["tensors"][n.output]}
        layers.append(entry)
    return {
        "plan_version": PLAN_VERSION,
        "inputs": [{"name": t, "shape": list(graph.shapes[t]), **_q(graph.qparams[t])} for t in graph.inputs],
        "outputs": [{"name": t, "shape": list(graph.shapes[t]), **_q(graph.qparams[t])} for t in graph.outputs],
        "requant": "y = clip((acc * multiplier + 2^(shift-1)) >> shift, lo, hi)",
        "input_quantization": "q = clip(round_half_even(x / scale), lo, hi)",
        "layers": layers,
        "calibration": {**calibration, **{k: v for k, v in graph.meta.get("act_calibration", {}).items() if k != "tensors"}},
        "weight_quant": {k: v for k, v in graph.meta.get("weight_quant", {}).items() if k != "layers"},
        "target": target,
        "bit_selection": {k: graph.meta[k] for k in ("ilp", "sensitivity_info", "costs_info", "wide_choice") if k in graph.meta},
        "timings_s": timings,
        "versions": versions(),
    }
