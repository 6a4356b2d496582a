"""Merge each connected chain of elementwise ops that reads one tensor into one `unary` node.

A node is *elementwise in x* when it is an `ew` step, a relu/clip, a scalar `affine`, or an
add/mul/binary both of whose operands are elementwise in the same x. Every tensor gets a root:
itself, unless an elementwise node computes it from its root. For each tensor t computed from a
root x that something outside the chain reads (or that is a graph output), the chain of steps
from x to t becomes the program of one `unary(x) -> t` node (`dyadic.ops.elementwise`), which
quantizes to one lookup table. So SiLU `x * Sigmoid(x)`, hard-swish `x * Clip(x + 3, 0, 6) / 6`,
GELU `x * 0.5 * (1 + Erf(x / sqrt 2))` and Mish are one table each.

A chain of relu/clip/scalar-affine steps alone is left as it is: those are cheaper as the clip
bounds and rescale of a dyadic requant (and a relu after a conv is fused into it, later).
"""
from __future__ import annotations

import numpy as np

from dyadic.core.graph import Graph, Node

_CHEAP = ("relu", "clip", "affine")


def _step(n: Node, refs: tuple[int, ...]) -> tuple:
    if n.op == "ew":
        return (n.attrs["fn"], refs, n.attrs["params"])
    if n.op == "relu":
        return ("relu", refs, ())
    if n.op == "clip":
        return ("clip", refs, (("lo", n.attrs["lo"]), ("hi", n.attrs["hi"])))
    if n.op == "affine":
        return ("scale", refs, (("A", float(n.params["A"].ravel()[0])), ("B", float(n.params["B"].ravel()[0]))))
    if n.op == "unary":
        raise AssertionError("unary nodes are made here, not fused again")
    return ({"add": "add", "mul": "mul"}.get(n.op, n.attrs.get("fn")), refs, ())


def _elementwise_one(n: Node) -> bool:
    if n.op in ("ew", "relu", "clip"):
        return True
    return n.op == "affine" and n.params["A"].size == 1 and n.params["B"].size == 1


def fuse_unary(graph: Graph) -> Graph:
    root: dict[str, str] = {t: t for t in graph.inputs}
    member: dict[str, Node] = {}     # tensor -> the elementwise node computing it from its root
    for n in graph.nodes:
        r = {root.get(i, i) for i in n.inputs}
        two = n.op in ("add", "mul") or (n.op == "binary" and n.attrs["fn"] in ("sub", "max", "min", "div", "pow"))
        if len(r) == 1 and (_elementwise_one(n) or (two and len(n.inputs) == 2)):
            root[n.output] = r.pop()
            member[n.output] = n
        else:
            for o in n.outputs:
                root[o] = o
    users = graph.consumers()
    outside = {t for t in member if t in graph.outputs or any(u.output not in member or root[u.output] != root[t]
                                                              for u in users.get(t, []))}
    replace: dict[str, Node] = {}
    needed_by_kept: set[str] = set()
    for t in outside:
        chain, stack = [], [t]
        while stack:                          # the members t depends on, back to the root
            u = stack.pop()
            if u in member and u not in chain:
                chain.append(u)
                stack.extend(member[u].inputs)
        order = [n.output for n in graph.nodes if n.output in chain]
        if all(member[u].op in _CHEAP for u in order):
            needed_by_kept.update(order)
            continue
        index = {root[t]: 0, **{u: k + 1 for k, u in enumerate(order)}}
        program = tuple(_step(member[u], tuple(index[i] for i in member[u].inputs)) for u in order)
        replace[t] = Node("unary", member[t].name, (root[t],), (t,), {"program": program})
    if not replace:
        return graph
    nodes = []
    for n in graph.nodes:
        if n.output in replace:
            nodes.append(replace[n.output])
        elif n.output not in member or n.output in needed_by_kept:
            nodes.append(n)
    used = {i for n in nodes for i in n.inputs} | set(graph.outputs)
    nodes = [n for n in nodes if n.output in used or n.output in replace]
    shapes = dict(graph.shapes)
    return graph.replace(nodes=tuple(nodes), shapes=shapes)


def program_fn(program: tuple):
    """The float function of a program (for tests and the LUT builder)."""
    from dyadic.ops.elementwise import run_program

    return lambda x: run_program(program, np.asarray(x, np.float64))
