"""The integer arithmetic of the transformer ops (issue 10), without building models.

* The float-vs-integer error of Softmax, LayerNorm and GELU stays within the bound each module's
  docstring states, over random inputs (hypothesis).
* The integer square root (numpy and the Relax form the library runs, CPU and GPU shapes of it) is
  the exact floor square root; one reciprocal per row plus a correction step is exact floor division.
* The verifier refuses a MatMul whose int32 accumulator can overflow, and accepts the probability
  row-sum bound of P·V only where P is a last-axis qsoftmax's own output; those row sums are at most
  Q + n/2 on any input (hypothesis).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dyadic.core.graph import Graph, Node, QParams
from dyadic.ops import FLOAT, INT, QuantContext


# --------------------------------------------------------------------------- float vs integer error bounds
def _ctx(shapes: dict, ranges: dict, qp: dict, out: QParams):
    g = Graph(nodes=(), inputs=(), outputs=(), shapes=shapes, dtypes={}, ranges=ranges)
    return QuantContext(g, qp, lambda t, signed=None: out)


def _int_node(ctx) -> Node:
    (n,) = ctx.nodes
    return n


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 160), scale=st.floats(0.005, 0.5), seed=st.integers(0, 2 ** 31), bits=st.sampled_from([8, 16]))
def test_softmax_error_bound(n, scale, seed, bits):
    rng = np.random.default_rng(seed)
    qx = QParams(scale, bits, True)
    q = rng.integers(qx.lo, qx.hi + 1, (4, n))
    fnode = Node("softmax", "sm", ("x",), ("y",), {"axis": 1})
    ctx = _ctx({"x": (-1, n), "y": (-1, n)}, {}, {"x": qx}, QParams(1 / 255, 8, False))
    FLOAT["softmax"].quantize(ctx, fnode)
    inode = _int_node(ctx)
    y = INT["qsoftmax"].run_int(inode, [q], None) / inode.attrs["Q"]
    ref = FLOAT["softmax"].run_float(fnode, [q.astype(np.float64) * scale])
    bound = 1 / (2 * inode.attrs["Q"]) + (n / 2 + 0.5) * 2.0 ** -15
    assert np.abs(y - ref).max() <= bound + 1e-12


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), scale=st.floats(0.001, 2.0), seed=st.integers(0, 2 ** 31), bits=st.sampled_from([8, 16]),
       peaked=st.booleans())
def test_softmax_row_sums_within_the_matmul_bound(n, scale, seed, bits, peaked):
    """Σ of a qsoftmax row <= Q + n/2 (`ops.matmul.softmax_rowsum`, which the P·V int32 bound uses):
    every code rounds up by at most 1/2; flat rows (all codes equal) and one-hot rows included"""
    from dyadic.ops.matmul import softmax_rowsum

    rng = np.random.default_rng(seed)
    qx = QParams(scale, bits, True)
    q = rng.integers(qx.lo, qx.hi + 1, (6, n))
    q[0] = qx.hi  # flat: every term rounds the same way
    if peaked:
        q[1] = qx.lo
        q[1, 0] = qx.hi
    fnode = Node("softmax", "sm", ("x",), ("y",), {"axis": 1})
    out = QParams(1 / 32767, 16, True) if bits == 16 else QParams(1 / 255, 8, False)
    ctx = _ctx({"x": (-1, n), "y": (-1, n)}, {}, {"x": qx}, out)
    FLOAT["softmax"].quantize(ctx, fnode)
    inode = _int_node(ctx)
    y = INT["qsoftmax"].run_int(inode, [q], None)
    assert y.min() >= 0 and y.sum(1).max() <= softmax_rowsum(inode.attrs["Q"], n)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 1024), spread=st.floats(0.05, 1.0), seed=st.integers(0, 2 ** 31),
       bits=st.sampled_from([8, 16]), eps=st.sampled_from([1e-5, 1e-6, 1e-12]))
def test_layernorm_error_bound(n, spread, seed, bits, eps):
    from dyadic.ops.layernorm import isqrt_np

    rng = np.random.default_rng(seed)
    qx = QParams(rng.uniform(0.001, 0.1), bits, True)
    width = max(1, int(spread * qx.hi))
    q = np.clip(rng.normal(0, width, (3, n)).round() + rng.integers(-width, width + 1, (3, 1)), qx.lo, qx.hi)
    q = q.astype(np.int64)
    gamma, beta = rng.uniform(-2, 2, n), rng.normal(0, 0.5, n)
    fnode = Node("layernorm", "ln", ("x",), ("y",), {"axis": 1, "eps": eps}, {"gamma": gamma, "beta": beta})
    out = QParams(6.0 / 127, 8, True)
    ctx = _ctx({"x": (-1, n), "y": (-1, n)}, {}, {"x": qx}, out)
    FLOAT["layernorm"].quantize(ctx, fnode)
    inode = _int_node(ctx)
    assert INT["qlayernorm"].verify(Graph((), (), (), {"x": (-1, n)}, {}, qparams={"x": qx}), inode) == []
    got = INT["qlayernorm"].run_int(inode, [q], None)
    want = FLOAT["layernorm"].run_float(fnode, [q.astype(np.float64) * qx.scale]) / out.scale
    a = inode.attrs
    r_min = int(isqrt_np(np.array([a["E"]]))[0])
    bound = 0.5 + np.abs(gamma) * math.sqrt(n) / out.scale * (1.5 * 2.0 ** -a["P"] + 2.0 ** -30 + 1 / r_min) \
        + np.abs(want) * (2.0 ** -30 + 1 / (n * (n - 1) * 4.0 ** a["k"]))
    inside = (want > out.lo) & (want < out.hi)
    bound = np.broadcast_to(bound, want.shape)
    assert np.all(np.abs(got - want)[inside] <= bound[inside] + 1e-9)
    assert np.all(got[want >= out.hi] == out.hi) and np.all(got[want <= out.lo] == out.lo)


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(0.002, 0.2), seed=st.integers(0, 2 ** 31), bits=st.sampled_from([8, 16]))
def test_gelu_error_bound(scale, seed, bits):
    """GELU (the Erf spelling is one table after fuse_unary): half an output LSB wherever in range."""
    from dyadic.ops.elementwise import UNARY

    rng = np.random.default_rng(seed)
    qx = QParams(scale, bits, True)
    out = QParams(max(UNARY["gelu"](np.array(qx.hi * scale), {}), 0.1) / 127, 8, True)
    fnode = Node("ew", "gelu", ("x",), ("y",), {"fn": "gelu", "params": ()})
    ctx = _ctx({"x": (-1, 64), "y": (-1, 64)}, {}, {"x": qx}, out)
    FLOAT["ew"].quantize(ctx, fnode)
    q = rng.integers(qx.lo, qx.hi + 1, (2, 64))
    got = INT["qlut"].run_int(_int_node(ctx), [q], None) * out.scale
    x = q * scale
    want = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    inside = (want / out.scale > out.lo) & (want / out.scale < out.hi)
    assert np.all(np.abs(got - want)[inside] <= out.scale / 2 + 2e-7)


def test_isqrt_exact():
    from dyadic.ops.layernorm import isqrt_np

    rng = np.random.default_rng(0)
    v = np.concatenate([rng.integers(0, 2 ** 62, 2000), rng.integers(0, 2 ** 20, 2000), np.arange(300),
                        np.array([2 ** 62 - 1, (2 ** 31 - 1) ** 2, (2 ** 31 - 1) ** 2 - 1])]).astype(np.int64)
    r = isqrt_np(v)
    assert all(int(a) == math.isqrt(int(b)) for a, b in zip(r, v))


@pytest.mark.parametrize("barriers", [False, True], ids=["cpu", "cuda-form"])
def test_isqrt_relax_exact(barriers):
    """the bit-by-bit square root the library runs is the exact floor square root, also in the form a
    GPU build gets (an opaque copy after every round)"""
    import types

    tvm = pytest.importorskip("tvm")
    from tvm import relax

    from dyadic.backend.lower import _Lowerer
    from dyadic.ops.layernorm import isqrt_relax

    class _L:
        target = types.SimpleNamespace(inlines_elementwise_chains=barriers)
        chain_barrier, _opaque_copy, _inlines_chains = (_Lowerer.chain_barrier, _Lowerer._opaque_copy,
                                                        _Lowerer._inlines_chains)

        def __init__(self):
            self.bb = relax.BlockBuilder()

        def emit(self, e):
            return self.bb.emit(e)

    L = _L()
    x = relax.Var("x", relax.TensorType([64], "int64"))
    with L.bb.function("main", [x]):
        with L.bb.dataflow():
            out = L.bb.emit_output(isqrt_relax(L, x, 31))
        L.bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(L.bb.get(), target="llvm"), tvm.cpu())
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.integers(0, 2 ** 62, 60), [0, 1, 2 ** 62 - 1, 3]]).astype(np.int64)
    got = vm["main"](tvm.runtime.tensor(v)).numpy()
    assert [int(a) for a in got] == [math.isqrt(int(b)) for b in v]


def test_matmul_verifier_bound():
    """K max|a| max|b| >= 2^31 is refused"""
    from dyadic.core.errors import VerificationError
    from dyadic.core.verify import verify_integer_graph

    q16, q8 = QParams(0.1, 16, True), QParams(0.1, 8, True)
    shapes = {"a": (-1, 2, 4, 600), "b": (-1, 2, 600, 4), "y": (-1, 2, 4, 4)}
    mk = lambda qa: Graph((Node("qmatmul", "mm", ("a", "b"), ("y",), {"lo": -128, "hi": 127},  # noqa: E731
                                {"M": np.array(1 << 30), "S": np.array(40)}),), ("a", "b"), ("y",), shapes,
                          {"a": qa.dtype, "b": "int8", "y": "int8"}, qparams={"a": qa, "b": q8, "y": q8})
    verify_integer_graph(mk(q8), "test")
    with pytest.raises(VerificationError, match="int32 accumulator can overflow"):
        verify_integer_graph(mk(QParams(0.1, 16, True)), "test")
    assert q16.bits == 16


def _pv_graph(producer: str, rowsum: int | None, k: int = 128) -> Graph:
    """P (a qsoftmax output, or a plain input) x V, both 16-bit, K = 128, with an optional a_rowsum claim."""
    q16 = QParams(0.001, 16, True)
    shapes = {"s": (-1, 2, 4, k), "a": (-1, 2, 4, k), "b": (-1, 2, k, 8), "y": (-1, 2, 4, 8)}
    attrs = {"lo": -32768, "hi": 32767, **({"a_rowsum": rowsum} if rowsum is not None else {})}
    mm = Node("qmatmul", "mm", ("a", "b"), ("y",), attrs, {"M": np.array(1 << 30), "S": np.array(45)})
    nodes = (mm,)
    inputs = ("a", "b")
    if producer == "softmax":
        sm = Node("qsoftmax", "sm", ("s",), ("a",), {"axis": 3, "Q": 32767, "lo": 0, "hi": 32767},
                  {"E": np.array([1 << 15, 1 << 14], np.int32)})
        nodes, inputs = (sm, mm), ("s", "b")
    dt = {t: "int32" for t in shapes}
    return Graph(nodes, inputs, ("y",), shapes, dt, qparams={t: q16 for t in shapes})


def test_matmul_probability_rowsum_bound():
    """P·V at 16 x 16 bits over 128 keys: K max|a| max|b| = 2^37 would overflow, but P's rows sum to at
    most 32767 + 64 (+1), so (32832) x 32768 < 2^31 is accepted where P is the qsoftmax's own output;
    the same claim on a tensor no softmax produced, or a claim below the true row sum, is refused."""
    from dyadic.core.errors import VerificationError
    from dyadic.core.verify import verify_integer_graph
    from dyadic.ops.matmul import softmax_rowsum

    verify_integer_graph(_pv_graph("softmax", softmax_rowsum(32767, 128)), "test")
    with pytest.raises(VerificationError, match="int32 accumulator can overflow"):
        verify_integer_graph(_pv_graph("softmax", None), "test")
    with pytest.raises(VerificationError, match="a_rowsum 32832 claimed"):
        verify_integer_graph(_pv_graph("input", softmax_rowsum(32767, 128)), "test")
    with pytest.raises(VerificationError, match="a_rowsum 32767 claimed"):
        verify_integer_graph(_pv_graph("softmax", 32767), "test")


def test_quantized_attention_keeps_probabilities_and_values_16bit():
    """Before: softmax(scores) @ V with 16-bit probabilities and values, K = 128. Expected: one qmatmul
    reading both unrequantized (no narrowing requant nodes), with the a_rowsum claim; a product whose
    left operand is not a softmax output narrows as before."""
    from dyadic.ops.matmul import softmax_rowsum

    k = 128
    shapes = {"s": (-1, 2, 4, k), "p": (-1, 2, 4, k), "v": (-1, 2, k, 8), "y": (-1, 2, 4, 8)}
    sm = Node("softmax", "sm", ("s",), ("p",), {"axis": 3})
    mm = Node("matmul", "mm", ("p", "v"), ("y",))
    g = Graph((sm, mm), ("s", "v"), ("y",), shapes, {}, ranges={"p": (0.0, 1.0), "v": (-3.0, 3.0), "y": (-3.0, 3.0)})
    q16 = lambda sc: QParams(sc, 16, True)  # noqa: E731
    for a_prob in (True, False):
        qp = {"p": q16(1 / 32767) if a_prob else q16(1 / 32767), "v": q16(3 / 32767)}
        gg = g if a_prob else g.replace(nodes=(mm,), inputs=("p", "v"))
        ctx = QuantContext(gg, dict(qp), lambda t, signed=None: q16(3 / 32767))
        FLOAT["matmul"].quantize(ctx, mm)
        ops = [n.op for n in ctx.nodes]
        if a_prob:
            assert ops == ["qmatmul"] and ctx.nodes[0].inputs == ("p", "v")
            assert ctx.nodes[0].attrs["a_rowsum"] == softmax_rowsum(32767, k)
        else:
            assert ops.count("requant") >= 1 and "a_rowsum" not in ctx.nodes[-1].attrs


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2 ** 40), st.data())
def test_row_divide_arithmetic_exact(den_min, data):
    """one reciprocal per row plus one correction step is floor division, for every 0 <= n <= n_max"""
    from dyadic.ops.intdiv import row_divide_np, row_shift

    num_max = data.draw(st.integers(0, min(2 ** 62 // den_min, 2 ** 50)))
    try:
        k = row_shift(num_max, den_min)
    except ValueError:
        return
    den = np.array([data.draw(st.integers(den_min, max(den_min, 4 * den_min))) for _ in range(4)], np.int64)
    num = np.array([data.draw(st.integers(0, num_max)) for _ in range(4)] + [num_max, 0], np.int64)
    got = row_divide_np(num[:, None], den[None, :], k)
    assert np.array_equal(got, num[:, None] // den[None, :])


def test_row_divide_relax_exact():
    """the Relax lowering (a materialized per-row reciprocal) divides exactly, at the int64 edge too"""
    tvm = pytest.importorskip("tvm")
    from tvm import relax

    from dyadic.backend.lower import _Lowerer
    from dyadic.ops.intdiv import row_divide

    class _L:
        target = None
        materialize, _opaque_copy, _inlines_chains = _Lowerer.materialize, _Lowerer._opaque_copy, _Lowerer._inlines_chains

        def __init__(self):
            self.bb = relax.BlockBuilder()

        def emit(self, e):
            return self.bb.emit(e)

    L = _L()
    num_max, den_min = 2 ** 31 + 2 ** 21, 2 ** 15  # softmax: E0 Q + n E0 / 2 over Σ >= E0 (n = 128)
    x = relax.Var("x", relax.TensorType([6, 50], "int64"))
    d = relax.Var("d", relax.TensorType([6, 1], "int64"))
    with L.bb.function("main", [x, d]):
        with L.bb.dataflow():
            out = L.bb.emit_output(row_divide(L, x, d, num_max, den_min))
        L.bb.emit_func_output(out)
    mod = L.bb.get()
    assert any(f.attrs.get("op_pattern") == 8 for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    rng = np.random.default_rng(3)
    den = np.array([[den_min], [den_min + 1], [3 * den_min + 7], [2 ** 21], [128 * den_min], [99999]], np.int64)
    num = rng.integers(0, num_max + 1, (6, 50)).astype(np.int64)
    num[:, :4] = [num_max, 0, 1, num_max - 1]
    num[:, 4] = (num_max // den[:, 0]) * den[:, 0]      # exact multiples and one below
    num[:, 5] = num[:, 4] - 1
    got = vm["main"](tvm.runtime.tensor(num), tvm.runtime.tensor(den)).numpy()
    assert np.array_equal(got, num // den)
