"""Graph normalization: turn the ONNX file a user exported into the plain graph the importer reads.

Exporters (torch.onnx, paddle2onnx, the model zoo's converters) write the same network in many
spellings. Before the unsupported-op scan, this module rewrites a model, in this order:

1. **Opset**: 7..12 is upgraded to 13 with `onnx.version_converter` (the converter is the ONNX
   project's own; its adapters know each op's changes). Above 21, or below 7, is an error.
2. **Initializers listed as graph inputs** (IR < 4 style) are constants, not inputs (the IR version
   is raised to 8, which allows that).
3. **Input shapes**: `--input-shape NAME:D0,D1,...` pins an input's dims. A dynamic batch dim that
   is not pinned stays dynamic in the library; for folding, it is taken as 1 (the importer checks
   that no reshape mixes the batch with other dims, so a value computed at batch 1 holds for any
   batch). Any other dynamic dim must be pinned: the error names the flag.
4. **Constant folding** to a fixpoint: Constant nodes become initializers; `Shape`/`Size` of a
   tensor whose inferred shape is static become constants; every node whose inputs are all
   constants is evaluated with `onnx.reference` (the ONNX project's executable specification, so
   the folded value is by definition the op's meaning) and replaced by its value. This folds
   ConstantOfShape-built weights, Cast, and the Shape -> Gather -> Unsqueeze -> Concat -> Reshape
   chains exporters emit for flatten.
5. **Identity and Dropout** (inference: the identity) are removed; **n-ary Sum, Max, Min, Mean**
   become chains of binary ops; dead nodes and unused initializers are dropped.
6. **Node names** are made unique and non-empty (later passes key per-layer choices by name).

Why `onnx.reference` and not onnxruntime's offline optimizer: the ORT optimizer also fuses and
rewrites ops (Conv+BN, Gelu) into forms that depend on its version and that leave dynamic shapes
unfolded; the reference evaluator only evaluates what is already constant, which is exactly this
step's job, and it ships with the `onnx` package the importer already uses.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from dyadic.core.errors import ModelError

OPSET_MIN, OPSET_UPGRADE, OPSET_MAX = 7, 13, 21
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}
_NARY = {"Sum": "Add", "Max": "Max", "Min": "Min"}  # Sum of two is an Add too
#: folding a node whose output would exceed this many elements is skipped (it stays a node)
FOLD_LIMIT = 1 << 27


def opset_of(mp: onnx.ModelProto) -> int | None:
    return next((o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")), None)


def upgrade_opset(mp: onnx.ModelProto) -> onnx.ModelProto:
    opset = opset_of(mp)
    if opset is None or not OPSET_MIN <= opset <= OPSET_MAX:
        raise ModelError(f"model opset {opset} is outside the supported range {OPSET_MIN}..{OPSET_MAX}")
    if opset >= OPSET_UPGRADE:
        return mp
    try:
        from onnx import version_converter

        return version_converter.convert_version(mp, OPSET_UPGRADE)
    except Exception as e:
        raise ModelError(f"upgrading the model from opset {opset} to {OPSET_UPGRADE} with "
                         f"onnx.version_converter failed: {type(e).__name__}: {e}") from None


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def pin_inputs(mp: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Fix each real input's dims: pinned ones from `shapes`, a dynamic batch to 1, others an error."""
    g = mp.graph
    inits = {t.name for t in g.initializer}
    real = [vi for vi in g.input if vi.name not in inits]
    unknown = sorted(set(shapes) - {vi.name for vi in real})
    if unknown:
        raise ModelError(f"--input-shape names {unknown}, but the model's inputs are {[vi.name for vi in real]}")
    problems = []
    for vi in real:
        dims = _dims(vi)
        if vi.name in shapes:
            want = list(shapes[vi.name])
            if len(want) != len(dims) or any(isinstance(d, int) and d > 0 and d != w for d, w in zip(dims, want)):
                problems.append(f"--input-shape {vi.name}:{','.join(map(str, want))} does not fit the declared "
                                f"shape {[d if isinstance(d, int) and d > 0 else '?' for d in dims]}")
                continue
            dims = want
        if not dims and vi.type.tensor_type.elem_type:
            problems.append(f"input {vi.name!r} declares no shape: give it with --input-shape {vi.name}:D0,D1,...")
            continue
        fixed = []
        for k, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                fixed.append(d)
            elif k == 0:
                fixed.append(1)
            else:
                def slot(j, x):  # the exporter's name for a dim where it is short (N, H, W), else D<j>
                    if isinstance(x, int) and x > 0:
                        return str(x)
                    return x if isinstance(x, str) and x.isidentifier() and len(x) <= 8 else "N" if j == 0 else f"D{j}"
                free = [slot(j, x) for j, x in enumerate(dims) if j and not (isinstance(x, int) and x > 0)]
                problems.append(f"input {vi.name!r} has a dynamic dimension {k} ({d or '?'}), and only the batch "
                                f"dimension may be dynamic: pin it with --input-shape {vi.name}:"
                                + ",".join(slot(j, x) for j, x in enumerate(dims))
                                + f" ({', '.join(free)}: the size{'s' if len(free) > 1 else ''} to compile for)")
                break
        shp = vi.type.tensor_type.shape
        del shp.dim[:]
        for d in fixed:
            shp.dim.add().dim_value = d
    if problems:
        raise ModelError("; ".join(dict.fromkeys(problems)))
    return mp


def _infer(mp: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference (with data propagation) on a copy whose large initializers are
    replaced by typed graph inputs: inference needs their shapes, not their bytes, and serializing
    hundreds of MB of weights each folding round would dominate the import."""
    g = mp.graph
    light = onnx.ModelProto()
    small = sum(int(np.prod(t.dims, dtype=np.int64)) for t in g.initializer) < (1 << 18)
    light.CopyFrom(mp) if small else _strip_weights(mp, light)
    del light.graph.value_info[:]  # stale after folding; inference writes them anew
    try:
        inferred = shape_inference.infer_shapes(light, data_prop=True)
    except Exception as e:
        raise ModelError(f"ONNX shape inference failed: {type(e).__name__}: {e}") from None
    del g.value_info[:]
    g.value_info.extend(inferred.graph.value_info)
    del g.output[:]
    g.output.extend(inferred.graph.output)
    return mp


def _strip_weights(mp: onnx.ModelProto, light: onnx.ModelProto) -> None:
    big = {t.name for t in mp.graph.initializer if np.prod(t.dims, dtype=np.int64) > 64}
    light.CopyFrom(onnx.ModelProto(ir_version=mp.ir_version, opset_import=mp.opset_import,
                                   producer_name=mp.producer_name))
    light.graph.CopyFrom(onnx.GraphProto(name=mp.graph.name, node=mp.graph.node, input=mp.graph.input,
                                         output=mp.graph.output,
                                         initializer=[t for t in mp.graph.initializer if t.name not in big]))
    for t in mp.graph.initializer:
        if t.name in big:
            light.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))


def _static_shapes(mp: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    g = mp.graph
    out = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        d = _dims(vi)
        if all(isinstance(x, int) and x > 0 for x in d) or d == []:
            out[vi.name] = tuple(d)
    return out


def _evaluate(node: onnx.NodeProto, args: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if a is not None else "" for i, a in enumerate(args)]
    n = helper.make_node(node.op_type, names, list(node.output), domain=node.domain)
    n.attribute.extend(node.attribute)
    feeds = {nm: a for nm, a in zip(names, args) if nm}
    return list(ReferenceEvaluator(n).run(None, feeds))


def _fold_once(mp: onnx.ModelProto) -> bool:
    g = mp.graph
    consts = {t.name: t for t in g.initializer}
    shapes = _static_shapes(mp)
    opset = opset_of(mp)
    keep, changed = [], False
    for n in g.node:
        vals = None
        if n.op_type == "Constant" and n.output:
            a = n.attribute[0]
            if a.name == "value":  # moved as it is: no numpy round trip for large weights
                t = g.initializer.add()
                t.CopyFrom(a.t)
                t.name = n.output[0]
                consts[t.name] = t
                changed = True
                continue
            else:  # value_float(s)/value_int(s)/...: let the reference evaluator spell it
                vals = _evaluate(n, [], opset)
        elif n.op_type in ("Shape", "Size") and n.input[0] in shapes and n.domain in ("", "ai.onnx"):
            shp = np.array(shapes[n.input[0]], np.int64)
            if n.op_type == "Size":
                vals = [np.array(np.prod(shp), np.int64)]
            else:
                attrs = {a.name: a.i for a in n.attribute}
                start, end = attrs.get("start", 0), attrs.get("end", len(shp))
                vals = [shp[start:end] if "end" in attrs else shp[start:]]
        elif n.domain in ("", "ai.onnx") and n.op_type not in _NONDETERMINISTIC and n.input \
                and all((not i) or i in consts for i in n.input) and not any(a.type == onnx.AttributeProto.GRAPH
                                                                             for a in n.attribute):
            try:
                if any(np.prod(shapes[o], dtype=np.float64) > FOLD_LIMIT for o in n.output if o in shapes):
                    raise MemoryError  # known too large before it is computed: never allocated
                vals = _evaluate(n, [numpy_helper.to_array(consts[i]) if i else None for i in n.input], opset)
            except Exception:
                vals = None  # left as a node: the importer reports it if it is not supported
            if vals is not None and any(np.asarray(v).size > FOLD_LIMIT for v in vals):
                vals = None
        if vals is None:
            keep.append(n)
            continue
        for name, v in zip(n.output, vals):
            if name:
                t = numpy_helper.from_array(np.asarray(v), name)
                g.initializer.append(t)
                consts[name] = t
        changed = True
    if changed:
        del g.node[:]
        g.node.extend(keep)
    return changed


def _bypass_identities(mp: onnx.ModelProto) -> None:
    g = mp.graph
    outputs = {o.name for o in g.output}
    used = {i for n in g.node for i in n.input} | outputs
    rename: dict[str, str] = {}
    keep = []
    for n in g.node:
        ins = [rename.get(i, i) for i in n.input]
        del n.input[:]
        n.input.extend(ins)
        if n.op_type in ("Identity", "Dropout") and n.input and n.output[0] not in outputs \
                and not any(o in used for o in n.output[1:]):
            rename[n.output[0]] = n.input[0]
            continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)


def _split_nary(mp: onnx.ModelProto) -> None:
    g = mp.graph
    out = []
    for n in g.node:
        if n.op_type in _NARY and len(n.input) == 1:
            out.append(helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name))
            continue
        if not (n.op_type in ("Mean", "Sum") or (n.op_type in _NARY and len(n.input) > 2)):
            out.append(n)
            continue
        op = _NARY.get(n.op_type, "Add")
        acc = n.input[0]
        for k, x in enumerate(n.input[1:]):
            last = k == len(n.input) - 2 and n.op_type != "Mean"
            y = n.output[0] if last else f"{n.output[0]}/{op.lower()}{k}"
            out.append(helper.make_node(op, [acc, x], [y], name=f"{n.name or n.output[0]}/{op.lower()}{k}"))
            acc = y
        if n.op_type == "Mean":
            c = f"{n.output[0]}/count"
            g.initializer.append(numpy_helper.from_array(np.array(len(n.input), np.float32), c))
            out.append(helper.make_node("Div", [acc, c], [n.output[0]], name=f"{n.name or n.output[0]}/mean"))
    del g.node[:]
    g.node.extend(out)


def _drop_dead(mp: onnx.ModelProto) -> None:
    g = mp.graph
    live = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in live for o in n.output):
            keep.append(n)
            live.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [t for t in g.initializer if t.name in live]
    del g.initializer[:]
    g.initializer.extend(inits)


def _unique_names(mp: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, n in enumerate(mp.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        n.name = name
        seen.add(name)


def normalize(mp: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> onnx.ModelProto:
    """The normalized copy of `mp` (see the module docstring); raises ModelError naming each problem."""
    out = onnx.ModelProto()
    out.CopyFrom(mp)
    out = upgrade_opset(out)
    g = out.graph
    inits = {t.name for t in g.initializer}
    real = [vi for vi in g.input if vi.name not in inits]
    del g.input[:]
    g.input.extend(real)
    out.ir_version = max(out.ir_version, 8)  # IR >= 4: initializers need not be graph inputs
    pin_inputs(out, dict(input_shapes or {}))
    _split_nary(out)
    for _ in range(32):
        _bypass_identities(out)
        out = _infer(out)
        if not _fold_once(out):
            break
    _drop_dead(out)
    _unique_names(out)
    return _infer(out)
