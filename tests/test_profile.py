"""`dyadic profile`: the VM instrument attributes a run's time to dyadic's kernels, the generic
lowering and the VM runtime."""
import json
import os

import pytest

import dyadic
from dyadic.backend.kernels import x86_isa
from dyadic.cli.main import main
from dyadic.core.config import CompileConfig
from dyadic.models import build
from dyadic.runtime.profile import group_of, op_of, profile
from dyadic.targets import resolve


@pytest.fixture(scope="module")
def r20(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("r20"))
    dyadic.compile(build("resnet20"), out, None, CompileConfig(quiet=True))
    return out


def test_names_are_grouped():
    assert group_of("dyadic_conv3") == "kernel"
    assert group_of("vm.builtin.alloc_tensor") == "runtime"
    assert group_of("strided_slice") == "generic" and op_of("right_shift12") == "right_shift"


def test_profile_splits_the_run(r20):
    p = profile(r20, threads=1, batch=2, iters=3)
    assert p.plain_ms > 0 and p.instrumented_ms > 0
    names = set(p.by_function)
    assert any(n.startswith("vm.builtin.") for n in names)
    assert 0.0 <= p.outside_share <= 1.0
    ours = [n for n in names if n.startswith("dyadic_")]
    if x86_isa(resolve("host").tvm_target) is None:
        assert not ours and p.outside_share == 1.0  # no kernel family on this CPU: all generic
    else:
        # every weighted layer of the plan is one call of a dyadic_conv/amxconv/dense kernel per run
        plan = json.load(open(os.path.join(r20, "model.json")))
        weighted = sum(1 for layer in plan["layers"] if layer["op"] in ("qconv", "qdense"))
        assert weighted == 20
        assert sum(n for name, (n, _) in p.by_function.items() if name.startswith(("dyadic_conv", "dyadic_amxconv", "dyadic_dense"))) == weighted
        assert p.kernel_ms > 0 and p.by_group["kernel"] == pytest.approx(
            sum(ms for name, (_, ms) in p.by_function.items() if name.startswith("dyadic_")))


def test_generic_build_runs_entirely_outside(tmp_path, monkeypatch):
    monkeypatch.setenv("DYADIC_KERNELS", "generic")
    out = str(tmp_path / "g")
    dyadic.compile(build("resnet20"), out, None, CompileConfig(quiet=True, check_samples=1))
    p = profile(out, threads=1, iters=2)
    assert p.kernel_ms == 0.0 and p.outside_share == 1.0
    assert {"add", "right_shift"} <= set(p.generic_ops) or len(p.generic_ops) >= 3


def test_cli_profile_writes_json(r20, tmp_path, capsys):
    js = str(tmp_path / "p.json")
    assert main(["profile", r20, "--iters", "2", "--json", js]) == 0
    out = capsys.readouterr().out
    assert "outside:" in out and "slowest functions" in out
    d = json.load(open(js))
    assert set(d) >= {"plain_ms", "kernel_ms", "outside_share", "by_group"}


def test_cli_profile_refuses_bad_args(r20, capsys):
    assert main(["profile", r20, "--iters", "0"]) != 0
    assert "--iters" in capsys.readouterr().err
    assert main(["profile", os.path.join(r20, "nope")]) != 0
