"""Issue 13: every bad input gets a clean error (a DyadicError; exit 2 on the CLI), no garbage library,
nothing partial, safe from many threads."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import dyadic
from dyadic.cli.main import main
from dyadic.core.config import CompileConfig
from dyadic.core.errors import (BuildDirError, DataError, DataRangeError, DyadicError, InputError, ModelError,
                                OutputError)
from dyadic.frontend import import_onnx

from _mutate import mutant, run_one
from _tiny_onnx import conv_w, f32, i64, make_model, node

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conv_model(rng, **conv_attrs):
    attrs = {"pads": [1, 1, 1, 1], **conv_attrs}
    return make_model([node("Conv", ["input", "W", "B"], "c", **attrs), node("Relu", ["c"], "out")],
                      {"W": conv_w(rng, 4, 3), "B": np.zeros(4, np.float32)})


# ---------------------------------------------------------------- fuzz: import + graph passes


def test_fuzz_import_and_passes(tmp_path):
    """~200 seeded mutations (bytes, truncation, dims, dtypes, attributes, wiring, external data,
    declared shapes, opset, calibration data): each ends in success or a DyadicError, never another
    exception; an accepted model is one onnxruntime runs, computing what the float graph computes."""
    t0 = time.monotonic()
    outcomes = {}
    for seed in range(100000, 100200):
        kind, data, calib = mutant(seed)
        out = run_one(data, calib, str(tmp_path))
        assert out == "ok" or out.startswith("error:"), (seed, kind, out)
        outcomes[out] = outcomes.get(out, 0) + 1
    assert outcomes.get("ok", 0) >= 10 and outcomes.get("error:ModelError", 0) >= 100, outcomes
    assert time.monotonic() - t0 < 120


# ---------------------------------------------------------------- models refused with a clear message


def _refused(model, *needles):
    with pytest.raises(ModelError) as e:
        import_onnx(model)
    for n in needles:
        assert n in str(e.value), str(e.value)
    return str(e.value)


def test_attribute_checks(rng):
    _refused(_conv_model(rng, strides=[0, 1]), "strides")
    _refused(_conv_model(rng, dilations=[1, 0]), "dilations")
    _refused(_conv_model(rng, pads=[-1, 0, 0, 0]), "pads")
    _refused(_conv_model(rng, kernel_shape=[5, 5]), "kernel_shape")
    _refused(_conv_model(rng, auto_pad="VALID"), "VALID")
    m = _conv_model(rng)
    for a in m.graph.node[0].attribute:
        if a.name == "pads":
            m.graph.node[0].attribute.remove(a)
            break
    m.graph.node[0].attribute.append(helper.make_attribute("strides", "11"))
    _refused(m, "strides")
    bad_bias = make_model([node("Conv", ["input", "W", "B"], "out")], {"W": conv_w(rng, 4, 3), "B": np.zeros(5, np.float32)})
    _refused(bad_bias, "bias")


def test_pool_reduce_slice_pad_checks(rng):
    _refused(make_model([node("MaxPool", ["input"], "out", strides=[2, 2])]), "kernel_shape")
    _refused(make_model([node("ReduceMean", ["input"], "out", axes=[2, 99])]), "axes")
    _refused(make_model([node("Slice", ["input", "s", "e", "a", "st"], "out")],
                        {"s": i64(0), "e": i64(4), "a": i64(2), "st": i64(0)}), "step")
    _refused(make_model([node("Pad", ["input", "p"], "out")], {"p": i64(0, 0, -1, 0, 0, 0, 0, 0)}), "negative pads")


def test_graph_structure_checks(rng):
    g = helper.make_graph([], "empty", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])])
    _refused(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), "no nodes")
    _refused(make_model([node("Add", ["input", "nowhere"], "out")]))
    m = _conv_model(rng)
    m.graph.output[0].type.tensor_type.shape.dim.extend([])
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 11, 8, 8]))
    _refused(m, "out")


def test_size_guard_refuses_before_allocating(rng):
    t0 = time.monotonic()
    big = make_model([node("Relu", ["input"], "out")], in_shape=("N", 3, 4096, 4096))
    _refused(big, "limit")
    pad = make_model([node("Pad", ["input", "p"], "out")], {"p": i64(0, 0, 3000, 3000, 0, 0, 3000, 3000)})
    _refused(pad, "limit")
    assert time.monotonic() - t0 < 20


def test_non_finite_weights_and_clip(rng):
    m = _conv_model(rng)
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    w[0, 0, 0, 0] = np.nan
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    _refused(m, "non-finite")
    clip = make_model([node("Clip", ["input", "lo", "hi"], "out")], {"lo": f32(np.nan), "hi": f32(6.0)})
    _refused(clip, "non-finite")


def test_constant_value_float_and_untyped_output_import():
    m = make_model([node("Constant", [], "k", value_float=2.0), node("Mul", ["input", "k"], "out")])
    import_onnx(m)  # no KeyError: the normalizer folds it


def test_duplicate_node_names_keep_per_layer_bits(rng):
    """Duplicate names are made unique by the normalizer, so --bits 4 gives the inner layers 4 bits."""
    from dyadic.core.config import BitMode
    from dyadic.pipeline import graph_passes, run_passes

    nodes = [node("Conv", ["input", "W1"], "c1", name="dup", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1", name="dup"),
             node("Conv", ["r1", "W2"], "c2", name="dup", pads=[1, 1, 1, 1]), node("Relu", ["c2"], "r2", name="dup"),
             node("Conv", ["r2", "W3"], "out", name="dup", pads=[1, 1, 1, 1])]
    m = make_model(nodes, {"W1": conv_w(rng, 4, 3), "W2": conv_w(rng, 4, 4), "W3": conv_w(rng, 4, 4)})
    fg = import_onnx(m)
    assert len({n.name for n in fg.nodes}) == len(fg.nodes)
    calib = {"input": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)}
    ig = run_passes(fg, graph_passes(CompileConfig(bits=BitMode("4"), quiet=True), calib))
    bits = [n.attrs["w_bits"] for n in ig.nodes if n.op == "qconv"]
    assert bits == [8, 4, 8], bits


# ---------------------------------------------------------------- model paths


@pytest.mark.parametrize("kind", ["dir", "fifo", "devnull", "empty", "missing"])
def test_model_path_kinds(tmp_path, capsys, kind):
    p = str(tmp_path / "m.onnx")
    want = {"dir": "is a directory", "fifo": "is a FIFO", "devnull": "is a device", "empty": "is empty (0 bytes)",
            "missing": "does not exist"}[kind]
    if kind == "dir":
        os.mkdir(p)
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "devnull":
        p = "/dev/null"
    elif kind == "empty":
        open(p, "wb").close()
    code = main(["compile", p, "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and want in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- data and flags


def test_nan_calibration_is_an_error_and_writes_nothing(tmp_path, rng):
    calib = {"input": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)}
    calib["input"][1, 2, 3, 4] = np.nan
    out = tmp_path / "out"
    with pytest.raises(DataRangeError, match="non-finite"):
        dyadic.compile(_conv_model(rng), str(out), calib, CompileConfig(quiet=True))
    assert not out.exists() and os.listdir(tmp_path) == []


def test_data_file_problems(tmp_path, capsys):
    m = tmp_path / "m.onnx"
    onnx.save(_conv_model(np.random.default_rng(0)), m)
    cases = {
        "nan": ({"input": np.full((2, 3, 8, 8), np.nan, np.float32)}, [], "non-finite"),
        "object": ({"input": np.array([object()] * 2)}, [], "pickled"),
        "labels": ({"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.array([-1, 3])}, [], "labels"),
        "std-nan": ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, ["--std", "nan,1,1"], "finite"),
        "std-zero": ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, ["--std", "0,1,1"], "positive"),
        "count": ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, ["--calib-count", "-1"], "positive"),
    }
    for name, (arrays, flags, needle) in cases.items():
        d = tmp_path / f"{name}.npz"
        np.savez(d, **arrays)  # savez pickles object arrays; dyadic never unpickles them
        code = main(["compile", str(m), "-o", str(tmp_path / "o"), "--calib", str(d), "--quiet", *flags])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- output directory: checks, lock, atomicity


def test_output_is_a_file_fails_before_compiling(tmp_path, capsys):
    f = tmp_path / "out"
    f.write_text("x")
    t0 = time.monotonic()
    code = main(["compile", "resnet50", "-o", str(f), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "not a directory" in err and time.monotonic() - t0 < 5, err
    assert f.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_not_writable(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code = main(["compile", "resnet20", "-o", str(ro / "out"), "--quiet"])
        assert code == 2 and "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_lock_refuses_a_second_compile(tmp_path):
    from dyadic.core.outdir import staged_output

    out = str(tmp_path / "build")
    with staged_output(out):
        with pytest.raises(OutputError, match="another compile"):
            with staged_output(out):
                pass
    with staged_output(out):  # released
        pass
    assert os.listdir(tmp_path) == []


def test_staging_keeps_the_old_build_on_failure(tmp_path):
    from dyadic.core.outdir import staged_output

    out = tmp_path / "build"
    out.mkdir()
    (out / "model.so").write_text("old so")
    (out / "model.json").write_text("old json")
    with pytest.raises(RuntimeError):
        with staged_output(str(out)) as st:
            open(os.path.join(st.path, "model.so"), "w").write("new")
            raise RuntimeError("build failed")
    assert (out / "model.so").read_text() == "old so" and sorted(os.listdir(tmp_path)) == ["build"]
    with staged_output(str(out)) as st:
        for n in ("model.so", "model.json"):
            open(os.path.join(st.path, n), "w").write("new " + n)
        st.commit(["model.so", "model.json"])
    assert (out / "model.so").read_text() == "new model.so" and sorted(os.listdir(tmp_path)) == ["build"]
    # a directory with the user's own files: only the build's entries are swapped
    (out / "notes.txt").write_text("mine")
    with staged_output(str(out)) as st:
        for n in ("model.so", "model.json"):
            open(os.path.join(st.path, n), "w").write("newer " + n)
        st.commit(["model.so", "model.json"])
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.json").read_text() == "newer model.json"


def test_sigterm_cleans_staging_and_temp_dirs(tmp_path):
    out = tmp_path / "build"
    code = f"""
import os, tempfile, time, sys
from dyadic.core.outdir import staged_output
with staged_output({str(out)!r}) as st:
    d = tempfile.mkdtemp(prefix="tvm-like-")   # where TVM's temp dirs go during a compile
    assert d.startswith(st.tmp), d
    open(os.path.join(st.path, "model.so"), "w").write("partial")
    print("ready", flush=True)
    time.sleep(60)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    p.wait(30)
    assert p.returncode != 0
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


# ---------------------------------------------------------------- loading: checksum, schema, inputs, threads


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    rng = np.random.default_rng(0)
    out = str(tmp_path_factory.mktemp("rel") / "build")
    calib = {"input": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)}
    nodes = [node("Conv", ["input", "W"], "c", pads=[1, 1, 1, 1]), node("Relu", ["c"], "r"),
             node("GlobalAveragePool", ["r"], "g"), node("Flatten", ["g"], "f"), node("Gemm", ["f", "Wf"], "out", transB=1)]
    m = make_model(nodes, {"W": conv_w(rng, 8, 3), "Wf": rng.standard_normal((10, 8)).astype(np.float32)})
    dyadic.compile(m, out, calib, CompileConfig(quiet=True))
    return out


def _copy(build, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(build, dst)
    return dst


def test_plan_records_library_checksum(tiny_build):
    plan = json.load(open(os.path.join(tiny_build, "model.json")))
    assert plan["library"]["bytes"] == os.path.getsize(os.path.join(tiny_build, "model.so"))
    assert len(plan["library"]["sha256"]) == 64


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_library_is_refused_before_dlopen(tiny_build, tmp_path, capsys, damage):
    d = _copy(tiny_build, tmp_path)
    so = d / "model.so"
    b = bytearray(so.read_bytes())
    if damage == "truncate":
        b = b[: len(b) // 2]
    elif damage == "flip":
        b[len(b) // 3] ^= 0xFF
    else:
        b = b""
    so.write_bytes(bytes(b))
    with pytest.raises(BuildDirError, match="damaged|modified"):
        dyadic.load(str(d))
    data = tmp_path / "x.npz"
    np.savez(data, input=np.zeros((2, 3, 8, 8), np.float32))
    assert main(["run", str(d), "--data", str(data)]) == 2
    assert "damaged" in capsys.readouterr().err


@pytest.mark.parametrize("edit", ["not-json", "bare-nan", "shift-200", "multiplier-2^40", "scale-0", "lo>hi",
                                  "version", "no-library"])
def test_edited_plan_is_refused(tiny_build, tmp_path, edit):
    d = _copy(tiny_build, tmp_path)
    js = d / "model.json"
    plan = json.loads(js.read_text())
    layer = next(l for l in plan["layers"] if "shift" in l)
    if edit == "not-json":
        js.write_text(js.read_text()[:100])
    else:
        if edit == "bare-nan":
            plan["inputs"][0]["scale"] = float("nan")
        elif edit == "shift-200":
            layer["shift"][0] = 200
        elif edit == "multiplier-2^40":
            layer["multiplier"][0] = 1 << 40
        elif edit == "scale-0":
            plan["inputs"][0]["scale"] = 0.0
        elif edit == "lo>hi":
            plan["inputs"][0]["lo"], plan["inputs"][0]["hi"] = 5, -5
        elif edit == "version":
            plan["plan_version"] = 1
        else:
            del plan["library"]
        js.write_text(json.dumps(plan))
    with pytest.raises(BuildDirError):
        dyadic.load(str(d))


def test_run_int_checks_inputs(tiny_build):
    m = dyadic.load(tiny_build)
    spec = m.inputs[0]
    good = np.zeros((2, 3, 8, 8), spec["dtype"])
    m.run_int({"input": good})
    big = np.full((2, 3, 8, 8), spec["hi"] + 1 if spec["hi"] < 255 else 300, np.int32)
    with pytest.raises(InputError, match="outside"):
        m.run_int({"input": big})
    with pytest.raises(InputError, match="dtype"):
        m.run_int({"input": good.astype(np.float32)})
    with pytest.raises(InputError, match="shape"):
        m.run_int({"input": np.zeros((2, 3, 9, 8), spec["dtype"])})
    with pytest.raises(InputError, match="unknown input"):
        m.run_int({"x": good})
    with pytest.raises(InputError, match="non-finite"):
        m.run(np.full((1, 3, 8, 8), np.nan, np.float32))


def test_run_int_300_in_int8_is_refused(tiny_build):
    m = dyadic.load(tiny_build)
    assert m.inputs[0]["dtype"] == "int8"
    with pytest.raises(InputError, match=r"\[-128, 127\]"):
        m.run_int({"input": np.full((1, 3, 8, 8), 300, np.int64)})


def test_one_model_from_many_threads(tiny_build):
    m = dyadic.load(tiny_build)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 3, 8, 8)).astype(np.float32) for _ in range(8)]
    want = [m.run(x) for x in xs]
    errors = []

    def work(k):
        try:
            for i in range(200):
                j = (i + k) % len(xs)
                if not np.array_equal(m.run(xs[j]), want[j]):
                    errors.append((k, i))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


# ---------------------------------------------------------------- the CLI's one error path


def test_internal_error_is_one_paragraph_and_logged(tmp_path, capsys, monkeypatch):
    import dyadic.cli.main as cli

    def boom(a):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(cli, "cmd_eval", boom)
    monkeypatch.setenv("DYADIC_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["eval", "x", "--data", "y"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bug" in err and "Traceback" not in err, err
    logs = os.listdir(tmp_path / "cache" / "logs")
    assert len(logs) == 1 and "simulated bug" in (tmp_path / "cache" / "logs" / logs[0]).read_text()
    assert "Traceback" in (tmp_path / "cache" / "logs" / logs[0]).read_text()


def test_every_error_class_is_a_dyadic_error():
    for cls in (BuildDirError, DataError, DataRangeError, InputError, ModelError, OutputError):
        assert issubclass(cls, DyadicError)


def test_input_without_shape_names_the_flag():
    m = make_model([node("Relu", ["input"], "out")])
    m.graph.input[0].type.tensor_type.ClearField("shape")
    _refused(m, "declares no shape", "--input-shape")


def test_minus_one_dims_are_dynamic(rng):
    m = _conv_model(rng)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    import_onnx(m)


def test_plan_schema_zero_multiplier_only_for_a_sum_operand():
    """a residual add whose branch is below half an output step (ConvNeXt's 1e-6 layer scale) has M = 0
    for that operand, as the verifier allows; a conv's zero multiplier, or a sum of only zeros, is refused"""
    from dyadic.core.plan_schema import _layer

    def problems(op, m):
        out: list[str] = []
        _layer(0, {"name": "L", "op": op, "multiplier": m, "shift": [31] * len(m), "clip": [-128, 127],
                   "out": {"dtype": "int8"}}, out)
        return [p for p in out if "multiplier" in p]

    assert problems("qadd", [1 << 30, 0]) == [] and problems("qconv", [1 << 30, 5]) == []
    assert problems("qadd", [0, 0]) and problems("qconv", [1 << 30, 0]) and problems("qadd", [-1, 5])
