"""Graph-level dispatch of the CPU kernels (x86 and aarch64): which nodes they take, in which layout
tensors travel.

`CpuKernels.lower(node, xs)` returns the Relax value of a node it handles, or None; the generic
lowering in `dyadic.backend.lower` then runs, on inputs that `generic_inputs` has converted back to NCHW.

Layout: the output of a fast conv is packed ([N, C/16, H, W, 16]) and stays packed through the
ops that have packed kernels (conv, depthwise conv, residual add, max-pool, scalar requant, channel
concat of whole blocks; via `packed_ops`: per-channel affine, gate products, broadcast adds, and
resizes / gathers / zero insertion along H, W); the first other consumer gets an NCHW copy (made
once per tensor), and the global mean writes NCHW itself. Graph outputs are always NCHW. Table
lookups and the last-axis Softmax run on any layout (`row_ops`).

Residual fusion: a conv whose only consumer is a `qadd` is not emitted at once; at the add, it is
emitted with the add in its epilogue (the other branch read from memory), which is the same
integer formula as conv-then-add (`dyadic.reference`), without the conv output's round trip.
Kernels are built once per distinct shape (`ConvSpec` etc.); weights and constants are arguments.
On an AMX target (`amx=True`) `amx_lowering` picks, per conv / dense layer, the AMX kernel
(`amx_conv`, same arguments and packed output) or the VNNI one; `families` records the choice.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from tvm import relax

from dyadic.core.graph import Node
from dyadic.backend.kernels import amx_lowering, cpu_ops, epilogue, matmul_lowering, packed_ops, packing, row_ops
from dyadic.backend.kernels.family import KernelFamily
from dyadic.backend.kernels.spec import (DOT_ISAS, INT16_ISAS, ConvSpec, ceil_div, group_blocks, kernel_tile,
                                         mmla_tile)
from dyadic.backend.kernels.cpu_conv import conv_func
from dyadic.ops import INT

_8BIT = ("uint8", "int8")
_16BIT = ("int16", "int32")  # 16-bit codes: int16 storage (int32 in kernels' own tests and older graphs)
DEFERRED = "deferred: emitted fused into the residual add that reads it"


def _c(v: np.ndarray, dtype: str):
    return relax.const(np.ascontiguousarray(np.asarray(v).astype(dtype)), dtype)


class CpuKernels:
    def __init__(self, lowerer, isa: str, amx: bool = False, vbmi: bool = False, gather: bool = False):
        self.L, self.g, self.isa, self.amx = lowerer, lowerer.g, isa, amx
        self.vbmi = vbmi  # byte tables on `vpermt2b` (`intrin_vbmi`)
        self.gather = gather  # tables on 16-bit codes on `vpgatherdd` (`intrin_gather`)
        self.consumers = self.g.consumers()
        self.packed: set[str] = set()          # tensors whose Relax value is in the packed layout
        self.values: dict[str, object] = {}    # packed Relax value of each packed tensor
        self.plain: dict[str, object] = {}     # NCHW copies of packed tensors, made on demand
        self.deferred: dict[str, tuple] = {}   # conv output -> (node, xs), waiting for its add
        self.passthrough: set[str] = set()     # requants applied inside an upstream kernel: the value is the input
        self.funcs: dict[tuple, object] = {}   # kernel key -> GlobalVar (one PrimFunc per key)
        self.dot_layers: dict[str, str] = {}   # layer -> the dot-product instruction its MACs run on
        self.families: dict[str, KernelFamily] = {}  # conv / dense layer -> the kernel family it ran on

    # ---------------------------------------------------------------- helpers
    def _call(self, key: tuple, make, args: list, shape: list, dtype: str):
        if key not in self.funcs:
            name = f"dyadic_{key[0]}{len(self.funcs)}"
            self.funcs[key] = self.L.bb.add_func(make().with_attr("global_symbol", name), name)
        return self.L.emit(relax.call_tir(self.funcs[key], args, relax.TensorType(shape, dtype)))

    def _dtype(self, t: str) -> str:
        return self.g.dtypes[t]

    def _pshape(self, t: str) -> list:
        _, c, h, w = self.g.shapes[t]
        return [self.L.batch, ceil_div(c, 16), h, w, 16]

    def _result(self, n: Node, y):
        """Record a packed result; graph outputs are returned in NCHW."""
        self.packed.add(n.output)
        self.values[n.output] = y
        return self.unpack(n.output) if n.output in self.g.outputs else y

    def unpack(self, t: str):
        if t not in self.plain:
            _, c, h, w = self.g.shapes[t]
            dt = self._dtype(t)
            self.plain[t] = self._call(("unpack", c, h, w, dt), lambda: cpu_ops.unpack_func(c, h, w, dt),
                                       [self.values[t]], [self.L.batch, c, h, w], dt)
        return self.plain[t]

    def pack(self, t: str, x):
        """The packed value of tensor t, whose NCHW value is x (converted once)."""
        if t not in self.packed:
            _, c, h, w = self.g.shapes[t]
            dt = self._dtype(t)
            self.values[t] = self._call(("pack", c, h, w, dt), lambda: cpu_ops.pack_func(c, h, w, dt), [x],
                                        self._pshape(t), dt)
            self.packed.add(t)
            self.plain[t] = x
        return self.values[t]

    def materialize(self, t: str):
        node, xs = self.deferred.pop(t)
        return self._result(node, self._conv(node, xs))

    def generic_inputs(self, n: Node, xs: list) -> list:
        out = []
        for t, x in zip(n.inputs, xs):
            if t in self.deferred:
                self.materialize(t)
            out.append(self.unpack(t) if t in self.packed else x)
        return out

    # ---------------------------------------------------------------- dispatch
    def lower(self, n: Node, xs: list):
        op = n.op
        if n.output in self.passthrough:  # fused into a softmax or a linear (`row_ops`, `matmul_lowering`)
            return xs[0]
        if op == "qconv" and self._conv_ok(n):
            cons = self.consumers.get(n.output, [])
            if len(cons) == 1 and cons[0].op == "qadd" and n.output not in self.g.outputs:
                self.deferred[n.output] = (n, xs)
                return DEFERRED
            return self._result(n, self._conv(n, xs))
        if op == "qdense" and self._wbits_ok(n) and len(self.g.shapes[n.inputs[0]]) == 2 \
                and self._dtype(n.inputs[0]) in _8BIT + _16BIT:
            return self._dense(n, xs[0])
        if op in ("qaffine", "qmul", "qadd", "gather", "qresize", "zero_insert"):  # on the packed layout
            y = packed_ops.lower(self, n, xs)
            if y is not None:
                return y
        if op == "qadd":
            return self._add(n, xs) if len(self.g.shapes[n.inputs[0]]) == 4 else row_ops.add(self, n, xs)
        if op == "qlinear":
            return matmul_lowering.linear(self, n, self.generic_inputs(n, xs)[0])
        if op == "qmatmul":
            return matmul_lowering.bmm(self, n, self.generic_inputs(n, xs))
        if op == "maxpool" and n.inputs[0] in self.packed:
            _, c, h, w = self.g.shapes[n.inputs[0]]
            a, dt = n.attrs, self._dtype(n.inputs[0])
            key = ("maxpool", c, h, w, tuple(a["kernel"]), tuple(a["strides"]), tuple(a["pads"]), dt)
            y = self._call(key, lambda: cpu_ops.maxpool_func(ceil_div(c, 16), h, w, a["kernel"], a["strides"],
                                                             a["pads"], dt),
                           [self.values[n.inputs[0]]], self._pshape(n.output), dt)
            return self._result(n, y)
        if op == "qavgpool" and n.inputs[0] in self.packed:
            return packed_ops.avgpool(self, n)
        if op == "qmean_hw" and n.inputs[0] in self.packed:
            return packed_ops.mean(self, n)
        if op == "requant" and n.inputs[0] in self.packed and np.size(n.params["M"]) == 1:
            return packed_ops.requant(self, n)
        if op == "qsoftmax":
            return row_ops.softmax(self, n, self.generic_inputs(n, xs))
        if op == "qlut":
            t = n.inputs[0]
            return row_ops.lut(self, n, self.values[t] if t in self.packed else self.generic_inputs(n, xs)[0])
        if op in INT and INT[op].elementwise and len(n.inputs) == 1 and n.inputs[0] in self.packed:
            # a layout-agnostic op (a table lookup) runs on the packed tensor as it is
            return self._result(n, INT[op].lower(self.L, n, [self.values[n.inputs[0]]]))
        if op == "concat" and n.attrs["axis"] == 1 and all(t in self.packed and self.g.shapes[t][1] % 16 == 0
                                                           for t in n.inputs):
            return packed_ops.concat(self, n)
        return None

    # ---------------------------------------------------------------- convolutions
    def _wbits_ok(self, n: Node) -> bool:
        """8-bit weights always; 4-bit ones where a dot-product kernel reads them (unpacked per operand)."""
        wb = n.attrs.get("w_bits")
        return wb == 8 or (wb == 4 and self.isa in DOT_ISAS)

    def _conv_ok(self, n: Node) -> bool:
        a, t = n.attrs, n.inputs[0]
        if self._wide_input(n):
            return len(self.g.shapes[t]) == 4
        if not self._wbits_ok(n) or self._dtype(t) not in _8BIT or len(self.g.shapes[t]) != 4:
            return False
        if a["group"] == 1 or self._group_blocks(n):
            return True
        # 4-bit depthwise only on the `vpdpbusd` path (width dilation 1)
        return self._depthwise(n) and (a["w_bits"] == 8 or a["dilations"][1] == 1)

    def _group_blocks(self, n: Node) -> int:
        """`spec.group_blocks` of grouped conv n on the isa of the step that reads its input."""
        t, a, w = n.inputs[0], n.attrs, n.params["W"]
        return group_blocks(self.g.shapes[t][1], w.shape[0], a["group"], w.shape[1], a.get("w_bits"),
                            t in self.packed, matmul_lowering.step_isa(self, t))

    def _int16_step(self, n: Node) -> bool:
        """A layer of 8-bit or wider (int16, `passes/widen_weights`) weights on 16-bit codes (int16
        storage, `passes/widen_activations`) on an x86 isa: the int16 step (`vpdpwssd` on VNNI,
        `vpmaddwd` elsewhere) reads them as int16 pairs (as the linear GEMM does)."""
        t = n.inputs[0]
        return (self._dtype(t) in _16BIT and matmul_lowering.step_isa(self, t) in INT16_ISAS
                and n.attrs.get("w_bits", 0) >= 8)

    def _wide_input(self, n: Node) -> bool:
        """A conv on the int16 step (a depthwise one on pairs of taps, or the int32 multiply-add fallback)."""
        return self._int16_step(n) and (n.attrs["group"] == 1 or self._depthwise(n) or self._group_blocks(n))

    def _depthwise(self, n: Node) -> bool:
        c, o = self.g.shapes[n.inputs[0]][1], n.params["W"].shape[0]
        return n.attrs["group"] == c == o and n.params["W"].shape[1] == 1

    def _conv(self, n: Node, xs: list, res=None):
        """Emit conv n (res: (residual tensor, add node, this conv is the add's input 0) to fuse)."""
        t, p, a = n.inputs[0], n.params, n.attrs
        x = self.values[t] if t in self.packed else xs[0]
        residual, out_dtype = None, self._dtype(n.output)
        if res is not None:
            rt, add, first = res
            r32 = epilogue.int32_ok((a["lo"], a["hi"]), self._dtype(rt), add.params["S"])
            residual, out_dtype = (self._dtype(rt), add.attrs["lo"], add.attrs["hi"], r32), self._dtype(add.output)
        amx = amx_lowering.conv_spec(self, n, residual, out_dtype, res and res[1].params["M"]) if self.amx else None
        if amx is not None:
            return self._amx_call(n, x, amx, p["W"], res)
        _, c, h, w = self.g.shapes[t]
        o, _, kh, kw = p["W"].shape
        dw, w4 = self._depthwise(n), a["w_bits"] == 4
        oh, ow = self.g.shapes[n.output][2:]
        isa = matmul_lowering.step_isa(self, t)
        gcb = 0 if dw else self._group_blocks(n)
        tile = kernel_tile(isa, 16 * gcb if gcb else o, oh, ow, dw, w4)  # a tile's blocks in one super-group
        q = self.g.qparams[t]
        pre = packing.hi32_preshift(p["S"], p["W"], p["B"], max(abs(q.lo), abs(q.hi)))
        sp = ConvSpec(c, h, w, o, kh, kw, tuple(a["strides"]), tuple(a["pads"]), tuple(a["dilations"]),
                      t in self.packed, self._dtype(t), out_dtype, a["lo"], a["hi"], residual,
                      pre is not None, isa, tile, dw, w4, gcb=gcb, w16=p["W"].dtype == np.int16, pre=pre or 0)
        if sp.mmla:
            sp = dataclasses.replace(sp, tile=mmla_tile(oh, ow))
        op = sp.ocb * 16
        wp = packing.weight(p["W"], sp)
        args = [x, _c(wp, sp.w_dtype), _c(packing.bias(p["B"], p["W"], sp.offset, op), "int32"),
                *self._rq_consts(p, op, sp.hi32, sp.pre)]
        if res is not None:
            mm = np.asarray(add.params["M"]).reshape(-1)
            q = epilogue.consts(mm if first else mm[::-1], add.params["S"], r32)
            args += [self.values[rt], _c(q, str(q.dtype))]
        shape = [self.L.batch, sp.ocb, *sp.out_hw, 16]
        self._record_dot(n, sp)
        # depthwise kernels are named dyadic_dwconv*, so that `dyadic profile` tells them apart
        return self._call(("dwconv" if sp.depthwise else "conv", sp), lambda: conv_func(sp), args, shape, out_dtype)

    def _record_dot(self, n: Node, sp: ConvSpec) -> None:
        self.families[n.name] = KernelFamily(sp.isa)
        if sp.dot and (sp.dw_vnni or not sp.depthwise) or sp.pmadd or sp.dw_pairs:  # usmmla cores: some on usdot
            names = {"vnni": "vpdpbusd", "usmmla": "usmmla" if sp.mmla else "usdot", "avx2": "vpmaddwd",
                     "vnni16": "vpdpwssd"}
            self.dot_layers[n.name] = names.get(sp.isa, sp.isa)

    def _amx_call(self, n: Node, x, sp, w, res=None):
        """Emit the AMX kernel of conv / dense n (`amx_conv`; res as in `_conv`)."""
        from dyadic.backend.kernels import amx_conv, amx_layout

        op = sp.ocb * 16
        args = [x, _c(amx_layout.weight(w, sp), "int8"), _c(packing.bias(n.params["B"], w, sp.offset, op), "int32"),
                *self._rq_consts(n.params, op, sp.hi32)]
        if res is not None:
            rt, add, first = res
            mm = np.asarray(add.params["M"]).reshape(-1)
            mm = mm if first else mm[::-1]
            q = (epilogue.pair_consts(mm, add.params["S"]) if sp.res_pairs
                 else epilogue.consts(mm, add.params["S"], sp.residual[3]))
            args += [self.values[rt], _c(q, str(q.dtype))]
        self.families[n.name], self.dot_layers[n.name] = KernelFamily.AMX, "tdpbusd"
        shape = [self.L.batch, sp.ocb, *((1, 1) if sp.dense else sp.out_hw), 16]
        return self._call(("amxconv", sp), lambda: amx_conv.conv_func(sp), args, shape, sp.out_dtype)

    @staticmethod
    def _rq_consts(p, op: int, hi32: bool = False, pre: int = 0) -> list:
        dt = "int32" if hi32 else "int64"
        return [_c(v, dt) for v in packing.requant_consts(p["M"], p["S"], op, hi32, pre)]

    def _dense(self, n: Node, x):
        p, a, t = n.params, n.attrs, n.inputs[0]
        k = self.g.shapes[t][1]
        o = p["W"].shape[0]
        din, dout = self._dtype(t), self._dtype(n.output)
        amx = amx_lowering.dense_spec(self, n) if self.amx else None
        if amx is None and din not in _8BIT and not self._int16_step(n):  # 16-bit codes: the int16 step, or AMX planes
            return None
        isa = matmul_lowering.step_isa(self, t)
        sp = ConvSpec(k, 1, 1, o, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), False, din, dout, a["lo"], a["hi"],
                      None, packing.hi32_ok(p["S"]), isa, (1, 1, 1), w4=a["w_bits"] == 4, w16=p["W"].dtype == np.int16)
        op = sp.ocb * 16
        wk = p["W"].reshape(o, k, 1, 1)
        x4 = self.L.emit(relax.op.reshape(x, [self.L.batch, k, 1, 1]))
        if amx is not None:
            y = self._amx_call(n, x4, amx, wk)
            y = self.L.emit(relax.op.reshape(y, [self.L.batch, op]))
            return self.L.emit(relax.op.strided_slice(y, [1], [0], [o])) if op != o else y
        args = [x4, _c(packing.weight(wk, sp), sp.w_dtype),
                _c(packing.bias(p["B"], wk, sp.offset, op), "int32"), *self._rq_consts(p, op, sp.hi32)]
        self._record_dot(n, sp)
        y = self._call(("conv", sp), lambda: conv_func(sp), args, [self.L.batch, sp.ocb, 1, 1, 16], dout)
        y = self.L.emit(relax.op.reshape(y, [self.L.batch, op]))
        return self.L.emit(relax.op.strided_slice(y, [1], [0], [o])) if op != o else y

    # ---------------------------------------------------------------- residual add
    def _add(self, n: Node, xs: list):
        ta, tb = n.inputs
        if len(self.g.shapes[ta]) != 4 or self.g.shapes[ta] != self.g.shapes[tb]:
            return None
        for t, x in zip(n.inputs, xs):  # an NCHW operand from a generic op: pack it
            if t not in self.packed and t not in self.deferred:
                self.pack(t, x)
        for t, other in ((tb, ta), (ta, tb)):  # fuse into the later conv if possible
            if t in self.deferred:
                if other in self.deferred:
                    self.materialize(other)
                if other in self.packed:
                    node, cxs = self.deferred.pop(t)
                    return self._result(n, self._conv(node, cxs, res=(other, n, t == ta)))
                self.materialize(t)
        if not (ta in self.packed and tb in self.packed):
            return None
        _, c, h, w = self.g.shapes[n.output]
        da, db, dout = self._dtype(ta), self._dtype(tb), self._dtype(n.output)
        a_info = np.iinfo(da)
        r32 = epilogue.int32_ok((int(a_info.min), int(a_info.max)), db, n.params["S"])
        key = ("add", c, h, w, da, db, dout, n.attrs["lo"], n.attrs["hi"], r32)
        q = epilogue.consts(n.params["M"], n.params["S"], r32)
        make = lambda: cpu_ops.add_func(ceil_div(c, 16), h, w, da, db, dout, n.attrs["lo"], n.attrs["hi"], r32)  # noqa
        y = self._call(key, make, [self.values[ta], self.values[tb], _c(q, str(q.dtype))], self._pshape(n.output), dout)
        return self._result(n, y)
