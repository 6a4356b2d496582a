"""Gradients and Hessian-trace estimates of the float graph, against finite differences."""
import numpy as np
import pytest

from dyadic.mixed.autodiff import loss_and_grads
from dyadic.mixed.hessian import estimate_traces, exact_block_traces
from dyadic.frontend import import_onnx
from dyadic.passes import calibrate_ranges, fold_batchnorm, fuse_activations
from dyadic.passes.estimate_sensitivity import estimate_sensitivity

from _tiny_onnx import bias, conv_w, make_model, node

P1 = [1, 1, 1, 1]


def _tiny(rng):
    """conv -> relu -> maxpool -> conv (+ residual add) -> relu -> global mean -> gemm: ~250 weights."""
    nodes = [node("Conv", ["input", "W1", "B1"], "c1", pads=P1), node("Relu", ["c1"], "r1"),
             node("MaxPool", ["r1"], "p1", kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p1", "W2", "B2"], "c2", pads=P1), node("Add", ["c2", "p1"], "s"),
             node("Relu", ["s"], "r2"), node("GlobalAveragePool", ["r2"], "g"), node("Flatten", ["g"], "f"),
             node("Gemm", ["f", "W3", "B3"], "out", transB=1)]
    inits = {"W1": conv_w(rng, 4, 2), "B1": bias(rng, 4), "W2": conv_w(rng, 4, 4), "B2": bias(rng, 4),
             "W3": rng.normal(0, 1, (3, 4)).astype(np.float32), "B3": bias(rng, 3)}
    return fuse_activations(fold_batchnorm(import_onnx(make_model(nodes, inits, in_shape=("N", 2, 6, 6)))))


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    g = _tiny(rng)
    x, y = rng.standard_normal((3, 2, 6, 6)), np.array([0, 2, 1])
    theta = {n.name: n.params["W"].astype(np.float64) for n in g.weighted_nodes()}
    theta[("act", "p1")] = np.zeros((3, 4, 3, 3))
    _, grads = loss_and_grads(g, x, y, theta)
    for k, v in theta.items():
        d = rng.standard_normal(v.shape)
        plus, minus = dict(theta), dict(theta)
        plus[k], minus[k] = v + 1e-6 * d, v - 1e-6 * d
        fd = (loss_and_grads(g, x, y, plus)[0] - loss_and_grads(g, x, y, minus)[0]) / 2e-6
        assert fd == pytest.approx(float((grads[k] * d).sum()), rel=1e-5, abs=1e-9), k


def test_trace_estimate_matches_exact_hessian():
    rng = np.random.default_rng(1)
    g = _tiny(rng)
    x = rng.standard_normal((4, 2, 6, 6))
    blocks = {n.name: n.params["W"] for n in g.weighted_nodes()}
    blocks[("act", "p1")] = np.zeros((4, 4, 3, 3))
    # the exact block traces do not depend on the labels' values (piecewise-linear net, softmax loss)
    exact = exact_block_traces(g, x, np.array([0, 1, 2, 0]), blocks)
    est = estimate_traces(g, x, blocks, rel_se=0.02, min_probes=50, max_probes=3000, seed=3)
    for k, e in est.items():
        assert exact[k] > 0
        assert e.rel_se <= 0.02
        # within 4 standard errors of the exact value (and the standard error is small)
        assert abs(e.mean - exact[k]) <= 4 * e.se + 1e-12, (k, e, exact[k])


def test_sensitivity_records_every_layer_and_candidate():
    rng = np.random.default_rng(2)
    g = _tiny(rng)
    data = {"input": rng.standard_normal((16, 2, 6, 6)).astype(np.float32)}
    g = estimate_sensitivity(calibrate_ranges(g, data, quiet=True), data, samples=8, rel_se=0.1, quiet=True)
    sens = g.meta["sensitivity"]
    assert set(sens) == {n.name for n in g.weighted_nodes()}
    for s in sens.values():
        assert s["trace_w"] > 0 and s["trace_w_se"] >= 0
        assert s["weight_sq_err"]["4"] > s["weight_sq_err"]["8"]
        # 4-bit weights perturb more than 8-bit; 4-bit activations on top perturb more still
        assert s["omega"]["W4A4"] >= s["omega"]["W4A8"] > s["omega"]["W8A8"] > 0
    assert g.meta["sensitivity_info"]["probes"] >= 8


def test_table_op_gradients_match_finite_differences():
    """Gradients through the op-table ops (hard-swish table, squeeze-excite product, per-channel affine,
    transpose, softmax) agree with central differences."""
    from dyadic.passes import fuse_unary

    rng = np.random.default_rng(5)
    nodes = [node("Conv", ["input", "W1", "B1"], "c1", pads=P1), node("HardSwish", ["c1"], "h"),
             node("GlobalAveragePool", ["h"], "g"), node("Sigmoid", ["g"], "gate"), node("Mul", ["h", "gate"], "m"),
             node("Relu", ["m"], "r"), node("Mul", ["r", "s"], "a"), node("Transpose", ["a"], "t", perm=[0, 1, 3, 2]),
             node("Conv", ["t", "W2", "B2"], "c2"), node("GlobalAveragePool", ["c2"], "g2"), node("Flatten", ["g2"], "f"),
             node("Gemm", ["f", "W3", "B3"], "z", transB=1), node("Softmax", ["z"], "out")]
    inits = {"W1": conv_w(rng, 4, 2), "B1": bias(rng, 4), "s": rng.uniform(0.5, 1.5, (4, 1, 1)).astype(np.float32),
             "W2": conv_w(rng, 4, 4), "B2": bias(rng, 4), "W3": rng.normal(0, 1, (3, 4)).astype(np.float32),
             "B3": bias(rng, 3)}
    g = fuse_activations(fuse_unary(fold_batchnorm(import_onnx(make_model(nodes, inits, in_shape=("N", 2, 6, 6))))))
    assert {"unary", "mul", "affine", "transpose", "softmax"} <= {n.op for n in g.nodes}
    x, y = rng.standard_normal((3, 2, 6, 6)), np.array([0, 2, 1])
    theta = {n.name: n.params["W"].astype(np.float64) for n in g.weighted_nodes()}
    _, grads = loss_and_grads(g, x, y, theta)
    for k, v in theta.items():
        d = rng.standard_normal(v.shape)
        plus, minus = dict(theta), dict(theta)
        plus[k], minus[k] = v + 1e-5 * d, v - 1e-5 * d
        fd = (loss_and_grads(g, x, y, plus)[0] - loss_and_grads(g, x, y, minus)[0]) / 2e-5
        assert fd == pytest.approx(float((grads[k] * d).sum()), rel=1e-3, abs=1e-7), k


def test_transformer_op_gradients_match_finite_differences():
    """Gradients through the transformer ops (LayerNorm, a linear layer with its bias, the matmul of two
    activations with its scale, softmax over keys) agree with central differences, here with respect to
    the token tensor itself (the ("act", t) perturbation `--wide-activations auto` weighs)."""
    from dyadic.mixed.autodiff import backward, forward

    rng = np.random.default_rng(7)
    t, c = 5, 6
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    nodes = [node("MatMul", ["input", "W0"], "tok"),
             node("LayerNormalization", ["tok", "g", "b"], "ln", axis=-1, epsilon=1e-5),
             node("MatMul", ["ln", "Wq"], "q0"), node("Add", ["q0", "bq"], "q"),
             node("Transpose", ["q"], "kT", perm=[0, 2, 1]), node("MatMul", ["q", "kT"], "s"),
             node("Mul", ["s", "sc"], "s2"), node("Softmax", ["s2"], "p", axis=-1),
             node("MatMul", ["p", "ln"], "out")]
    inits = {"W0": f32(rng.normal(0, 1, (c, c))), "g": f32(rng.uniform(0.5, 1.5, c)), "b": f32(rng.normal(0, 0.3, c)),
             "Wq": f32(rng.normal(0, 0.5, (c, c))), "bq": f32(rng.normal(0, 0.1, c)), "sc": f32(0.4)}
    g = import_onnx(make_model(nodes, inits, in_shape=("N", t, c)))
    assert {"linear", "layernorm", "matmul", "softmax"} <= {n.op for n in g.nodes}
    x = rng.standard_normal((2, t, c))
    key = ("act", "tok")
    z0 = forward(g, x, {key: np.zeros((2, t, c))}).env["out"]
    w = rng.standard_normal(z0.shape)
    grad = backward(g, forward(g, x, {key: np.zeros((2, t, c))}), w, {key: np.zeros((2, t, c))})[key]
    d = rng.standard_normal((2, t, c))
    fd = ((forward(g, x, {key: 1e-5 * d}).env["out"] - forward(g, x, {key: -1e-5 * d}).env["out"]) * w).sum() / 2e-5
    assert fd == pytest.approx(float((grad * d).sum()), rel=1e-5)


def _two_heads(rng):
    """input -> conv -> relu -> {head A: 1x1 conv -> pool -> "a"; head B: 1x1 conv -> pool -> "b"}, as a
    detector's score and box heads: each head's own conv output reaches one output only."""
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]), node("Relu", ["c0"], "r0"),
             node("Conv", ["r0", "Wa", "Ba"], "ca"), node("GlobalAveragePool", ["ca"], "ga"), node("Flatten", ["ga"], "a"),
             node("Conv", ["r0", "Wb", "Bb"], "cb"), node("GlobalAveragePool", ["cb"], "gb"), node("Flatten", ["gb"], "b")]
    inits = {"W0": conv_w(rng, 6, 3), "B0": bias(rng, 6), "Wa": conv_w(rng, 4, 6, 1), "Ba": bias(rng, 4),
             "Wb": conv_w(rng, 5, 6, 1), "Bb": bias(rng, 5)}
    return make_model(nodes, inits, in_shape=("N", 3, 6, 6), outputs=("a", "b"))


def test_logit_traces_cover_every_output():
    """In logit space the probes run over both heads: head B's own tensor gets its error power (it
    raised KeyError when only the first output was probed), equal to what the gradient of head B alone
    gives; in loss mode (the first output) it reads 0."""
    from dyadic.mixed.autodiff import backward, forward

    rng = np.random.default_rng(11)
    g = import_onnx(_two_heads(rng))
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    blocks = {("act", "ca"): np.zeros((4, 4, 6, 6)), ("act", "cb"): np.zeros((4, 5, 6, 6))}
    tr = estimate_traces(g, x, blocks, rel_se=0.05, min_probes=64, max_probes=400, logits=True)
    assert tr[("act", "ca")].mean > 0 and tr[("act", "cb")].mean > 0
    # exact (Rademacher probes, u^2 = 1): each head is its conv output's mean over 36 pixels, so every
    # element's gradient is u/(36 sqrt(N)), and the per-element mean of its square 1/(N 36^2)
    for k in blocks:
        assert tr[k].mean == pytest.approx(1 / (4 * 36 ** 2), rel=1e-5)
    loss = estimate_traces(g, x, {("act", "cb"): blocks[("act", "cb")]}, rel_se=0.05, min_probes=8, max_probes=16)
    assert loss[("act", "cb")].mean == 0.0 and loss[("act", "cb")].probes == 8  # exactly 0: no wait for its se
    tape = forward(g, x, blocks)
    only_b = backward(g, tape, {"b": np.ones((4, 5), np.float32)}, blocks)
    assert ("act", "ca") not in only_b and only_b[("act", "cb")].shape == (4, 5, 6, 6)
