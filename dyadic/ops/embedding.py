"""Embedding tables: Gather from a constant table by integer token ids (a graph input).

Token-id inputs (int64 in the ONNX file) are not quantized: the integer graph takes them as int32
codes with scale 1 (`IDS_QPARAMS`), so the plan's input quantization `round(x / 1)` passes them
through unchanged and the library reads them as they are.

`embed` (float): y = W[ids] (ONNX Gather, axis 0, of a constant table [V, ...]). Integer form
(`qembed`): the table quantized once per tensor, T = round(W / s_w) in int8 with
s_w = max|W| / 127, and y_q = T[ids] with output scale s_w: one integer gather, no rescale. Position
and token-type embeddings added to it are dyadic adds (`qaffine` for a constant table, `qadd` for a
second gathered one), so their scales are aligned by the usual requant. Ids outside [0, V) are
clamped (the ONNX op would fail on them).
"""
from __future__ import annotations

import numpy as np

from dyadic.core.graph import QParams
from dyadic.ops.base import IntOpDef, OpDef, register_float, register_int

#: integer token ids: int32 codes, scale 1 (the value itself)
IDS_QPARAMS = QParams(scale=1.0, bits=32, signed=True)


def _embed_float(node, xs):
    ids = np.asarray(xs[0]).astype(np.int64)
    return np.take(node.params["W"], ids, axis=0, mode="clip")


def _quantize_embed(ctx, node):
    from dyadic.core.graph import Node

    w = node.params["W"].astype(np.float64)
    amax = float(np.abs(w).max(initial=0.0))
    q = ctx.qp[node.output] = QParams(amax / 127 if amax > 0 else 1.0, 8, True)
    t = np.clip(np.rint(w / q.scale), -127, 127).astype(np.int8)
    ctx.nodes.append(Node("qembed", node.name, node.inputs, node.outputs, {}, {"T": t}))


def _qembed_ref(node, xs, out_shape):
    return np.take(node.params["T"].astype(np.int64), xs[0].astype(np.int64), axis=0, mode="clip")


def _qembed_lower(L, node, xs):
    from tvm import relax

    t = node.params["T"]
    idx = xs[0] if L.g.dtypes[node.inputs[0]] == "int32" else L.emit(relax.op.astype(xs[0], "int32"))
    return L.emit(relax.op.take(relax.const(np.ascontiguousarray(t), "int8"), idx, axis=0, mode="clip"))


register_float(OpDef("embed", _embed_float, _quantize_embed))
register_int(IntOpDef("qembed", _qembed_ref, _qembed_lower))


def import_embedding(c):
    """Gather(table constant, ids activation) -> `embed` (called by the Gather import rule)."""
    from dyadic.core.graph import Node

    if int(c.attrs.get("axis", 0)) != 0:
        c.fail("a gather from a constant table by activation indices is only supported along axis 0")
    w = np.asarray(c.consts[c.inputs[0]], np.float32)
    return [Node("embed", c.name, (c.inputs[1],), (c.outputs[0],), {}, {"W": w})]
