"""The `dyadic` command line: compile, eval, run.

Every user error (bad model, bad data, infeasible request) is printed as one paragraph on stderr
with exit code 2, and leaves no output files behind.
"""
from __future__ import annotations

import argparse
import os
import sys

from dyadic.core.config import BitMode
from dyadic.core.errors import DyadicError
from dyadic.cli.quant_args import add_quant_args, quant_config


def _add_norm(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mean", help="per-channel mean of pixel/255, comma-separated (e.g. 0.485,0.456,0.406); "
                                  "used when the data file holds uint8 'images'")
    p.add_argument("--std", help="per-channel std of pixel/255, comma-separated (e.g. 0.229,0.224,0.225)")


def _add_input_shape(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=None, metavar="NAME:D0,D1,...",
                   help="pin the dims of a model input (repeatable), e.g. x:1,3,48,192; needed where the file "
                        "declares dynamic spatial dims. A dynamic batch dim stays dynamic in the library")


def _add_bits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits", choices=[m.value for m in BitMode], default="8",
                   help="8: every layer W8A8 (default); 4: every layer W4A4 except the pinned first/last; "
                        "w4a8: 4-bit weights, 8-bit activations; mixed: per-layer choice among W8A8/W4A8/W4A4 "
                        "by an ILP minimizing the Hessian-weighted perturbation under the budgets")
    p.add_argument("--latency-budget", help="mixed: cap on the summed measured layer latency, absolute "
                   "(2.5ms) or relative to all-int8 (0.6x)")
    p.add_argument("--memory-budget", help="mixed: cap on the bytes of stored weights and biases (150KB, 1.2MB, 0.5x)")
    p.add_argument("--bops-budget", help="mixed: cap on bit-operations, MACs x weight bits x activation bits "
                   "(1.2GBOPs, 0.5x)")
    p.add_argument("--free-first-last", action="store_true",
                   help="let the first and last layers go below 8 bits (pinned to W8A8 by default)")
    p.add_argument("--hessian-samples", type=int, default=32,
                   help="mixed: calibration images used for the Hessian trace estimates (default 32)")
    add_quant_args(p)


def _config(a, target: str):
    from dyadic.core.config import Budget, Budgets, CompileConfig

    budgets = Budgets(**{k: Budget.parse(v, k) for k, v in (("latency", a.latency_budget), ("memory", a.memory_budget),
                                                            ("bops", a.bops_budget)) if v})
    if budgets.items() and a.bits != "mixed":
        raise DyadicError("budgets (--latency/--memory/--bops-budget) need --bits mixed")
    rpc = getattr(a, "rpc", None)
    if rpc:
        from dyadic.runtime.remote import parse_address

        parse_address(rpc)
        if a.bits != "mixed":
            raise DyadicError("--rpc times layers for --bits mixed; to run a build on a board use `dyadic run --rpc`")
    from dyadic.core.config import parse_input_shapes

    return CompileConfig(target=target, bits=BitMode(a.bits), budgets=budgets, pin_first_last=not a.free_first_last,
                         hessian_samples=a.hessian_samples, quiet=a.quiet, rpc=rpc,
                         input_shapes=parse_input_shapes(getattr(a, "input_shape", None)), **quant_config(a))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dyadic", description="Integer-only inference compiler: ONNX -> "
                                 "integer graph with dyadic (multiply-and-shift) rescaling -> TVM library.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="compile an ONNX model to build/model.so + build/model.json",
                       description="Compile an ONNX model (or a built-in model name) into an integer-only "
                       "TVM library. Writes OUT/model.so (the library) and OUT/model.json (the quantization "
                       "plan). The library is checked bit-exact against the numpy int64 reference before "
                       "anything is written.")
    c.add_argument("model", help="path to an .onnx file, or a built-in model: resnet20, resnet18, resnet50, "
                                 "mobilenet_v2, inception_v3 (seeded random weights)")
    c.add_argument("-o", "--output", required=True, help="output directory (created if missing)")
    c.add_argument("--calib", help=".npz calibration data ('images' uint8 NHWC + --mean/--std, or arrays "
                                   "named after the model inputs). Default: 32 synthetic N(0,1) inputs, "
                                   "only sensible for the built-in random-weight models")
    c.add_argument("--calib-count", type=int, default=None, help="use only the first N calibration samples")
    c.add_argument("--image-size", type=int, default=None, help="input size for a built-in model")
    c.add_argument("--target", default="host", help="host (this CPU, default), arm (aarch64 Linux, "
                   "cross-compiled, with a deploy bundle) or cuda (NVIDIA GPU; builds without a GPU)")
    c.add_argument("--cpu", default=None, help="ARM core preset for --target arm: cortex-a76 (default), "
                   "cortex-a55, neoverse-n1, cortex-a72, neoverse-v1; x86 CPU for --target host (default: this "
                   "CPU): sapphirerapids, emeraldrapids, graniterapids (AMX), icelake-server, cascadelake, znver4, "
                   "haswell")
    c.add_argument("--arch", default=None, help="GPU architecture for --target cuda: sm_75 (default), sm_80, "
                   "sm_86, sm_89, sm_90")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    c.add_argument("--rpc", default=None, metavar="HOST:PORT",
                   help="mixed: time each layer's kernel on the --target device through the TVM RPC server at "
                        "HOST:PORT (a board or GPU box) instead of using a cost model")
    _add_norm(c)
    _add_input_shape(c)
    _add_bits(c)
    from dyadic.cli.sweep import add_parser as add_sweep
    add_sweep(sub, _add_norm)
    r = sub.add_parser("run", help="run a build directory on a data file (locally, under qemu, or over RPC)",
                       description="Quantize the inputs of a .npz data file, run the build's integer library "
                       "and print a summary of its outputs (and top-1 if the file has labels). Where it runs: "
                       "--rpc HOST:PORT on a TVM RPC server (a board), else a host build on this CPU, an arm "
                       "build under qemu-user (no timing), a cuda build on the local GPU.")
    r.add_argument("build", help="a build directory from `dyadic compile`")
    r.add_argument("--data", required=True, help=".npz with 'images' (+ --mean/--std) or input-named arrays")
    r.add_argument("--rpc", default=None, metavar="HOST:PORT", help="run on the TVM RPC server at HOST:PORT")
    r.add_argument("--limit", type=int, default=None, help="use only the first N samples (one batch)")
    r.add_argument("--reps", type=int, default=0, help="also time N runs of main (not under emulation)")
    r.add_argument("--threads", type=int, default=None,
                   help="threads of a host build (default: the physical cores, or $TVM_NUM_THREADS)")
    _add_norm(r)
    e = sub.add_parser("eval", help="top-1 accuracy of a compiled library or an ONNX model (onnxruntime fp32)",
                       description="Run a compiled build directory (integer library) or an .onnx file "
                       "(through onnxruntime in fp32, for comparison) on a labelled .npz file and print "
                       "the top-1 accuracy as the last line.")
    e.add_argument("model", help="a build directory from `dyadic compile`, or an .onnx file")
    e.add_argument("--data", required=True, help=".npz with 'images' and 'labels' (or input-named arrays and 'labels')")
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    e.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    e.add_argument("--quiet", action="store_true", help="no progress output")
    e.add_argument("--threads", type=int, default=None,
                   help="threads of a build (default: the physical cores, or $TVM_NUM_THREADS)")
    e.add_argument("--vs", default=None, metavar="MODEL.onnx",
                   help="also run the same inputs through this ONNX model in onnxruntime fp32 and report top-1 "
                        "agreement and logit cosine (no labels needed)")
    _add_norm(e)
    _add_input_shape(e)
    from dyadic.cli import bench  # `dyadic bench`: parser and command live in dyadic/cli/bench.py
    bench.add_subparser(sub)
    from dyadic.cli import profile_cmd  # `dyadic profile`
    profile_cmd.add_subparser(sub)
    return ap


def cmd_compile(a) -> int:
    import dyadic
    from dyadic.frontend.data import Normalize, load_npz
    from dyadic.core.io import input_shapes
    from dyadic.frontend import import_onnx, load_model_arg
    from dyadic.cli.report import summary

    from dyadic.targets import preset_name

    from dyadic.core.outdir import check_output_dir

    check_output_dir(a.output)  # before any work: -o is a file or not writable
    target = preset_name(a.target, a.cpu, a.arch)  # before any work: a bad flag fails fast
    config = _config(a, target)
    model = load_model_arg(a.model, a.image_size)
    calib, source, image_norm = None, "", None
    if a.calib:
        shapes = input_shapes(import_onnx(model, dict(config.input_shapes)))
        norm = Normalize.parse(a.mean, a.std)
        calib, _ = load_npz(a.calib, shapes, norm, a.calib_count)
        source = os.path.abspath(a.calib)
        image_norm = (norm.mean, norm.std) if a.mean or a.std else None  # recorded for eval/run of the build
    res = dyadic.compile(model, a.output, calib, config, calib_source=source, image_norm=image_norm)
    print(summary(res.plan))
    print(f"wrote {os.path.join(a.output, 'model.so')} and {os.path.join(a.output, 'model.json')}")
    return 0


def cmd_run(a) -> int:
    from dyadic.runtime.loader import quantize_plan_inputs
    from dyadic.frontend.data import Normalize, load_npz
    from dyadic.runtime.remote import run_build

    from dyadic.core.plan_schema import read_plan

    plan = read_plan(a.build)
    x, y = load_npz(a.data, {i["name"]: tuple(i["shape"]) for i in plan["inputs"]}, _build_norm(a, plan), a.limit)
    q = quantize_plan_inputs(plan["inputs"], x)
    outs, timing, where = run_build(a.build, q, a.rpc, a.reps, a.threads)
    n = len(next(iter(q.values())))
    print(f"ran {a.build} ({plan['target']['preset']}) on {where}: {n} inputs")
    for spec, o in zip(plan["outputs"], outs):
        print(f"output {spec['name']}: {o.dtype} {list(o.shape)}, range [{o.min()}, {o.max()}], "
              f"argmax of first rows {o.reshape(len(o), -1).argmax(1)[:8].tolist()}")
    if y is not None:
        print(f"top1 {100.0 * float((outs[0].reshape(n, -1).argmax(1) == y[:n]).mean()):.2f}% ({n} images)")
    if timing:
        print(f"timing: median {timing['median_ms']:.3f} ms, min {timing['min_ms']:.3f} ms over {timing['runs']} "
              f"runs of main at batch {n}")
    return 0


def _build_norm(a, plan: dict | None):
    """--mean/--std where given; else the build's own (`calibration.image_normalize`: the compile's flags),
    said once on stderr; else none (pixel/255)."""
    from dyadic.frontend.data import Normalize

    rec = (plan or {}).get("calibration", {}).get("image_normalize")
    if a.mean or a.std or not rec:
        return Normalize.parse(a.mean, a.std)
    print(f"dyadic: uint8 images normalized with the build's --mean {','.join(map(str, rec['mean']))} "
          f"--std {','.join(map(str, rec['std']))} (model.json)", file=sys.stderr)
    return Normalize(tuple(rec["mean"]), tuple(rec["std"]))


def cmd_eval(a) -> int:
    from dyadic.core.config import parse_input_shapes
    from dyadic.frontend.data import Normalize, load_npz
    from dyadic.cli.evaluate import agreement, evaluate

    from dyadic.core.plan_schema import read_plan

    norm = _build_norm(a, None if a.model.endswith(".onnx") else read_plan(a.model))
    pinned = dict(parse_input_shapes(a.input_shape))
    runner, shapes, batch, names = _runner(a.model, a.threads, pinned)
    x, y = load_npz(a.data, shapes, norm, a.limit)
    batch = batch or a.batch
    if a.vs:
        peer, peer_shapes, peer_batch, _ = _runner(a.vs, a.threads, pinned or shapes)
        if any(tuple(peer_shapes.get(k, ())[1:]) != tuple(s[1:]) for k, s in shapes.items()):
            raise DyadicError(f"{a.vs} takes inputs {peer_shapes}, the build takes {shapes}: not the same model")
        rs = agreement(runner, peer, x, peer_batch or batch, quiet=a.quiet)
        for j, r in enumerate(rs):  # one line per output; a single-output model's line names none
            which = f" output {j} ({names[j]!r})" if len(rs) > 1 else ""
            print(f"vs {a.vs} (onnxruntime fp32){which}: top-1 agreement {100.0 * r['agree']:.2f}%, logit cosine "
                  f"mean {r['cos_mean']:.5f} min {r['cos_min']:.5f} ({r['n']} inputs)")
        if y is None:
            return 0
    if y is None:
        raise DyadicError(f"{a.data} has no 'labels' array: eval needs labels (or --vs MODEL.onnx to compare)")
    correct, n = evaluate(lambda xs: runner(xs)[0], x, y, batch, quiet=a.quiet)  # labels score the first output
    print(f"top1 {100.0 * correct / n:.2f}% ({n} images)")
    return 0


def _runner(path: str, threads: int | None = None, pinned: dict | None = None):
    """(run(inputs) -> the list of outputs, {input: shape}, the batch the model requires or None, the
    output names)."""
    if path.endswith(".onnx"):
        import onnxruntime as ort

        try:
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise DyadicError(f"onnxruntime cannot load {path!r}: {e}") from None
        shapes = {}
        for i in sess.get_inputs():
            dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in i.shape)
            want = (pinned or {}).get(i.name)
            if want is not None:
                dims = (dims[0],) + tuple(want[1:]) if len(want) == len(dims) else dims
            if any(d < 0 for d in dims[1:]):
                raise DyadicError(f"{path}: input {i.name!r} has dynamic dims {list(i.shape)}: pin them with "
                                  f"--input-shape {i.name}:" + ",".join(str(d) if isinstance(d, int) else "D"
                                                                        for d in i.shape))
            shapes[i.name] = dims
        fixed = {d[0] for d in shapes.values() if d[0] > 0}
        names = [o.name for o in sess.get_outputs()]
        return (lambda xs: sess.run(None, xs)), shapes, (fixed.pop() if len(fixed) == 1 else None), names
    import dyadic

    try:
        m = dyadic.load(path, threads)
    except FileNotFoundError as e:
        raise DyadicError(str(e)) from None
    one = len(m.outputs) == 1
    return ((lambda xs: [m.run(xs)] if one else m.run(xs)), {i["name"]: tuple(i["shape"]) for i in m.inputs}, None,
            [o["name"] for o in m.outputs])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from dyadic.cli.sweep import cmd_sweep
        from dyadic.cli.bench import cmd as cmd_bench
        from dyadic.cli.profile_cmd import cmd as cmd_profile
        return {"compile": cmd_compile, "eval": cmd_eval, "run": cmd_run, "sweep": cmd_sweep,
                "bench": cmd_bench, "profile": cmd_profile}[args.cmd](args)
    except BaseException as e:  # one error path: dyadic.cli.errors (a bug is logged, not shown)
        if isinstance(e, SystemExit):
            raise
        from dyadic.cli.errors import report

        return report(args.cmd, e, argv)


if __name__ == "__main__":
    sys.exit(main())
