"""The CPU kernels of a transformer's matrix products (`qlinear`, `qmatmul`; `ops/matmul`), x86.

`linear`: a linear over [N, ..., K] runs on the conv kernels' 1x1 GEMM (`cpu_conv`) with the rows of
the inner leading dims as the width of an NHWC input, so each register tile reuses its weight
operands over `owi` rows. A 16-bit input (int16 codes, int16 storage or int32 in older graphs: a LayerNorm or GELU
output) runs on the AVX2 `vpmaddwd` step on every x86 isa, narrowed to int16 by the kernel's packing
copy (`ConvSpec.operand_dtype`); an 8-bit input on the isa's own step (VNNI, AVX2, arm dot products).
A per-tensor `requant` reached from a linear's output through reshapes and transposes only (the
narrowing of Q, K, V for their products) is fused into the linear's epilogue (`ConvSpec.post`).
`bmm`: a product of two activations with int16-range codes (Q·Kᵀ, P·V) on `cpu_bmm`.
Each returns None where it does not apply; the op's generic lowering then runs.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from tvm import relax

from dyadic.backend.kernels import epilogue, packing
from dyadic.backend.kernels.cpu_bmm import BmmSpec, bmm_func
from dyadic.backend.kernels.cpu_conv import conv_func
from dyadic.backend.kernels.spec import ConvSpec, kernel_tile, mmla_tile

_X86_ISAS = ("vnni", "avx512", "avx2")


def linear(kern, node, x):
    """The CPU kernel family's 1x1-conv GEMM (the one `qdense` runs on), with the rows of every leading
    dim but the first as the width of an NHWC input, so the register tile reuses each weight operand
    over `owi` rows. A 16-bit input (int16 codes) runs on the AVX2 `vpmaddwd` step
    (every x86 isa has it), narrowed to int16 by the kernel's packing copy and read as int16 pairs;
    an 8-bit one on the isa's own step."""
    L = kern.L
    din = L.g.dtypes[node.inputs[0]]
    isa = step_isa(kern, node.inputs[0])
    if isa is None:
        return None
    p, a = node.params, node.attrs
    shape = L.g.shapes[node.inputs[0]]
    k, o = int(shape[-1]), int(p["W"].shape[0])
    rows = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
    n = int(shape[0]) if getattr(L, "static", False) else L.batch
    dout = L.g.dtypes[node.output]
    rq = _narrowing_requant(kern, node)
    post = None if rq is None else epilogue.post_of(rq)
    sp = ConvSpec(k, 1, rows, o, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), False, din, dout, a["lo"], a["hi"], None,
                  packing.hi32_ok(p["S"]), isa, kernel_tile(isa, o, 1, rows), nhwc=True, post=post,
                  w16=p["W"].dtype == np.int16)  # 9-12-bit weights of a 16-bit input (`--wide-weights`)
    if rq is not None:  # the requant's value is the moved output itself (a per-tensor requant commutes with moves)
        kern.passthrough.add(rq.output)
    if sp.mmla:
        sp = dataclasses.replace(sp, tile=mmla_tile(1, rows))
    op = sp.ocb * 16
    wk = p["W"].reshape(o, k, 1, 1)
    c = lambda v, dt: relax.const(np.ascontiguousarray(np.asarray(v).astype(dt)), dt)  # noqa: E731
    x4 = L.emit(relax.op.reshape(x, [n, 1, rows, k]))
    args = [x4, c(packing.weight(wk, sp), sp.w_dtype), c(packing.bias(p["B"], wk, sp.offset, op), "int32"),
            *kern._rq_consts(p, op, sp.hi32)]
    kern._record_dot(node, sp)
    y = kern._call(("conv", sp), lambda: conv_func(sp), args, [n, 1, rows, op], dout)  # channels last
    y = L.emit(relax.op.reshape(y, [n, rows, op]))
    if op != o:
        y = L.emit(relax.op.strided_slice(y, [2], [0], [o]))
    return L.emit(relax.op.reshape(y, [n] + [int(d) for d in shape[1:-1]] + [o]))


def _narrowing_requant(kern, node):
    """The per-tensor `requant` at the end of node's single-reader chain of reshapes and transposes (a
    query, key or value narrowed for its attention product), or None. Fused into the linear's
    epilogue it gives the same integers: data movement commutes with an elementwise requant."""
    g, t = kern.L.g, node.output
    while t not in g.outputs:
        cons = kern.consumers.get(t, [])
        if len(cons) != 1:
            return None
        c = cons[0]
        if c.op in ("reshape", "transpose"):
            t = c.output
            continue
        ok = c.op == "requant" and np.size(c.params["M"]) == 1 and g.dtypes[c.output] == g.dtypes[node.output]
        return c if ok else None
    return None


def step_isa(kern, t: str) -> str | None:
    """The isa of the GEMM step that reads tensor t: the kernels' own for 8-bit codes; for 16-bit codes
    (int16 storage, or int32 holding int16-range codes) the int16 step, `vpdpwssd` (`vnni16`) on AVX512-VNNI, else AVX2 `vpmaddwd` (every
    x86 isa has it); None where no kernel step reads t."""
    d = kern.L.g.dtypes[t]
    if d in ("int8", "uint8"):
        return kern.isa
    if d in ("int16", "int32") and kern.isa in _X86_ISAS and _int16_codes(kern.L, t):
        return int16_isa(kern.isa)
    return None


def int16_isa(isa: str) -> str:
    """The int16-pair step an x86 kernel isa has: `vpdpwssd` on VNNI, `vpmaddwd` (AVX2) elsewhere."""
    return "vnni16" if isa == "vnni" else "avx2"


def _int16_codes(L, t: str) -> bool:
    """8-bit codes, or wide codes that fit int16."""
    q = L.g.qparams.get(t)
    return L.g.dtypes[t] in ("int8", "uint8") or (q is not None and -(1 << 15) <= q.lo and q.hi < 1 << 15)


def bmm(kern, node, xs):
    """The x86 kernels' batched matmul (`kernels.cpu_bmm`) where A and B have int16-range codes (B not
    uint8: its step sign-extends) and the same leading dims; None elsewhere (the generic matmul)."""
    L = kern.L
    ta, tb = node.inputs
    sa, sb = L.g.shapes[ta], L.g.shapes[tb]
    if (kern.isa not in _X86_ISAS
            or L.g.dtypes[tb] == "uint8" or not _int16_codes(L, ta) or not _int16_codes(L, tb)
            or len(sa) != len(sb) or len(sa) < 3
            or tuple(sa[:-2]) != tuple(sb[:-2])):
        return None
    static = getattr(L, "static", False)
    n = int(sa[0]) if static else L.batch
    g = int(np.prod(sa[1:-2]))
    i, k, j = (int(d) for d in (sa[-2], sa[-1], sb[-1]))
    a, p = node.attrs, node.params
    sp = BmmSpec(n if static else None, g, i, k, j, L.g.dtypes[ta], L.g.dtypes[tb], L.g.dtypes[node.output],
                 int(p["M"]), int(p["S"]), a["lo"], a["hi"], int16_isa(kern.isa))
    x, y = (L.emit(relax.op.reshape(v, [n, g, *sh[-2:]])) for v, sh in zip(xs, (sa, sb)))
    out = kern._call(("bmm", sp), lambda: bmm_func(sp), [x, y], [n, g, i, sp.jb, 16], sp.out_dtype)
    out = L.emit(relax.op.reshape(out, [n, g, i, sp.jb * 16]))
    if sp.jb * 16 != j:
        out = L.emit(relax.op.strided_slice(out, [3], [0], [j]))
    return L.emit(relax.op.reshape(out, [n] + [int(d) for d in sa[1:-1]] + [j]))
