"""ONNX -> float `Graph`. The only module that reads ONNX protobufs.

It loads the model, normalizes it (`dyadic.frontend.normalize`: opset upgrade, pinned input shapes,
constant folding, Identity/Dropout removal), and scans the whole graph before converting anything:
every unsupported op, unsupported attribute or bad operand is collected and reported in one
`ModelError`, grouped by op type with a count and the first node names. The input's batch dimension
may be dynamic; other dynamic dimensions must be pinned (`input_shapes`, the CLI's --input-shape).

Ops come from two places: the op table (`dyadic.ops.IMPORTERS`, one rule per ONNX op type) and the
older rules below (`SUPPORTED`); the table wins where both name an op.

Constant operands (weights, biases, Pad/Slice/Clip/ReduceMean operands) become `Node.params` or
attributes, so nodes only read activations. Identity and Dropout (inference) are removed.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from dyadic.core.errors import ModelError
from dyadic.core.graph import Graph, Node
from dyadic.frontend import validate
from dyadic.frontend.normalize import normalize
from dyadic.ops import IMPORTERS, ImportContext

OPSET_RANGE = (7, 21)
#: the older rules of this module, op type -> how it runs (the README's op table lists these too)
LEGACY_DOCS = {
    "Conv": "int8/int4 per-channel weights, int32 accumulation, dyadic requant (dyadic's CPU kernels)",
    "BatchNormalization": "folded into the conv/dense before it, else a per-channel dyadic affine",
    "Relu": "clip bounds of the producer's requant", "Clip": "clip bounds of the producer's requant",
    "Gemm": "int8 dense with constant weights (transA=0)", "MatMul": "int8 dense with constant weights",
    "MaxPool": "integer max (ceil_mode as end padding)", "AveragePool": "integer window sum + dyadic divide",
    "GlobalAveragePool": "integer sum + dyadic divide", "ReduceMean": "integer sum over H, W + dyadic divide",
    "Flatten": "integer reshape", "Reshape": "integer reshape (batch axis fixed)",
    "Concat": "scales aligned by dyadic requants, any non-batch axis", "Pad": "constant 0 padding",
    "Slice": "integer slice with steps", "Identity": "removed", "Dropout": "removed (inference)",
}
SUPPORTED = frozenset(LEGACY_DOCS) | {"Constant"}


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = os.fspath(model)
    validate.check_model_path(path)
    try:
        return onnx.load(path)
    except Exception as e:  # protobuf raises several unrelated types
        raise ModelError(f"{path!r} is not a readable ONNX model ({type(e).__name__}: {e})") from None


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _unsupported_reason(node, attrs, consts) -> str | None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return f"domain {node.domain!r}"
    if op not in SUPPORTED:
        return "op not supported"
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        return "auto_pad SAME_* (export with explicit pads)"
    if op == "AveragePool" and attrs.get("ceil_mode", 0) and attrs.get("count_include_pad", 0):
        return "ceil_mode=1 with count_include_pad=1"
    if op == "MaxPool" and (any(d != 1 for d in attrs.get("dilations", [])) or len(node.output) > 1):
        return "dilations or indices output"
    if op == "Pad":
        if attrs.get("mode", b"constant") != b"constant":
            return "non-constant pad mode"
        if len(node.input) > 2 and node.input[2] and np.any(consts.get(node.input[2], 1) != 0):
            return "non-zero pad value"
    if op == "Gemm" and attrs.get("transA", 0):
        return "transA=1"
    needs_const = {"Conv": node.input[1:], "Gemm": node.input[1:], "MatMul": node.input[1:],
                   "BatchNormalization": node.input[1:], "Pad": node.input[1:],
                   "Slice": node.input[1:], "Clip": node.input[1:], "Reshape": node.input[1:],
                   "ReduceMean": node.input[1:]}.get(op, ())
    if any(i and i not in consts for i in needs_const):
        return "operand that is not a constant initializer"
    return None


def _dims(vi) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)


def _group(problems: list[tuple[str, str, str]]) -> str:
    """'OpType xN (first, node, names): reason' lines, grouped, under ~2,000 characters."""
    groups: dict[tuple[str, str], list[str]] = {}
    for op, reason, name in problems:
        groups.setdefault((op, reason), []).append(name)
    lines = []
    for (op, reason), names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        lines.append(f"{op} x{len(names)} ({shown}): {reason}")
    text = "; ".join(lines[:12]) + (f"; and {len(lines) - 12} more groups" if len(lines) > 12 else "")
    return text if len(text) <= 1900 else text[:1900] + " ..."


def import_onnx(model, input_shapes: dict[str, tuple[int, ...]] | None = None,
                static_batch: bool | None = None) -> Graph:
    """Read an ONNX model (path or ModelProto) into a float Graph, or raise ModelError listing every problem.
    `input_shapes` pins input dims ({name: dims}); a dynamic batch dim may stay dynamic.

    `static_batch`: None (default) imports with a free batch axis (one library for every batch size)
    and, only if the graph moves or mixes the batch axis (nn.MultiheadAttention's [T, N, C] layout,
    window partitions) and the file declares (or `input_shapes` pins) a static batch, imports it
    again with every shape static at that batch, where axis 0 is an axis like any other
    (`Graph.meta["static_batch"]`; the library then runs that batch size only); True/False force
    one or the other."""
    mp = _load(model)
    opset = next((o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise ModelError(f"model opset {opset} is outside the supported range "
                         f"{OPSET_RANGE[0]}..{OPSET_RANGE[1]}")
    inits = {t.name for t in mp.graph.initializer}
    declared_static = all(vi.name in (input_shapes or {}) or (vi.type.tensor_type.shape.dim and
                                                               vi.type.tensor_type.shape.dim[0].dim_value > 0)
                          for vi in mp.graph.input if vi.name not in inits)
    validate.check_raw(mp, input_shapes)
    declared = validate.declared_outputs(mp)
    mp = normalize(mp, input_shapes)
    validate.check_normalized(mp, declared)
    if static_batch:
        return _convert_graph(mp, opset, True)
    try:
        return _convert_graph(mp, opset, False)
    except _BatchAxisError as e:
        if static_batch is False or not declared_static:
            hint = "" if static_batch is False else (" (the graph moves the batch axis: with a static batch, "
                                                     "--input-shape NAME:1,..., it compiles for that batch)")
            raise ModelError(str(e) + hint) from None
        try:
            return _convert_graph(mp, opset, True)
        except ModelError as e2:
            raise ModelError(f"with the batch axis fixed (the graph moves it: {str(e).split(': ', 1)[1][:300]}): "
                             + str(e2)) from None


class _BatchAxisError(ModelError):
    """An import error that a static batch would avoid (an op moves or mixes the batch axis)."""


def _is_batch_problem(reason: str) -> bool:
    return "batch" in reason and ("axis" in reason or "dimension" in reason)


def _convert_graph(mp: onnx.ModelProto, opset: int, static: bool) -> Graph:
    g = mp.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    shapes = {vi.name: _dims(vi) for vi in list(g.value_info) + list(g.input) + list(g.output)}
    for name, v in consts.items():
        shapes.setdefault(name, tuple(v.shape))
    inputs = tuple(vi.name for vi in g.input if vi.name not in consts)
    problems: list[tuple[str, str, str]] = []
    nodes: list[Node] = []
    rename: dict[str, str] = {}
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        ins = [rename.get(x, x) for x in n.input]
        if n.op_type in ("Identity", "Dropout") and n.domain in ("", "ai.onnx"):
            rename[n.output[0]] = ins[0]
            continue
        a = _attrs(n)
        try:
            if n.domain in ("", "ai.onnx") and n.op_type in IMPORTERS:
                ctx = ImportContext(n.op_type, name, ins, list(n.output), a, consts, shapes, static)
                nodes.extend(IMPORTERS[n.op_type].convert(ctx))
                continue
            reason = _unsupported_reason(n, a, consts)
            if reason:
                problems.append((n.op_type, reason, name))
                continue
            nodes.append(_convert(n, name, ins, consts, shapes, static))
        except ModelError as e:
            problems.append((n.op_type, str(e).removeprefix(f"{name} ({n.op_type}): "), name))
        except (KeyError, IndexError, ValueError, TypeError, ZeroDivisionError, AttributeError) as e:
            problems.append((n.op_type, f"malformed node ({type(e).__name__}: {e})", name))
    if problems:
        err = _BatchAxisError if not static and any(_is_batch_problem(r) for _, r, _ in problems) else ModelError
        raise err("the model cannot be compiled: " + _group(problems) + ". Supported ONNX ops: "
                         + ", ".join(sorted((SUPPORTED | set(IMPORTERS)) - {"Constant"})) + ".")
    if static:  # a rank-2 product of a static graph may have rows that are not the batch: not `dense`
        batch = shapes[inputs[0]][0] if inputs else 1
        nodes = [Node("linear", n.name, n.inputs, n.outputs, n.attrs, n.params)
                 if n.op == "dense" and shapes[n.inputs[0]][0] != batch else n for n in nodes]
    else:
        for name in set(shapes):
            shapes[name] = (-1,) + tuple(shapes[name][1:]) if shapes[name] else shapes[name]
    outputs = tuple(rename.get(o.name, o.name) for o in g.output)
    missing = [o for n in nodes for o in n.outputs if o not in shapes or not shapes[o]]
    if missing:
        raise ModelError(f"shape inference left tensors without a static shape: {missing[:10]}")
    dtypes = {t: "float32" for t in shapes}
    int_types = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
                 onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32}
    int_inputs = tuple(vi.name for vi in g.input if vi.name in inputs and vi.type.tensor_type.elem_type in int_types)
    return validate.check_graph(Graph(nodes=tuple(nodes), inputs=inputs, outputs=outputs, shapes=shapes,
                                      dtypes=dtypes, meta={"opset": opset, "producer": mp.producer_name,
                                                           "int_inputs": int_inputs,
                                                           **({"static_batch": True} if static else {})}))


def _ceil_pads(in_hw, out_hw, k, strides, pads) -> tuple:
    """ceil_mode=1 as extra end padding: enough that the floor formula gives the inferred output
    size (padding never wins a max; average pools count only real inputs, see _unsupported_reason)."""
    n = len(k)
    extra = [max(0, (o - 1) * s + kk - (i + pads[d] + pads[n + d])) for d, (i, o, kk, s)
             in enumerate(zip(in_hw, out_hw, k, strides))]
    return tuple(pads[:n]) + tuple(pads[n + d] + extra[d] for d in range(n))


def _pair(v, default):
    return tuple(int(x) for x in v) if v else default


def _convert(n, name, ins, consts, shapes, static: bool = False) -> Node:
    a = _attrs(n)
    op, out = n.op_type, (n.output[0],)
    rank = len(shapes.get(ins[0], ())) if ins else 0
    if op in ("Conv", "MaxPool", "AveragePool"):
        k = tuple(a["kernel_shape"]) if "kernel_shape" in a else tuple(consts[ins[1]].shape[2:])
        pads = _pair(a.get("pads"), (0,) * 2 * len(k))
        strides = _pair(a.get("strides"), (1,) * len(k))
        if op != "Conv" and a.get("ceil_mode", 0):
            pads = _ceil_pads(shapes[ins[0]][2:], shapes[out[0]][2:], k, strides, pads)
        attrs = dict(kernel=k, strides=strides, pads=pads)
        if op == "Conv":
            attrs.update(dilations=_pair(a.get("dilations"), (1,) * len(k)), group=int(a.get("group", 1)))
            w = consts[ins[1]].astype(np.float32)
            b = consts[ins[2]].astype(np.float32) if len(ins) > 2 and ins[2] else np.zeros(w.shape[0], np.float32)
            return Node("conv", name, (ins[0],), out, attrs, {"W": w, "B": b})
        if op == "MaxPool":
            return Node("maxpool", name, (ins[0],), out, attrs)
        attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
        return Node("avgpool", name, (ins[0],), out, attrs)
    if op == "BatchNormalization":
        p = {k: consts[ins[j]].astype(np.float32) for j, k in enumerate(("gamma", "beta", "mean", "var"), 1)}
        return Node("batchnorm", name, (ins[0],), out, {"eps": float(a.get("epsilon", 1e-5))}, p)
    if op == "Relu":
        return Node("relu", name, (ins[0],), out)
    if op == "Clip":
        lo = float(consts[ins[1]]) if len(ins) > 1 and ins[1] else -np.inf
        hi = float(consts[ins[2]]) if len(ins) > 2 and ins[2] else np.inf
        return Node("clip", name, (ins[0],), out, {"lo": lo, "hi": hi})
    if op == "Add":
        return Node("add", name, (ins[0], ins[1]), out)
    if op in ("Gemm", "MatMul"):
        w = consts[ins[1]].astype(np.float32)
        if op == "MatMul" or not a.get("transB", 0):
            w = w.T
        w = w * float(a.get("alpha", 1.0))
        b = np.zeros(w.shape[0], np.float32)
        if op == "Gemm" and len(ins) > 2 and ins[2]:
            b = np.broadcast_to(consts[ins[2]].astype(np.float32) * float(a.get("beta", 1.0)), b.shape).copy()
        return Node("dense", name, (ins[0],), out, {}, {"W": np.ascontiguousarray(w), "B": b})
    if op in ("GlobalAveragePool", "ReduceMean"):
        keep = int(a.get("keepdims", 1)) if op == "ReduceMean" else 1
        axes = a.get("axes") if op == "ReduceMean" and len(ins) == 1 else (consts[ins[1]] if len(ins) > 1 else (2, 3))
        if sorted(int(x) % rank for x in axes) != [2, 3]:
            raise ModelError(f"{name} (ReduceMean): only the mean over H,W (axes 2,3) of NCHW is supported")
        return Node("mean_hw", name, (ins[0],), out, {"keepdims": keep})
    if op in ("Flatten", "Reshape"):
        if not static and shapes.get(out[0], (-1,))[0] != shapes.get(ins[0], (-1,))[0]:
            raise ModelError(f"{name} ({op}): reshapes that change the batch dimension are not supported")
        return Node("reshape", name, (ins[0],), out)
    if op == "Concat":
        axis = int(a["axis"]) % rank
        if axis == 0 and not static:
            raise ModelError(f"{name} (Concat): concatenation along the batch axis is not supported")
        return Node("concat", name, tuple(ins), out, {"axis": axis})
    if op == "Pad":
        pads = [int(p) for p in consts[ins[1]]]
        axes = [int(x) % rank for x in consts[ins[3]]] if len(ins) > 3 and ins[3] else list(range(rank))
        full = [0] * (2 * rank)
        for j, ax in enumerate(axes):
            full[ax], full[rank + ax] = pads[j], pads[len(axes) + j]
        if (full[0] or full[rank]) and not static:
            raise ModelError(f"{name} (Pad): padding the batch dimension is not supported")
        return Node("pad", name, (ins[0],), out, {"pads": tuple((full[d], full[rank + d]) for d in range(rank))})
    if op == "Slice":
        starts, ends = consts[ins[1]], consts[ins[2]]
        axes = consts[ins[3]] if len(ins) > 3 and ins[3] else np.arange(len(starts))
        steps = consts[ins[4]] if len(ins) > 4 and ins[4] else np.ones(len(starts), np.int64)
        dims = shapes[ins[0]]
        spec = []
        for s, e, ax, st in zip(starts, ends, axes, steps):
            ax = int(ax) % rank
            if ax == 0 and not static:
                raise ModelError(f"{name} (Slice): slicing the batch dimension is not supported")
            s, e, st = slice(int(s), int(e), int(st)).indices(dims[ax])
            spec.append((ax, s, e, st))
        return Node("slice", name, (ins[0],), out, {"spec": tuple(spec)})
    raise AssertionError(op)
