"""The OpenVINO peers of `dyadic bench` (the optional `[peers]` extra: openvino + nncf); see `bench`."""
from __future__ import annotations

import os

import numpy as np

OV_RUNNERS = ("ov-int8", "ov-fp32")


def openvino_available() -> bool:
    """Whether the OpenVINO peers can run: `openvino` and `nncf` are installed (the [peers] extra)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def openvino_call(path: str, threads: int, batch: int, rng):
    """One OpenVINO CPU inference on random input, as a callable (the settings of `dyadic.cli.bench`'s docstring)."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    model = core.read_model(path)
    shapes = {i.get_any_name(): [batch] + [d.get_length() if d.is_static else 1 for d in list(i.get_partial_shape())[1:]]
              for i in model.inputs}
    model.reshape(shapes)
    cfg = {props.inference_num_threads: threads, props.num_streams: 1, hints.performance_mode:
           hints.PerformanceMode.LATENCY, hints.inference_precision: ov.Type.f32}
    req = core.compile_model(model, "CPU", cfg).create_infer_request()
    x = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    return lambda: req.infer(x)



def quantize_for_openvino(model_path: str, out_dir: str, calib: dict[str, np.ndarray], count: int = 32) -> str:
    """The OpenVINO int8 peer: NNCF post-training quantization of MODEL on the calibration samples
    (one sample per item, as for onnxruntime), saved as OpenVINO IR; returns the .xml path."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(model_path)
    names = [i.get_any_name() for i in model.inputs]
    n = min(count, len(next(iter(calib.values()))))
    items = [{k: calib[k][i:i + 1].astype(np.float32) for k in names} for i in range(n)]
    q = nncf.quantize(model, nncf.Dataset(items), subset_size=n)
    out = os.path.join(out_dir, "ov-int8.xml")
    ov.save_model(q, out)
    return out
