"""Loading `.npz` data files and matching them to a model's inputs.

Two layouts are accepted:
  * `images` (uint8, [N, H, W, C], RGB) with optional `labels`: converted to the model's NCHW float
    input as (pixels / 255 - mean) / std per channel;
  * arrays keyed by the model's input names, already preprocessed (float, the model's shape).

A model whose input is itself named `images` (many YOLO exports) is unambiguous by this rule: the
keyed reading wins whenever every model input has an array of its name whose dtype is not uint8 and
whose shape fits the input ([N, *dims]); otherwise an `images` array is read as uint8 NHWC pictures.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from dyadic.core.errors import DataError, DataRangeError
from dyadic.frontend.datacheck import check_arrays, check_limit, open_npz


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    @staticmethod
    def parse(mean: str | None, std: str | None) -> "Normalize":
        def floats(s, default):
            if s is None:
                return default
            try:
                v = tuple(float(v) for v in s.split(","))
            except ValueError:
                raise DataError(f"--mean/--std must be comma-separated numbers, got {s!r}") from None
            if not all(math.isfinite(x) for x in v):
                raise DataRangeError(f"--mean/--std must be finite numbers, got {s!r}")
            return v
        out = Normalize(floats(mean, (0.0, 0.0, 0.0)), floats(std, (1.0, 1.0, 1.0)))
        if any(x <= 0 for x in out.std):
            raise DataRangeError(f"--std values must be positive, got {std!r}")
        return out


def load_npz(path: str, input_shapes: dict[str, tuple[int, ...]], norm: Normalize = Normalize(),
             limit: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Return ({input name: float32 array}, labels or None), or raise DataError saying what is wrong."""
    check_limit(limit)
    arrays = open_npz(path)
    labels = arrays.get("labels")
    sl = slice(0, limit)
    keyed = all(k in arrays and arrays[k].dtype != np.uint8 and arrays[k].ndim == len(s)
                and arrays[k].shape[1:] == tuple(s[1:]) for k, s in input_shapes.items())
    if "images" in arrays and not keyed:
        if len(input_shapes) != 1:
            raise DataError(f"{path}: 'images' can only feed a model with one input; the model has "
                            f"{list(input_shapes)}: key the arrays by input name instead")
        name, shape = next(iter(input_shapes.items()))
        img = arrays["images"][sl]
        c, h, w = shape[1:]
        if img.dtype != np.uint8 or img.ndim != 4 or img.shape[1:] != (h, w, c):
            raise DataError(f"{path}: 'images' is {img.dtype} {list(img.shape)}, but the model input {name!r} "
                            f"needs uint8 [N, {h}, {w}, {c}] (NHWC) images")
        if len(norm.mean) != c or len(norm.std) != c:
            raise DataError(f"--mean/--std need {c} values (one per channel), got {len(norm.mean)}/{len(norm.std)}")
        x = (img.astype(np.float32) / 255.0 - np.array(norm.mean, np.float32)) / np.array(norm.std, np.float32)
        out = {name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
    else:
        missing = [k for k in input_shapes if k not in arrays]
        if missing:
            raise DataError(f"{path}: no array for model input(s) {missing}; it has keys {sorted(arrays)}. "
                            "Provide 'images' (uint8 NHWC) or arrays named after the model inputs")
        out = {}
        for k, shape in input_shapes.items():
            a = arrays[k][sl]
            if a.ndim != len(shape) or a.shape[1:] != tuple(shape[1:]):
                raise DataError(f"{path}: array {k!r} has shape {list(a.shape)}, the model needs "
                                f"[N, {', '.join(map(str, shape[1:]))}]")
            out[k] = a.astype(np.float32)
    check_arrays(path, out)
    n = {len(v) for v in out.values()}
    if len(n) != 1 or 0 in n:
        raise DataError(f"{path}: the input arrays are empty or differ in length")
    if labels is not None:
        labels = labels[sl]
        if labels.ndim != 1 or labels.dtype.kind not in "iuf" or (labels.dtype.kind == "f" and not (
                np.isfinite(labels).all() and (labels == np.round(labels)).all())) or (labels < 0).any():
            raise DataError(f"{path}: 'labels' must be a 1-D array of non-negative integers, got {labels.dtype} "
                            f"{list(labels.shape)}")
        labels = labels.astype(np.int64)
        if len(labels) != next(iter(n)):
            raise DataError(f"{path}: {len(labels)} labels for {next(iter(n))} inputs")
    return out, labels


def synthetic(input_shapes: dict[str, tuple[int, ...]], count: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal inputs: calibration for the built-in demo models, which have random weights."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal((count,) + tuple(s[1:])).astype(np.float32) for k, s in input_shapes.items()}
