"""Checks on `.npz` data files, before and after loading: a clean `DataError` for every bad file.

* `open_npz`: the path is a regular file; the archive's members are read with `allow_pickle=False`
  (an object array is refused, never unpickled) after their headers say they are numeric and under
  `MAX_DATA_BYTES` (so a small compressed file cannot make us allocate gigabytes);
* `check_arrays`: every model input array is real-valued and finite (NaN or Inf would make every
  calibrated range NaN);
* `check_limit`: `--limit`/`--calib-count` is a positive count.
"""
from __future__ import annotations

import os
import stat
import zipfile

import numpy as np

from dyadic.core.errors import DataError, DataRangeError

MAX_DATA_BYTES = 1 << 32


def check_limit(limit) -> None:
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise DataError(f"the sample count (--limit/--calib-count) must be a positive integer, got {limit!r}")


def open_npz(path: str) -> dict[str, np.ndarray]:
    try:
        st = os.stat(path)
    except OSError:
        raise DataError(f"data file {path!r} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"data file {path!r} is {'a directory' if stat.S_ISDIR(st.st_mode) else 'not a regular file'}")
    if st.st_size == 0:
        raise DataError(f"data file {path!r} is empty (0 bytes)")
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(fh))
                if dtype.hasobject or dtype.kind not in "biufUS":
                    raise DataError(f"{path}: array {info.filename[:-4]!r} has dtype {dtype}, not a number or "
                                    "string type (object/pickled arrays are never loaded)")
                nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if nbytes > MAX_DATA_BYTES:
                    raise DataError(f"{path}: array {info.filename[:-4]!r} would take {nbytes} bytes "
                                    f"(shape {list(shape)}), over the limit of {MAX_DATA_BYTES}")
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise DataError(f"{path!r} is a .npy array, not an .npz archive of named arrays")
            return {k: f[k] for k in f.files}
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path!r} is not a readable .npz file ({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None


def check_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise DataError(f"{path}: array {k!r} has dtype {a.dtype}, not a real number type")
        bad = int(a.size - np.isfinite(a).sum())
        if bad:
            raise DataRangeError(f"{path}: array {k!r} has {bad} non-finite value(s) (NaN or Inf)")


def check_calib(shapes: dict[str, tuple[int, ...]], calib: dict[str, np.ndarray]) -> None:
    """Calibration arrays (the API's `calib`): one per model input, of its shape, real and finite."""
    if not isinstance(calib, dict):
        raise DataError(f"calibration data must be a dict of arrays keyed by input name, got {type(calib).__name__}")
    for t, shape in shapes.items():
        if t not in calib:
            raise DataError(f"calibration data has no array for model input {t!r} (has {sorted(map(str, calib))})")
        a = calib[t]
        if not isinstance(a, np.ndarray) or a.ndim != len(shape) or a.shape[1:] != tuple(shape[1:]) or not len(a):
            raise DataError(f"calibration array {t!r} has shape {list(np.shape(a))}, the model needs "
                            f"[N, {', '.join(map(str, shape[1:]))}] with N >= 1")
        if a.dtype.kind not in "biuf":
            raise DataError(f"calibration array {t!r} has dtype {a.dtype}, not a real number type")
        if not np.isfinite(a).all():
            raise DataRangeError(f"calibration array {t!r} has {int(a.size - np.isfinite(a).sum())} non-finite "
                                 "value(s) (NaN or Inf): every calibrated range would be NaN")
