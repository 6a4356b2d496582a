"""The bit-width ILP (dyadic.ilp): optimal against brute force, budgets, pins, ties, infeasibility."""
import re
import time

import numpy as np
import pytest

from dyadic.core.config import Budget, Budgets
from dyadic.core.errors import BudgetError, DyadicError
from dyadic.core.graph import Graph, Node
from dyadic.mixed.ilp import KINDS, UNITS, brute_force, make_problem, solve_bitwidths, tie_groups

CANDS = ("W8A8", "W4A8", "W4A4")


def synthetic(rng, n: int, ties=(), scale=1.0) -> Graph:
    """A chain of n convs; each tie (i, j) adds an `add` reading layers i and j, which are then side
    branches whose only reader is that add. Random Ω and costs shaped like real ones (4-bit: less
    memory and BOPs, more Ω; latency either way)."""
    nodes, prev = [], "input"
    tied = {i for t in ties for i in t}
    for i in range(n):
        nodes.append(Node("conv", f"L{i}", (prev,), (f"t{i}",)))
        if i not in tied:
            prev = f"t{i}"
    for k, (i, j) in enumerate(ties):
        nodes.append(Node("add", f"add{k}", (f"t{i}", f"t{j}"), (f"a{k}",)))
    sens, costs = {}, {}
    for i in range(n):
        w8 = rng.uniform(0, 1) * scale
        omega = [w8, w8 + rng.uniform(0, 3) * scale, w8 + rng.uniform(1, 6) * scale]
        sens[f"L{i}"] = {"omega": dict(zip(CANDS, omega))}
        macs, wbytes, lat = int(rng.integers(1e5, 1e7)), int(rng.integers(1e3, 1e6)), rng.uniform(1e-5, 1e-3)
        costs[f"L{i}"] = {c: {"bytes": wbytes * wb // 8 + 64, "bops": macs * wb * ab, "macs": macs,
                              "latency_s": lat * rng.uniform(0.3, 1.5) if wb == 4 else lat}
                          for c, (wb, ab) in zip(CANDS, ((8, 8), (4, 8), (4, 4)))}
        costs[f"L{i}"]["W4A4"]["latency_s"] = costs[f"L{i}"]["W4A8"]["latency_s"] * rng.uniform(0.6, 1.0)
    return Graph(tuple(nodes), ("input",), (prev,), {}, {}, meta={"sensitivity": sens, "costs": costs})


def random_instance(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 8))
    ties = [tuple(sorted(rng.choice(n, 2, replace=False).tolist())) for _ in range(int(rng.integers(0, 3)))]
    g = synthetic(rng, n, ties)
    pinned = {f"L{i}" for i in rng.choice(n, int(rng.integers(0, 3)), replace=False)}
    kinds = [k for k in KINDS if rng.uniform() < 0.6]
    budgets = {}
    for k in kinds:
        if rng.uniform() < 0.7:
            budgets[k] = Budget(float(rng.uniform(0.45, 1.05)), True)
        else:
            total8 = sum(c["W8A8"][KINDS[k]] for c in g.meta["costs"].values())
            budgets[k] = Budget(float(total8 * rng.uniform(0.45, 1.05)), False)
    return g, pinned, Budgets(**budgets)


def limits_of(g, budgets):
    p = make_problem(g, set())
    int8 = {k: p.total(k, np.zeros(len(p.layers), int)) for k in KINDS}
    return {k: b.resolve(int8[k]) for k, b in budgets.items()}


@pytest.mark.parametrize("seed", range(40))
def test_ilp_equals_brute_force(seed):
    g, pinned, budgets = random_instance(seed)
    p = make_problem(g, pinned)
    limits = limits_of(g, budgets)
    want = brute_force(p, limits)
    if want is None:
        with pytest.raises(BudgetError):
            solve_bitwidths(g, pinned, budgets)
        return
    bits, rep = solve_bitwidths(g, pinned, budgets)
    assert set(bits) == set(p.layers)
    assert rep["objective"] == pytest.approx(want[0], rel=1e-6, abs=1e-12)
    for k, lim in limits.items():
        assert rep["budgets"][k]["used"] <= lim * (1 + 1e-6)
        assert rep["budgets"][k]["limit"] == pytest.approx(lim)
    for layer in pinned:
        assert bits[layer] == (8, 8)
    for group in rep["ties"]:
        assert len({bits[layer] for layer in group}) == 1


def test_infeasible_single_budget_states_smallest_feasible():
    rng = np.random.default_rng(7)
    g = synthetic(rng, 6, ties=[(2, 4)])
    pinned = {"L0", "L5"}
    p = make_problem(g, pinned)
    lat8 = p.total("latency", np.zeros(6, int))
    true_min = min(p.total("latency", np.array(c)) for c in _all_choices(p))
    with pytest.raises(BudgetError) as e:
        solve_bitwidths(g, pinned, Budgets(latency=Budget(0.8 * true_min / lat8, True)))
    msg = str(e.value)
    assert re.search(r"latency budget [0-9.]+x \([0-9.]+ ms\) is infeasible; the smallest feasible latency is "
                     r"[0-9.]+x \([0-9.]+ ms\)", msg), msg
    best = e.value.smallest["latency"]
    assert best == pytest.approx(true_min, rel=1e-9)
    solve_bitwidths(g, pinned, Budgets(latency=Budget(best, False)))                     # feasible
    shown_ms = float(re.search(r"smallest feasible latency is [0-9.]+x \(([0-9.]+) ms\)", msg).group(1))
    solve_bitwidths(g, pinned, Budgets(latency=Budget(shown_ms * 1e-3, False)))           # printed: too
    shown_x = float(re.search(r"smallest feasible latency is ([0-9.]+)x", msg).group(1))
    solve_bitwidths(g, pinned, Budgets(latency=Budget(shown_x, True)))
    with pytest.raises(BudgetError):
        solve_bitwidths(g, pinned, Budgets(latency=Budget(0.99 * best, False)))


@pytest.mark.parametrize("seed", range(8))
def test_infeasible_under_other_budget(seed):
    """The stated smallest value respects the other (feasible) budget; 1 % below it is infeasible."""
    rng = np.random.default_rng(100 + seed)
    g = synthetic(rng, 6, ties=[(1, 3)])
    pinned = {"L0"}
    p = make_problem(g, pinned)
    mem = Budget(float(rng.uniform(0.6, 0.9)), True)
    mem_lim = mem.resolve(p.total("memory", np.zeros(6, int)))
    ok = [c for c in _all_choices(p) if p.total("memory", np.array(c)) <= mem_lim]
    if not ok:
        pytest.skip("memory budget alone infeasible for this draw")
    true_min = min(p.total("bops", np.array(c)) for c in ok)
    budgets = Budgets(memory=mem, bops=Budget(0.97 * true_min, False))
    with pytest.raises(BudgetError) as e:
        solve_bitwidths(g, pinned, budgets)
    assert "memory budget" not in str(e.value) and "bops budget" in str(e.value) and "GBOPs" in str(e.value)
    best = e.value.smallest["bops"]
    assert best == pytest.approx(true_min, rel=1e-9)
    solve_bitwidths(g, pinned, Budgets(memory=mem, bops=Budget(best, False)))
    with pytest.raises(BudgetError):
        solve_bitwidths(g, pinned, Budgets(memory=mem, bops=Budget(0.99 * best, False)))


def test_infeasible_even_alone_reports_minimum():
    rng = np.random.default_rng(3)
    g = synthetic(rng, 5)
    p = make_problem(g, {"L0"})
    kb = min_total = None
    for k in ("memory", "latency"):
        min_total = min(p.total(k, np.array(c)) for c in _all_choices(p))
        if k == "memory":
            kb = min_total
    with pytest.raises(BudgetError) as e:  # both below their minimum alone: each is named with it
        solve_bitwidths(g, {"L0"}, Budgets(memory=Budget(0.5 * kb, False), latency=Budget(0.5 * min_total, False)))
    assert "memory budget" in str(e.value) and "latency budget" in str(e.value) and "KB" in str(e.value)
    assert e.value.smallest["memory"] == pytest.approx(kb)
    assert e.value.smallest["latency"] == pytest.approx(min_total)


def test_resnet50_sized_solves_fast():
    rng = np.random.default_rng(50)
    blocks = [3, 4, 6, 3]
    ties, i = [], 1
    for stage, nb in enumerate(blocks):
        for b in range(nb):
            if b == 0:
                ties.append((i + 2, i + 3))  # conv3 and downsample meet in the block's add
                i += 4
            else:
                i += 3
    n = i + 1
    assert n == 54
    g = synthetic(rng, n, ties)
    pinned = {"L0", f"L{n - 1}"}
    t0 = time.perf_counter()
    bits, rep = solve_bitwidths(g, pinned, Budgets(latency=Budget(0.8, True), memory=Budget(0.6, True),
                                                   bops=Budget(0.5, True)))
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, elapsed
    assert rep["status"] == "optimal" and len(bits) == 54 and len(rep["ties"]) == 4
    for k, lim in (("latency", 0.8), ("memory", 0.6), ("bops", 0.5)):
        b = rep["budgets"][k]
        assert b["used"] <= lim * b["all_int8"] * (1 + 1e-6)
        assert b["all_int4"] < b["all_int8"] or k == "latency"


def test_report_and_no_budget():
    rng = np.random.default_rng(1)
    g = synthetic(rng, 5, ties=[(0, 2)])
    bits, rep = solve_bitwidths(g, {"L0"}, Budgets())
    assert all(b == (8, 8) for b in bits.values())  # W8A8 has the least Ω in `synthetic`
    assert rep["fixed_w8a8"] == ["L0", "L2"] and rep["pinned"] == ["L0"]  # L2 is tied to pinned L0
    assert rep["ties"] == [["L0", "L2"]] and rep["counts"]["W8A8"] == 5
    assert rep["budgets"]["memory"]["limit"] is None
    assert rep["budgets"]["bops"]["all_int4"] == sum(
        g.meta["costs"][f"L{i}"]["W8A8" if i in (0, 2) else "W4A4"]["bops"] for i in range(5))
    assert set(UNITS) == set(KINDS)


def test_missing_meta_is_an_error():
    g = synthetic(np.random.default_rng(0), 3)
    with pytest.raises(DyadicError, match="estimate_sensitivity"):
        solve_bitwidths(g.replace(meta={"costs": g.meta["costs"]}), set(), Budgets())


def test_ties_from_resnet18():
    from dyadic.models import build
    from dyadic.frontend import import_onnx
    from dyadic.passes import fold_batchnorm, fuse_activations

    g = fuse_activations(fold_batchnorm(import_onnx(build("resnet18", image_size=32))))
    groups = tie_groups(g)
    downs = [n.name for n in g.weighted_nodes() if "downsample" in n.name]
    assert len(downs) == 3
    for d in downs:
        block = d.split(".downsample")[0]
        assert sorted(next(gr for gr in groups if d in gr)) == [f"{block}.conv2", d]
    assert len(groups) == 3
    # and the solver honours them on the real graph
    rng = np.random.default_rng(18)
    fake = synthetic(rng, len(g.weighted_nodes()))
    rename = {f"L{i}": n.name for i, n in enumerate(g.weighted_nodes())}
    meta = {k: {rename[l]: v for l, v in fake.meta[k].items()} for k in ("sensitivity", "costs")}
    bits, rep = solve_bitwidths(g.replace(meta=meta), {"conv1", "fc"}, Budgets(bops=Budget(0.4, True)))
    for gr in groups:
        assert len({bits[l] for l in gr}) == 1
    assert bits["conv1"] == bits["fc"] == (8, 8)


def _all_choices(p):
    return [c for c in np.ndindex(*(len(p.cands),) * len(p.layers))
            if all(c[i] == 0 for i in p.fixed) and all(len({c[j] for j in g}) == 1 for g in p.groups)]
