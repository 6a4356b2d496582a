"""Elementwise nonlinearities as integer lookup tables.

Float graph: an ONNX elementwise op with one activation input (and scalar constants) imports as an
`ew` node; `passes/fuse_unary` then merges every connected chain of elementwise ops whose only
non-constant input is one tensor x into one `unary` node: a small program of those steps, which is
a function f of x alone (SiLU `x * Sigmoid(x)`, hard-swish `x * Clip(x + 3, 0, 6) / 6`, GELU with
Erf, Mish all become one `unary`).

Integer graph (`qlut`): with x = s_x q_x, q_x in [lo_x, hi_x] (2^b codes), and the output
quantized as y = s_y q_y, q_y in [lo_y, hi_y], the table is computed at compile time,

    T[q - lo_x] = clip(round(f(s_x q) / s_y), lo_y, hi_y)      for every code q in [lo_x, hi_x],

and at run time q_y = T[q_x - lo_x]: one integer gather, no float. Error: for every input code the
output is the correctly rounded quantization of f at that code, so |s_y T[q] - f(s_x q)| <= s_y / 2
(half an output LSB) wherever f(s_x q) lies in the output range, and the clipped value otherwise.
This is exact with respect to the input's quantization: no polynomial approximation error is
added. An 8-bit input needs 256 entries, a 16-bit one 65,536.
"""
from __future__ import annotations

import math

import numpy as np

from dyadic.ops.base import IntOpDef, OpDef, importer, register_float, register_int

_SQRT2 = math.sqrt(2.0)


def _erf(x):
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), vectorized: numpy has no erf."""
    x = np.asarray(x)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _softplus(x):
    return np.logaddexp(0.0, x)


#: unary functions: name -> f(x, attrs) in float64 (or float32 when x is float32)
UNARY = {
    "sigmoid": lambda x, a: 1.0 / (1.0 + np.exp(-x)),
    "hardsigmoid": lambda x, a: np.clip(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0),
    "hardswish": lambda x, a: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "tanh": lambda x, a: np.tanh(x),
    "leakyrelu": lambda x, a: np.where(x >= 0, x, a.get("alpha", 0.01) * x),
    "prelu": lambda x, a: np.where(x >= 0, x, a["slope"] * x),
    "elu": lambda x, a: np.where(x >= 0, x, a.get("alpha", 1.0) * (np.exp(np.minimum(x, 0)) - 1.0)),
    "selu": lambda x, a: a.get("gamma", 1.0507009873554805) * np.where(
        x >= 0, x, a.get("alpha", 1.6732632423543772) * (np.exp(np.minimum(x, 0)) - 1.0)),
    "celu": lambda x, a: np.maximum(x, 0) + np.minimum(0, a.get("alpha", 1.0) * (np.exp(np.minimum(x, 0) / a.get("alpha", 1.0)) - 1.0)),
    "erf": lambda x, a: _erf(x),
    "gelu": lambda x, a: (0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))))
    if a.get("approximate", "none") == "tanh" else 0.5 * x * (1.0 + _erf(x / _SQRT2)),
    "softplus": lambda x, a: _softplus(x),
    "softsign": lambda x, a: x / (1.0 + np.abs(x)),
    "mish": lambda x, a: x * np.tanh(_softplus(x)),
    "exp": lambda x, a: np.exp(x),
    "log": lambda x, a: np.log(np.maximum(x, 1e-30)),
    "sqrt": lambda x, a: np.sqrt(np.maximum(x, 0.0)),
    "reciprocal": lambda x, a: 1.0 / np.where(x == 0, 1e-30, x),
    "neg": lambda x, a: -x,
    "abs": lambda x, a: np.abs(x),
    "relu": lambda x, a: np.maximum(x, 0),
    "clip": lambda x, a: np.clip(x, a.get("lo", -np.inf), a.get("hi", np.inf)),
    "thresholdedrelu": lambda x, a: np.where(x > a.get("alpha", 1.0), x, 0.0),
    "sin": lambda x, a: np.sin(x),
    "cos": lambda x, a: np.cos(x),
    "round": lambda x, a: np.round(x),
    "floor": lambda x, a: np.floor(x),
    "ceil": lambda x, a: np.ceil(x),
    # an op with a scalar constant operand c (`c_first`: c is the first operand)
    "pow": lambda x, a: np.power(a["c"], x) if a.get("c_first") else np.power(np.maximum(x, 0) if a["c"] % 1 else x, a["c"]),
    "rdiv": lambda x, a: a["c"] / np.where(x == 0, 1e-30, x),
    "max": lambda x, a: np.maximum(x, a["c"]),
    "min": lambda x, a: np.minimum(x, a["c"]),
    "scale": lambda x, a: x * a["A"] + a["B"],   # a scalar affine (a per-channel one is `affine`)
    # masks (an attention_mask chain, folded into the softmax by passes/fuse_softmax_bias)
    "nonzero": lambda x, a: (x != 0).astype(x.dtype),
    "where": lambda x, a: np.where(x != 0, a["c1"], a["c2"]).astype(x.dtype),
}
#: binary steps inside a `unary` program (both operands derive from the one input)
BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": lambda a, b: a / np.where(b == 0, 1e-30, b),
          "max": np.maximum, "min": np.minimum, "pow": np.power}

#: ONNX elementwise ops with one activation input -> UNARY name
ONNX_UNARY = {"Sigmoid": "sigmoid", "HardSigmoid": "hardsigmoid", "HardSwish": "hardswish", "Tanh": "tanh",
              "LeakyRelu": "leakyrelu", "Elu": "elu", "Selu": "selu", "Celu": "celu", "Erf": "erf", "Gelu": "gelu",
              "Softplus": "softplus", "Softsign": "softsign", "Mish": "mish", "Exp": "exp", "Log": "log",
              "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Neg": "neg", "Abs": "abs", "ThresholdedRelu":
              "thresholdedrelu", "Sin": "sin", "Cos": "cos", "Round": "round", "Floor": "floor", "Ceil": "ceil"}


def apply_unary(fn: str, x: np.ndarray, attrs: dict) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return UNARY[fn](x, attrs)


def run_program(program: tuple, x: np.ndarray) -> np.ndarray:
    """Evaluate a `unary` program: steps (fn, arg indices, attrs); value 0 is the input."""
    vals = [x]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for fn, args, attrs in program:
            a = dict(attrs)
            vals.append(BINARY[fn](vals[args[0]], vals[args[1]]) if fn in BINARY and len(args) == 2
                        else apply_unary(fn, vals[args[0]], a))
    return vals[-1]


def _ew_float(node, xs):
    return apply_unary(node.attrs["fn"], xs[0], dict(node.attrs["params"])).astype(xs[0].dtype, copy=False)


def _unary_float(node, xs):
    return run_program(node.attrs["program"], xs[0]).astype(xs[0].dtype, copy=False)


def lut_table(f, q_in, q_out) -> np.ndarray:
    """T[q - lo_in] = clip(round(f(s_in q) / s_out), lo_out, hi_out) over every input code."""
    codes = np.arange(q_in.lo, q_in.hi + 1, dtype=np.int64)
    y = np.asarray(f(codes.astype(np.float64) * q_in.scale), np.float64) / q_out.scale
    y = np.nan_to_num(y, nan=0.0, posinf=q_out.hi, neginf=q_out.lo)
    return np.clip(np.rint(y), q_out.lo, q_out.hi).astype(np.int64)


def _quantize_lut(ctx, node):
    from dyadic.core.graph import Node

    x = node.inputs[0]
    q_in = ctx.qp[x]
    q = ctx.qp[node.output] = ctx.out_q(node.output)
    if node.op == "ew":
        fn, params = node.attrs["fn"], dict(node.attrs["params"])
        f = lambda v: apply_unary(fn, v, params)  # noqa: E731
    else:
        f = lambda v: run_program(node.attrs["program"], v)  # noqa: E731
    table = lut_table(f, q_in, q).astype(q.dtype if q.bits <= 8 else "int32")
    ctx.nodes.append(Node("qlut", node.name, node.inputs, node.outputs, {"in_lo": int(q_in.lo)}, {"T": table}))


def _qlut_ref(node, xs, out_shape):
    return node.params["T"].astype(np.int64)[xs[0].astype(np.int64) - node.attrs["in_lo"]]


def _qlut_lower(L, node, xs):
    from tvm import relax

    t = node.params["T"]
    table = relax.const(np.ascontiguousarray(t), str(t.dtype))
    idx = L.emit(relax.op.astype(xs[0], "int32"))
    if node.attrs["in_lo"]:
        idx = L.emit(relax.op.subtract(idx, relax.const(np.int32(node.attrs["in_lo"]), "int32")))
    y = L.emit(relax.op.take(table, idx, axis=0, mode="clip"))
    out = L.g.dtypes[node.output]
    return y if str(t.dtype) == out else L.emit(relax.op.astype(y, out))


register_float(OpDef("ew", _ew_float, _quantize_lut))
register_float(OpDef("unary", _unary_float, _quantize_lut))
register_int(IntOpDef("qlut", _qlut_ref, _qlut_lower, elementwise=True))


@importer(*ONNX_UNARY, doc="integer lookup table (one gather), chains merged into one table")
def _import_unary(c):
    from dyadic.core.graph import Node

    fn = ONNX_UNARY[c.op]
    params = {k: v for k, v in c.attrs.items() if isinstance(v, (int, float))}
    if c.op == "Gelu":
        params = {"approximate": c.attrs.get("approximate", b"none").decode()}
    return [Node("ew", c.name, (c.inputs[0],), (c.outputs[0],), {"fn": fn, "params": tuple(sorted(params.items()))})]
