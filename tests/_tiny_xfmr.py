"""A tiny transformer encoder block as torch.onnx.export (opset 17) writes one, built with onnx.helper."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def _n(op, ins, out, **kw):
    return helper.make_node(op, list(ins), [out], name=out, **kw)


def encoder_block(rng: np.random.Generator, t: int = 8, c: int = 16, heads: int = 2, vocab: int = 50,
                  mask: str = "causal", decomposed_ln: bool = True, extra_nodes=()):
    """ids (int64 [N, T]) -> embedding Gather + position add -> LN -> attention (QKV MatMuls with constant
    weights, Q·Kᵀ / √d + mask, Softmax, attn·V, projection) -> residual add -> LN (decomposed) -> GELU MLP
    -> residual add -> LN -> out [N, T, C]."""
    d = c // heads
    w = lambda *s, g=1.0: (rng.normal(0, g / np.sqrt(s[0]), s)).astype(np.float32)  # noqa: E731
    b = lambda n: rng.normal(0, 0.05, n).astype(np.float32)  # noqa: E731
    inits = {
        "emb": rng.normal(0, 1.0, (vocab, c)).astype(np.float32), "pos": rng.normal(0, 0.3, (1, t, c)).astype(np.float32),
        "g1": rng.uniform(0.5, 1.5, c).astype(np.float32), "b1": b(c),
        "Wq": w(c, c), "bq": b(c), "Wk": w(c, c), "bk": b(c), "Wv": w(c, c), "bv": b(c), "Wo": w(c, c), "bo": b(c),
        "g2": rng.uniform(0.5, 1.5, c).astype(np.float32), "b2": b(c),
        "W1": w(c, 4 * c), "bf1": b(4 * c), "W2": w(4 * c, c), "bf2": b(c),
        "g3": rng.uniform(0.5, 1.5, c).astype(np.float32), "b3": b(c),
        "shp4": np.array([0, t, heads, d], np.int64), "shp3": np.array([0, t, c], np.int64),
        "sqd": np.array(np.sqrt(d), np.float32), "ax": np.array([-1], np.int64), "two": np.array(2.0, np.float32),
        "eps": np.array(1e-5, np.float32), "sq2": np.array(np.sqrt(2.0), np.float32),
        "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32),
    }
    if mask == "causal":
        inits["mask"] = np.triu(np.full((t, t), -1e4, np.float32), 1).reshape(1, 1, t, t)
    elif mask == "inf":
        inits["mask"] = np.triu(np.full((t, t), -np.inf, np.float32), 1).reshape(1, 1, t, t)
    if mask in ("input", "where"):  # BERT: (1 - Cast(Unsqueeze(attention_mask))) * finfo.min added to the scores
        inits.update(ax12=np.array([1, 2], np.int64), fmin=np.array(np.finfo(np.float32).min, np.float32),
                     zero=np.array(0.0, np.float32), alltrue=np.ones((1, 1, t, 1), bool),
                     tt=np.array([1, 1, t, t], np.int64))
    nodes = [_n("Gather", ["emb", "ids"], "tok"), _n("Add", ["tok", "pos"], "x0"),
             _n("LayerNormalization", ["x0", "g1", "b1"], "h", axis=-1, epsilon=1e-5)]
    for p in "qkv":
        nodes += [_n("MatMul", ["h", f"W{p}"], f"{p}m"), _n("Add", [f"{p}m", f"b{p}"], f"{p}b"),
                  _n("Reshape", [f"{p}b", "shp4"], f"{p}r")]
    nodes += [_n("Transpose", ["qr"], "q4", perm=[0, 2, 1, 3]), _n("Transpose", ["kr"], "kT", perm=[0, 2, 3, 1]),
              _n("Transpose", ["vr"], "v4", perm=[0, 2, 1, 3]),
              _n("MatMul", ["q4", "kT"], "s"), _n("Div", ["s", "sqd"], "s2")]
    if mask in ("causal", "inf"):
        nodes += [_n("Add", ["s2", "mask"], "s3")]
    elif mask == "where":  # transformers 5: Where(Expand(And(true, Cast<bool>(mask))), 0, finfo.min)
        nodes += [_n("Cast", ["attention_mask"], "mb0", to=TensorProto.BOOL), _n("Unsqueeze", ["mb0", "ax12"], "mb1"),
                  _n("And", ["alltrue", "mb1"], "mb2"), _n("Expand", ["mb2", "tt"], "mb3"),
                  _n("Where", ["mb3", "zero", "fmin"], "mb"), _n("Add", ["s2", "mb"], "s3")]
    elif mask == "input":
        nodes += [_n("Unsqueeze", ["attention_mask", "ax12"], "mu4"), _n("Cast", ["mu4"], "mf", to=TensorProto.FLOAT),
                  _n("Sub", ["one", "mf"], "inv"), _n("Mul", ["inv", "fmin"], "mb"), _n("Add", ["s2", "mb"], "s3")]
    else:
        nodes += [_n("Identity", ["s2"], "s3")]
    nodes += [_n("Softmax", ["s3"], "p", axis=-1), _n("MatMul", ["p", "v4"], "o4"),
              _n("Transpose", ["o4"], "o3", perm=[0, 2, 1, 3]), _n("Reshape", ["o3", "shp3"], "o"),
              _n("MatMul", ["o", "Wo"], "pm"), _n("Add", ["pm", "bo"], "proj"), _n("Add", ["x0", "proj"], "x1")]
    if decomposed_ln:
        nodes += [_n("ReduceMean", ["x1"], "mu", axes=[-1]), _n("Sub", ["x1", "mu"], "dx"),
                  _n("Pow", ["dx", "two"], "dx2"), _n("ReduceMean", ["dx2"], "var", axes=[-1]),
                  _n("Add", ["var", "eps"], "ve"), _n("Sqrt", ["ve"], "sd"), _n("Div", ["dx", "sd"], "nx"),
                  _n("Mul", ["nx", "g2"], "ng"), _n("Add", ["ng", "b2"], "h2")]
    else:
        nodes += [_n("LayerNormalization", ["x1", "g2", "b2"], "h2", axis=-1)]
    nodes += [_n("MatMul", ["h2", "W1"], "f1m"), _n("Add", ["f1m", "bf1"], "f1"),
              _n("Div", ["f1", "sq2"], "gd"), _n("Erf", ["gd"], "ge"), _n("Add", ["ge", "one"], "ge1"),
              _n("Mul", ["f1", "ge1"], "gm"), _n("Mul", ["gm", "half"], "g"),
              _n("MatMul", ["g", "W2"], "f2m"), _n("Add", ["f2m", "bf2"], "f2"), _n("Add", ["x1", "f2"], "x2"),
              _n("LayerNormalization", ["x2", "g3", "b3"], "out", axis=-1)]
    nodes += list(extra_nodes)
    ins = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", t])]
    if mask in ("input", "where"):
        ins.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", t]))
    g = helper.make_graph(nodes, "encoder", ins,
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    m.ir_version = 8
    return m
