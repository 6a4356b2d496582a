"""The 9 ONNX model-zoo graphs that the `onnx` package ships (`onnx/backend/test/data/light/`), compiled
unmodified: opset 9, weights built by ConstantOfShape, initializers listed as inputs.

    python benchmarks/light_zoo.py [--models alexnet,vgg19,...] [--out benchmarks/results/light_zoo.md]

Each is compiled in this process with synthetic N(0,1) calibration (the graphs carry no trained
weights) and its bit-exact self-check against the int64 reference is recorded; a failure records
the compiler's grouped error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
          "vgg19", "zfnet512")


def main(argv=None) -> int:
    import onnx

    import dyadic
    from dyadic.core.config import CompileConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "light_zoo.md"))
    a = ap.parse_args(argv)
    light = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    rows = []
    for name in a.models.split(","):
        path = os.path.join(light, f"light_{name}.onnx")
        t = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as out:
                res = dyadic.compile(path, out, None, CompileConfig(quiet=True, check_samples=2))
            rows.append({"model": name, "compiles": "yes", "self_check": res.plan["self_check"],
                         "seconds": round(time.perf_counter() - t, 1)})
        except Exception as e:  # noqa: BLE001  (recorded, the table shows it)
            rows.append({"model": name, "compiles": "no", "error": f"{type(e).__name__}: {str(e)[:400]}"})
        print(json.dumps(rows[-1]), flush=True)
    host = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    lines = [f"# ONNX model-zoo `light_*` graphs (onnx {onnx.__version__}) through dyadic ({host})", "",
             "| model | compiles | self-check | compile s |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['compiles']} | {r.get('self_check', r.get('error', ''))} | {r.get('seconds', '—')} |"
              for r in rows]
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0 if all(r["compiles"] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
