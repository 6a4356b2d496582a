"""`dyadic sweep`: the command and its parser; the sweep itself is `dyadic.mixed.sweep`."""
from __future__ import annotations

import json
import os

from dyadic.core.errors import DyadicError
from dyadic.mixed import sweep as _sweep
from dyadic.mixed.sweep import _fp32_top1, plot, run_sweep, table
from dyadic.cli.quant_args import add_quant_args, quant_config


def add_parser(sub, add_norm) -> None:
    s = sub.add_parser("sweep", help="Pareto front of mixed precision: accuracy vs latency and memory budgets",
                       description=_sweep.__doc__.split("\n\n")[1] if _sweep.__doc__ else None)
    s.add_argument("model", help=".onnx file or a built-in model name")
    s.add_argument("-o", "--output", required=True, help="output directory for results.json, table.md, pareto.png")
    s.add_argument("--calib", required=True, help="calibration .npz (as for compile)")
    s.add_argument("--data", required=True, help="labelled .npz to measure accuracy on")
    s.add_argument("--limit", type=int, default=None, help="measure accuracy on the first N samples only")
    s.add_argument("--ratios", default="0,0.25,0.5,0.75,1", help="budget ratios r between all-int4 (0) and all-int8 (1)")
    s.add_argument("--hessian-samples", type=int, default=32, help="calibration images for the Hessian traces")
    s.add_argument("--cost-target", default="host",
                   help="target whose per-layer latencies the ILP plans with (host, arm[:CPU], cuda[:sm_XX]); "
                        "accuracy is measured on host builds of the same integer graphs")
    s.add_argument("--rpc", default=None, metavar="HOST:PORT",
                   help="time the layers on the --cost-target device through this TVM RPC server")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    add_norm(s)
    add_quant_args(s)


def cmd_sweep(a) -> int:
    from dyadic.core.io import input_shapes
    from dyadic.frontend.data import Normalize, load_npz
    from dyadic.frontend import import_onnx, load_model_arg

    try:
        ratios = [float(r) for r in a.ratios.split(",")]
    except ValueError:
        raise DyadicError(f"--ratios must be comma-separated numbers, got {a.ratios!r}") from None
    from dyadic.targets import resolve

    resolve(a.cost_target)  # a bad name or address fails before any work
    if a.rpc:
        from dyadic.runtime.remote import parse_address

        parse_address(a.rpc)
    model = load_model_arg(a.model, None)
    shapes = input_shapes(import_onnx(model))
    norm = Normalize.parse(a.mean, a.std)
    calib, _ = load_npz(a.calib, shapes, norm)
    data, labels = load_npz(a.data, shapes, norm, a.limit)
    if labels is None:
        raise DyadicError(f"{a.data} has no 'labels': the sweep measures accuracy")
    os.makedirs(a.output, exist_ok=True)
    results, totals, prepared = run_sweep(model, a.output, calib, data, labels, ratios, a.hessian_samples, a.quiet,
                                          a.cost_target, a.rpc, quant_config(a))
    fp32 = _fp32_top1(model, data, labels, a.quiet)
    info = prepared.meta.get("costs_info", {})
    text = table(results, fp32) + (f"\nlatency: {info.get('latency')} for target {info.get('target', {}).get('preset')}"
                                   + (f" ({info['model']})" if info.get("model") else ""))
    with open(os.path.join(a.output, "results.json"), "w") as f:
        json.dump({"rows": results, "fp32_top1": fp32, "totals": totals,
                   "sensitivity_info": prepared.meta.get("sensitivity_info"),
                   "costs_info": prepared.meta.get("costs_info")}, f, indent=1)
    with open(os.path.join(a.output, "table.md"), "w") as f:
        f.write(text + "\n")
    plot(results, fp32, os.path.join(a.output, "pareto.png"))
    print(text)
    print(f"wrote {a.output}/results.json, table.md, pareto.png")
    return 0
