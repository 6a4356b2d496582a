"""The packed-layout table lookup, activation product, per-channel affine and requant kernels
(`cpu_ops.lut_func`, `qmul_func`, `affine_func`, `requant_func`):
bit-exact against the numpy int64 reference (`dyadic.core.arith.requantize`, the `qlut` gather) on
random codes and at the bounds, both requant forms of `qmul` (int32 where S >= 33, else int64), a
squeeze-excite gate and a same-shape operand, 8-bit and 16-bit codes. That a compiled MobileNetV3
block runs them (no generic `qlut` or `qmul` left) is checked in test_widen_activations."""
from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from dyadic.backend.kernels import cpu_ops  # noqa: E402
from dyadic.core.arith import requantize  # noqa: E402
from dyadic.backend.kernels.packed_ops import packed_channels  # noqa: E402
from dyadic.core.arith import rounding_term  # noqa: E402
from dyadic.core.graph import Node  # noqa: E402
from test_kernels_x86 import HOST, _packed, _unpacked, needs_avx2  # noqa: E402


def _run(func, *arrays, out_shape, out_dtype):
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(HOST))
    out = tvm.runtime.empty(out_shape, out_dtype)
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays], out)
    return out.numpy()


@needs_avx2
@pytest.mark.parametrize("din,dout,lo,hi", [("int8", "uint8", -128, 127), ("uint8", "int8", 0, 255),
                                            ("int8", "int8", -127, 127), ("int32", "int32", -32768, 32767)])
def test_lut_kernel_bitexact(din, dout, lo, hi):
    rng = np.random.default_rng(len(din) + hi)
    c, h, w = 37, 5, 7
    x = rng.integers(lo, hi + 1, (2, c, h, w))
    x[0, 0, 0, :2] = lo, hi  # both ends of the table
    info = np.iinfo(dout)
    table = rng.integers(max(info.min, -32768), min(info.max, 32767) + 1, hi - lo + 1)
    xp = _packed(x.astype(din))
    got = _run(cpu_ops.lut_func((None, *xp.shape[1:]), din, table.size, lo, dout), xp, table.astype(dout),
               out_shape=xp.shape, out_dtype=dout)
    want = _packed(table[x - lo])
    real = _packed(np.ones_like(x)) == 1  # padded channels hold values no consumer reads
    np.testing.assert_array_equal(got[real], want[real])


@needs_avx2
@pytest.mark.parametrize("shape", [(None, 12, 128, 37), (None, 5), (3, None, 1000)])
def test_lut_kernel_any_layout(shape):
    """A transformer's [N, S, D] / [N, H, S, S] tensors (not packed): symbolic dims, odd sizes."""
    rng = np.random.default_rng(len(shape))
    real = tuple(2 if d is None else d for d in shape)
    x = rng.integers(-32768, 32768, real)
    table = rng.integers(-32768, 32768, 65536)
    got = _run(cpu_ops.lut_func(shape, "int32", table.size, -32768, "int32"), x.astype(np.int32),
               table.astype(np.int32), out_shape=real, out_dtype="int32")
    np.testing.assert_array_equal(got, table[x + 32768])


@needs_avx2
def test_lut_kernel_clamps_out_of_range_codes():
    """A code outside [lo, hi] (not produced by any op) reads an end of the table, never outside it."""
    x = np.array([-128, -127, 0, 127], np.int8).reshape(1, 1, 1, 4)
    xp = _packed(x)
    table = np.arange(10, 10 + 255).astype(np.int32)  # codes -127..127
    got = _run(cpu_ops.lut_func(xp.shape, "int8", table.size, -127, "int32"), xp, table, out_shape=xp.shape,
               out_dtype="int32")
    np.testing.assert_array_equal(got[0, 0, 0, :, 0], [10, 10, 137, 264])


@needs_avx2
@pytest.mark.parametrize("din,dout,lo,size", [("int16", "int16", -32768, 65536), ("uint8", "int8", 0, 256),
                                              ("int32", "int8", -5000, 9001), ("int8", "int32", -127, 255)])
def test_lut_rows_kernel_bitexact(din, dout, lo, size):
    """The flat [N, m] scalar lookup (`cpu_ops.lut_rows_func`, what a packed tensor's table runs on an AVX2
    host): every code, codes outside the table clamped to its ends, a batch of 3 over 2 parallel chunks."""
    rng = np.random.default_rng(size)
    m = 16 * 129  # 129 runs of 16: chunks of 3 x 16 codes
    info = np.iinfo("int16" if din == "int32" else din)
    x = rng.integers(info.min, info.max + 1, (3, m))
    x[0, :4] = info.min, info.max, lo, lo + size - 1
    ov = np.iinfo(dout)
    table = rng.integers(max(ov.min, -32768), min(ov.max, 32767) + 1, size)
    got = _run(cpu_ops.lut_rows_func(m, din, size, lo, dout), x.astype(din), table.astype(dout),
               out_shape=x.shape, out_dtype=dout)
    np.testing.assert_array_equal(got, table[np.clip(x - lo, 0, size - 1)])


@needs_avx2
@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("da,db,dout,s,mbits", [("uint8", "uint8", "uint8", 38, 31), ("int8", "uint8", "int8", 37, 31),
                                                ("int8", "int8", "int8", 32, 23), ("int32", "int32", "int32", 45, 31),
                                                ("int32", "uint8", "int32", 30, 22), ("int8", "int8", "int8", 33, 24)])
def test_qmul_kernel_bitexact(gate, da, db, dout, s, mbits):
    """S >= 33 takes the int32 form, S < 33 the int64 one (S = 32, 33: the boundary)."""
    rng = np.random.default_rng(s + gate)
    c, h, w = 21, 4, 6

    def codes(dt, shape):
        lo, hi = (-32768, 32767) if dt == "int32" else (np.iinfo(dt).min, np.iinfo(dt).max)
        v = rng.integers(lo, hi + 1, shape)
        v.reshape(-1)[:4] = [lo, hi, lo, hi]  # products at the bounds
        return v
    a = codes(da, (2, c, h, w))
    b = codes(db, (2, c, 1, 1) if gate else (2, c, h, w))
    m = int(rng.integers(1 << (mbits - 1), 1 << mbits))
    lo, hi = (-32768, 32767) if dout == "int32" else (np.iinfo(dout).min, np.iinfo(dout).max)
    want = requantize(a.astype(np.int64) * b.astype(np.int64), np.int64(m), np.int64(s), lo, hi)
    ap, bp = _packed(a.astype(da)), _packed(b.astype(db))
    got = _run(cpu_ops.qmul_func(ap.shape[1], h, w, gate, da, db, dout, m, s, lo, hi), ap, bp, out_shape=ap.shape,
               out_dtype=dout)
    real = _packed(np.ones((2, c, h, w), np.int8)) == 1
    np.testing.assert_array_equal(got[real], _packed(want.astype(dout))[real])
    assert len(np.unique(want)) > 3, "degenerate case"


@needs_avx2
@pytest.mark.parametrize("da,db,dout,s", [("int32", "int32", "int32", 31), ("int8", "int32", "int32", 38),
                                          ("uint8", "int8", "int8", 33)])
def test_residual_add_any_layout_bitexact(da, db, dout, s):
    """`qadd` of [N, S, D] tensors (a transformer's residual stream), 16-bit codes at their bounds."""
    from dyadic.core.arith import rounding_term

    rng = np.random.default_rng(s)
    shape = (3, 37, 24)

    def codes(dt):
        lo, hi = (-32768, 32767) if dt == "int32" else (np.iinfo(dt).min, np.iinfo(dt).max)
        v = rng.integers(lo, hi + 1, shape)
        v.reshape(-1)[:4] = [lo, hi, lo, hi]
        return v
    a, b = codes(da), codes(db)
    ma, mb = (int(v) for v in rng.integers(1 << 29, 1 << 31, 2))
    lo, hi = (-32768, 32767) if dout == "int32" else (np.iinfo(dout).min, np.iinfo(dout).max)
    want = np.clip((a * ma + b * mb + int(rounding_term(np.int64(s)))) >> s, lo, hi)
    got = _run(cpu_ops.add_any_func((None, 37, 24), da, db, dout, ma, mb, s, lo, hi), a.astype(da), b.astype(db),
               out_shape=shape, out_dtype=dout)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 3, "degenerate case"


def _codes(rng, dt, shape):
    lo, hi = (-32768, 32767) if dt == "int32" else (np.iinfo(dt).min, np.iinfo(dt).max)
    v = rng.integers(lo, hi + 1, shape)
    v.reshape(-1)[:4] = [lo, hi, lo, hi]
    return v


@needs_avx2
@pytest.mark.parametrize("din,dout,lo,hi", [("int8", "uint8", 0, 255), ("uint8", "int8", -128, 127),
                                            ("int32", "int32", -32768, 32767)])
def test_packed_affine_kernel_bitexact(din, dout, lo, hi):
    """`qaffine` per channel on the packed layout (`cpu_ops.affine_func`, DenseNet's pre-activation BN
    with its ReLU fused): the int64 reference of `ops/arith_ops`, negative gains and offsets, shifts 20..50."""
    from dyadic.ops import INT

    rng = np.random.default_rng(len(din) + hi)
    c, h, w = 37, 5, 6
    x = _codes(rng, din, (2, c, h, w))
    g = rng.choice([-1, 1], c).astype(np.int64)
    m = rng.integers(1 << 30, 1 << 31, c).astype(np.int64)
    s = rng.integers(20, 51, c).astype(np.int64)
    k = (rng.normal(0, 50, c) * np.exp2(s)).astype(np.int64)
    node = Node("qaffine", "bn", ("x",), ("y",), {"lo": lo, "hi": hi}, {"M": m, "S": s, "G": g, "K": k})
    want = INT["qaffine"].run_int(node, [x], None)
    sp = packed_channels(s, c, fill=1).reshape(-1)
    consts = [packed_channels(g * m, c).reshape(-1), packed_channels(k, c).reshape(-1), rounding_term(sp), sp]
    got = _run(cpu_ops.affine_func(3, h, w, din, dout, lo, hi), _packed(x.astype(din)), *consts,
               out_shape=(2, 3, h, w, 16), out_dtype=dout)
    np.testing.assert_array_equal(_unpacked(got, c), want)
    assert len(np.unique(want)) > 3, "degenerate case"


@needs_avx2
@pytest.mark.parametrize("din,dout,s,m", [("uint8", "int8", 34, (1 << 31) - 1), ("int8", "uint8", 33, 1 << 30),
                                          ("int32", "int8", 38, 1500000000), ("int8", "int32", 31, 1 << 30),
                                          ("int32", "int32", 36, (1 << 32) + 5)])
def test_packed_requant_kernel_bitexact(din, dout, s, m):
    """A per-tensor `requant` of a packed tensor (`cpu_ops.requant_func`): the int32 form (S >= 33,
    M < 2^31) and the int64 one, at the input codes' bounds and saturating."""
    from dyadic.core.arith import requantize

    rng = np.random.default_rng(s)
    x = _codes(rng, din, (2, 3, 4, 5, 16))
    lo, hi = (-32768, 32767) if dout == "int32" else (np.iinfo(dout).min, np.iinfo(dout).max)
    want = requantize(x, np.int64(m), np.int64(s), lo, hi)
    got = _run(cpu_ops.requant_func((None, 3, 4, 5, 16), din, dout, m, s, lo, hi), x.astype(din),
               out_shape=x.shape, out_dtype=dout)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 3, "degenerate case"


needs_vbmi = pytest.mark.skipif(not __import__("dyadic.backend.kernels", fromlist=["x86_has"]).x86_has(HOST, "avx512vbmi"),
                                reason="host CPU has no AVX512-VBMI")


@needs_vbmi
@pytest.mark.parametrize("din,dout", [("uint8", "uint8"), ("int8", "int8"), ("int8", "uint8"), ("uint8", "int8")])
@pytest.mark.parametrize("m", [188160, 2352, 80, 64])
def test_vbmi_byte_table_bitexact(din, dout, m):
    """A whole-range 256-entry table on `vpermt2b` (`intrin_vbmi`): every code of the input type (all 256
    appear; 3 x 64 = 192 of them at m = 64), whole vectors and a tail, against T[x - min]."""
    from dyadic.backend.kernels.intrin_vbmi import lut8_func

    rng = np.random.default_rng(m + len(din))
    info = np.iinfo(din)
    x = rng.integers(info.min, info.max + 1, (3, m))
    x.reshape(-1)[:256] = np.arange(info.min, info.max + 1)[:x.size]
    t = rng.integers(np.iinfo(dout).min, np.iinfo(dout).max + 1, 256)
    got = _run(lut8_func(m, din, dout), x.astype(din), t.astype(dout), out_shape=(3, m), out_dtype=dout)
    np.testing.assert_array_equal(got, t[x - info.min])


needs_avx512 = pytest.mark.skipif(not __import__("dyadic.backend.kernels", fromlist=["x86_has"]).x86_has(HOST, "avx512f"),
                                  reason="host CPU has no AVX-512")


@needs_avx512
@pytest.mark.parametrize("dout", ["int16", "int8", "uint8"])
@pytest.mark.parametrize("table_len,in_lo", [(65536, -32768), (40001, -20000), (300, 17)])
@pytest.mark.parametrize("m", [70000, 37, 16])
def test_gather_table_on_16bit_codes_bitexact(dout, table_len, in_lo, m):
    """A table on 16-bit codes on `vpgatherdd` (`intrin_gather`): every int16 code (both ends, and the
    table's own ends, which clamp the codes outside it), whole vectors and a tail, against
    T[clamp(x - in_lo, 0, len - 1)]; the padding entries never reach the output."""
    from dyadic.backend.kernels.intrin_gather import lut16_func, padding

    rng = np.random.default_rng(table_len + m)
    x = rng.integers(-32768, 32768, (3, m))
    x.reshape(-1)[:min(x.size, 65536)] = np.arange(-32768, 32768)[:x.size]
    x.reshape(-1)[-4:] = [-32768, 32767, in_lo, in_lo + table_len - 1]
    info = np.iinfo(dout)
    t = rng.integers(info.min, info.max + 1, table_len)
    pad = np.full(padding(dout), info.max, dout)  # a value no in-range lookup should show
    got = _run(lut16_func(m, "int16", table_len, in_lo, dout), x.astype("int16"), np.concatenate([t.astype(dout), pad]),
               out_shape=(3, m), out_dtype=dout)
    np.testing.assert_array_equal(got, t[np.clip(x - in_lo, 0, table_len - 1)])
