"""A built library loads and runs in a process that has only the TVM runtime (no compiler, no LLVM)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dyadic
from dyadic.compiler import quantize_inputs
from dyadic.core.config import CompileConfig
from dyadic.models import build


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny"))
    res = dyadic.compile(build("resnet20"), out, None, CompileConfig(quiet=True))
    return res, out


def test_runtime_only_process_maps_no_compiler(tiny_build):
    res, out = tiny_build
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(os.path.join(out, "x.npy"), x)
    code = textwrap.dedent(f"""
        import os, sys, json, numpy as np, dyadic
        m = dyadic.load({out!r})
        y = m.run(np.load({os.path.join(out, 'x.npy')!r}))
        maps = open(f"/proc/{{os.getpid()}}/maps").read()
        print(json.dumps({{"shape": list(y.shape), "compiler": "libtvm_compiler" in maps,
                          "llvm": "LLVM" in maps or "libLLVM" in maps,
                          "runtime": "libtvm_runtime" in maps, "tvm_py": "tvm" in sys.modules,
                          "y": y.tolist()}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["shape"] == [2, 10]
    assert info["runtime"] and not info["compiler"] and not info["llvm"] and not info["tvm_py"]
    # the runtime-only process computes what the compiler process's reference says
    ig = res.int_graph
    from dyadic.core.reference import run_reference
    want = run_reference(ig, quantize_inputs(ig, {"input": x}))["logits"].astype(np.float32)
    np.testing.assert_array_equal(np.array(info["y"], np.float32), want * np.float32(ig.qparams["logits"].scale))


def test_plan_records_every_layer(tiny_build):
    res, out = tiny_build
    plan = json.load(open(os.path.join(out, "model.json")))
    convs = [l for l in plan["layers"] if l["op"] in ("qconv", "qdense")]
    assert len(convs) == 20
    for l in convs:
        assert l["w_bits"] == 8 and l["a_bits"] == 8
        assert all(0 < m < 2 ** 31 for m in l["multiplier"]) and all(1 <= s <= 62 for s in l["shift"])
        assert l["calib_range"][0] <= l["calib_range"][1]
    assert plan["inputs"][0]["name"] == "input" and plan["outputs"][0]["bits"] == 16
    assert plan["versions"]["apache-tvm"] == "0.27.0.post1"
    assert plan["target"]["tvm"]["kind"] == "llvm"
    assert set(os.listdir(out)) >= {"model.so", "model.json"}


def test_any_batch_size(tiny_build):
    _, out = tiny_build
    m = dyadic.load(out)
    for n in (1, 5):
        assert m.run(np.zeros((n, 3, 32, 32), np.float32)).shape == (n, 10)


@pytest.mark.parametrize("env,threads,want", [({}, None, "cores"), ({}, 1, "1"), ({"TVM_NUM_THREADS": "3"}, None, "3"),
                                              ({"OMP_NUM_THREADS": "1"}, None, None)],
                         ids=["default-physical-cores", "threads-arg", "user-env-kept", "omp-env-respected"])
def test_thread_count(tiny_build, env, threads, want):
    """TVM's own default on x86 is half the logical CPUs (it assumes SMT): `load` asks for the
    physical cores instead, unless the user set a count (argument or environment)."""
    from dyadic.runtime.loader import physical_cores

    _, out = tiny_build
    code = f"import os, dyadic; dyadic.load({out!r}, {threads!r}); print(os.environ.get('TVM_NUM_THREADS'))"
    base = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**base, **env})
    assert proc.returncode == 0, proc.stderr
    got = proc.stdout.strip().splitlines()[-1]
    assert got == (str(physical_cores()) if want == "cores" else str(want))
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
