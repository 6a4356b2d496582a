"""Mixed precision from the command line: budgets, the plan's records, errors, and the sweep."""
import json
import os

import numpy as np
import onnx
import pytest

from dyadic.cli.main import main
from dyadic.models import build

FAST = ["--hessian-samples", "8", "--quiet"]


@pytest.fixture(scope="module")
def r20(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    onnx.save(build("resnet20"), d / "r20.onnx")
    r = np.random.default_rng(0)
    np.savez(d / "calib.npz", input=r.standard_normal((16, 3, 32, 32)).astype(np.float32))
    np.savez(d / "test.npz", input=r.standard_normal((40, 3, 32, 32)).astype(np.float32),
             labels=r.integers(0, 10, 40))
    return d


def _compile(r20, out, *flags):
    return main(["compile", str(r20 / "r20.onnx"), "-o", str(out), "--calib", str(r20 / "calib.npz"), *FAST, *flags])


def test_memory_budget_plan_records_everything(r20, tmp_path, capsys):
    assert _compile(r20, tmp_path / "b", "--bits", "mixed", "--memory-budget", "0.6x") == 0
    out = capsys.readouterr().out
    assert "ILP: optimal" in out and "Tr(H)/n" in out
    plan = json.load(open(tmp_path / "b" / "model.json"))
    ilp = plan["bit_selection"]["ilp"]
    mem = ilp["budgets"]["memory"]
    assert mem["used"] <= mem["limit"] == pytest.approx(0.6 * mem["all_int8"])
    layers = [l for l in plan["layers"] if l["op"] in ("qconv", "qdense")]
    assert {(l["w_bits"], l["a_bits"]) for l in layers} > {(8, 8)}  # some layers really went to 4 bits
    for l in layers:
        assert set(l["sensitivity"]["omega"]) == {"W8A8", "W4A8", "W4A4"}
        assert l["sensitivity"]["trace_w"] > 0 and l["sensitivity"]["trace_w_se"] >= 0
        for c in l["costs"].values():
            assert c["bytes"] > 0 and c["bops"] > 0 and c["latency_s"] > 0 and c["latency_source"]
    assert layers[0]["w_bits"] == 8 and layers[-1]["w_bits"] == 8  # pinned by default
    # the library stores what the plan says: packed 4-bit weights shrink its stored constants
    assert _compile(r20, tmp_path / "i8") == 0
    i8 = json.load(open(tmp_path / "i8" / "model.json"))["library_bytes"]["constants"]
    saved = sum(l["costs"]["W8A8"]["bytes"] - l["costs"][f"W{l['w_bits']}A{l['a_bits']}"]["bytes"] for l in layers)
    assert saved > 0
    assert i8 - plan["library_bytes"]["constants"] >= 0.9 * saved


def test_infeasible_budget_names_smallest_feasible(r20, tmp_path, capsys):
    out = tmp_path / "bad"
    assert _compile(r20, out, "--bits", "mixed", "--memory-budget", "0.1x") == 2
    err = capsys.readouterr().err
    assert "infeasible" in err and "smallest feasible" in err
    assert not out.exists()


@pytest.mark.parametrize("flags,needle", [
    (["--bits", "mixed", "--memory-budget", "12 parsecs"], "--memory-budget"),
    (["--memory-budget", "0.5x"], "need --bits mixed"),
])
def test_bad_budget_flags(r20, tmp_path, capsys, flags, needle):
    assert _compile(r20, tmp_path / "o", *flags) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sweep_writes_table_and_plot(r20, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", str(r20 / "r20.onnx"), "-o", str(out), "--calib", str(r20 / "calib.npz"),
                 "--data", str(r20 / "test.npz"), "--ratios", "0,1", "--cost-target", "cuda:sm_75", *FAST])
    assert code == 0
    res = json.load(open(out / "results.json"))
    # planned with the T4 roofline (no GPU here); accuracy from host builds of the same integer graphs
    assert res["costs_info"]["target"]["preset"] == "cuda:sm_75" and res["costs_info"]["latency"] == "model"
    assert "roofline of T4" in (out / "table.md").read_text()
    rows = {r["row"]: r for r in res["rows"]}
    assert set(rows) == {"uniform-8", "uniform-w4a8", "uniform-4", "latency-r0", "latency-r1", "memory-r0", "memory-r1"}
    assert rows["memory-r0"]["weight_bytes"] <= rows["memory-r1"]["weight_bytes"]
    assert rows["memory-r1"]["weight_bytes"] <= rows["uniform-8"]["weight_bytes"]
    assert rows["latency-r0"]["latency_s"] < rows["latency-r1"]["latency_s"]
    assert rows["latency-r0"]["bits"] != rows["latency-r1"]["bits"]
    with open(out / "pareto.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| memory-r0 |" in (out / "table.md").read_text()


def test_sweep_bad_cost_target_fails_before_work(r20, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", str(r20 / "r20.onnx"), "-o", str(out), "--calib", str(r20 / "calib.npz"),
                 "--data", str(r20 / "test.npz"), "--cost-target", "cuda:sm_70", *FAST])
    assert code == 2 and "sm_70" in capsys.readouterr().err
    assert not out.exists()
