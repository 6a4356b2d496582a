"""Per-layer costs (passes/measure_costs.py): exact bytes/BOPs, measured latency, cache, cost model."""
import json
import math
import time

import numpy as np
import pytest

from dyadic.core.graph import Graph
from dyadic.frontend import import_onnx
from dyadic.passes import calibrate_ranges, fold_batchnorm, fuse_activations
from dyadic.mixed.latency import cache_file, is_depthwise, one_node_graph
from dyadic.passes.measure_costs import measure_costs
from dyadic.core.verify import verify_integer_graph

from _tiny_onnx import bias, conv_w, make_model, node

CANDS = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A4": (4, 4)}


@pytest.fixture(scope="module")
def tiny() -> Graph:
    """conv 3->8 (3x3, pad 1) + ReLU -> conv 8->4 (3x3, stride 2) -> flatten -> dense 64->5."""
    rng = np.random.default_rng(0)
    nodes = [node("Conv", ["input", "W1", "B1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             node("Conv", ["r1", "W2", "B2"], "c2", strides=[2, 2], pads=[1, 1, 1, 1]),
             node("Flatten", ["c2"], "f"), node("Gemm", ["f", "W3", "B3"], "out", transB=1)]
    inits = {"W1": conv_w(rng, 8, 3), "B1": bias(rng, 8), "W2": conv_w(rng, 4, 8), "B2": bias(rng, 4),
             "W3": rng.normal(0, 0.1, (5, 64)).astype(np.float32), "B3": bias(rng, 5)}
    g = fuse_activations(fold_batchnorm(import_onnx(make_model(nodes, inits, in_shape=("N", 3, 8, 8)))))
    x = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
    return calibrate_ranges(g, data={"input": x}, batch_size=16, quiet=True)


def expected(g: Graph) -> dict:
    out = {}
    for n in g.weighted_nodes():
        w = n.params["W"]
        macs = w.shape[0] * w.shape[1] if n.op == "dense" else w.size * int(np.prod(g.shapes[n.output][2:]))
        out[n.name] = {c: {"bytes": math.ceil(w.size * wb / 8) + 4 * w.shape[0], "bops": macs * wb * ab, "macs": macs}
                       for c, (wb, ab) in CANDS.items()}
    return out


def test_measured_costs_and_cache(tiny, tmp_path):
    path = str(tmp_path / "lat.json")
    g = measure_costs(tiny, cache_path=path, quiet=True)
    costs, info, want = g.meta["costs"], g.meta["costs_info"], expected(tiny)
    assert [n.name for n in tiny.weighted_nodes()] == list(costs) and len(costs) == 3
    assert want["c1"]["W8A8"]["macs"] == 8 * 3 * 9 * 64 and want["c2"]["W4A4"]["bytes"] == 144 + 16
    for layer, cands in want.items():
        for c, rec in cands.items():
            got = costs[layer][c]
            assert {k: got[k] for k in rec} == rec
            assert got["latency_s"] > 0 and got["latency_source"].startswith("measured on host")
    # A4 and A8 activations both travel as 8-bit integers: one kernel, one measurement, said so
    for layer in costs:
        if costs[layer]["W4A4"].get("shared_with"):
            assert costs[layer]["W4A4"]["shared_with"] == "W4A8"
            assert costs[layer]["W4A4"]["latency_s"] == costs[layer]["W4A8"]["latency_s"]
            assert "same compiled kernel as W4A8" in costs[layer]["W4A4"]["latency_source"]
    assert info["measured"] + info["shared"] + info["reused"] == 9 and info["measured"] >= 6
    assert info["cached"] == 0 and info["cache"] == path
    with open(path) as f:
        assert len(json.load(f)["entries"]) == 9

    t0 = time.perf_counter()
    g2 = measure_costs(tiny, cache_path=path, quiet=True)
    elapsed = time.perf_counter() - t0
    info2 = g2.meta["costs_info"]
    assert info2["measured"] == info2["shared"] == 0 and info2["cached"] == 9
    assert g2.meta["costs"] == costs
    assert elapsed < 2.0, elapsed


def test_cost_model_fallback(tiny, tmp_path):
    path = tmp_path / "never.json"
    for kw in ({"measure": False}, {"target": "arm:neoverse-n1"}):
        g = measure_costs(tiny, cache_path=str(path), quiet=True, **kw)
        costs, info = g.meta["costs"], g.meta["costs_info"]
        want = expected(tiny)
        for layer, cands in want.items():
            for c, rec in cands.items():
                got = costs[layer][c]
                assert {k: got[k] for k in rec} == rec
                assert got["latency_source"].startswith("model: bops /")
                assert got["latency_s"] == pytest.approx(rec["bops"] / 1e12)
        assert info["modelled"] == 9 and info["measured"] == 0 and info["cache"] is None
        assert ("measure=False" in info["model"]) == ("measure" in kw)
    assert not path.exists()


def test_cuda_roofline_model(tiny, tmp_path):
    """A GPU that is not here gets the datasheet roofline: int4 tensor-core rate only for W4A4 where
    the architecture has int4 MMA (T4), never on Hopper; memory term counts packed weights."""
    from dyadic.mixed.costmodel import ROOFLINES

    t4 = measure_costs(tiny, target="cuda:sm_75", cache_path=str(tmp_path / "n.json"), quiet=True).meta["costs"]
    h100 = measure_costs(tiny, target="cuda:sm_90", cache_path=str(tmp_path / "n.json"), quiet=True).meta["costs"]
    for layer, c in t4.items():
        assert c["W8A8"]["latency_source"].startswith("model: roofline of T4")
        assert c["W4A4"]["latency_s"] <= c["W4A8"]["latency_s"] <= c["W8A8"]["latency_s"]
    # Before/Expected on one layer: compute-bound numbers with the launch term removed
    r = ROOFLINES["sm_75"]
    big = dict(macs=10 ** 9, weights=4096, bias_out=16, in_elems=1000, out_elems=1000)
    assert r.latency(wb=8, ab=8, **big) - r.launch_s == pytest.approx(2e9 / 130e12)
    assert r.latency(wb=4, ab=4, **big) - r.launch_s == pytest.approx(2e9 / 260e12)
    assert r.latency(wb=4, ab=8, **big) - r.launch_s == pytest.approx(2e9 / 130e12)
    h = ROOFLINES["sm_90"]
    assert h.latency(wb=4, ab=4, **big) == h.latency(wb=8, ab=8, **big)  # no int4 MMA on Hopper
    small = dict(macs=1000, bias_out=16, in_elems=1000, out_elems=1000)  # memory-bound
    assert r.latency(wb=8, ab=8, weights=10 ** 6, **small) - r.launch_s == pytest.approx((10 ** 6 + 64 + 2000) / 320e9)
    assert r.latency(wb=4, ab=4, weights=10 ** 6, **small) - r.launch_s == pytest.approx((5 * 10 ** 5 + 64 + 1500) / 320e9)
    assert all(c["W4A4"]["latency_source"].startswith("model: roofline of H100") for c in h100.values())


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("DYADIC_CACHE_DIR", str(tmp_path))
    assert cache_file() == str(tmp_path / "latency.json")
    assert cache_file("/x/y.json") == "/x/y.json"


@pytest.mark.parametrize("bits", list(CANDS.values()))
def test_one_node_graph_is_a_valid_integer_graph(tiny, bits):
    for n in tiny.weighted_nodes():
        g = one_node_graph(tiny, n, *bits)
        verify_integer_graph(g, after="one_node_graph")
        q = g.nodes[0]
        assert np.abs(q.params["W"]).max() <= (1 << (bits[0] - 1)) - 1 and q.params["W"].shape == n.params["W"].shape
        assert g.qparams["x"].bits == bits[1] and g.dtypes["x"] == ("uint8" if n.name == "c2" else "int8")
        assert g.dtypes["y"] == {"c1": "uint8", "c2": "int8", "out": "int16"}[n.name]  # ReLU / none / logits


def test_depthwise_timed_behind_a_conv(tmp_path):
    """A depthwise conv gets its fast kernel only after another conv: timed behind a 1x1 prologue."""
    rng = np.random.default_rng(1)
    nodes = [node("Conv", ["input", "W1", "B1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             node("Conv", ["r1", "W2", "B2"], "out", pads=[1, 1, 1, 1], group=16)]
    inits = {"W1": conv_w(rng, 16, 3), "B1": bias(rng, 16), "W2": conv_w(rng, 16, 1), "B2": bias(rng, 16)}
    g = fuse_activations(fold_batchnorm(import_onnx(make_model(nodes, inits, in_shape=("N", 3, 8, 8)))))
    g = calibrate_ranges(g, data={"input": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)}, batch_size=8, quiet=True)
    dw = g.weighted_nodes()[1]
    assert is_depthwise(g, dw) and not is_depthwise(g, g.weighted_nodes()[0])
    for bits in CANDS.values():
        pg = one_node_graph(g, dw, *bits, prologue=True)
        if bits[1] == 8:  # (for A4 too, the prologue writes 8-bit values: the same prologue for both)
            verify_integer_graph(pg, after="prologue graph")
        assert [n.op for n in pg.nodes] == ["qconv", "qconv"] and pg.inputs == ("x0",)
    res = measure_costs(g, cache_path=str(tmp_path / "lat.json"), quiet=True)
    info, rec = res.meta["costs_info"], res.meta["costs"][dw.name]
    assert info["baselines"] == 1
    for c in CANDS:
        assert rec[c]["latency_s"] > 0 and "prologue" in rec[c]["latency_source"]
    assert rec["W8A8"]["macs"] == 16 * 9 * 64 and rec["W4A4"]["bytes"] == 72 + 64
