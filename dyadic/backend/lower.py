"""Integer graph -> Relax IRModule. The only module (with `dyadic.build`) that imports the TVM compiler.

Each integer op becomes Relax ops over integer tensors only: convolutions and matmuls with int32
accumulation, then the dyadic requantization of `dyadic.arith` in int64 (`multiply`, `add`,
`right_shift`, `clip`, `astype`). Constants (weights, multipliers, shifts) are bound into the module.
The batch dimension is a symbolic variable, so one library serves any batch size.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from dyadic.core.arith import pack_int4, rounding_term
from dyadic.backend import lower_int4
from dyadic.core.graph import Graph, Node
from dyadic.ops import INT
from dyadic.targets import TargetSpec

_BC = (1, -1, 1, 1)


def _c(v: np.ndarray, dtype: str) -> relax.Constant:
    return relax.const(np.ascontiguousarray(np.asarray(v).astype(dtype)), dtype)


class _Lowerer:
    def __init__(self, graph: Graph, target: TargetSpec | None = None):
        self.g = graph
        self.target = target
        self.bb = relax.BlockBuilder()
        # the batch: symbolic (one library for any batch), or fixed in a static-batch graph
        self.static = bool(graph.meta.get("static_batch"))
        self.batch = int(graph.shapes[graph.inputs[0]][0]) if self.static else tvm.tirx.Var("n", "int64")
        # --- dyadic.kernels: fused target-specific kernels (x86 VNNI), None = generic ops only ---
        from dyadic.backend import kernels
        self.kernels = kernels.for_lowerer(self)
        self.coverage: dict[str, int] = {}  # "kernel": nodes on dyadic's kernels; op: nodes lowered generically

    def emit(self, expr):
        return self.bb.emit(expr)

    def requant(self, acc, m: np.ndarray, s: np.ndarray, lo: int, hi: int, dtype: str, bshape=None):
        if bshape is not None:
            m, s = m.reshape(bshape), s.reshape(bshape)
        y = self.emit(relax.op.astype(acc, "int64"))
        y = self.emit(relax.op.multiply(y, _c(m, "int64")))
        return self.shift_clip(y, s, lo, hi, dtype)

    def materialize(self, x):
        """x computed once into its own buffer: an opaque copy, which TVM's FuseOps does not fuse into its
        consumers. A per-row value (a LayerNorm's square root, a softmax's reciprocal) that feeds
        per-element ops would otherwise be inlined into them and recomputed for every element. Not on
        targets whose schedule inlines elementwise chains anyway (`Target.inlines_elementwise_chains`,
        the GPU: x is returned as it is)."""
        return x if self._inlines_chains else self._opaque_copy(x)

    def chain_barrier(self, x):
        """x into its own buffer where the target's schedule inlines every elementwise step of a fused
        function into its last one (TVM's dlight GPU fallback): a chain whose steps each read the
        previous value more than once (the bit-by-bit square root) would otherwise become one
        expression doubling in size per step. Elsewhere x as it is."""
        return self._opaque_copy(x) if self._inlines_chains else x

    @property
    def _inlines_chains(self) -> bool:
        return self.target is not None and self.target.inlines_elementwise_chains

    def _opaque_copy(self, x):
        from tvm import te

        call = self.bb.call_te(lambda a: te.compute(a.shape, lambda *i: a(*i), name="copy"), x,
                               primfunc_name_hint="rowvalue")
        gv = call.args[0]
        self.bb.update_func(gv, self.bb.get()[gv].with_attr("op_pattern", 8))
        return self.emit(call)

    def shift_clip(self, y, s: np.ndarray, lo: int, hi: int, dtype: str):
        y = self.emit(relax.op.add(y, _c(rounding_term(s), "int64")))
        y = self.emit(relax.op.right_shift(y, _c(s, "int64")))
        y = self.emit(relax.op.clip(y, lo, hi))
        return self.emit(relax.op.astype(y, dtype))

    def int4_acc(self, n: Node, x):
        """int32 accumulator of a W4 layer, reading its packed weights (`dyadic.lower_int4`)."""
        w, a = n.params["W"], n.attrs
        packed = _c(pack_int4(w.reshape(w.shape[0], -1)), "int8")
        if n.op == "qdense":
            return self.emit(self.bb.call_te(lower_int4.dense_int4, x, packed, w.shape))
        return self.emit(self.bb.call_te(lower_int4.conv2d_int4, x, packed, w.shape, a["strides"], a["pads"],
                                         a["dilations"], a["group"]))

    def node(self, n: Node, xs: list):
        if self.kernels is not None:  # --- dyadic.kernels: a fused kernel, else generic ops below ---
            y = self.kernels.lower(n, xs)
            if y is not None:
                self.coverage["kernel"] = self.coverage.get("kernel", 0) + 1
                return y
            xs = self.kernels.generic_inputs(n, xs)  # --- end dyadic.kernels ---
        self.coverage[n.op] = self.coverage.get(n.op, 0) + 1  # nodes left to TVM's generic lowering
        a, p, op = n.attrs, n.params, n.op
        if op in INT:
            return INT[op].lower(self, n, xs)
        out_dtype = self.g.dtypes[n.output]
        x = xs[0]
        if op in ("qconv", "qdense") and a["w_bits"] == 4:
            acc = self.emit(relax.op.add(self.int4_acc(n, x), _c(p["B"].reshape(_BC if op == "qconv" else -1), "int32")))
            return self.requant(acc, p["M"], p["S"], a["lo"], a["hi"], out_dtype, _BC if op == "qconv" else None)
        if op == "qconv":
            acc = self.emit(relax.op.nn.conv2d(
                x, _c(p["W"], str(p["W"].dtype)), strides=a["strides"], padding=a["pads"], dilation=a["dilations"],
                groups=a["group"], out_dtype="int32"))
            acc = self.emit(relax.op.add(acc, _c(p["B"].reshape(_BC), "int32")))
            return self.requant(acc, p["M"], p["S"], a["lo"], a["hi"], out_dtype, _BC)
        if op == "qdense":
            acc = self.emit(relax.op.matmul(x, _c(p["W"].T, str(p["W"].dtype)), out_dtype="int32"))
            acc = self.emit(relax.op.add(acc, _c(p["B"], "int32")))
            return self.requant(acc, p["M"], p["S"], a["lo"], a["hi"], out_dtype)
        if op == "qadd":
            ya = self.emit(relax.op.multiply(self.emit(relax.op.astype(xs[0], "int64")), _c(p["M"][0], "int64")))
            yb = self.emit(relax.op.multiply(self.emit(relax.op.astype(xs[1], "int64")), _c(p["M"][1], "int64")))
            return self.shift_clip(self.emit(relax.op.add(ya, yb)), p["S"], a["lo"], a["hi"], out_dtype)
        if op == "qavgpool":
            c = self.g.shapes[n.inputs[0]][1]
            ones = np.ones((c, 1) + tuple(a["kernel"]), np.int8)
            acc = self.emit(relax.op.nn.conv2d(x, _c(ones, "int8"), strides=a["strides"], padding=a["pads"],
                                               groups=c, out_dtype="int32"))
            return self.requant(acc, p["M"], p["S"], a["lo"], a["hi"], out_dtype)
        if op == "qmean_hw":
            acc = self.emit(relax.op.sum(self.emit(relax.op.astype(x, "int32")), axis=[2, 3],
                                         keepdims=bool(a["keepdims"])))
            return self.requant(acc, p["M"], p["S"], a["lo"], a["hi"], out_dtype)
        if op == "requant":
            return self.requant(x, p["M"], p["S"], a["lo"], a["hi"], out_dtype)
        if op == "maxpool":
            return self.emit(relax.op.nn.max_pool2d(x, a["kernel"], a["strides"], a["pads"]))
        if op == "concat":
            return self.emit(relax.op.concat(xs, axis=a["axis"]))
        if op == "pad":
            return self.emit(relax.op.nn.pad(x, [v for pair in a["pads"] for v in pair]))
        if op == "slice":
            axes, begin, end, step = zip(*a["spec"])
            end = [e if e >= 0 else -(2 ** 31) for e in end]  # past the front for negative steps
            return self.emit(relax.op.strided_slice(x, list(axes), list(begin), end, list(step)))
        if op in ("reshape", "flatten"):
            shape = [int(d) for d in self.g.shapes[n.output]] if self.static else \
                [self.batch] + [int(d) for d in self.g.shapes[n.output][1:]]
            return self.emit(relax.op.reshape(x, shape))
        raise NotImplementedError(op)

    def run(self) -> tvm.IRModule:
        g = self.g
        params = [relax.Var(t, relax.TensorType(shape=(list(g.shapes[t]) if self.static else [self.batch] + list(g.shapes[t][1:])), dtype=g.dtypes[t]))
                  for t in g.inputs]
        with self.bb.function("main", params):
            with self.bb.dataflow():
                env = dict(zip(g.inputs, params))
                for n in g.nodes:
                    env[n.output] = self.node(n, [env[i] for i in n.inputs])
                outs = [env[o] for o in g.outputs]
                result = self.bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
            self.bb.emit_func_output(result)
        mod = self.bb.get()
        mod = mod.with_attr("dyadic_coverage", dict(self.coverage))
        if getattr(self.kernels, "isa", None):  # which layers' MACs the kernel family put on which instruction
            mod = mod.with_attr("dyadic_dot", {"isa": self.kernels.isa, "layers": dict(self.kernels.dot_layers)})
        families = getattr(self.kernels, "families", None)
        if families:  # conv / dense layer -> kernel family (amx, vnni, avx2, ...): model.json kernel_coverage
            mod = mod.with_attr("dyadic_families", {k: v.value for k, v in families.items()})
        return mod


def lower_to_relax(graph: Graph, target: TargetSpec | None = None) -> tvm.IRModule:
    """`target` lets a kernel layer pick target-specific implementations; None means generic Relax ops."""
    return _Lowerer(graph, target).run()
