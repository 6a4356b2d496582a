"""The HAWQ-V3 bit-width ILP: pick one candidate per layer, least Hessian sensitivity under budgets.

Layers i = 1..n are the weighted layers of the graph; candidates c ∈ C = {W8A8, W4A8, W4A4}
(`dyadic.core.config.CANDIDATES`). With Ω_ic the sensitivity of layer i at candidate c
(`graph.meta["sensitivity"][i]["omega"][c]`, see `passes.estimate_sensitivity`) and r^k_ic its cost
of kind k (`graph.meta["costs"]`, see `passes.measure_costs`: k = latency -> latency_s,
memory -> bytes, bops -> bops), solve over binaries x_ic

    minimize    Σ_i Σ_c Ω_ic x_ic
    subject to  Σ_c x_ic = 1                              for every layer i
                Σ_i Σ_c r^k_ic x_ic ≤ B_k                 for every given budget k
                x_{i,W8A8} = 1                            for every pinned layer i
                x_ic = x_jc                               for every c and tied layers i ~ j

where a relative budget β_k ("0.6x") is B_k = β_k Σ_i r^k_{i,W8A8}, the all-W8A8 total. Each cost
row is divided by its all-W8A8 total and Ω by max|Ω| before CBC sees them (same argmin, and the
solver's absolute tolerances become relative ones).

Ties. Layers whose outputs feed the same `add` node directly form a tie group (union-find over the
adds): the downsample conv and the last conv of a ResNet block, or an identity shortcut that comes
straight from a conv. The two branches meet in one requantized add (`qadd`: both rescaled over one
shared shift into one output scale), which HAWQ-V3 executes fused with the conv that produces one
branch, so it quantizes them together: one decision per block output rather than per branch
(the x86 kernels fuse the add into the conv in the same way). Only layers whose output has that add
as its sole reader are tied: a ResNet stem that also feeds the first block is not. Pins and ties
are both hard constraints, so a pinned layer pins its whole tie group to W8A8.

Infeasible budgets raise `BudgetError`. For each budget k the smallest feasible value is
m_k = min Σ r^k x subject to the pins, the ties and the *other* given budgets (another ILP); a
budget with B_k < m_k is named with m_k (rounded up, so that the printed value is itself feasible).
When the other budgets cannot be met either, m_k is the minimum under pins and ties alone.
"""
from __future__ import annotations

import itertools
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np

from dyadic.core.config import Budgets
from dyadic.core.errors import BudgetError, DyadicError
from dyadic.core.graph import Graph

KINDS = {"latency": "latency_s", "memory": "bytes", "bops": "bops"}   #: budget kind -> cost key
UNITS = {"latency": (1e-3, "ms"), "memory": (1e3, "KB"), "bops": (1e9, "GBOPs")}
TIME_LIMIT_S = 5.0
_TOL = 1e-6  # relative slack when checking a solution against its budgets


@dataclass(frozen=True)
class Problem:
    layers: tuple[str, ...]
    cands: tuple[str, ...]               #: candidate names; index 0 is W8A8
    omega: np.ndarray                    #: [layers, cands]
    costs: dict                          #: kind -> [layers, cands]
    fixed: frozenset                     #: indices of layers fixed to W8A8 (pins closed under ties)
    groups: tuple                        #: tie groups of size >= 2, as index tuples

    def total(self, kind: str, choice) -> float:
        return float(self.costs[kind][np.arange(len(self.layers)), choice].sum())

    def uniform(self, c: int) -> np.ndarray:
        return np.array([0 if i in self.fixed else c for i in range(len(self.layers))])


def tie_groups(graph: Graph) -> list[list[str]]:
    """Groups (size >= 2, graph order) of weighted layers whose outputs feed the same add directly
    and nothing else (the two branch ends of a block: shortcut conv and last conv). A layer whose
    output also feeds other layers (a ResNet stem feeding an identity shortcut) starts a block
    rather than ending one, and is not tied."""
    layers = [n.name for n in graph.weighted_nodes()]
    parent = {n: n for n in layers}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    producers, users = graph.producers(), graph.consumers()
    for n in graph.nodes:
        if n.op in ("add", "qadd"):
            srcs = [producers[t].name for t in n.inputs
                    if t in producers and producers[t].name in parent and len(users[t]) == 1]
            for a, b in zip(srcs, srcs[1:]):
                parent[find(a)] = find(b)
    groups: dict[str, list[str]] = {}
    for n in layers:
        groups.setdefault(find(n), []).append(n)
    return [g for g in groups.values() if len(g) > 1]


def make_problem(graph: Graph, pinned: set[str]) -> Problem:
    from dyadic.core.config import CANDIDATES
    from dyadic.passes.estimate_sensitivity import CANDIDATE_NAMES

    cands = tuple(CANDIDATE_NAMES[c] for c in CANDIDATES)
    layers = tuple(n.name for n in graph.weighted_nodes())
    sens, costs = graph.meta.get("sensitivity"), graph.meta.get("costs")
    for key, have, made_by in (("sensitivity", sens, "estimate_sensitivity"), ("costs", costs, "measure_costs")):
        missing = [l for l in layers if not have or l not in have]
        if missing:
            raise DyadicError(f"mixed precision needs graph.meta[{key!r}] for every layer ({made_by}); "
                              f"missing {missing[:5]}")
    omega = np.array([[float(sens[l]["omega"][c]) for c in cands] for l in layers]).reshape(len(layers), len(cands))
    cost = {k: np.array([[float(costs[l][c][key]) for c in cands] for l in layers]).reshape(len(layers), len(cands))
            for k, key in KINDS.items()}
    index = {l: i for i, l in enumerate(layers)}
    groups = tuple(tuple(index[l] for l in g) for g in tie_groups(graph))
    fixed = {index[l] for l in pinned if l in index}
    for g in groups:
        if fixed.intersection(g):
            fixed.update(g)
    return Problem(layers, cands, omega, cost, frozenset(fixed), groups)


def _solve(p: Problem, objective: np.ndarray, limits: dict[str, float],
           status: list | None = None) -> np.ndarray | None:
    """Optimal candidate index per layer, or None when infeasible (CBC through PuLP). `status`, if
    given, receives "optimal" or, where the time limit stopped CBC first, "feasible (time limit)"."""
    import pulp

    n, m = objective.shape
    prob = pulp.LpProblem("dyadic_bits", pulp.LpMinimize)
    var = getattr(prob, "add_variable", None) or (lambda name, cat: pulp.LpVariable(name, cat=cat))  # PuLP 3 / 2
    x = [[var(f"x_{i}_{c}", cat="Binary") for c in range(m)] for i in range(n)]
    scale = float(np.abs(objective).max(initial=0.0)) or 1.0
    prob += pulp.lpSum(float(objective[i, c] / scale) * x[i][c] for i in range(n) for c in range(m))
    for i in range(n):
        prob += pulp.lpSum(x[i]) == 1
        if i in p.fixed:
            prob += x[i][0] == 1
    for g in p.groups:
        for i in g[1:]:
            for c in range(m):
                prob += x[i][c] == x[g[0]][c]
    for k, limit in limits.items():
        r = p.costs[k]
        norm = float(r[:, 0].sum()) or float(np.abs(r).max(initial=0.0)) or 1.0
        prob += pulp.lpSum(float(r[i, c] / norm) * x[i][c] for i in range(n) for c in range(m)) <= limit / norm
    with warnings.catch_warnings():  # PuLP 3 deprecates the name of its bundled CBC, still the one it ships
        warnings.simplefilter("ignore", DeprecationWarning)
        prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=TIME_LIMIT_S))
    if prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        choice = np.array([max(range(m), key=lambda c: x[i][c].value() or 0.0) for i in range(n)])
        bad = [k for k, lim in limits.items() if p.total(k, choice) > lim + _TOL * abs(lim) + 1e-12]
        if not bad:
            if status is not None:
                status.append("optimal" if prob.sol_status == pulp.LpSolutionOptimal else "feasible (time limit)")
            return choice
        raise DyadicError(f"the ILP solver returned a solution over the {', '.join(bad)} budget")
    if prob.status == pulp.LpStatusInfeasible:
        return None
    raise DyadicError(f"the bit-width ILP was not solved within {TIME_LIMIT_S:.0f} s "
                      f"(CBC status {pulp.LpStatus[prob.status]})")


def min_alone(p: Problem, kind: str) -> float:
    """min Σ r^k x under the pins and ties only (no ILP needed: each tie group picks its cheapest)."""
    r, total, seen = p.costs[kind], 0.0, set()
    for g in list(p.groups) + [(i,) for i in range(len(p.layers))]:
        if seen.intersection(g):
            continue
        seen.update(g)
        total += float(r[list(g), 0].sum() if g[0] in p.fixed else r[list(g)].sum(axis=0).min())
    return total


def _ceil_sig(v: float, digits: int = 3) -> float:
    if v <= 0 or not math.isfinite(v):
        return v
    q = 10.0 ** (math.floor(math.log10(v)) - digits + 1)
    return math.ceil(v / q - 1e-9) * q


def _fmt(kind: str, value: float, int8: float, up: bool = False) -> tuple[str, str]:
    f = _ceil_sig if up else (lambda v: float(f"{v:.3g}"))
    unit, name = UNITS[kind]
    ratio = f"{f(value / int8):g}x" if int8 > 0 else "n/a"
    return ratio, f"{f(value / unit):g} {name}"


def _infeasible(p: Problem, limits: dict[str, float], int8: dict[str, float], budgets: Budgets) -> BudgetError:
    parts, smallest = [], {}
    given = dict(budgets.items())
    for k, lim in limits.items():
        others = {j: v for j, v in limits.items() if j != k}
        choice = _solve(p, p.costs[k], others) if others else None
        alone = choice is None
        best = min_alone(p, k) if alone else p.total(k, choice)
        if lim >= best * (1 - _TOL):
            continue
        smallest[k] = best
        r, a = _fmt(k, lim, int8[k])
        shown = f"{r} ({a})" if given[k].relative else f"{a} ({r})"
        br, ba = _fmt(k, best, int8[k], up=True)
        best_shown = f"{br} ({ba})" if given[k].relative else f"{ba} ({br})"
        why = (" (with no other budget; the other budgets cannot be met either)" if alone and others else
               " under the other budgets" if others else "")
        parts.append(f"{k} budget {shown} is infeasible; the smallest feasible {k} is {best_shown}{why}")
    if not parts:  # every budget is feasible alone but not together
        for k in limits:
            smallest[k] = min_alone(p, k)
        parts.append("the budgets cannot be met together; separately the smallest feasible values are "
                     + ", ".join(f"{k} {_fmt(k, v, int8[k], up=True)[0]}" for k, v in smallest.items()))
    err = BudgetError("; ".join(parts) + f" ({len(p.fixed)} of {len(p.layers)} layers fixed at W8A8: "
                      "the pinned layers and their tie groups)")
    err.smallest = smallest
    err.limits = dict(limits)
    return err


def _given(b) -> str | float | None:
    return None if b is None else f"{b.value:g}x" if b.relative else b.value


def solve_bitwidths(graph: Graph, pinned: set[str], budgets: Budgets) -> tuple[dict[str, tuple[int, int]], dict]:
    """Bits {layer: (wb, ab)} for every weighted layer, and a report of the ILP (see module doc)."""
    from dyadic.core.config import CANDIDATES

    t0 = time.perf_counter()
    p = make_problem(graph, pinned)
    int8 = {k: p.total(k, np.zeros(len(p.layers), int)) for k in KINDS}
    int4 = {k: p.total(k, p.uniform(len(p.cands) - 1)) for k in KINDS}
    limits = {k: b.resolve(int8[k]) for k, b in budgets.items()}
    status: list[str] = []
    choice = _solve(p, p.omega, limits, status)
    if choice is None:
        raise _infeasible(p, limits, int8, budgets)
    bits = {l: CANDIDATES[c] for l, c in zip(p.layers, choice)}
    report = {
        "status": status[0], "solver": f"CBC via PuLP (time limit {TIME_LIMIT_S:.0f} s)",
        "objective": float(p.omega[np.arange(len(p.layers)), choice].sum()),
        "solve_s": round(time.perf_counter() - t0, 4),
        "budgets": {k: {"given": _given(getattr(budgets, k)), "limit": limits.get(k), "used": p.total(k, choice),
                        "all_int8": int8[k], "all_int4": int4[k]} for k in KINDS},
        "ties": [[p.layers[i] for i in g] for g in p.groups],
        "pinned": sorted(pinned), "fixed_w8a8": sorted(p.layers[i] for i in p.fixed),
        "choice": {l: p.cands[c] for l, c in zip(p.layers, choice)},
        "counts": {c: int((choice == j).sum()) for j, c in enumerate(p.cands)},
    }
    return bits, report


def brute_force(p: Problem, limits: dict[str, float]) -> tuple[float, np.ndarray] | None:
    """Exhaustive optimum (for tests and tiny models): (objective, choice) or None if infeasible."""
    best = None
    for choice in itertools.product(range(len(p.cands)), repeat=len(p.layers)):
        ch = np.array(choice)
        if any(ch[i] != 0 for i in p.fixed) or any(len(set(ch[list(g)])) > 1 for g in p.groups):
            continue
        if any(p.total(k, ch) > lim + _TOL * abs(lim) for k, lim in limits.items()):
            continue
        obj = float(p.omega[np.arange(len(ch)), ch].sum())
        if best is None or obj < best[0]:
            best = (obj, ch)
    return best
