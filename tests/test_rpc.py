"""--rpc HOST:PORT: run a build on a TVM RPC server (here a loopback server started by the test)."""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import dyadic
from dyadic.cli.main import main
from dyadic.compiler import quantize_inputs
from dyadic.core.config import CompileConfig
from dyadic.core.errors import TargetError, ToolchainError
from dyadic.core.reference import run_reference
from dyadic.runtime.remote import parse_address, run_rpc

from _tiny_onnx import bias, conv_w, make_model, node


def _tiny_cnn():
    r = np.random.default_rng(0)
    inits = {"w1": conv_w(r, 8, 3), "b1": bias(r, 8), "w2": conv_w(r, 8, 8), "b2": bias(r, 8),
             "fc": (r.standard_normal((5, 8)) * 0.3).astype(np.float32), "fcb": bias(r, 5)}
    nodes = [node("Conv", ["input", "w1", "b1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             node("Conv", ["r1", "w2", "b2"], "c2", pads=[1, 1, 1, 1]), node("Relu", ["c2"], "r2"),
             node("GlobalAveragePool", ["r2"], "gap"), node("Flatten", ["gap"], "flat"),
             node("Gemm", ["flat", "fc", "fcb"], "out", transB=1)]
    return make_model(nodes, inits)


@pytest.fixture(scope="module")
def host_build(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rpc_build"))
    return dyadic.compile(_tiny_cnn(), out, None, CompileConfig(quiet=True)), out


@pytest.fixture(scope="module")
def rpc_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "dyadic.runtime.remote", "--host", "127.0.0.1", "--port", str(port),
                             "--port-end", str(port + 50)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "dyadic rpc server listening on 127.0.0.1:PORT"
    if "listening on" not in line:
        proc.kill()
        pytest.fail(f"RPC server did not start: {line} {proc.stderr.read()}")
    addr = line.split()[-1]
    yield addr
    proc.terminate()
    proc.wait(timeout=10)


def test_rpc_run_is_bit_exact_and_timed(host_build, rpc_server):
    res, out = host_build
    ig = res.int_graph
    q = quantize_inputs(ig, {"input": np.random.default_rng(5).standard_normal((3, 3, 8, 8)).astype(np.float32)})
    outs, timing = run_rpc(os.path.join(out, "model.so"), res.plan, q, rpc_server, reps=3)
    want = run_reference(ig, q)[ig.outputs[0]]
    assert want.std() > 0
    np.testing.assert_array_equal(outs[0], want)
    assert timing["runs"] == 3 and 0 < timing["min_ms"] <= timing["median_ms"]


def test_cli_run_over_rpc(host_build, rpc_server, tmp_path, capsys):
    _, out = host_build
    data = tmp_path / "x.npz"
    np.savez(data, input=np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32))
    assert main(["run", out, "--data", str(data), "--rpc", rpc_server, "--reps", "2"]) == 0
    stdout = capsys.readouterr().out
    assert f"on {rpc_server} over TVM RPC: 4 inputs" in stdout
    assert "output out: int16 [4, 5]" in stdout and "timing: median" in stdout


@pytest.mark.parametrize("addr", ["localhost", "host:", ":9090", "h:99999", "h:port"])
def test_bad_rpc_address(addr):
    with pytest.raises(TargetError, match="HOST:PORT"):
        parse_address(addr)


def test_no_server_is_one_clear_error(host_build, tmp_path, capsys):
    _, out = host_build
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    data = tmp_path / "x.npz"
    np.savez(data, input=np.zeros((1, 3, 8, 8), np.float32))
    t0 = time.perf_counter()
    assert main(["run", out, "--data", str(data), "--rpc", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach a TVM RPC server" in err and len(err.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 30
    assert issubclass(ToolchainError, dyadic.core.errors.DyadicError)


def test_bench_over_rpc(host_build, rpc_server, tmp_path, capsys):
    import json

    _, out = host_build
    js = tmp_path / "b.json"
    assert main(["bench", out, "--rpc", rpc_server, "--repeat", "2", "--iters", "3", "--json", str(js)]) == 0
    stdout = capsys.readouterr().out
    assert f"on {rpc_server} over TVM RPC, batch 1: median" in stdout and "onnxruntime peers" in stdout
    res = json.load(open(js))
    assert len(res["repeat_medians_ms"]) == 2 and 0 < res["min_ms"] <= res["median_ms"]
    assert main(["bench", out]) == 2  # without --rpc the peers' model is required
    assert "--vs MODEL.onnx is required" in capsys.readouterr().err


def test_layer_latencies_measured_over_rpc(rpc_server, tmp_path, monkeypatch, capsys):
    """The ILP's per-layer latencies can come from the device behind --rpc (here a loopback server):
    each one-layer library is exported, uploaded and timed there; the cache key includes the address."""
    import json

    monkeypatch.setenv("DYADIC_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "tiny.onnx"
    import onnx
    onnx.save(_tiny_cnn(), model)
    out = tmp_path / "o"
    assert main(["compile", str(model), "-o", str(out), "--bits", "mixed", "--memory-budget", "0.8x",
                 "--hessian-samples", "4", "--rpc", rpc_server, "--quiet"]) == 0
    plan = json.load(open(out / "model.json"))
    info = plan["bit_selection"]["costs_info"]
    assert info["rpc"] == rpc_server and info["latency"] == "measured" and info["measured"] > 0
    cache = json.load(open(tmp_path / "cache" / "latency.json"))["entries"]
    assert cache and all(e["target"] == "host" for e in cache.values())
    text = json.dumps(plan)
    assert f"over TVM RPC at {rpc_server}" in text
    # --rpc without --bits mixed is a usage error (it only times layers)
    assert main(["compile", str(model), "-o", str(tmp_path / "o2"), "--rpc", rpc_server, "--quiet"]) == 2
    assert "--bits mixed" in capsys.readouterr().err
