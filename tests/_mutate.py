"""Seeded ONNX model mutations for the fuzz test (`tests/test_fuzz.py`) and `benchmarks/fuzz.py`.

`mutant(seed)` returns (kind, file bytes, calibration override or None): a byte-level damage
(flips, truncation, garbage) or a structured one (dims, dtypes, attributes, graph wiring, declared
shapes, opset, external data, non-finite weights or calibration data) of one of two small base
models. `run_one(data, calib, workdir)` writes the bytes to a file and runs import and the graph
passes (not the TVM build): its outcome is "ok", "error:<DyadicError subclass>" or
"bug:<other exception>: message".
"""
from __future__ import annotations

import os
import random

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _base_models() -> list[onnx.ModelProto]:
    r = np.random.default_rng(0)

    def w(*s):
        return (r.standard_normal(s) * 0.3).astype(np.float32)

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 10])
    a = helper.make_graph([
        helper.make_node("Conv", ["input", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3],
                         strides=[1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["bn"], name="bn1"),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="add1"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flat", axis=1),
        helper.make_node("Gemm", ["f", "Wf", "Bf"], ["out"], name="fc", transB=1),
    ], "a", [x], [y], [numpy_helper.from_array(v, k) for k, v in {
        "W1": w(8, 3, 3, 3), "B1": w(8), "g": np.ones(8, np.float32), "b": w(8), "m": w(8),
        "v": np.ones(8, np.float32), "W2": w(8, 8, 3, 3), "Wf": w(10, 8), "Bf": w(10)}.items()])
    y2 = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 12, 1, 1])
    b = helper.make_graph([
        helper.make_node("Constant", [], ["k"], name="const", value=numpy_helper.from_array(np.float32(0.5))),
        helper.make_node("Mul", ["input", "k"], ["mu"], name="mul"),
        helper.make_node("Clip", ["mu", "lo", "hi"], ["cl"], name="clip"),
        helper.make_node("Pad", ["cl", "pads"], ["pd"], name="pad"),
        helper.make_node("Conv", ["pd", "W3"], ["c3"], name="conv3", strides=[2, 2], dilations=[1, 1], group=1),
        helper.make_node("Sigmoid", ["c3"], ["sg"], name="sig"),
        helper.make_node("Slice", ["sg", "st", "en", "ax", "sp"], ["sl"], name="slice"),
        helper.make_node("Concat", ["sl", "sl"], ["cc"], name="concat", axis=1),
        helper.make_node("AveragePool", ["cc"], ["ap"], name="apool", kernel_shape=[2, 2]),
        helper.make_node("ReduceMean", ["ap"], ["out"], name="mean", axes=[2, 3], keepdims=1),
    ], "b", [x], [y2], [numpy_helper.from_array(v, k) for k, v in {
        "lo": np.float32(-1), "hi": np.float32(1), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        "W3": w(6, 3, 3, 3), "st": np.array([0], np.int64), "en": np.array([3], np.int64),
        "ax": np.array([2], np.int64), "sp": np.array([1], np.int64)}.items()])
    out = []
    for g in (a, b):
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="fuzz")
        m.ir_version = 8
        out.append(m)
    return out


BASES = _base_models()
_INTS = [-5, -1, 0, 1, 2, 3, 7, 99, 3000, 1 << 31, -(1 << 40)]
_ATTRS = ["kernel_shape", "strides", "pads", "dilations", "group", "axis", "axes", "keepdims", "transB",
          "auto_pad", "epsilon", "ceil_mode", "count_include_pad", "alpha", "beta"]


def _randint_list(rnd: random.Random) -> list[int]:
    return [rnd.choice(_INTS) for _ in range(rnd.choice([0, 1, 2, 4, 5]))]


def _mutate_attr(rnd: random.Random, n: onnx.NodeProto) -> None:
    if n.attribute and rnd.random() < 0.7:
        a = rnd.choice(list(n.attribute))
        choice = rnd.randrange(6)
        if choice == 0:
            n.attribute.remove(a)
        elif choice == 1 and a.type == onnx.AttributeProto.INTS:
            a.ints[:] = _randint_list(rnd)
        elif choice == 2:
            name = a.name
            n.attribute.remove(a)
            n.attribute.append(helper.make_attribute(name, rnd.choice(["11", b"VALID", 1.5, [1.0, 2.0], 3])))
        elif choice == 3 and a.type == onnx.AttributeProto.INT:
            a.i = rnd.choice(_INTS)
        elif choice == 4 and a.type == onnx.AttributeProto.FLOAT:
            a.f = rnd.choice([float("nan"), float("inf"), -1.0, 0.0, 1e30])
        else:
            a.type = rnd.choice([onnx.AttributeProto.STRING, onnx.AttributeProto.INTS, onnx.AttributeProto.FLOAT])
    else:
        name = rnd.choice(_ATTRS)
        val = {"auto_pad": rnd.choice([b"VALID", b"SAME_UPPER", b"BOGUS"]), "epsilon": float("nan"),
               "alpha": rnd.choice([float("nan"), 2.0])}.get(name, _randint_list(rnd) if rnd.random() < 0.6
                                                              else rnd.choice(_INTS))
        for a in list(n.attribute):
            if a.name == name:
                n.attribute.remove(a)
        n.attribute.append(helper.make_attribute(name, val))


def _mutate_init(rnd: random.Random, t: TensorProto) -> None:
    choice = rnd.randrange(7)
    if choice == 0 and t.dims:
        i = rnd.randrange(len(t.dims))
        t.dims[i] = rnd.choice([0, 1, t.dims[i] + 1, 3, 4096, -1])
    elif choice == 1:
        t.data_type = rnd.choice([TensorProto.INT64, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.STRING,
                                  TensorProto.BOOL, 0, 77])
    elif choice == 2:
        a = numpy_helper.to_array(t).copy()
        if a.dtype.kind == "f" and a.size:
            a.reshape(-1)[rnd.randrange(a.size)] = rnd.choice([np.nan, np.inf, -np.inf, 1e38])
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    elif choice == 3:
        raw = t.raw_data or numpy_helper.to_array(t).tobytes()
        t.raw_data = raw[: rnd.randrange(len(raw) + 1)]
    elif choice == 4:
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for k, v in (("location", rnd.choice(["missing.bin", "../../../etc/passwd", "/etc/hostname", "w.bin"])),
                     ("offset", str(rnd.choice([0, 8, 1 << 40]))), ("length", str(rnd.choice([4, 16, 999999])))):
            e = t.external_data.add()
            e.key, e.value = k, v
        t.ClearField("raw_data")
    elif choice == 5:
        t.dims[:] = [rnd.choice([1, 2, 3, 8]) for _ in range(rnd.choice([0, 1, 2, 4, 5]))]
    else:
        a = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array(np.zeros_like(a), t.name))


def _mutate_value_info(rnd: random.Random, vi: onnx.ValueInfoProto) -> None:
    tt = vi.type.tensor_type
    choice = rnd.randrange(5)
    if choice == 0 and tt.shape.dim:
        d = rnd.choice(list(tt.shape.dim))
        v = rnd.choice([0, 1, 2, 11, 4096, 1 << 20, -3, -1, None])
        if v is None:
            d.dim_param = "H"
        else:
            d.dim_value = v
    elif choice == 1:
        tt.ClearField("shape")
    elif choice == 2:
        tt.elem_type = rnd.choice([TensorProto.INT8, TensorProto.DOUBLE, TensorProto.STRING, 0, 99])
    elif choice == 3:
        tt.shape.dim.add().dim_value = rnd.choice([1, 2, 3])
    elif tt.shape.dim:
        del tt.shape.dim[-1]


def _mutate_graph(rnd: random.Random, m: onnx.ModelProto) -> None:
    g = m.graph
    nodes = list(g.node)
    names = sorted({o for n in nodes for o in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer})
    choice = rnd.randrange(9)
    if choice == 0 and nodes:
        n = rnd.choice(nodes)
        if n.input:
            n.input[rnd.randrange(len(n.input))] = rnd.choice(names + ["dangling", ""])
    elif choice == 1 and len(nodes) > 1:
        i, j = rnd.sample(range(len(nodes)), 2)
        nodes[i], nodes[j] = nodes[j], nodes[i]
        del g.node[:]
        g.node.extend(nodes)
    elif choice == 2 and nodes:
        g.node.remove(rnd.choice(nodes))
    elif choice == 3 and nodes:
        g.node.append(onnx.NodeProto())
        g.node[-1].CopyFrom(rnd.choice(nodes))
    elif choice == 4:
        for n in nodes:
            n.name = "same"
    elif choice == 5:
        del g.node[:]
    elif choice == 6 and nodes:
        rnd.choice(nodes).op_type = rnd.choice(["Foo", "Conv", "Relu", "Gemm", "MaxPool", "Add", "Reshape",
                                                "If", "Loop", "Softmax", ""])
    elif choice == 7:
        g.output[0].name = rnd.choice(names + ["nowhere"])
    elif nodes:
        n = rnd.choice(nodes)
        if n.output:
            n.output[0] = rnd.choice(names)
        n.domain = rnd.choice(["", "com.microsoft", "ai.onnx", "bogus"])


def _step(rnd: random.Random, m: onnx.ModelProto, kind: str) -> None:
    if kind == "attr":
        _mutate_attr(rnd, rnd.choice(list(m.graph.node)))
    elif kind == "init":
        _mutate_init(rnd, rnd.choice(list(m.graph.initializer)))
    elif kind == "input":
        _mutate_value_info(rnd, m.graph.input[0])
    elif kind == "output":
        _mutate_value_info(rnd, m.graph.output[0])
    elif kind == "graph":
        _mutate_graph(rnd, m)
    elif kind == "opset":
        m.opset_import[0].version = rnd.choice([1, 5, 7, 12, 13, 22, 99, -1])
        if rnd.random() < 0.3:
            m.ir_version = rnd.choice([0, 3, 99])


def mutant(seed: int) -> tuple[str, bytes, str | None]:
    """One seeded mutation: (kind, model file bytes, calibration data mutation or None)."""
    rnd = random.Random(seed)
    m = onnx.ModelProto()
    m.CopyFrom(rnd.choice(BASES))
    kinds = ["bytes", "truncate", "attr", "attr", "attr", "init", "init", "input", "output", "graph", "graph",
             "opset", "calib"]
    kind = rnd.choice(kinds)
    calib = None
    for _ in range(rnd.choice([1, 1, 1, 2, 3])):
        try:
            _step(rnd, m, kind)
        except Exception:  # noqa: BLE001  (onnx.helper refused to spell this mutation: skip the step)
            pass
        if kind == "calib":
            calib = rnd.choice(["nan", "inf", "huge", "zeros", "int"])
    try:
        data = m.SerializeToString()
    except Exception:  # noqa: BLE001  (a mutation protobuf itself refuses: damage the bytes instead)
        data, kind = BASES[0].SerializeToString(), "bytes"
    if kind == "bytes":
        b = bytearray(data)
        for _ in range(rnd.choice([1, 2, 5, 20])):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        data = bytes(b)
    elif kind == "truncate":
        data = data[: rnd.randrange(len(data))]
    return kind, data, calib


def run_one(data: bytes, calib_kind: str | None, workdir: str, name: str = "m.onnx", oracle: bool = True) -> str:
    """Import + graph passes on the model bytes: "ok", "error:<class>" or "bug:<class>: message"."""
    from dyadic.core.config import CompileConfig
    from dyadic.core.errors import DyadicError
    from dyadic.core.io import input_shapes
    from dyadic.frontend import data as fdata, import_onnx
    from dyadic.frontend.datacheck import check_calib
    from dyadic.pipeline import graph_passes, run_passes

    path = os.path.join(workdir, name)
    with open(path, "wb") as f:
        f.write(data)
    try:
        fg = import_onnx(path)
        calib = fdata.synthetic(input_shapes(fg), count=4)
        if calib_kind:
            k = next(iter(calib))
            a = calib[k]
            if calib_kind == "nan":
                a.reshape(-1)[0] = np.nan
            elif calib_kind == "inf":
                a.reshape(-1)[-1] = np.inf
            elif calib_kind == "huge":
                calib[k] = (a * 1e38).astype(np.float32)  # overflows to +-inf in places
            elif calib_kind == "zeros":
                a[...] = 0
            else:
                calib[k] = a.astype(np.int64)
        check_calib(input_shapes(fg), calib)
        run_passes(fg, graph_passes(CompileConfig(quiet=True), calib))
    except DyadicError as e:
        return f"error:{type(e).__name__}"
    except Exception as e:  # noqa: BLE001  (what the fuzz test counts: any other exception is a bug)
        return f"bug:{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return _oracle(data, fg, calib) if oracle else "ok"


def _oracle(data: bytes, fg, calib) -> str:
    """An accepted model must be one onnxruntime accepts, and the imported float graph must compute
    what onnxruntime computes: "ok", "accepted:ort-refuses: ..." or "accepted:wrong: ..."."""
    import onnxruntime as ort

    from dyadic.core.float_exec import execute

    m = onnx.load_from_string(data)
    seen: set[str] = set()
    for i, n in enumerate(m.graph.node):  # the normalizer makes node names unique; onnxruntime refuses repeats
        while n.name in seen:
            n.name = f"{n.name}_{i}"
        seen.add(n.name)
    feeds = {}
    for vi in m.graph.input:  # a fixed batch in the file: feed onnxruntime that batch (dyadic takes any)
        if vi.name in calib:
            d0 = vi.type.tensor_type.shape.dim[0]
            x = calib[vi.name].astype(np.float32)
            if d0.HasField("dim_value") and d0.dim_value > 64:
                return "ok"  # a fixed batch too large to run onnxruntime on here: not compared
            if d0.HasField("dim_value") and d0.dim_value > 0:
                x = np.resize(x, (d0.dim_value,) + x.shape[1:])
            feeds[vi.name] = x
    try:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        want = sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        return f"accepted:ort-refuses: {' '.join(str(e).split())[:200]}"
    got = execute(fg, feeds)
    for name, w in zip([o.name for o in sess.get_outputs()], want):
        g = got.get(name)
        if g is None and len(fg.outputs) == len(want):
            g = got[fg.outputs[[o.name for o in sess.get_outputs()].index(name)]]
        if g is None or g.shape != w.shape or not np.allclose(g, w, rtol=1e-3, atol=1e-3, equal_nan=True):
            return f"accepted:wrong: output {name} differs from onnxruntime"
    return "ok"

