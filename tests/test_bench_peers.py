"""`dyadic bench --vs` with the OpenVINO peers (the optional `[peers]` extra: openvino + nncf). Skipped
where they are not installed (CI installs `.[test]` only). A plumbing check: the runners run in their
own processes and the table has their columns; no timing is asserted or reported."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from test_kernels_amx import _model  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import onnx

    import dyadic
    from dyadic.core.config import CompileConfig

    d = tmp_path_factory.mktemp("peers")
    rng = np.random.default_rng(0)
    m = _model(rng)
    onnx.save(m, str(d / "tiny.onnx"))
    calib = {"input": rng.standard_normal((8, 3, 12, 10)).astype(np.float32)}
    dyadic.compile(m, str(d / "build"), calib, CompileConfig(quiet=True))
    return d, calib


def test_nncf_model_is_quantized(tiny, tmp_path):
    import openvino as ov

    from dyadic.cli.bench_openvino import quantize_for_openvino

    d, calib = tiny
    xml = quantize_for_openvino(str(d / "tiny.onnx"), str(tmp_path), calib, count=8)
    ops = [op.get_type_name() for op in ov.Core().read_model(xml).get_ops()]
    assert ops.count("FakeQuantize") >= 4, ops  # the convs' and the matmul's inputs (and weights)


def test_bench_runs_openvino_peers(tiny, capsys, tmp_path):
    from dyadic.cli.main import main

    d, _ = tiny
    js = tmp_path / "b.json"
    code = main(["bench", str(d / "build"), "--vs", str(d / "tiny.onnx"), "--threads", "1", "--repeat", "1",
                 "--iters", "2", "--json", str(js)])
    out = capsys.readouterr().out
    assert code == 0
    header, row = out.strip().splitlines()[-2:]
    assert "ov-int8 ms" in header and "ov-fp32 ms" in header and "ov-int8/dyadic" in header
    res = json.loads(js.read_text())
    assert res["meta"]["runners"] == ["dyadic", "ort-int8", "ort-fp32", "ov-int8", "ov-fp32"]
    assert all(res["rows"][0][f"{k}_ms"] > 0 for k in res["meta"]["runners"])
    code = main(["bench", str(d / "build"), "--vs", str(d / "tiny.onnx"), "--threads", "1", "--repeat", "1",
                 "--iters", "1", "--no-openvino"])
    assert code == 0 and "ov-int8" not in capsys.readouterr().out
