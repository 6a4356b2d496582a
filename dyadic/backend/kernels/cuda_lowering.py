"""Graph-level dispatch of the CUDA tensor-core kernels (`cuda_gemm`): which nodes, which MMA.

`CudaKernels.lower(node, xs)` takes `qconv` (group 1) and `qdense` nodes with 8-bit weights, or
4-bit weights (packed two per byte, as `dyadic.lower_int4`), whose input is an 8-bit-typed tensor
(uint8 / int8; 4-bit activations travel in these too), and emits one fused kernel: implicit GEMM on
`mma.sync` plus the requant epilogue, reading and writing NCHW (so no layout changes anywhere; every
other node takes the generic path, which dlight schedules).

Which MMA (`GemmSpec.a4`, `w_unpack`):
  * W8, A8 (or A4):            int8 MMA, `s8.s8` (int8 input) or `u8.s8` (uint8 input): no offset.
  * W4 A4 on sm_75/80/86/89:   int4 MMA, `s4.s4` / `u4.s4` (activations 0..15 or -8..7).
  * W4 with 8-bit activations, or any W4 on sm_90 (Hopper has no int4 MMA): the weights stay
    nibble-packed in the library and the kernel sign-extends them to int8 words for the int8 MMA.
Layers whose accumulator bound needs more than int32 are not an issue: `verify` rejects them upstream.
"""
from __future__ import annotations

import numpy as np
from tvm import relax

from dyadic.core.arith import rounding_term
from dyadic.core.graph import Node
from dyadic.backend.kernels.cuda_gemm import GemmSpec, gemm_func

_8BIT = ("uint8", "int8")
INT4_MMA_SMS = (75, 80, 86, 89)


def _c(v: np.ndarray, dtype: str):
    return relax.const(np.ascontiguousarray(np.asarray(v).astype(dtype)), dtype)


def sm_of(arch: str) -> int:
    return int(str(arch).replace("sm_", ""))


def pack_words(w2: np.ndarray, rows: int, elems: int, bits: int) -> np.ndarray:
    """[O, K] integer weights -> uint32 words [rows, elems * bits / 32], zero padded, element i of a
    word in bits [i*bits, (i+1)*bits) (the MMA operand order: little-endian bytes / low nibble first)."""
    full = np.zeros((rows, elems), np.int64)
    full[: w2.shape[0], : w2.shape[1]] = w2
    if bits == 8:
        b = (full & 0xFF).astype(np.uint8)
    else:
        nib = (full & 0xF).astype(np.uint8)
        b = nib[:, 0::2] | (nib[:, 1::2] << 4)
    return np.ascontiguousarray(b).view("<u4").astype(np.uint32)


def weight_words(w: np.ndarray, sp: GemmSpec) -> np.ndarray:
    w2 = np.asarray(w, np.int64).reshape(w.shape[0], -1)
    rows, words = sp.w_words
    bits = 4 if (sp.a4 or sp.w_unpack) else 8
    return pack_words(w2, rows, words * 32 // bits, bits)


def requant_consts(p: dict, sp: GemmSpec) -> list[np.ndarray]:
    """bias int32, m, 2^(s-1), s as int64, each padded to sp.np_ channels (padding: m=0, s=1)."""
    o, n = sp.o, sp.np_
    bias = np.zeros(n, np.int32)
    bias[:o] = np.asarray(p["B"]).reshape(-1)
    m, s = np.zeros(n, np.int64), np.ones(n, np.int64)
    m[:o] = np.broadcast_to(np.asarray(p["M"], np.int64).reshape(-1), (o,))
    s[:o] = np.broadcast_to(np.asarray(p["S"], np.int64).reshape(-1), (o,))
    return [bias, m, rounding_term(s).astype(np.int64), s]


def make_spec(x_shape, w_shape, attrs: dict, in_dtype: str, out_dtype: str, sm: int, a_bits: int) -> GemmSpec:
    """The kernel for a conv (x_shape [N, C, H, W]) or a dense (x_shape [N, K], w_shape [O, K])."""
    w4 = attrs.get("w_bits") == 4
    a4 = w4 and a_bits == 4 and sm in INT4_MMA_SMS
    if len(x_shape) == 2:
        c, h, w, kh, kw = x_shape[1], 1, 1, 1, 1
        geo = ((1, 1), (0, 0, 0, 0), (1, 1))
    else:
        (_, c, h, w), (kh, kw) = x_shape, w_shape[2:]
        geo = (tuple(attrs["strides"]), tuple(attrs["pads"]), tuple(attrs["dilations"]))
    return GemmSpec(c, h, w, w_shape[0], kh, kw, *geo, in_dtype, out_dtype, attrs["lo"], attrs["hi"],
                    a4, w4 and not a4, sm)


def kernel_args(p: dict, sp: GemmSpec) -> list[np.ndarray]:
    """Constant arguments after x: weight words, bias, m, 2^(s-1), s."""
    return [weight_words(p["W"], sp), *requant_consts(p, sp)]


class CudaKernels:
    """emulate=True: the kernels' CPU emulation (`gemm_func(..., emulate=True)`), so a whole lowered
    model can be built for llvm and checked against `dyadic.reference` (tests only)."""

    def __init__(self, lowerer, arch: str, emulate: bool = False):
        self.L, self.g, self.sm, self.emulate = lowerer, lowerer.g, sm_of(arch), emulate
        self.funcs: dict[GemmSpec, object] = {}
        self.specs: list[GemmSpec] = []        # one per lowered node, for reports and tests
        self.isa, self.dot_layers = "mma.sync", {}   # layer -> instruction (dyadic.backend.lower -> plan: target.dot_macs)

    def generic_inputs(self, n: Node, xs: list) -> list:
        return xs                              # everything stays NCHW

    def _ok(self, n: Node) -> bool:
        a, t = n.attrs, n.inputs[0]
        if a.get("w_bits") not in (4, 8) or self.g.dtypes[t] not in _8BIT:
            return False
        rank = len(self.g.shapes[t])
        if n.op == "qdense":
            return rank == 2 and n.params["W"].ndim == 2
        return rank == 4 and a["group"] == 1

    def lower(self, n: Node, xs: list):
        if n.op not in ("qconv", "qdense") or not self._ok(n):
            return None
        t, p = n.inputs[0], n.params
        shape = list(self.g.shapes[t])
        sp = make_spec(shape, p["W"].shape, n.attrs, self.g.dtypes[t], self.g.dtypes[n.output], self.sm,
                       int(n.attrs.get("a_bits", 8)))
        self.specs.append(sp)
        self.dot_layers[n.name] = self.isa
        if sp not in self.funcs:
            name = f"dyadic_mma_gemm{len(self.funcs)}"
            self.funcs[sp] = self.L.bb.add_func(gemm_func(sp, self.emulate).with_attr("global_symbol", name), name)
        x = xs[0]
        if n.op == "qdense":
            x = self.L.emit(relax.op.reshape(x, [self.L.batch, shape[1], 1, 1]))
        dts = ["uint32", "int32", "int64", "int64", "int64"]
        args = [x] + [_c(v, dt) for v, dt in zip(kernel_args(p, sp), dts)]
        oh, ow = sp.out_hw
        out = relax.TensorType([self.L.batch, sp.o, oh, ow], sp.out_dtype)
        y = self.L.emit(relax.call_tir(self.funcs[sp], args, out))
        if n.op == "qdense":
            y = self.L.emit(relax.op.reshape(y, [self.L.batch, sp.o]))
        return y
