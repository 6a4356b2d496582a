"""The `dyadic` command line: compile, eval.

Every user error (bad model, bad data, infeasible request) is printed as one paragraph on stderr
with exit code 2, and leaves no output files behind.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from dyadic.errors import DyadicError


def _add_norm(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mean", help="per-channel mean of pixel/255, comma-separated (e.g. 0.485,0.456,0.406); "
                                  "used when the data file holds uint8 'images'")
    p.add_argument("--std", help="per-channel std of pixel/255, comma-separated (e.g. 0.229,0.224,0.225)")


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
    c.add_argument("--target", default="host", help="compile target preset (default: host CPU)")
    c.add_argument("--quiet", action="store_true", help="no progress output")
    _add_norm(c)
    e = sub.add_parser("eval", help="top-1 accuracy of a compiled library or an ONNX model (onnxruntime fp32)",
                       description="Run a compiled build directory (integer library) or an .onnx file "
                       "(through onnxruntime in fp32, for comparison) on a labelled .npz file and print "
                       "the top-1 accuracy as the last line.")
    e.add_argument("model", help="a build directory from `dyadic compile`, or an .onnx file")
    e.add_argument("--data", required=True, help=".npz with 'images' and 'labels' (or input-named arrays and 'labels')")
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    e.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    e.add_argument("--quiet", action="store_true", help="no progress output")
    _add_norm(e)
    return ap


def _load_model_arg(name: str, image_size: int | None):
    if os.path.exists(name) or name.endswith(".onnx"):
        return name
    from dyadic.models import BUILDERS, build

    if name not in BUILDERS:
        raise DyadicError(f"{name!r} is neither an existing file nor a built-in model ({', '.join(BUILDERS)})")
    return build(name, **({"image_size": image_size} if image_size else {}))


def cmd_compile(a) -> int:
    import dyadic
    from dyadic.config import CompileConfig
    from dyadic.data import Normalize, load_npz
    from dyadic.passes import import_onnx
    from dyadic.compiler import input_shapes
    from dyadic.report import summary

    model = _load_model_arg(a.model, a.image_size)
    calib, source = None, ""
    if a.calib:
        shapes = input_shapes(import_onnx(model))
        calib, _ = load_npz(a.calib, shapes, Normalize.parse(a.mean, a.std), a.calib_count)
        source = os.path.abspath(a.calib)
    res = dyadic.compile(model, a.output, calib, CompileConfig(target=a.target, quiet=a.quiet), calib_source=source)
    print(summary(res.plan))
    print(f"wrote {os.path.join(a.output, 'model.so')} and {os.path.join(a.output, 'model.json')}")
    return 0


def cmd_eval(a) -> int:
    from dyadic.data import Normalize, load_npz
    from dyadic.evaluate import evaluate

    norm = Normalize.parse(a.mean, a.std)
    runner, shapes = _runner(a.model)
    x, y = load_npz(a.data, shapes, norm, a.limit)
    if y is None:
        raise DyadicError(f"{a.data} has no 'labels' array: eval needs labels")
    correct, n = evaluate(runner, x, y, a.batch, quiet=a.quiet)
    print(f"top1 {100.0 * correct / n:.2f}% ({n} images)")
    return 0


def _runner(path: str):
    if path.endswith(".onnx"):
        import onnxruntime as ort

        try:
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise DyadicError(f"onnxruntime cannot load {path!r}: {e}") from None
        shapes = {i.name: tuple(d if isinstance(d, int) else -1 for d in i.shape) for i in sess.get_inputs()}
        return (lambda xs: sess.run(None, xs)[0]), shapes
    import dyadic

    try:
        m = dyadic.load(path)
    except FileNotFoundError as e:
        raise DyadicError(str(e)) from None
    return (lambda xs: m.run(xs)), {i["name"]: tuple(i["shape"]) for i in m.inputs}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"compile": cmd_compile, "eval": cmd_eval}[args.cmd](args)
    except DyadicError as e:
        print(f"dyadic {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
