"""`share_concat_scales`: Before/Expected on small graphs (one concat; nested DenseNet-style concats;
a max-pool joining two classes; a token-id class left alone), then the integer graph has no aligning
requants, and the packed concat kernel (`cpu_ops.concat_func`) is bit-exact on the host."""
from __future__ import annotations

import numpy as np
import pytest

from _tiny_onnx import conv_w, make_model, node
from dyadic.core.config import CompileConfig
from dyadic.core.graph import Graph, Node
from dyadic.frontend import import_onnx
from dyadic.passes import share_concat_scales
from dyadic.pipeline import graph_passes, run_passes

P1 = [1, 1, 1, 1]


def _graph(nodes, ranges, meta=None) -> Graph:
    shapes = {t: (-1, 4, 8, 8) for n in nodes for t in (*n.inputs, n.output)}
    return Graph(tuple(nodes), ("x",), (nodes[-1].output,), shapes, {}, ranges=ranges, meta=meta or {})


def test_one_concat_gives_its_range_to_every_input():
    """Before: a in [0, 1], b in [-3, 2], cat = concat(a, b) in [-3, 2.5] (its own calibration, per width
    too). Expected: a and b take cat's ranges; the conv input x and the reader y keep theirs."""
    nodes = [Node("conv", "a", ("x",), ("a",)), Node("conv", "b", ("x",), ("b",)),
             Node("concat", "cat", ("a", "b"), ("cat",), {"axis": 1}), Node("conv", "y", ("cat",), ("y",))]
    ranges = {"x": (-1.0, 1.0), "a": (0.0, 1.0), "b": (-3.0, 2.0), "cat": (-3.0, 2.5), "y": (-9.0, 9.0)}
    cal = {"method": "mse", "tensors": {"a": {"8": [0.0, 0.9]}, "b": {"8": [-2.5, 2.0]}, "cat": {"8": [-2.8, 2.2]}}}
    g = share_concat_scales(_graph(nodes, ranges, {"act_calibration": cal}))
    assert g.ranges["a"] == g.ranges["b"] == g.ranges["cat"] == (-3.0, 2.5)
    assert g.ranges["x"] == (-1.0, 1.0) and g.ranges["y"] == (-9.0, 9.0)
    t = g.meta["act_calibration"]["tensors"]
    assert t["a"]["8"] == t["b"]["8"] == [-2.8, 2.2] and g.meta["act_calibration"]["method"] == "mse"


def test_nested_concats_and_maxpool_share_one_class():
    """DenseNet-style: c1 = concat(m, f1), c2 = concat(m, f1, f2), m = maxpool(s). Expected: s, m, f1, f2,
    c1, c2 all get the union of c1's and c2's ranges (s through the max-pool, which passes its input's
    quantization on)."""
    nodes = [Node("maxpool", "m", ("s",), ("m",)), Node("conv", "f1", ("m",), ("f1",)),
             Node("concat", "c1", ("m", "f1"), ("c1",), {"axis": 1}), Node("conv", "f2", ("c1",), ("f2",)),
             Node("concat", "c2", ("m", "f1", "f2"), ("c2",), {"axis": 1})]
    ranges = {"x": (0.0, 1.0), "s": (0.0, 1.0), "m": (0.0, 1.0), "f1": (0.0, 3.0), "f2": (0.0, 5.0),
              "c1": (0.0, 3.0), "c2": (0.0, 5.0)}
    g = share_concat_scales(_graph(nodes, ranges))
    assert {g.ranges[t] for t in ("s", "m", "f1", "f2", "c1", "c2")} == {(0.0, 5.0)}


def test_channel_shuffle_joins_two_blocks_concats():
    """ShuffleNet: c1 = concat(a, b) -> reshape -> transpose -> reshape -> slice s (the next block's
    passthrough half) -> c2 = concat(s, f). Expected: one class through the shuffle's moves, so c1 and c2
    (and a, b, s, f) share the union of the two concats' ranges, and c2 needs no aligning requant."""
    nodes = [Node("conv", "a", ("x",), ("a",)), Node("conv", "b", ("x",), ("b",)),
             Node("concat", "c1", ("a", "b"), ("c1",), {"axis": 1}), Node("reshape", "r1", ("c1",), ("r1",)),
             Node("transpose", "t", ("r1",), ("t",), {"perm": (0, 2, 1, 3, 4)}), Node("reshape", "r2", ("t",), ("r2",)),
             Node("slice", "s", ("r2",), ("s",)), Node("conv", "f", ("s",), ("f",)),
             Node("concat", "c2", ("s", "f"), ("c2",), {"axis": 1})]
    ranges = {"x": (-1.0, 1.0), "a": (-1.0, 1.0), "b": (-2.0, 2.0), "c1": (-2.0, 2.0), "r1": (-2.0, 2.0),
              "t": (-2.0, 2.0), "r2": (-2.0, 2.0), "s": (-1.5, 1.5), "f": (-4.0, 3.0), "c2": (-4.0, 3.0)}
    g = share_concat_scales(_graph(nodes, ranges))
    assert {g.ranges[t] for t in ("a", "b", "c1", "r1", "t", "r2", "s", "f", "c2")} == {(-4.0, 3.0)}
    assert g.ranges["x"] == (-1.0, 1.0)


def test_token_id_class_and_graphs_without_concat_unchanged():
    nodes = [Node("conv", "a", ("x",), ("a",)), Node("concat", "cat", ("x", "a"), ("cat",), {"axis": 1})]
    ranges = {"x": (0.0, 9.0), "a": (0.0, 1.0), "cat": (0.0, 9.0)}
    g0 = _graph(nodes, ranges, {"int_inputs": ("x",)})
    assert share_concat_scales(g0).ranges == g0.ranges
    g1 = _graph(nodes[:1], {"x": (0.0, 1.0), "a": (0.0, 2.0)})
    assert share_concat_scales(g1) is g1


def _branchy(rng):
    """Two conv+relu branches of very different ranges, concatenated, read by a conv: 16 + 32 channels."""
    return make_model([node("Conv", ["input", "Wa"], "a", pads=P1), node("Relu", ["a"], "ra"),
                       node("Conv", ["input", "Wb"], "b", pads=P1), node("Relu", ["b"], "rb"),
                       node("Concat", ["ra", "rb"], "cat", axis=1), node("Conv", ["cat", "Wt"], "out")],
                      {"Wa": conv_w(rng, 16, 3, gain=0.3), "Wb": conv_w(rng, 32, 3, gain=4.0),
                       "Wt": conv_w(rng, 8, 48, 1)})


def test_integer_graph_has_no_aligning_requant():
    """After the pipeline, both branches quantize to the concat's scale in their own conv epilogues."""
    rng = np.random.default_rng(0)
    calib = {"input": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)}
    ig = run_passes(import_onnx(_branchy(rng)), graph_passes(CompileConfig(quiet=True), calib))
    assert [n.op for n in ig.nodes] == ["qconv", "qconv", "concat", "qconv"]
    assert ig.qparams["ra"] == ig.qparams["rb"] == ig.qparams["cat"] and ig.dtypes["cat"] == "uint8"


def test_packed_concat_kernel_bitexact():
    """`cpu_ops.concat_func` on 1, 2 and 5 inputs of different block counts: the numpy concat exactly."""
    tvm = pytest.importorskip("tvm")
    from dyadic.backend.kernels import cpu_ops
    from test_kernels_x86 import HOST

    rng = np.random.default_rng(2)
    for blocks, dt in (((3,), "uint8"), ((1, 2), "int8"), ((2, 1, 4, 1, 3), "int32")):
        xs = [rng.integers(-100, 100, (2, cb, 5, 7, 16)).astype(dt) for cb in blocks]
        lib = tvm.compile(tvm.IRModule({"main": cpu_ops.concat_func(blocks, 5, 7, dt)}),
                          target=tvm.target.Target(HOST))
        out = tvm.runtime.empty((2, sum(blocks), 5, 7, 16), dt)
        lib["main"](*[tvm.runtime.tensor(x) for x in xs], out)
        np.testing.assert_array_equal(out.numpy(), np.concatenate(xs, axis=1))


def test_compiled_concat_runs_on_the_packed_kernel(tmp_path):
    """The compiled library passes its bit-exact self-check, and on x86 hosts no generic concat or
    requant is left (the concat is dyadic's packed copy)."""
    pytest.importorskip("tvm")
    import platform

    import onnx

    import dyadic

    rng = np.random.default_rng(1)
    path = tmp_path / "m.onnx"
    onnx.save(_branchy(rng), str(path))
    calib = {"input": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)}
    res = dyadic.compile(str(path), str(tmp_path / "build"), calib=calib, config=CompileConfig(quiet=True))
    assert str(res.plan["self_check"]).startswith("bit-exact")
    if platform.machine() == "x86_64":
        generic = res.plan["target"]["kernel_coverage"].get("generic_ops", {})
        assert not {"concat", "requant", "qconv"} & set(generic), generic
