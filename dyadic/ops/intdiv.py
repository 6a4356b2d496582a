"""Exact floor division by a per-row divisor, with one division per row instead of one per element.

For integers 0 <= n < 2^k and d >= 1, with the per-row reciprocal r = floor(2^k / d):

    2^k / d - 1 < r <= 2^k / d   =>   n / d - n / 2^k < n r / 2^k <= n / d   =>   n / d - 1 < n r / 2^k <= n / d

so q0 = (n r) >> k is floor(n / d) or one less, and q = q0 + [n - q0 d >= d] is floor(n / d) exactly:
the same integers as the reference's division, bit for bit. Every product stays in int64 when
n_max r_max <= n_max 2^k / d_min < 2^63 (`row_divide` checks it at compile time). TVM's CPU code
has no vector integer division, so an element-wise `floor_divide` is a scalar `idiv` per element
(softmax over 12 x 128 x 128 scores: 4 ms of MiniLM's 44); this is a few vector int64 ops.
"""
from __future__ import annotations

import numpy as np

INT64_LIMIT = 1 << 63


def row_shift(num_max: int, den_min: int) -> int:
    """The k of the module docstring: 2^k > num_max; raises if n r can leave int64."""
    k = max(int(num_max).bit_length(), 1)
    if int(num_max) * ((1 << k) // max(int(den_min), 1)) >= INT64_LIMIT:
        raise ValueError(f"row division: numerators up to {num_max} over divisors from {den_min} leave int64")
    return k


def row_divide_np(num: np.ndarray, den: np.ndarray, k: int) -> np.ndarray:
    """The lowering's arithmetic in numpy (int64), for tests: equals num // den for 0 <= num < 2^k."""
    r = (np.int64(1) << np.int64(k)) // den
    q0 = (num * r) >> np.int64(k)
    return q0 + (num - q0 * den >= den)


def row_divide(L, num, den, num_max: int, den_min: int):
    """floor(num / den) for int64 Relax tensors, num >= 0 (< num_max + 1), den >= den_min a per-row
    tensor broadcast against num."""
    from tvm import relax

    k = row_shift(num_max, den_min)
    i64 = lambda v: relax.const(np.int64(v), "int64")  # noqa: E731
    r = L.materialize(L.emit(relax.op.floor_divide(i64(1 << k), den)))
    q0 = L.emit(relax.op.right_shift(L.emit(relax.op.multiply(num, r)), i64(k)))
    fix = L.emit(relax.op.greater_equal(L.emit(relax.op.subtract(num, L.emit(relax.op.multiply(q0, den)))), den))
    return L.emit(relax.op.add(q0, L.emit(relax.op.astype(fix, "int64"))))
