"""`--wide-activations auto` (`passes/choose_wide_activations`): 16-bit codes where the logits feel
the 8-bit rounding most.

* the error-weighted Hutchinson estimate matches the logit error that rounding a tensor actually
  causes (measured by running the float graph on the rounded tensor);
* Before/Expected: a tensor whose 8-bit step is coarse (one channel's large bias stretches the
  per-tensor range) is widened and a fine one is not; share 0 widens every candidate; the
  predictions are ordered (8-bit <= chosen <= all 16-bit);
* a graph with two inputs is refused with a message naming the flag;
* the flag maps to the config and its range is checked. (Bit-exact compiles in every mode, AUTO
  included: test_widen_activations.)
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from _tiny_onnx import bias, conv_w, make_model, node

from dyadic.core.config import CompileConfig, WideActivations
from dyadic.core.weight_quant import WeightClip
from dyadic.frontend import import_onnx


def _two_branch(rng, big=40.0):
    """input -> c0 (one channel biased by `big`: a coarse 8-bit step) -> relu ; input -> c1 -> relu;
    both -> 1x1 conv each -> add -> global pool -> dense"""
    b0 = bias(rng, 8)
    b0[0] = big
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]), node("Relu", ["c0"], "r0"),
             node("Conv", ["input", "W1", "B1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             node("Conv", ["r0", "W2", "B2"], "p0"), node("Conv", ["r1", "W3", "B3"], "p1"),
             node("Add", ["p0", "p1"], "s"), node("GlobalAveragePool", ["s"], "g"),
             node("Flatten", ["g"], "f"), node("Gemm", ["f", "Wd", "Bd"], "out", transB=1)]
    w2 = conv_w(rng, 8, 8, 1)
    w2[:, 0] = 0.0  # the big channel itself is not read: only its range hurts
    inits = {"W0": conv_w(rng, 8, 3), "B0": b0, "W1": conv_w(rng, 8, 3), "B1": bias(rng, 8),
             "W2": w2, "B2": bias(rng, 8), "W3": conv_w(rng, 8, 8, 1), "B3": bias(rng, 8),
             "Wd": rng.normal(size=(10, 8)).astype(np.float32), "Bd": bias(rng, 10)}
    return make_model(nodes, inits, in_shape=("N", 3, 8, 8))


def _calibrated(model, calib, kind=WideActivations.AUTO, share=0.1, cosine=None):
    from dyadic.pipeline import float_passes, run_passes

    cfg = CompileConfig(quiet=True, wide_activations=kind, wide_share=0.1 if share is None else share, wide_cosine=cosine)
    return run_passes(import_onnx(model), float_passes(cfg, calib))


def test_estimate_matches_the_measured_logit_error():
    from dyadic.core.calibrators import act_range
    from dyadic.core.float_exec import execute
    from dyadic.mixed.hessian import estimate_traces
    from dyadic.passes.quantize_graph import activation_qparams

    rng = np.random.default_rng(0)
    model = _two_branch(rng)
    x = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
    g = _calibrated(model, {"input": x}, kind=WideActivations.NONE)
    t = "r1"
    acts = {}
    z0 = execute(g, {"input": x}, lambda k, v: acts.__setitem__(k, v) if k == t else None)["out"].astype(np.float64)
    q = activation_qparams(act_range(g, t, 8), 8)
    e = np.clip(np.rint(acts[t] / q.scale), q.lo, q.hi) * q.scale - acts[t]
    # the rounded tensor fed back in, the float graph run on: its measured logit error power per sample
    from dyadic.mixed.autodiff import forward

    tape = forward(g, x, {("act", t): e.astype(np.float64)})
    measured = float(((tape.env["out"] - z0) ** 2).sum(1).mean())
    est = estimate_traces(g, x, {("act", t): np.zeros_like(e)}, rel_se=0.05, min_probes=64, max_probes=400,
                          logits=True, err2={("act", t): e.astype(np.float64) ** 2})[("act", t)]
    assert measured > 0
    assert 0.7 < est.mean / measured < 1.4, (est.mean, measured)


def test_coarse_tensor_widened_fine_one_not():
    rng = np.random.default_rng(1)
    model = _two_branch(rng)
    g = _calibrated(model, {"input": rng.normal(size=(16, 3, 8, 8)).astype(np.float32)}, share=0.5)
    wide = set(g.meta.get("wide", ()))
    info = g.meta["wide_choice"]
    assert "r0" in wide and "r1" not in wide, (wide, info)
    assert 0 < info["widened"] < info["candidates"]
    pc = info["predicted_cosine"]
    assert pc["8bit"] <= pc["chosen"] <= pc["all16"] <= 1.0


def test_share_zero_widens_every_candidate():
    from dyadic.passes.widen_activations import wide_candidates

    rng = np.random.default_rng(2)
    model = _two_branch(rng)
    g = _calibrated(model, {"input": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)}, share=0.0)
    assert set(g.meta["wide"]) == wide_candidates(g, WideActivations.ALL)
    none = _calibrated(model, {"input": rng.normal(size=(8, 3, 8, 8)).astype(np.float32)}, kind=WideActivations.NONE)
    assert "wide_choice" not in none.meta and not none.meta.get("wide")


def test_concat_inputs_kept_16bit_only_with_their_concat():
    """Before: a -> concat c (with b) -> transpose t -> conv; d read by a conv and by c. Expected: with
    c's output 8-bit, a (read only by c) and b (through a reshape) are dropped from the choice, since c
    would round them back to 8 bits at once; d keeps its other reader's 16 bits; with c wide they stay."""
    from dyadic.core.graph import Graph, Node
    from dyadic.passes.choose_wide_activations import _useful

    nodes = [Node("conv", "a", ("x",), ("a",)), Node("conv", "b0", ("x",), ("b0",)),
             Node("reshape", "b", ("b0",), ("b",)), Node("conv", "d", ("x",), ("d",)),
             Node("concat", "c", ("a", "b", "d"), ("c",), {"axis": 1}), Node("transpose", "t", ("c",), ("t",)),
             Node("conv", "y", ("t",), ("y",)), Node("conv", "z", ("d",), ("z",))]
    g = Graph(tuple(nodes), ("x",), ("y", "z"), {}, {})
    users = g.consumers()
    assert _useful(users, ["a", "b0", "d"]) == ["d"]
    assert _useful(users, ["c", "a", "b0", "d"]) == ["c", "a", "b0", "d"]


def test_two_inputs_refused():
    from dyadic.core.errors import ModelError

    rng = np.random.default_rng(3)
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]), node("Add", ["c0", "other"], "out")]
    from onnx import TensorProto, helper

    model = make_model(nodes, {"W0": conv_w(rng, 4, 3), "B0": bias(rng, 4)}, in_shape=("N", 3, 8, 8))
    model.graph.input.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, ["N", 4, 8, 8]))
    calib = {"input": rng.normal(size=(4, 3, 8, 8)).astype(np.float32),
             "other": rng.normal(size=(4, 4, 8, 8)).astype(np.float32)}
    with pytest.raises(ModelError, match="--wide-activations auto"):
        _calibrated(model, calib)


def test_cli_share_flag():
    from dyadic.cli.quant_args import add_quant_args, quant_config

    p = argparse.ArgumentParser()
    add_quant_args(p)
    cfg = quant_config(p.parse_args(["--wide-activations", "auto", "--wide-share", "0.05"]))
    assert cfg["wide_activations"] is WideActivations.AUTO and cfg["wide_share"] == 0.05
    with pytest.raises(SystemExit):
        quant_config(p.parse_args(["--wide-share", "1.5"]))


def _coarse_reader(rng):
    """input -> conv c0 -> relu r0 -> 1x1 conv p0; input -> conv c1 -> relu r1 -> 1x1 conv p1; add ->
    global pool -> dense. r0's channel 0 is always 0 (bias -50), and p0 reads it with weights 30x its
    others, which sets p0's per-channel scales: the weights that carry its output round coarsely at 8
    bits. r0's own 8-bit rounding is harmless; p0's weights are not."""
    w2 = conv_w(rng, 8, 8, 1)
    w2[:, 0] = 30.0 * np.abs(w2).max()
    b0 = bias(rng, 8)
    b0[0] = -50.0
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]), node("Relu", ["c0"], "r0"),
             node("Conv", ["r0", "W2", "B2"], "p0"),
             node("Conv", ["input", "W1", "B1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             node("Conv", ["r1", "W3", "B3"], "p1"), node("Add", ["p0", "p1"], "s"),
             node("GlobalAveragePool", ["s"], "g"), node("Flatten", ["g"], "f"),
             node("Gemm", ["f", "Wd", "Bd"], "out", transB=1)]
    inits = {"W0": conv_w(rng, 8, 3), "B0": b0, "W2": w2, "B2": bias(rng, 8), "W1": conv_w(rng, 8, 3), "B1": bias(rng, 8),
             "W3": conv_w(rng, 8, 8, 1), "B3": bias(rng, 8),
             "Wd": rng.normal(size=(10, 8)).astype(np.float32), "Bd": bias(rng, 10)}
    return make_model(nodes, inits, in_shape=("N", 3, 8, 8))


def _calibrated_ww(model, calib, ww, **kw):
    from dyadic.core.config import WideWeights
    from dyadic.pipeline import float_passes, run_passes

    cfg = CompileConfig(quiet=True, wide_activations=WideActivations.AUTO, wide_weights=WideWeights(ww), **kw)
    return run_passes(import_onnx(model), float_passes(cfg, calib))


def test_wide_weights_count_in_the_choice():
    """Before: r0's own rounding is harmless, its reader p0's 8-bit weights are coarse. Expected: without
    --wide-weights nothing explains widening r0; with it, widening r0 removes p0's weight error (p0 gets
    9-12-bit weights), so r0 is chosen and the predicted all-16-bit cosine is higher."""
    rng = np.random.default_rng(4)
    model = _coarse_reader(rng)
    calib = {"input": rng.normal(size=(16, 3, 8, 8)).astype(np.float32)}
    plain = _calibrated_ww(model, calib, "none")
    ww = _calibrated_ww(model, calib, "auto")
    assert "r0" not in plain.meta.get("wide", ()), plain.meta["wide_choice"]
    assert "r0" in ww.meta["wide"], ww.meta["wide_choice"]
    pp, pw = plain.meta["wide_choice"]["predicted_cosine"], ww.meta["wide_choice"]["predicted_cosine"]
    assert pp["8bit"] == pytest.approx(pw["8bit"])
    assert pw["all16"] > pp["all16"]
    assert pw["8bit"] <= pw["chosen"] <= pw["all16"]


def test_cosine_target(capsys):
    """--wide-cosine (the simulated build's logit cosine on calibration inputs): a target the 8-bit build
    already meets widens nothing; one above the all-16-bit build's widens every candidate that matters
    and says the target is out of reach;
    one in between is met with less widened; the chosen build's simulated cosine is what the compile
    records."""
    from dyadic.core.config import WideWeights
    from dyadic.passes.choose_wide_activations import predict, select, select_for_cosine

    rng = np.random.default_rng(5)
    model = _two_branch(rng)
    calib = {"input": rng.normal(size=(16, 3, 8, 8)).astype(np.float32)}
    g = _calibrated(model, calib, kind=WideActivations.NONE)
    pred = predict(g)
    x = calib["input"][:8]
    args = (x, WideWeights.NONE, WeightClip.W4, True)
    _, c8, seen = select_for_cosine(g, pred, 0.0, *args)
    assert seen == {0: c8}
    every = select(g, pred, share=0.0)
    chosen, c16, _ = select_for_cosine(g, pred, 1.0, *args)
    assert set(chosen) == set(every) and c8 < c16 < 1.0
    mid = c8 + 0.5 * (c16 - c8)
    some, c, seen = select_for_cosine(g, pred, mid, *args)
    assert 0 < len(some) <= len(every) and c >= mid
    assert all(v < mid for k, v in seen.items() if k < len(some))
    full = _calibrated(model, calib, share=None, cosine=mid)
    info = full.meta["wide_choice"]
    assert set(full.meta["wide"]) == set(some) and info["criterion"] == {"cosine": mid}
    assert info["simulated_cosine"]["chosen"] == pytest.approx(c)
    from dyadic.pipeline import float_passes, run_passes

    loud = CompileConfig(wide_activations=WideActivations.AUTO, wide_cosine=1.0 - 1e-12)
    run_passes(import_onnx(model), float_passes(loud, calib))
    assert "the target is out of reach" in capsys.readouterr().out
    met = _calibrated(model, calib, share=None, cosine=c8 - 1e-6)  # already met at 8 bits: nothing widened
    assert not met.meta.get("wide") and met.meta["wide_choice"]["simulated_cosine"]["chosen"] == pytest.approx(c8)


def test_cosine_target_on_a_static_batch_graph():
    """A static-batch graph (batch 1 here; a PP-OCR recognizer's reshapes pin it) runs its simulation and
    its traces one batch at a time: the simulated cosine equals the free-batch graph's on the same inputs
    without bias correction (which `round_weights` skips for static-batch graphs), and `--wide-cosine`
    makes a choice instead of failing on a reshape of 8 samples into a batch of 1."""
    from dyadic.core.config import WideWeights
    from dyadic.passes.choose_wide_activations import predict, select, simulated_cosine

    rng = np.random.default_rng(5)
    model = _two_branch(rng)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    calib = {"input": rng.normal(size=(16, 3, 8, 8)).astype(np.float32)}
    from dyadic.pipeline import float_passes, run_passes

    cfg = CompileConfig(quiet=True, wide_activations=WideActivations.NONE)
    gs = run_passes(import_onnx(model, static_batch=True), float_passes(cfg, calib))
    gd = run_passes(import_onnx(model), float_passes(cfg, calib))
    assert gs.meta.get("static_batch") and gs.shapes["f"][0] == 1 and not gd.meta.get("static_batch")
    x = calib["input"][:8]
    every = select(gd, predict(gd), share=0.0)
    for wide in ([], every):
        cs = simulated_cosine(gs, wide, x, WideWeights.NONE, WeightClip.W4, True)
        assert cs == pytest.approx(simulated_cosine(gd, wide, x, WideWeights.NONE, WeightClip.W4, False), abs=1e-6)
    c8, c16 = (simulated_cosine(gs, w, x, WideWeights.NONE, WeightClip.W4, True) for w in ([], every))
    assert c8 < c16
    pred = predict(gs)
    assert pred.samples == 8 and set(pred.gain) == set(predict(gd).gain) and pred.p8 > 0
    target = c8 + 0.5 * (c16 - c8)
    auto = CompileConfig(quiet=True, wide_activations=WideActivations.AUTO, wide_cosine=target)
    full = run_passes(import_onnx(model, static_batch=True), float_passes(auto, calib))
    info = full.meta["wide_choice"]
    assert full.meta["wide"] and info["simulated_cosine"]["chosen"] >= target


def test_cli_cosine_flag():
    from dyadic.cli.quant_args import add_quant_args, quant_config

    p = argparse.ArgumentParser()
    add_quant_args(p)
    cfg = quant_config(p.parse_args(["--wide-activations", "auto", "--wide-cosine", "0.995"]))
    assert cfg["wide_cosine"] == 0.995 and "wide_share" not in cfg
    for bad in (["--wide-activations", "auto", "--wide-cosine", "0.99", "--wide-share", "0.1"],
                ["--wide-activations", "auto", "--wide-cosine", "1.0"], ["--wide-cosine", "0.99"],
                ["--wide-activations", "all", "--wide-share", "0.1"]):
        with pytest.raises(SystemExit):
            quant_config(p.parse_args(bad))


def _sequence_model(rng):
    """input [N,3,8,8] -> conv -> relu (one channel biased: a coarse step) -> 1x1 conv to 6 classes ->
    [N,6,64] -> [N,64,6] -> Softmax: 64 steps of class probabilities, as a CTC head writes them."""
    b0 = bias(rng, 8)
    b0[0] = 40.0
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]), node("Relu", ["c0"], "r0"),
             node("Conv", ["r0", "W1", "B1"], "c1"), node("Reshape", ["c1", "shape"], "s"),
             node("Transpose", ["s"], "t", perm=[0, 2, 1]), node("Softmax", ["t"], "out", axis=-1)]
    w1 = conv_w(rng, 6, 8, 1)
    w1[:, 0] = 0.0
    inits = {"W0": conv_w(rng, 8, 3), "B0": b0, "W1": 3 * w1, "B1": bias(rng, 6),
             "shape": np.array([0, 6, 64], np.int64)}
    return make_model(nodes, inits, in_shape=("N", 3, 8, 8))


def test_cosine_target_per_step():
    """`--wide-cosine-over step`: the target holds for the mean per-step cosine of the simulation, the
    plan records the criterion, and the 8-bit shortcut uses the same measure."""
    from dyadic.core.config import CosineOver, WideWeights
    from dyadic.passes.choose_wide_activations import predict, select, simulated_cosine
    from dyadic.pipeline import float_passes, run_passes

    rng = np.random.default_rng(7)
    model = _sequence_model(rng)
    calib = {"input": rng.normal(size=(16, 3, 8, 8)).astype(np.float32)}
    g = _calibrated(model, calib, kind=WideActivations.NONE)
    x = calib["input"][:8]
    every = select(g, predict(g), share=0.0)
    step = [simulated_cosine(g, w, x, WideWeights.NONE, WeightClip.W4, True, CosineOver.STEP) for w in ([], every)]
    sample = [simulated_cosine(g, w, x, WideWeights.NONE, WeightClip.W4, True) for w in ([], every)]
    assert step[0] < step[1] and step != sample
    target = step[0] + 0.5 * (step[1] - step[0])

    def run(cosine):
        cfg = CompileConfig(quiet=True, wide_activations=WideActivations.AUTO, wide_cosine=cosine,
                            wide_cosine_over=CosineOver.STEP)
        return run_passes(import_onnx(model), float_passes(cfg, calib))

    full = run(target)
    info = full.meta["wide_choice"]
    assert full.meta["wide"] and info["criterion"] == {"cosine": target, "over": "step"}
    assert info["simulated_cosine"]["chosen"] >= target and info["simulated_cosine"]["8bit"] == pytest.approx(step[0])
    met = run(step[0] - 1e-6)
    assert not met.meta.get("wide") and met.meta["wide_choice"]["simulated_cosine"]["chosen"] == pytest.approx(step[0])


def test_cli_cosine_over_flag():
    from dyadic.cli.quant_args import add_quant_args, quant_config
    from dyadic.core.config import CosineOver

    p = argparse.ArgumentParser()
    add_quant_args(p)
    cfg = quant_config(p.parse_args(["--wide-activations", "auto", "--wide-cosine", "0.999", "--wide-cosine-over", "step"]))
    assert cfg["wide_cosine_over"] is CosineOver.STEP
    assert "wide_cosine_over" not in quant_config(p.parse_args(["--wide-activations", "auto", "--wide-cosine", "0.99"]))
    for bad in (["--wide-activations", "auto", "--wide-cosine-over", "step"], ["--wide-cosine-over", "row"]):
        with pytest.raises(SystemExit):
            quant_config(p.parse_args(bad))


def test_auto_on_a_two_head_model():
    """A detector-like graph with two heads: the traces cover both (a tensor read by the second head
    only had raised KeyError), and the simulated cosine is the worse head's, so the target holds for both."""
    from dyadic.core.config import WideWeights
    from dyadic.core.fidelity import mean_cosine
    from dyadic.passes.choose_wide_activations import predict, simulated_cosine
    from dyadic.passes.round_weights import simulate

    rng = np.random.default_rng(9)
    b0 = bias(rng, 8)
    b0[0] = 40.0
    nodes = [node("Conv", ["input", "W0", "B0"], "c0", pads=[1, 1, 1, 1]), node("Relu", ["c0"], "r0"),
             node("Conv", ["r0", "Wa", "Ba"], "ca"), node("GlobalAveragePool", ["ca"], "ga"), node("Flatten", ["ga"], "a"),
             node("Conv", ["r0", "Wb", "Bb"], "cb"), node("Relu", ["cb"], "rb"), node("Conv", ["rb", "Wc", "Bc"], "cc"),
             node("GlobalAveragePool", ["cc"], "gb"), node("Flatten", ["gb"], "b")]
    wb = conv_w(rng, 8, 8, 1)
    wb[:, 0] = 0.0
    inits = {"W0": conv_w(rng, 8, 3), "B0": b0, "Wa": conv_w(rng, 4, 8, 1), "Ba": bias(rng, 4), "Wb": wb,
             "Bb": bias(rng, 8), "Wc": conv_w(rng, 5, 8, 1), "Bc": bias(rng, 5)}
    model = make_model(nodes, inits, in_shape=("N", 3, 8, 8), outputs=("a", "b"))
    calib = {"input": rng.normal(size=(16, 3, 8, 8)).astype(np.float32)}
    g = _calibrated(model, calib, kind=WideActivations.NONE)
    pred = predict(g)
    assert "rb" in pred.gain and pred.own["rb"] > 0  # read by head b only
    x = calib["input"][:8]
    sim = simulate(g.replace(bits={n.name: (8, 8) for n in g.weighted_nodes()}), x, WeightClip.W4, True)
    per = [mean_cosine(*sim[o]) for o in ("a", "b")]
    assert simulated_cosine(g, [], x, WideWeights.NONE, WeightClip.W4, True) == pytest.approx(min(per))
    c16 = simulated_cosine(g, list(pred.gain), x, WideWeights.NONE, WeightClip.W4, True)
    target = min(per) + 0.5 * (c16 - min(per))
    full = _calibrated(model, calib, share=None, cosine=target)
    assert full.meta["wide"] and full.meta["wide_choice"]["simulated_cosine"]["chosen"] >= target


def test_traces_run_in_chunks_that_fit_memory(monkeypatch):
    """A large graph's probes run a few samples at a time (8 samples of an 800x608 detector were killed
    at 24 GiB): the chunks follow TRACE_BYTES, and the prediction is the same as in one chunk."""
    import importlib

    cwa = importlib.import_module("dyadic.passes.choose_wide_activations")  # the module, not the pass
    rng = np.random.default_rng(1)
    model = _two_branch(rng)
    calib = {"input": rng.normal(size=(16, 3, 8, 8)).astype(np.float32)}
    g = _calibrated(model, calib, kind=WideActivations.NONE)
    x = calib["input"][:8]
    assert len(cwa._trace_chunks(g, x)) == 1
    whole = cwa.predict(g)
    per = sum(float(np.prod(sh[1:])) for sh in g.shapes.values() if sh) * cwa.BYTES_PER_ELEMENT
    monkeypatch.setattr(cwa, "TRACE_BYTES", int(3 * per))
    assert [len(c) for c in cwa._trace_chunks(g, x)] == [3, 3, 2]
    chunked = cwa.predict(g)
    assert chunked.samples == 8 and chunked.signal == pytest.approx(whole.signal)
    for t in whole.own:  # Hutchinson estimates: the same quantity, other probe draws
        assert chunked.own[t] == pytest.approx(whole.own[t], rel=0.5, abs=1e-9 + 0.05 * max(whole.own.values()))
