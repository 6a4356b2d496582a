"""`dyadic.compile`: ONNX model -> model.so + model.json, bit-exactness checked before writing.

    import_onnx -> graph passes (`dyadic.pipeline`) -> lower -> target.build -> target.export
    -> target.package -> target.self_check

The target (`dyadic.targets`) owns everything that differs between host, arm and cuda.
Output is all-or-nothing: files are written to a temporary directory beside the output and moved
into place only after the build and the self-check succeed.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np

from dyadic.core.config import CompileConfig
from dyadic.core.graph import Graph
from dyadic.core.io import input_shapes, quantize_inputs  # noqa: F401  (quantize_inputs: re-exported)
from dyadic.core.plan import make_plan
from dyadic.core.progress import Progress
from dyadic.pipeline import PassLog, graph_passes, integer_passes, run_passes


@dataclass
class CompileResult:
    float_graph: Graph
    int_graph: Graph
    plan: dict
    output_dir: str | None
    so_path: str | None


def build_graph(model, calib: dict[str, np.ndarray], config: CompileConfig = CompileConfig(),
                log: PassLog | None = None) -> tuple[Graph, Graph]:
    """Import and run the graph passes: returns (float graph as imported, integer graph)."""
    from dyadic.frontend import import_onnx

    float_graph = import_onnx(model, dict(config.input_shapes))
    int_graph = run_passes(float_graph, graph_passes(config, calib), log)
    return float_graph, int_graph


def compile(model, output_dir: str | None, calib: dict[str, np.ndarray] | None = None,
            config: CompileConfig = CompileConfig(), calib_source: str = "",
            prepared: Graph | None = None, image_norm: tuple | None = None) -> CompileResult:
    """Compile `model` (path or onnx.ModelProto). `calib` maps input names to float arrays; None
    means synthetic standard-normal data (only sensible for the built-in random-weight models).
    `prepared`: the graph after `pipeline.float_passes` (a sweep reuses it across budgets).
    `image_norm`: (mean, std) of pixel/255 that made `calib` from uint8 images (the CLI's --mean/--std),
    recorded in the plan so that `dyadic eval` / `run` of the build apply it by default."""
    from dyadic.core.outdir import staged_output

    with staged_output(output_dir) as stage:  # checks -o, locks it, stages beside it (all-or-nothing)
        res = _compile(model, stage, calib, config, calib_source, prepared, image_norm)
        if output_dir is None:
            return CompileResult(res.float_graph, res.int_graph, res.plan, None, None)
        stage.commit(res.so_path)
    return CompileResult(res.float_graph, res.int_graph, res.plan, output_dir, os.path.join(output_dir, "model.so"))


def _compile(model, stage, calib, config, calib_source, prepared, image_norm=None) -> CompileResult:
    """The compile proper, writing into the staging directory `stage.path`; returns the result with
    `so_path` set to the list of top-level names written (what `stage.commit` moves into place)."""
    from dyadic import targets
    from dyadic.backend import build
    from dyadic.core.plan import library_record
    from dyadic.frontend import data, import_onnx
    from dyadic.frontend.datacheck import check_calib

    t_start = time.perf_counter()
    log = PassLog()
    fg = import_onnx(model, dict(config.input_shapes))
    if calib is None:
        calib, calib_source = data.synthetic(input_shapes(fg)), "synthetic normal(0,1), 32 samples"
    check_calib(input_shapes(fg), calib)
    if prepared is not None:
        ig = run_passes(prepared, integer_passes(config), log)
    else:
        ig = run_passes(fg, graph_passes(config, calib), log)
    target = targets.resolve(config.target)
    t0 = time.perf_counter()
    with Progress("build", quiet=config.quiet):
        mod = build.lower_and_verify(ig, target)
        built = target.build(mod)
    log.seconds["build"] = time.perf_counter() - t0
    tmp = stage.path
    so = os.path.join(tmp, "model.so")
    target.export(built, so)
    ncal = len(next(iter(calib.values())))
    cal = {"source": calib_source, "samples": ncal}
    if image_norm is not None:
        cal["image_normalize"] = {"mean": [float(v) for v in image_norm[0]], "std": [float(v) for v in image_norm[1]]}
    plan = make_plan(ig, target.describe(), cal, {})
    plan["library"] = library_record(so)
    plan["target"]["instructions"] = target.count_instructions(built, so)
    plan["target"]["dot_macs"] = build.dot_macs(mod, ig)
    plan["target"]["kernel_coverage"] = build.kernel_coverage(mod)
    requires = target.runtime_requirements(mod)
    if requires:  # checked by dyadic.load (and the bundle runner) before the library is mapped
        plan["target"]["requires"] = requires
    plan["library_bytes"] = {**build.library_bytes(so), "constants": build.constant_bytes(mod)}
    outputs = ["model.so", "model.json"] + target.package(built, tmp, plan)
    _write_json(os.path.join(tmp, "model.json"), plan)
    sample = {k: v[: config.check_samples] for k, v in calib.items()}
    plan["self_check"] = target.self_check(ig, tmp, plan, sample)
    t0 = time.perf_counter()
    plan["fidelity"] = {**_fidelity(model, fg, ig, target, tmp, calib, sample), "wide_activations": config.wide_activations.value}
    log.seconds["fidelity"] = time.perf_counter() - t0
    log.seconds["total"] = time.perf_counter() - t_start
    plan["timings_s"] = {k: round(v, 3) for k, v in log.seconds.items()}
    _write_json(os.path.join(tmp, "model.json"), plan, indent=1)
    return CompileResult(fg, ig, plan, None, outputs)


def _fidelity(model, fg, ig, target, build_dir: str, calib: dict, sample: dict) -> dict:
    """`core.fidelity`: on inputs spread over the calibration file through the library where the target
    runs it here (the self-check has just proved it equal to the reference), else the reference on `sample`."""
    from dyadic.core.fidelity import SAMPLES, output_fidelity, spread

    run = target.integer_runner(build_dir)
    if run is None:
        return output_fidelity(fg, ig, sample, model=model)
    x = spread(calib, SAMPLES, ig.static_batch_size() or 1)
    return output_fidelity(fg, ig, x if len(next(iter(x.values()))) else sample, run, model)


def _write_json(path: str, plan: dict, indent: int | None = None) -> None:
    """Strict JSON (a NaN or Inf anywhere is a bug: the plan schema forbids them), checked against
    the plan schema, flushed to disk."""
    from dyadic.core.plan_schema import validate_plan

    validate_plan(plan, where="the plan being written")
    text = json.dumps(plan, indent=indent, allow_nan=False)
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
