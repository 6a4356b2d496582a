"""The command line: happy path on the built-in model, and bad input -> one clear error, exit 2, no output."""
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dyadic.cli.main import main
from dyadic.models import build

from conftest import MEAN, STD, needs_shared, shared_path


def _run(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_compile_builtin_and_eval(tmp_path, capsys):
    out = tmp_path / "build"
    code, stdout, _ = _run(["compile", "resnet20", "-o", str(out), "--quiet"], capsys)
    assert code == 0
    assert "bit-exact vs int64 reference: yes" in stdout
    assert sorted(os.listdir(out)) == ["model.json", "model.so"]
    r = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=r.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), labels=r.integers(0, 10, 20))
    code, stdout, _ = _run(["eval", str(out), "--data", str(data), "--quiet"], capsys)
    assert code == 0 and stdout.strip().splitlines()[-1].endswith("(20 images)")


def test_help_lists_every_flag():
    proc = subprocess.run([sys.executable, "-m", "dyadic.cli", "compile", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--output", "--calib", "--mean", "--std", "--target", "--calib-count"):
        assert flag in proc.stdout


def _expect_error(argv, capsys, *needles):
    code, stdout, err = _run(argv, capsys)
    assert code == 2, (stdout, err)
    assert err.startswith("dyadic ") and "error:" in err
    assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_not_an_onnx_file(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not protobuf \x00\xff" * 10)
    out = tmp_path / "out"
    _expect_error(["compile", str(bad), "-o", str(out)], capsys, "not a readable ONNX model")
    assert not out.exists()


def test_missing_model_file(tmp_path, capsys):
    _expect_error(["compile", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o")], capsys, "does not exist")
    assert not (tmp_path / "o").exists()


def test_unsupported_ops_all_listed(tmp_path, capsys):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])
    g = helper.make_graph([helper.make_node("Hardmax", ["input"], ["a"], name="my_hardmax"),
                           helper.make_node("Relu", ["a"], ["b"], name="ok_relu"),
                           helper.make_node("Shrink", ["b"], ["y"], name="my_shrink")], "g", [x], [y])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    err = _expect_error(["compile", str(path), "-o", str(tmp_path / "o")], capsys, "my_hardmax", "my_shrink", "Hardmax", "Shrink")
    assert "ok_relu" not in err
    assert not (tmp_path / "o").exists()


def test_dynamic_spatial_shape(tmp_path, capsys):
    m = build("resnet20")
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param = "H"
    path = tmp_path / "dyn.onnx"
    onnx.save(m, path)
    _expect_error(["compile", str(path), "-o", str(tmp_path / "o")], capsys, "dynamic dimension 2", "--input-shape")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("arrays,needle", [
    ({"images": np.zeros((4, 28, 28, 3), np.uint8)}, "needs uint8 [N, 32, 32, 3]"),
    ({"pixels": np.zeros((4, 3, 32, 32), np.float32)}, "no array for model input"),
    ({"input": np.zeros((4, 3, 16, 16), np.float32)}, "has shape [4, 3, 16, 16]"),
])
def test_calibration_data_mismatch(tmp_path, capsys, arrays, needle):
    data = tmp_path / "calib.npz"
    np.savez(data, **arrays)
    model = tmp_path / "r20.onnx"
    onnx.save(build("resnet20"), model)
    out = tmp_path / "o"
    _expect_error(["compile", str(model), "-o", str(out), "--calib", str(data)], capsys, needle)
    assert not out.exists()


def test_failed_compile_leaves_existing_output_untouched(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.json").write_text("old")
    _expect_error(["compile", str(tmp_path / "missing.onnx"), "-o", str(out)], capsys, "does not exist")
    assert os.listdir(out) == ["model.json"] and (out / "model.json").read_text() == "old"


@needs_shared
def test_eval_onnx_fp32_on_real_images(capsys):
    code, stdout, _ = _run(["eval", shared_path("models", "resnet20_cifar10.onnx"), "--data",
                            shared_path("data", "cifar10_test.npz"), "--mean", ",".join(map(str, MEAN)),
                            "--std", ",".join(map(str, STD)), "--limit", "200", "--quiet"], capsys)
    assert code == 0
    acc = float(stdout.strip().splitlines()[-1].split()[1].rstrip("%"))
    assert 85.0 <= acc <= 100.0
