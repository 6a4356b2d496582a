"""The sweep behind `dyadic sweep` (command: `dyadic.cli.sweep`): the accuracy / cost Pareto front of mixed precision (HAWQ-V3's Table rows).

The float passes (calibration, Hessian sensitivities, measured costs) run once. Then, for each cost
kind (latency, memory) and each r in `--ratios`, the ILP picks bit-widths under the budget

    budget(r) = all_int4 + r · (all_int8 − all_int4)

(all_int4: every free layer W4A4, first/last pinned W8A8), the integer library is built and checked
bit-exact like any compile, and its top-1 accuracy is measured on `--data` with the library
itself. Uniform W8A8, W4A8 and W4A4 and onnxruntime fp32 are measured too. Outputs in OUT/:
`results.json`, `table.md` (printed) and `pareto.png`; each point's build is in OUT/<row>/.

`--cost-target` plans for another target's latencies (e.g. `cuda:sm_75`, from its stated model in
`dyadic.mixed.costmodel` when it cannot be timed here) while the accuracy is still measured here with host
builds: the integer graph, and so every output, is the same on every target (each build is checked
bit-exact against the same int64 reference).
"""
from __future__ import annotations

import os

from dyadic.core.config import BitMode, Budget, Budgets, CompileConfig


def _totals(graph, pinned: set[str]) -> dict[str, dict[str, float]]:
    costs = graph.meta["costs"]
    out = {}
    for kind, key in (("latency", "latency_s"), ("memory", "bytes")):
        out[kind] = {"int8": sum(c["W8A8"][key] for c in costs.values()),
                     "int4": sum(c["W8A8" if n in pinned else "W4A4"][key] for n, c in costs.items())}
    return out


def run_sweep(model, out_dir: str, calib: dict, data: dict, labels, ratios: list[float],
              hessian_samples: int = 32, quiet: bool = False, cost_target: str = "host",
              rpc: str | None = None, quant: dict | None = None) -> list[dict]:
    import dyadic
    from dyadic.cli.evaluate import evaluate
    from dyadic.frontend import import_onnx
    from dyadic.passes.assign_bitwidths import pinned_layers
    from dyadic.pipeline import float_passes, run_passes

    quant = quant or {}  # calibration / clipping / rounding options (dyadic.quant_args)
    base = CompileConfig(bits=BitMode.MIXED, hessian_samples=hessian_samples, quiet=quiet, target=cost_target,
                         rpc=rpc, **quant)
    prepared = run_passes(import_onnx(model), float_passes(base, calib))
    totals = _totals(prepared, pinned_layers(prepared))
    rows: list[tuple[str, CompileConfig, dict]] = [
        (f"uniform-{m.value}", CompileConfig(bits=m, quiet=quiet, **quant), {}) for m in (BitMode.INT8, BitMode.W4A8, BitMode.INT4)]
    for kind in ("latency", "memory"):
        t = totals[kind]
        for r in ratios:
            b = Budget(t["int4"] + r * (t["int8"] - t["int4"]), False)
            rows.append((f"{kind}-r{r:g}", CompileConfig(bits=BitMode.MIXED, budgets=Budgets(**{kind: b}), quiet=quiet,
                                                       **quant),
                         {"kind": kind, "ratio": r, "budget": b.value}))
    results = []
    for name, cfg, extra in rows:
        build_dir = os.path.join(out_dir, name)
        res = dyadic.compile(model, build_dir, calib, cfg, prepared=prepared)
        lib = dyadic.load(build_dir)
        correct, n = evaluate(lambda xs: lib.run(xs), data, labels, 250, quiet=quiet)
        layers = [l for l in res.plan["layers"] if l["op"] in ("qconv", "qdense")]
        costs = prepared.meta["costs"]
        chosen = {l["name"]: f"W{l['w_bits']}A{l['a_bits']}" for l in layers}
        results.append({
            "row": name, **extra, "top1": correct / n, "images": n,
            "latency_s": sum(costs[k][c]["latency_s"] for k, c in chosen.items()),
            "weight_bytes": sum(costs[k][c]["bytes"] for k, c in chosen.items()),
            "bops": sum(costs[k][c]["bops"] for k, c in chosen.items()),
            "library_bytes": os.path.getsize(os.path.join(build_dir, "model.so")),
            "bits": chosen,
        })
    return results, totals, prepared


def _fp32_top1(model, data, labels, quiet) -> float | None:
    if not isinstance(model, str):
        return None
    import onnxruntime as ort

    from dyadic.cli.evaluate import evaluate

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    correct, n = evaluate(lambda xs: sess.run(None, xs)[0], data, labels, 250, quiet=quiet)
    return correct / n


def table(results: list[dict], fp32: float | None) -> str:
    lines = ["| row | top-1 % | drop vs fp32 | latency us (sum of layers) | weights KB | GBOPs | W8A8/W4A8/W4A4 layers |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        counts = [sum(v == c for v in r["bits"].values()) for c in ("W8A8", "W4A8", "W4A4")]
        drop = f"{100 * (fp32 - r['top1']):.2f}" if fp32 is not None else "-"
        lines.append(f"| {r['row']} | {100 * r['top1']:.2f} | {drop} | {1e6 * r['latency_s']:.1f} | "
                     f"{r['weight_bytes'] / 1e3:.1f} | {r['bops'] / 1e9:.3f} | {counts[0]}/{counts[1]}/{counts[2]} |")
    if fp32 is not None:
        lines.append(f"\nfp32 (onnxruntime) top-1: {100 * fp32:.2f} %, on {results[0]['images']} images")
    return "\n".join(lines)


def plot(results: list[dict], fp32: float | None, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind, key, scale, unit in ((axes[0], "latency", "latency_s", 1e3, "summed layer latency (ms)"),
                                       (axes[1], "memory", "weight_bytes", 1e-3, "weights + biases (KB)")):
        pts = [r for r in results if r.get("kind") == kind]
        ax.plot([r[key] * scale for r in pts], [100 * r["top1"] for r in pts], "o-", label=f"ILP, {kind} budget")
        for r in pts:
            ax.annotate(f"r={r['ratio']:g}", (r[key] * scale, 100 * r["top1"]), fontsize=8,
                        textcoords="offset points", xytext=(4, -10))
        for r in results:
            if r["row"].startswith("uniform"):
                ax.plot(r[key] * scale, 100 * r["top1"], "s", label=r["row"])
        if fp32 is not None:
            ax.axhline(100 * fp32, color="gray", ls="--", label="fp32")
        ax.set_xlabel(unit)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("dyadic mixed precision: accuracy vs cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
