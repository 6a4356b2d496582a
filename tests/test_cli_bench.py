"""`dyadic bench` on a model as exporters write them: opset 12 and dynamic H/W, compiled with
`--input-shape`. The peers run at the build's pinned dims, and onnxruntime's int8 peer is quantized
from the graph upgraded to opset 13 (its per-channel DequantizeLinear needs it). A smoke test: no
speed claim."""
from __future__ import annotations

import numpy as np
import pytest

from _tiny_onnx import bias, conv_w, make_model, node

pytest.importorskip("tvm")


def test_bench_pins_dynamic_dims_and_quantizes_opset12(tmp_path, capsys):
    import onnx

    from dyadic.cli.main import main

    rng = np.random.default_rng(0)
    nodes = [node("Conv", ["input", "W1", "B1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             node("Conv", ["r1", "W2", "B2"], "out", pads=[1, 1, 1, 1])]
    m = make_model(nodes, {"W1": conv_w(rng, 8, 3), "B1": bias(rng, 8), "W2": conv_w(rng, 4, 8), "B2": bias(rng, 4)},
                   in_shape=("N", 3, "H", "W"), opset=12)
    path = tmp_path / "dyn.onnx"
    onnx.save(m, str(path))
    build = tmp_path / "build"
    assert main(["compile", str(path), "-o", str(build), "--quiet", "--input-shape", "input:1,3,12,10"]) == 0
    capsys.readouterr()
    code = main(["bench", str(build), "--vs", str(path), "--threads", "1", "--repeat", "1", "--iters", "2",
                 "--no-openvino"])
    out = capsys.readouterr().out
    assert code == 0, out
    header, row = out.strip().splitlines()[-2:]
    assert "ort-int8 ms" in header and "ort-fp32 ms" in header
    assert row.split()[0] == "1"
    from dyadic.cli.bench import model_macs

    assert model_macs(str(path), {"input": (1, 3, 12, 10)}) == (3 * 9 * 8 + 8 * 9 * 4) * 12 * 10  # at the pinned dims
