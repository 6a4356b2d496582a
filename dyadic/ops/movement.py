"""Data movement on integers: Transpose, Squeeze/Unsqueeze, Split, Gather with constant indices,
and Concat (with constant operands: a class token).

These ops move values without changing them, so the output keeps the input's scale and the same
op runs in the float and the integer graph (pass-through). None of them may move the batch axis:
one library serves every batch size, so axis 0 must stay axis 0 -- except in a static-batch graph
(`import_onnx` falls back to one when the graph moves the batch axis, as nn.MultiheadAttention's
[T, N, C] layout does), where every shape is fixed and axis 0 is an axis like the others.

`concat_const`: a Concat whose operands include constants. The output scale is calibrated; the
activations are requantized to it and the constants quantized at it; a constant with a leading 1
is broadcast over the batch (the class token after an exporter folded its Expand at batch 1).
"""
from __future__ import annotations

import numpy as np

from dyadic.ops.base import IntOpDef, OpDef, importer, register_float, register_int


def _transpose(node, xs, out_shape=None):
    return np.transpose(xs[0], node.attrs["perm"])


def _transpose_lower(L, node, xs):
    from tvm import relax

    return L.emit(relax.op.permute_dims(xs[0], list(node.attrs["perm"])))


def _gather(node, xs, out_shape=None):
    return np.take(xs[0], node.params["I"], axis=node.attrs["axis"])


def _gather_lower(L, node, xs):
    from tvm import relax

    idx = node.params["I"].astype(np.int64)
    return L.emit(relax.op.take(xs[0], relax.const(idx, "int64"), axis=node.attrs["axis"], mode="clip"))


register_float(OpDef("transpose", lambda n, xs: _transpose(n, xs), None, passthrough=True))
register_int(IntOpDef("transpose", _transpose, _transpose_lower))
register_float(OpDef("gather", lambda n, xs: _gather(n, xs), None, passthrough=True))
register_int(IntOpDef("gather", _gather, _gather_lower))


@importer("Transpose", doc="integer transpose (batch axis fixed)")
def _import_transpose(c):
    from dyadic.core.graph import Node

    r = c.rank()
    perm = tuple(int(p) for p in c.attrs.get("perm", range(r - 1, -1, -1)))
    if sorted(perm) != list(range(r)):
        c.fail(f"perm {list(perm)} is not a permutation of {r} axes")
    if perm[0] != 0 and not c.static_batch:
        c.fail(f"perm {list(perm)} moves the batch axis")
    return [Node("transpose", c.name, (c.inputs[0],), (c.outputs[0],), {"perm": perm})]


@importer("Squeeze", "Unsqueeze", doc="integer reshape (batch axis fixed)")
def _import_squeeze(c):
    from dyadic.core.graph import Node

    axes = c.attrs.get("axes")
    if axes is None:
        axes = c.const(1, None)
    r = c.rank() + (len(np.atleast_1d(axes)) if c.op == "Unsqueeze" and axes is not None else 0)
    for a in np.atleast_1d(axes if axes is not None else []):
        if not -r <= int(a) < r:
            c.fail(f"axis {int(a)} is out of range for rank {r}")
        if int(a) % r == 0 and not c.static_batch:
            c.fail("squeezing or unsqueezing the batch axis is not supported")
    return [Node("reshape", c.name, (c.inputs[0],), (c.outputs[0],))]


@importer("Split", doc="integer slices")
def _import_split(c):
    from dyadic.core.graph import Node

    ax = c.axis(c.attrs.get("axis", 0))
    dim = c.shapes[c.inputs[0]][ax]
    sizes = c.attrs.get("split")
    if sizes is None:
        sizes = c.const(1, None)
    if sizes is None:
        k = len(c.outputs)
        n = c.attrs.get("num_outputs", k)
        step = -(-dim // n)
        sizes = [min(step, dim - i * step) for i in range(n)]
    sizes = [int(s) for s in np.atleast_1d(sizes)]
    if sum(sizes) != dim or any(s < 0 for s in sizes) or len(sizes) != len(c.outputs):
        c.fail(f"split sizes {sizes} do not divide axis {ax} of length {dim} into {len(c.outputs)} outputs")
    nodes, start = [], 0
    for k, (s, o) in enumerate(zip(sizes, c.outputs)):
        nodes.append(Node("slice", f"{c.name}/{k}", (c.inputs[0],), (o,), {"spec": ((ax, start, start + s, 1),)}))
        start += s
    return nodes


@importer("Gather", doc="integer gather with constant indices (not along the batch axis); from a constant "
                        "table by integer ids: an int8 embedding lookup")
def _import_gather(c):
    from dyadic.core.graph import Node

    if c.is_const(0) and not c.is_const(1):
        from dyadic.ops.embedding import import_embedding

        return import_embedding(c)
    if not c.is_const(1):
        c.fail("indices must be constant")
    ax = c.axis(c.attrs.get("axis", 0))
    dim = c.shapes[c.inputs[0]][ax]
    idx = np.asarray(c.consts[c.inputs[1]]).astype(np.int64)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        c.fail(f"indices {idx.min()}..{idx.max()} are out of range for axis {ax} of length {dim}")
    return [Node("gather", c.name, (c.inputs[0],), (c.outputs[0],), {"axis": ax}, {"I": idx % dim})]


# --------------------------------------------------------------------------- concat with constants
def _order_values(node, xs, consts):
    batch = xs[0].shape[0]
    vals = []
    for o in node.attrs["order"]:
        if o >= 0:
            vals.append(xs[o])
        else:
            c = consts[-o - 1]
            vals.append(np.broadcast_to(c, (batch,) + c.shape[1:]) if c.shape[0] == 1 else c)
    return np.concatenate(vals, axis=node.attrs["axis"])


def _concat_const_float(node, xs):
    consts = [node.params[f"C{j}"].astype(xs[0].dtype) for j in range(sum(o < 0 for o in node.attrs["order"]))]
    return _order_values(node, xs, consts)


def _quantize_concat_const(ctx, node):
    from dyadic.core.arith import dyadic_array
    from dyadic.core.graph import Node

    nc = sum(o < 0 for o in node.attrs["order"])
    consts = [node.params[f"C{j}"].astype(np.float64) for j in range(nc)]
    signed = any(ctx.qp[t].signed for t in node.inputs) or any(c.min(initial=0) < 0 for c in consts)
    q = ctx.qp[node.output] = ctx.out_q(node.output, signed)
    aligned = []
    for i, t in enumerate(node.inputs):
        if ctx.qp[t] == q:
            aligned.append(t)
            continue
        name = f"{node.name}/align{i}"
        m, s = dyadic_array(np.array(ctx.qp[t].scale / q.scale))
        ctx.nodes.append(Node("requant", name, (t,), (name,), {"lo": q.lo, "hi": q.hi}, {"M": m, "S": s}))
        ctx.qp[name] = q
        aligned.append(name)
    params = {f"C{j}": np.clip(np.rint(c / q.scale), q.lo, q.hi).astype(q.dtype) for j, c in enumerate(consts)}
    ctx.nodes.append(Node("qconcat_const", node.name, tuple(aligned), node.outputs, dict(node.attrs), params))


def _qconcat_const_ref(node, xs, out_shape):
    consts = [node.params[f"C{j}"].astype(np.int64) for j in range(sum(o < 0 for o in node.attrs["order"]))]
    return _order_values(node, [x.astype(np.int64) for x in xs], consts)


def _qconcat_const_lower(L, node, xs):
    from tvm import relax

    vals = []
    for o in node.attrs["order"]:
        if o >= 0:
            vals.append(xs[o])
            continue
        c = node.params[f"C{-o - 1}"]
        v = relax.const(np.ascontiguousarray(c), str(c.dtype))
        if c.shape[0] == 1 and not getattr(L, "static", False):
            v = L.emit(relax.op.broadcast_to(v, [L.batch] + [int(d) for d in c.shape[1:]]))
        vals.append(v)
    return L.emit(relax.op.concat(vals, axis=node.attrs["axis"]))


register_float(OpDef("concat_const", _concat_const_float, _quantize_concat_const))
register_int(IntOpDef("qconcat_const", _qconcat_const_ref, _qconcat_const_lower))


@importer("Concat", doc="integer concat (inputs share the concat's scale, else requantized to it); constant inputs (a class token) "
                        "quantized at the output scale")
def _import_concat(c):
    from dyadic.core.graph import Node

    r = c.rank(c.inputs[0]) if c.inputs[0] in c.shapes else len(np.shape(c.consts.get(c.inputs[0])))
    ax = int(c.attrs["axis"]) % r
    if ax == 0 and not c.static_batch:
        c.fail("concatenation along the batch axis is not supported")
    ins = [t for t in c.inputs if t]
    if not any(t not in c.consts for t in ins):
        c.fail("no activation operand (constant folding should have removed this node)")
    if all(t not in c.consts for t in ins):
        return [Node("concat", c.name, tuple(ins), (c.outputs[0],), {"axis": ax})]
    order, acts, params = [], [], {}
    for t in ins:
        if t in c.consts:
            v = np.asarray(c.consts[t], np.float32)
            if v.shape[0] != 1 and not c.static_batch:
                c.fail(f"constant operand {t!r} of shape {list(v.shape)} does not broadcast over the batch")
            params[f"C{len(params)}"] = v
            order.append(-len(params))
        else:
            order.append(len(acts))
            acts.append(t)
    return [Node("concat_const", c.name, tuple(acts), (c.outputs[0],), {"axis": ax, "order": tuple(order)}, params)]


_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
_BOOL = 9


@importer("Cast", doc="to a float type: the values unchanged (an integer mask or id input made float); to "
                      "bool: x != 0 (a mask)")
def _import_cast(c):
    from dyadic.core.graph import Node

    if int(c.attrs.get("to", 0)) == _BOOL:
        return [Node("ew", c.name, (c.inputs[0],), (c.outputs[0],), {"fn": "nonzero", "params": ()})]
    if int(c.attrs.get("to", 0)) not in _FLOAT_TYPES:
        c.fail(f"Cast to ONNX type {int(c.attrs.get('to', 0))} (an integer or bool) changes values; only casts "
               f"to float are supported")
    return [Node("reshape", c.name, (c.inputs[0],), (c.outputs[0],))]


# --------------------------------------------------------------------------- expand (broadcast)
def _expand(node, xs, out_shape=None):
    shape = node.attrs["shape"]
    x = xs[0]
    return np.broadcast_to(x, (x.shape[0],) + tuple(shape[1:]) if shape[0] == -1 else tuple(shape))


def _expand_lower(L, node, xs):
    from tvm import relax

    shape = list(node.attrs["shape"])
    shape = [L.batch if d == -1 else int(d) for d in shape]
    return L.emit(relax.op.broadcast_to(xs[0], shape))


register_float(OpDef("expand", lambda n, xs: _expand(n, xs), None, passthrough=True))
register_int(IntOpDef("expand", _expand, _expand_lower))


@importer("Expand", doc="integer broadcast (not along the batch axis)")
def _import_expand(c):
    from dyadic.core.graph import Node

    out = tuple(int(d) for d in c.shapes[c.outputs[0]])
    if c.shapes[c.inputs[0]][0] != out[0] and not c.static_batch:
        c.fail("expanding the batch axis is not supported")
    return [Node("expand", c.name, (c.inputs[0],), (c.outputs[0],),
                 {"shape": out if c.static_batch else (-1,) + out[1:]})]


@importer("And", "Where", doc="of a mask: folded into the integer softmax (an attention mask chain)")
def _import_mask_logic(c):
    from dyadic.core.graph import Node

    out = tuple(int(d) for d in c.shapes[c.outputs[0]])
    shape = out if c.static_batch else (-1,) + out[1:]
    if c.op == "And":
        acts = c.activations
        if len(acts) != 1:
            c.fail("And of two activations is not supported")
        other = np.asarray(c.consts[c.inputs[0] if c.inputs[1] == acts[0] else c.inputs[1]])
        if not np.all(other):
            c.fail("And with a constant that is not all true is not supported")
        return [Node("expand", c.name, (acts[0],), (c.outputs[0],), {"shape": shape})]
    if not (c.is_const(1) and c.is_const(2)) or c.is_const(0):
        c.fail("only Where(activation condition, scalar constant, scalar constant) is supported")
    c1, c2 = (np.asarray(c.consts[c.inputs[i]], np.float64) for i in (1, 2))
    if c1.size != 1 or c2.size != 1:
        c.fail("only scalar constant branches are supported")
    x = c.inputs[0]
    nodes, src = [], x
    if tuple(c.shapes[x])[1:] != out[1:]:
        src = f"{c.outputs[0]}/expand"
        c.shapes[src] = out
        nodes.append(Node("expand", f"{c.name}/expand", (x,), (src,), {"shape": shape}))
    nodes.append(Node("ew", c.name, (src,), (c.outputs[0],),
                      {"fn": "where", "params": (("c1", float(c1.ravel()[0])), ("c2", float(c2.ravel()[0])))}))
    return nodes
