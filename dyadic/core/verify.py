"""Invariant checks between passes. Each raises `VerificationError` naming the pass that broke it.

Integer graph invariants:
  * every op is an integer op and every tensor has an integer dtype;
  * every rescale is dyadic: 0 < M < 2^31, 1 <= S <= 62;
  * weights fit their bit-width, biases fit int32;
  * no int32 accumulator can overflow for the calibrated ranges: for each output channel c,
    max|x| * sum_k |W_q[c, k]| + |B_q[c]| < 2^31, where max|x| is the largest value the input's
    integer type can hold (so the bound holds for every input, not only calibration data);
  * every int64 requant product stays below 2^63.
Lowered-module invariant: after legalization, no Relax binding and no TIR expression is a float.
"""
from __future__ import annotations

import re

import numpy as np

from dyadic.core.arith import weight_dtype
from dyadic.core.errors import VerificationError
from dyadic.core.graph import FLOAT_OPS, INT_DTYPES, INT_OPS, Graph
from dyadic.ops import FLOAT as TABLE_FLOAT, INT as TABLE_INT

INT32_LIMIT = 2 ** 31
INT64_LIMIT = 2 ** 63
_FLOAT_RE = re.compile(r"\b(b?float(?:8|16|32|64)\w*)")


def verify_float_graph(graph: Graph, after: str) -> None:
    problems = [f"{n.name}: op {n.op} is not a float-graph op" for n in graph.nodes
                if n.op not in FLOAT_OPS and n.op not in TABLE_FLOAT]
    problems += [f"{t}: no shape" for n in graph.nodes for t in n.outputs if t not in graph.shapes]
    # NaN is never meaningful; -inf is (an additive attention mask, whose softmax entry is exactly 0)
    problems += [f"{n.name}: parameter {k} has {int(np.isnan(v).sum())} non-finite (NaN) values"
                 for n in graph.nodes for k, v in n.params.items()
                 if isinstance(v, np.ndarray) and v.dtype.kind == "f" and np.isnan(v).any()]
    _raise(problems, after)
    _check_ranges(graph, after)


def _check_ranges(graph: Graph, after: str) -> None:
    """Calibrated ranges must be finite: a NaN or Inf anywhere (data, weights, --mean/--std) would
    otherwise turn into scales that quantize everything to garbage."""
    from dyadic.core.errors import DataRangeError

    bad = [f"{t} [{lo}, {hi}]" for t, (lo, hi) in graph.ranges.items()
           if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi)]
    if bad:
        raise DataRangeError(f"after pass {after}: {len(bad)} tensor(s) have a non-finite calibrated range "
                             f"(NaN or Inf in the calibration data or produced by the model), e.g. "
                             f"{'; '.join(bad[:5])}")


def _amax(graph: Graph, t: str) -> int:
    q = graph.qparams[t]
    return max(abs(q.lo), abs(q.hi))


def verify_integer_graph(graph: Graph, after: str) -> None:
    problems = []
    for n in graph.nodes:
        if n.op not in INT_OPS and n.op not in TABLE_INT:
            problems.append(f"{n.name}: op {n.op} is not an integer op")
            continue
        for t in n.inputs + n.outputs:
            if graph.dtypes.get(t) not in INT_DTYPES:
                problems.append(f"{n.name}: tensor {t} has dtype {graph.dtypes.get(t)}")
        p = n.params
        if n.op in TABLE_INT and TABLE_INT[n.op].verify is not None:  # the op table's own bounds
            problems += TABLE_INT[n.op].verify(graph, n)
        if "M" in p:
            m, s = np.asarray(p["M"]), np.asarray(p["S"])
            # a sum's operand may get M = 0: it is below half an output step (ConvNeXt's 1e-6 layer scale)
            zero_ok = n.op in ("qadd", "qbinary") and m.max() > 0
            if (m.min() < 0 if zero_ok else m.min() <= 0) or m.max() >= INT32_LIMIT or s.min() < 1 or s.max() > 62:
                problems.append(f"{n.name}: rescale is not dyadic (M in [{m.min()}, {m.max()}], S in [{s.min()}, {s.max()}])")
        if n.op in ("qconv", "qdense"):
            w = p["W"].astype(np.int64).reshape(p["W"].shape[0], -1)
            wmax = (1 << (n.attrs["w_bits"] - 1)) - 1
            if p["W"].dtype != weight_dtype(n.attrs["w_bits"]) or np.abs(w).max() > wmax:
                problems.append(f"{n.name}: weights exceed {n.attrs['w_bits']} bits")
            if n.attrs["a_bits"] == 4 and graph.qparams[n.inputs[0]].bits != 4:
                problems.append(f"{n.name}: reads {graph.qparams[n.inputs[0]].bits}-bit activations, "
                                f"planned A{n.attrs['a_bits']}")
            if p["B"].dtype != np.int32:
                problems.append(f"{n.name}: bias is {p['B'].dtype}, not int32")
            acc = _amax(graph, n.inputs[0]) * np.abs(w).sum(axis=1) + np.abs(p["B"].astype(np.int64))
            if acc.max() >= INT32_LIMIT:
                problems.append(f"{n.name}: int32 accumulator can overflow (bound {int(acc.max())})")
            prod = acc.max() * int(np.asarray(p["M"]).max()) + (1 << 62)
            if prod >= INT64_LIMIT:
                problems.append(f"{n.name}: int64 requant product can overflow")
        elif n.op == "qadd":
            bound = sum(_amax(graph, t) * int(mv) for t, mv in zip(n.inputs, p["M"])) + (1 << 61)
            if bound >= INT64_LIMIT:
                problems.append(f"{n.name}: int64 add product can overflow")
        elif n.op == "qaffine":
            bound = _amax(graph, n.inputs[0]) * int(np.asarray(p["M"]).max()) + int(np.abs(p["K"]).max()) + (1 << 61)
            if bound >= INT64_LIMIT:
                problems.append(f"{n.name}: int64 affine product can overflow")
        elif n.op == "qmul":
            if _amax(graph, n.inputs[0]) * _amax(graph, n.inputs[1]) * int(p["M"]) + (1 << 61) >= INT64_LIMIT:
                problems.append(f"{n.name}: int64 product can overflow")
        elif n.op in ("qavgpool", "qmean_hw"):
            k = np.prod(n.attrs["kernel"]) if n.op == "qavgpool" else np.prod(graph.shapes[n.inputs[0]][2:])
            if _amax(graph, n.inputs[0]) * int(k) >= INT32_LIMIT:
                problems.append(f"{n.name}: int32 window sum can overflow")
    _raise(problems, after)


def verify_lowered(mod, after: str = "lower_to_relax") -> None:
    """No float type anywhere in the legalized module: Relax tensors, TIR buffers, casts, literals.

    TVMScript spells every dtype out, so a float anywhere in Relax or TIR shows up in the printed
    module; this catches float ops that a structural walk over known node types could miss."""
    from tvm import relax

    text = relax.transform.LegalizeOps()(mod).script(show_meta=False)
    found = sorted(set(_FLOAT_RE.findall(text)))
    if found:
        lines = [ln.strip() for ln in text.splitlines() if _FLOAT_RE.search(ln)][:5]
        _raise([f"float types {found} in the lowered module, e.g. {lines}"], after)


def _raise(problems: list[str], after: str) -> None:
    if problems:
        shown = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise VerificationError(f"after pass {after}: {shown}")
