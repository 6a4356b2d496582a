"""dyadic's own per-op attribute checks (stage 3 of `dyadic.frontend.validate`), against the weights
and inferred shapes: kernel_shape vs weights, strides/dilations >= 1, pads >= 0 and of the right
length, windows that fit the padded input, auto_pad=VALID without pads, group vs channels, bias
lengths, ReduceMean axes in range and distinct, Slice steps non-zero, Pad not negative, axis
attributes in range. Each problem is appended to `problems` with the node's name and op type;
the caller raises them together.
"""
from __future__ import annotations

import numpy as np
from onnx import helper


def _ints(node, a: dict, key: str, problems: list[str], n: int | None = None, low: int | None = None):
    """Attribute `key` as a tuple of ints, checked for type, length `n` and lower bound `low`."""
    if key not in a:
        return None
    v = a[key]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, (int, np.integer)) for x in v):
        problems.append(f"{node.name} ({node.op_type}): attribute {key} must be a list of ints, got {v!r}")
        return None
    v = tuple(int(x) for x in v)
    if n is not None and len(v) != n:
        problems.append(f"{node.name} ({node.op_type}): attribute {key} has {len(v)} values, needs {n}")
        return None
    if low is not None and any(x < low for x in v):
        problems.append(f"{node.name} ({node.op_type}): attribute {key} = {list(v)} must be >= {low}")
        return None
    return v


def _shape(shapes: dict, t: str) -> tuple | None:
    return shapes.get(t)


def check_node_attrs(n, shapes: dict, consts: dict, problems: list[str]) -> None:
    a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
    op = n.op_type
    x = _shape(shapes, n.input[0]) if n.input else None
    if op in ("Conv", "MaxPool", "AveragePool"):
        sp = len(x) - 2 if x else None
        w = consts.get(n.input[1]) if op == "Conv" and len(n.input) > 1 else None
        if op == "Conv" and w is not None:
            sp = w.ndim - 2
            if "kernel_shape" in a and tuple(a["kernel_shape"]) != tuple(w.shape[2:]):
                problems.append(f"{n.name} (Conv): kernel_shape {list(a['kernel_shape'])} disagrees with the "
                                f"weights' spatial shape {list(w.shape[2:])}")
            group = a.get("group", 1)
            if not isinstance(group, int) or group < 1:
                problems.append(f"{n.name} (Conv): group must be >= 1, got {group!r}")
            elif x and len(x) == w.ndim and x[1] > 0 and x[1] != w.shape[1] * group:
                problems.append(f"{n.name} (Conv): input has {x[1]} channels, weights need {w.shape[1] * group}")
            elif w.shape[0] % group:
                problems.append(f"{n.name} (Conv): {w.shape[0]} output channels do not divide into {group} groups")
            if len(n.input) > 2 and n.input[2]:
                b = consts.get(n.input[2])
                if b is not None and (b.ndim != 1 or b.shape[0] != w.shape[0]):
                    problems.append(f"{n.name} (Conv): bias has shape {list(b.shape)}, needs [{w.shape[0]}]")
        if op != "Conv" and "kernel_shape" not in a:
            problems.append(f"{n.name} ({op}): attribute kernel_shape is missing")
        if sp is None:
            return
        k = _ints(n, a, "kernel_shape", problems, sp, 1)
        _ints(n, a, "strides", problems, sp, 1)
        dil = _ints(n, a, "dilations", problems, sp, 1)
        pads = _ints(n, a, "pads", problems, 2 * sp, 0)
        if k is None and w is not None:
            k = tuple(int(v) for v in w.shape[2:])
        if k and x and len(x) == sp + 2 and a.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"):
            p = pads or (0,) * (2 * sp)
            d = dil or (1,) * sp
            for j in range(sp):
                if x[2 + j] > 0 and x[2 + j] + p[j] + p[sp + j] < (k[j] - 1) * d[j] + 1:
                    problems.append(f"{n.name} ({op}): the {k[j]}-wide window (dilation {d[j]}) is larger than the "
                                    f"padded input ({x[2 + j]} + pads {p[j]}, {p[sp + j]}) along spatial axis {j}")
                    break
        auto = a.get("auto_pad", b"NOTSET")
        if auto == b"VALID" and pads and any(pads):
            problems.append(f"{n.name} ({op}): auto_pad=VALID together with non-zero pads {list(pads)}")
        if op != "Conv" and k and pads and any(p >= kk for p, kk in zip(pads, k + k)):
            problems.append(f"{n.name} ({op}): pads {list(pads)} must be smaller than the kernel {list(k)}")
    elif op in ("Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in consts:
        w = consts[n.input[1]]
        if w.ndim != 2:
            problems.append(f"{n.name} ({op}): the weight is {w.ndim}-D, needs 2-D")
        elif op == "Gemm" and len(n.input) > 2 and n.input[2] in consts:
            nout = w.shape[0] if a.get("transB", 0) else w.shape[1]
            b = consts[n.input[2]]
            if b.size not in (1, nout) or b.ndim > 2:
                problems.append(f"{n.name} (Gemm): bias has shape {list(b.shape)}, needs [{nout}]")
    elif op == "ReduceMean" and x:
        axes = a.get("axes")
        if axes is None and len(n.input) > 1 and n.input[1] in consts:
            axes = consts[n.input[1]].reshape(-1).tolist()
        if axes is not None:
            r = len(x)
            if any(not -r <= int(v) < r for v in axes):
                problems.append(f"{n.name} (ReduceMean): axes {list(axes)} out of range for rank {r}")
            elif len({int(v) % r for v in axes}) != len(axes):
                problems.append(f"{n.name} (ReduceMean): axes {list(axes)} repeat an axis")
    elif op == "Slice" and len(n.input) > 4 and n.input[4] in consts:
        if np.any(consts[n.input[4]] == 0):
            problems.append(f"{n.name} (Slice): a step is 0")
    elif op == "Pad" and len(n.input) > 1 and n.input[1] in consts:
        p = consts[n.input[1]]
        if np.any(p < 0):
            problems.append(f"{n.name} (Pad): negative pads {p.tolist()} (cropping) are not supported")
    elif op in ("Concat", "Flatten", "Softmax", "Gather", "Split", "LogSoftmax") and "axis" in a and x:
        r = len(x)
        if not -r <= int(a["axis"]) < r + (op == "Flatten"):
            problems.append(f"{n.name} ({op}): axis {a['axis']} out of range for rank {r}")
