"""Validate a model before any pass touches it: every problem becomes a `ModelError`.

Three stages, in the order `import_onnx` runs them:

1. `check_model_path(path)`: the path is a regular, non-empty file (a directory, FIFO, device or
   empty file gets its own message; a FIFO is never opened).
2. `check_raw(mp)`, on the model as loaded: a non-empty graph, initializers whose byte length fits
   their dims and dtype and that are under the size limit, finite float weights, and
   `onnx.checker.check_model(full_check=True)` (strict shape inference included). A model the
   ONNX checker refuses is refused: its message is quoted in the error. onnxruntime refuses the
   same models, so a model that passes here but fails there would be a bug of this module.
3. `check_normalized(mp, declared)`, after normalization (constants folded, shapes inferred):
   every tensor's static shape under the size limit, dyadic's own attribute checks per op
   against the weights and shapes (kernel_shape vs weights, strides/dilations >= 1, pads >= 0
   and of the right length, auto_pad=VALID without pads, ReduceMean axes in range, Slice steps
   non-zero, Gemm/Conv bias length, ...), and the declared output shapes against the inferred ones.

Size limits (per sample, batch 1): a tensor over `MAX_TENSOR_ELEMENTS` elements (2^24, 64 MiB
as float32) or a weight over `MAX_WEIGHT_ELEMENTS` (2^28, 1 GiB as float32) is refused before it is
allocated.
"""
from __future__ import annotations

import math
import os
import stat

import numpy as np
import onnx
from onnx import TensorProto, helper

from dyadic.core.errors import ModelError
from dyadic.frontend.validate_attrs import check_node_attrs

MAX_TENSOR_ELEMENTS = 1 << 24
MAX_WEIGHT_ELEMENTS = 1 << 28
MAX_MODEL_BYTES = 1 << 31

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}

#: float activations, and integer inputs that stay integers (token ids, attention masks: `dyadic.ops.embedding`)
_INPUT_TYPES = {TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32}


def check_model_path(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelError(f"model file {path!r} does not exist") from None
    except OSError as e:
        raise ModelError(f"model file {path!r} cannot be read: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelError(f"model path {path!r} is a directory, not an ONNX file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or \
            stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"
        raise ModelError(f"model path {path!r} is {kind}, not an ONNX file")
    if st.st_size == 0:
        raise ModelError(f"model file {path!r} is empty (0 bytes)")
    if st.st_size > MAX_MODEL_BYTES:
        raise ModelError(f"model file {path!r} is {st.st_size} bytes, over the protobuf limit of 2 GiB "
                         "(store large weights as ONNX external data)")
    if not os.access(path, os.R_OK):
        raise ModelError(f"model file {path!r} is not readable (permission denied)")


def _where(name: str) -> str:
    return f"initializer {name!r}"


def _expected_bytes(t: TensorProto) -> int | None:
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:
        return None
    return itemsize


def _check_initializer(t: TensorProto, problems: list[str]) -> None:
    if t.data_type in (TensorProto.UNDEFINED,) or t.data_type not in TensorProto.DataType.values():
        problems.append(f"{_where(t.name)} has an invalid data type {t.data_type}")
        return
    if any(d < 0 for d in t.dims):
        problems.append(f"{_where(t.name)} has a negative dimension {list(t.dims)}")
        return
    n = math.prod(t.dims)
    if n > MAX_WEIGHT_ELEMENTS:
        problems.append(f"{_where(t.name)} has {n} elements, over the limit of {MAX_WEIGHT_ELEMENTS} (2^28)")
        return
    if t.data_location == TensorProto.EXTERNAL:
        return  # onnx.load read it (or refused); the size check below runs on the loaded data
    if t.HasField("raw_data") or t.raw_data:
        size = _expected_bytes(t)
        if t.data_type in (TensorProto.STRING,):
            return
        if size is not None and t.data_type not in (TensorProto.INT4, TensorProto.UINT4) \
                and len(t.raw_data) != n * size:
            problems.append(f"{_where(t.name)} holds {len(t.raw_data)} bytes, but dims {list(t.dims)} of "
                            f"{TensorProto.DataType.Name(t.data_type)} need {n * size}")


def _finite_initializers(g: onnx.GraphProto, problems: list[str]) -> None:
    from onnx import numpy_helper

    for t in g.initializer:
        if t.data_type not in _FLOAT_TYPES:
            continue
        try:
            a = numpy_helper.to_array(t)
        except Exception as e:
            problems.append(f"{_where(t.name)} cannot be read ({type(e).__name__}: {e})")
            continue
        # -inf is legal in an additive attention mask (the integer softmax gives it probability 0);
        # an Inf that reaches an activation is refused by the finite-range check after calibration
        bad = int(np.isnan(a).sum()) if a.dtype.kind == "f" else 0
        if bad:
            problems.append(f"{_where(t.name)} has {bad} non-finite value(s) (NaN)")


def _raise(problems: list[str], what: str) -> None:
    if problems:
        shown = "; ".join(dict.fromkeys(problems[:8])) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ModelError(f"{what}: {shown}")


def check_raw(mp: onnx.ModelProto, input_shapes: dict | None = None) -> None:
    """Structure, initializers, finiteness and the ONNX checker, on the model as loaded."""
    _check_text(mp)
    g = mp.graph
    _check_dims(g)
    if not g.node:
        raise ModelError("the model's graph has no nodes")
    if not g.output:
        raise ModelError("the model's graph declares no outputs")
    inits = {t.name for t in g.initializer}
    if not [vi for vi in g.input if vi.name not in inits]:
        raise ModelError("the model's graph has no (non-constant) inputs")
    problems: list[str] = []
    for vi in g.input:
        if vi.name not in inits and vi.type.tensor_type.elem_type not in _INPUT_TYPES:
            et = vi.type.tensor_type.elem_type
            problems.append(f"input {vi.name!r} is {TensorProto.DataType.Name(et) if et in TensorProto.DataType.values() else et}"
                            ", but dyadic compiles models with float32 inputs (or integer token-id/mask inputs)")
    for vi in g.output:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == TensorProto.UNDEFINED:
            problems.append(f"output {vi.name!r} declares no element type (UNDEFINED)")
    _raise(problems, "the model's inputs or outputs are not usable")
    for t in g.initializer:
        _check_initializer(t, problems)
    _raise(problems, "the model's weights are malformed")
    _finite_initializers(g, problems)
    for n in g.node:  # Constant nodes hold weights too
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    _check_initializer(a.t, problems)
                elif a.type == onnx.AttributeProto.FLOAT and not math.isfinite(a.f):
                    problems.append(f"Constant {n.name or n.output[0]!r}: value_float is not finite")
                elif a.type == onnx.AttributeProto.FLOATS and not all(math.isfinite(v) for v in a.floats):
                    problems.append(f"Constant {n.name or n.output[0]!r}: value_floats are not finite")
    _raise(problems, "the model's weights are not usable")
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.FLOAT and not math.isfinite(a.f) and n.op_type != "Constant":
                problems.append(f"{n.name or n.output[0]} ({n.op_type}): attribute {a.name} is {a.f}")
    _raise(problems, "the model has non-finite attributes")
    _nodes(g, {vi.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
               for vi in list(g.input) + list(g.value_info) if vi.type.tensor_type.HasField("shape")}, problems)
    _checker(mp, input_shapes or {})


def _checker(mp: onnx.ModelProto, input_shapes: dict) -> None:
    """`onnx.checker.check_model(full_check=True)`. Graph outputs declared without a shape (legal for
    onnxruntime, and what many exporters write) get the inferred one first, on a copy: the checker
    otherwise refuses them ("Field 'shape' of 'type' is required")."""
    from onnx import shape_inference

    m = mp
    inits = {t.name for t in mp.graph.initializer}
    shapeless = [vi.name for vi in mp.graph.input if vi.name not in inits and not vi.type.tensor_type.HasField("shape")]
    for name in shapeless:
        if name not in input_shapes:
            raise ModelError(f"input {name!r} declares no shape: give it with --input-shape {name}:D0,D1,...")
    if shapeless:
        m = onnx.ModelProto()  # the pinned shapes (--input-shape) where the file declares none, on a copy
        m.CopyFrom(mp)
        for vi in m.graph.input:
            if vi.name in shapeless:
                for d in input_shapes[vi.name]:
                    vi.type.tensor_type.shape.dim.add().dim_value = int(d)
    vis = list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info)
    if any(d.HasField("dim_value") and d.dim_value < 0 for vi in vis for d in vi.type.tensor_type.shape.dim):
        src, m = m, onnx.ModelProto()  # -1 dims (an exporter's "dynamic") as symbolic dims, on a copy
        m.CopyFrom(src)
        for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value < 0:
                    d.dim_param = "dynamic"
    if any(not o.type.tensor_type.HasField("shape") for o in m.graph.output):
        try:
            m = shape_inference.infer_shapes(m)
        except Exception as e:
            raise ModelError(f"ONNX shape inference refuses the model: {' '.join(str(e).split())[:1200]}") from None
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:  # ValidationError, InferenceError, and protobuf errors of a damaged model
        msg = " ".join(str(e).split())
        raise ModelError(f"the ONNX checker refuses the model: {msg[:1200]}") from None


def _check_text(mp: onnx.ModelProto) -> None:
    """Every name in the model is valid UTF-8 (protobuf raises UnicodeDecodeError on first read)."""
    def enc(v):
        if isinstance(v, bytes):  # upb hands back bytes for a string field that is not UTF-8
            raise UnicodeDecodeError("utf-8", v, 0, len(v), "invalid UTF-8 in a string field")
        if isinstance(v, str):
            v.encode("utf-8")
        elif isinstance(v, (list, tuple)):
            for x in v:
                enc(x)

    try:
        g = mp.graph
        enc([mp.producer_name, mp.domain, g.name, [o.domain for o in mp.opset_import],
             [(p.key, p.value) for p in mp.metadata_props]])
        for n in g.node:
            enc([n.name, n.op_type, n.domain, list(n.input), list(n.output), [a.name for a in n.attribute],
                 [a.ref_attr_name for a in n.attribute]])
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            enc([vi.name, [d.dim_param for d in vi.type.tensor_type.shape.dim]])
        for t in g.initializer:
            enc([t.name, [(e.key, e.value) for e in t.external_data]])
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise ModelError("the model holds names that are not valid UTF-8 text: the file is damaged") from None


def _check_dims(g: onnx.GraphProto) -> None:
    """No negative dims in declared shapes (onnx's C++ shape inference asserts on some of them)."""
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value")]
        if any(d < -1 for d in dims):  # -1 is how some exporters spell a dynamic dim
            raise ModelError(f"tensor {vi.name!r} declares a negative dimension {dims}")
    for vi in g.input:
        if any(d.HasField("dim_value") and d.dim_value == 0 for d in vi.type.tensor_type.shape.dim):
            raise ModelError(f"input {vi.name!r} declares an empty (0) dimension")
    for t in g.initializer:
        if any(d < 0 for d in t.dims):
            raise ModelError(f"initializer {t.name!r} has a negative dimension {list(t.dims)}")


def _nodes(g: onnx.GraphProto, shapes: dict, problems: list[str], consts: dict | None = None) -> None:
    """dyadic's attribute checks of every node (see the module docstring); raises on any problem."""
    from onnx import numpy_helper

    if consts is None:
        consts = {}
        for t in g.initializer:
            try:
                consts[t.name] = numpy_helper.to_array(t)
            except Exception:  # noqa: BLE001  (reported by the initializer checks)
                pass
    for i, n in enumerate(g.node):
        try:
            if not n.name:
                n = _named(n, i)
            check_node_attrs(n, shapes, consts, problems)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
            problems.append(f"{n.name} ({n.op_type}): malformed ({type(e).__name__}: {e})")
    _raise(problems, "the model cannot be compiled")


def _named(n, i: int):
    m = onnx.NodeProto()
    m.CopyFrom(n)
    m.name = f"{n.op_type}_{i}"
    return m


def check_normalized(mp: onnx.ModelProto, declared_outputs: dict[str, tuple] | None = None) -> None:
    """Size guard, per-op attribute checks and declared-vs-inferred output shapes (see the module
    docstring), on the normalized model. Raises ModelError listing the problems."""
    from onnx import numpy_helper

    g = mp.graph
    problems: list[str] = []
    shapes: dict[str, tuple] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        shapes[vi.name] = dims
        if any(d == 0 for d in dims):
            problems.append(f"tensor {vi.name!r} has an empty dimension {list(dims)}")
            continue
        n = math.prod(max(d, 1) for d in dims[1:]) if dims else 1
        if n > MAX_TENSOR_ELEMENTS:
            problems.append(f"tensor {vi.name!r} would have {n} elements per sample (shape {list(dims)}), over "
                            f"the limit of {MAX_TENSOR_ELEMENTS} (2^24)")
    _raise(problems, "the model is too large or has empty tensors")
    consts = {}
    for t in g.initializer:
        try:
            consts[t.name] = numpy_helper.to_array(t)
        except Exception as e:
            problems.append(f"{_where(t.name)} cannot be read ({type(e).__name__}: {e})")
    for name, v in consts.items():
        shapes.setdefault(name, tuple(v.shape))
        if v.dtype.kind == "f" and np.isnan(v).any():
            problems.append(f"{_where(name)} (folded) has non-finite values (NaN)")
    _nodes(g, shapes, problems, consts)
    produced = {o for n in g.node for o in n.output}
    inputs = {vi.name for vi in g.input}
    for o in g.output:
        if o.name not in produced:
            problems.append(f"output {o.name!r} is " + ("a graph input" if o.name in inputs else
                            "a constant (it does not depend on the model's input)" if o.name in consts else
                            "not produced by any node"))
    _raise(problems, "the model cannot be compiled")
    for name, want in (declared_outputs or {}).items():
        got = shapes.get(name)
        if got is None or not want:
            continue
        if len(got) != len(want) or any(w > 0 and g_ > 0 and w != g_ for w, g_ in zip(want[1:], got[1:])):
            problems.append(f"output {name!r} is declared {list(want)} but computes {list(got)}")
    _raise(problems, "the model's declared output shapes are wrong")


def declared_outputs(mp: onnx.ModelProto) -> dict[str, tuple]:
    """The static output dims the file declares (-1 for symbolic ones), before normalization."""
    out = {}
    for vi in mp.graph.output:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    return out


def check_graph(graph):
    """The imported float graph is wired: every node reads the graph input or an earlier node's output,
    every graph output is computed, and the model's input is used. Returns the graph."""
    avail = set(graph.inputs)
    problems = []
    for n in graph.nodes:
        missing = [t for t in n.inputs if t not in avail]
        if missing:
            problems.append(f"{n.name} ({n.op}) reads {missing}, which no earlier node computes from the input")
        avail.update(n.outputs)
    problems += [f"output {o!r} is not computed from the model's input" for o in graph.outputs if o not in avail
                 or o in graph.inputs]
    if not graph.nodes or not graph.outputs:
        problems.append("nothing is left to compute (no nodes or no outputs)")
    used = {t for n in graph.nodes for t in n.inputs}
    problems += [f"input {t!r} is not used by any node" for t in graph.inputs if t not in used]
    _raise(problems, "the model cannot be compiled")
    return graph
