"""The schema of `model.json`, with value ranges, checked when a plan is written and when it is loaded.

`read_plan(build_dir)` is the one way to read a plan: strict JSON (a bare NaN/Infinity is refused),
then `validate_plan`, which checks

* `plan_version` is `PLAN_VERSION`; `library` names `model.so` with its size and sha256;
* every input/output: a name, a shape of positive dims (the batch may be -1), a finite positive
  scale, an integer type whose `lo`/`hi`/`dtype` are exactly those its `bits` and `signed` give
  (`QParams.dtype`: 9-16-bit signed codes as int16; int32 accepted there from older builds);
* every layer: its `in`/`out` quantization as above; dyadic multipliers `0 < m < 2^31` (`0 <= m` for
  the operands of a sum, not all of them), shifts
  `0 <= s <= 62`, as many shifts as multipliers; clip bounds `lo <= hi` inside the output type;
  calibrated ranges finite with `lo <= hi`; weight/activation bits 4 or 8;
* `fidelity` (`dyadic.core.fidelity`), where present: per output a name and cosines in [-1, 1];
  `calibration.image_normalize`, where present: the compile's --mean (numbers) and --std (positive).

Any violation raises `BuildDirError` listing the first problems. The layer entries are a record
(the library holds its own constants), so an edited multiplier is refused as tampering, not obeyed.
"""
from __future__ import annotations

import json
import math
import os

from dyadic.core.errors import BuildDirError
from dyadic.core.plan import PLAN_VERSION
from dyadic.core.graph import QParams

DTYPES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int32": (-(1 << 31), (1 << 31) - 1)}
MAX_DIM_PRODUCT = 1 << 28


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _flat(v) -> list:
    if isinstance(v, list):
        return [x for item in v for x in _flat(item)]
    return [v]


def _qparams(d, where: str, problems: list[str]) -> None:
    if not isinstance(d, dict):
        problems.append(f"{where}: not an object")
        return
    scale, bits, signed, dtype, lo, hi = (d.get(k) for k in ("scale", "bits", "signed", "dtype", "lo", "hi"))
    if not _is_num(scale) or scale <= 0:
        problems.append(f"{where}: scale {scale!r} is not a finite positive number")
    if not _is_int(bits) or not (bits in (4, 32) or 8 <= bits <= 16):  # 9..15: a narrowed linear input
        problems.append(f"{where}: bits {bits!r} is not 4, 8 to 16, or 32")
        return
    if not isinstance(signed, bool):
        problems.append(f"{where}: signed {signed!r} is not true/false")
        return
    want_lo = -(1 << (bits - 1)) if signed else 0
    want_hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    want_dtype = QParams(1.0, bits, bool(signed)).dtype
    legacy = dtype == "int32" and signed and 8 < bits <= 16  # builds from before 16-bit codes took int16 storage
    if dtype != want_dtype and not legacy:
        problems.append(f"{where}: dtype {dtype!r} does not match {bits} bits signed={signed} ({want_dtype})")
    if not (_is_int(lo) and _is_int(hi)) or lo != want_lo or hi != want_hi:
        problems.append(f"{where}: range [{lo!r}, {hi!r}] is not [{want_lo}, {want_hi}] of {bits}-bit "
                        f"{'signed' if signed else 'unsigned'} integers")


def _tensor(d, where: str, problems: list[str]) -> None:
    if not isinstance(d, dict):
        problems.append(f"{where}: not an object")
        return
    if not isinstance(d.get("name"), str) or not d.get("name"):
        problems.append(f"{where}: no name")
    shape = d.get("shape")
    if not isinstance(shape, list) or not shape or not all(_is_int(x) for x in shape) \
            or not (shape[0] == -1 or shape[0] >= 1) or any(x < 1 for x in shape[1:]) \
            or math.prod(shape[1:]) > MAX_DIM_PRODUCT:
        problems.append(f"{where}: shape {shape!r} is not a list of positive dims (batch -1 or positive)")
    _qparams(d, where, problems)


def _layer(i: int, layer, problems: list[str]) -> None:
    where = f"layers[{i}]"
    if not isinstance(layer, dict):
        problems.append(f"{where}: not an object")
        return
    name = layer.get("name")
    if not isinstance(name, str) or not isinstance(layer.get("op"), str):
        problems.append(f"{where}: no name/op")
        return
    where = f"layer {name!r}"
    for j, q in enumerate(layer.get("in", [])):
        _qparams(q, f"{where} input {j}", problems)
    if "out" in layer:
        _qparams(layer["out"], f"{where} output", problems)
    if "multiplier" in layer or "shift" in layer:
        m, s = _flat(layer.get("multiplier")), _flat(layer.get("shift"))
        # a sum's operand may have M = 0 (below half an output step; `verify` allows the same)
        low = 0 if layer["op"] in ("qadd", "qbinary") and any(_is_int(x) and x > 0 for x in m) else 1
        if not m or not all(_is_int(x) and low <= x < (1 << 31) for x in m):
            problems.append(f"{where}: multipliers must be integers in [{low}, 2^31), got "
                            f"{[x for x in m if not (_is_int(x) and low <= x < (1 << 31))][:3]}")
        if not s or not all(_is_int(x) and 0 <= x <= 62 for x in s):
            problems.append(f"{where}: shifts must be integers in [0, 62], got "
                            f"{[x for x in s if not (_is_int(x) and 0 <= x <= 62)][:3]}")
        if len(m) != len(s) and len(s) != 1 and len(m) != 1:
            problems.append(f"{where}: {len(m)} multipliers but {len(s)} shifts")
        clip = layer.get("clip")
        out = layer.get("out") if isinstance(layer.get("out"), dict) else {}
        lo_t, hi_t = DTYPES.get(out.get("dtype"), DTYPES["int32"])
        if not (isinstance(clip, list) and len(clip) == 2 and all(_is_int(x) for x in clip)
                and lo_t <= clip[0] <= clip[1] <= hi_t):
            problems.append(f"{where}: clip {clip!r} is not [lo, hi] with lo <= hi inside {out.get('dtype')}")
    if "calib_range" in layer:
        r = layer["calib_range"]
        if not (isinstance(r, list) and len(r) == 2 and all(_is_num(x) for x in r) and r[0] <= r[1]):
            problems.append(f"{where}: calib_range {r!r} is not a finite [lo, hi] with lo <= hi")
    if "w_bits" in layer and layer["w_bits"] not in (4, *range(8, 17)):
        problems.append(f"{where}: w_bits {layer['w_bits']!r} is not 4 or 8-16")
    if "a_bits" in layer and layer["a_bits"] not in (4, 8):
        problems.append(f"{where}: a_bits {layer['a_bits']!r} is not 4 or 8")


def validate_plan(plan, where: str = "model.json") -> None:
    problems: list[str] = []
    if not isinstance(plan, dict):
        raise BuildDirError(f"{where} is not a JSON object")
    if plan.get("plan_version") != PLAN_VERSION:
        raise BuildDirError(f"{where} has plan_version {plan.get('plan_version')!r}; this dyadic reads version "
                            f"{PLAN_VERSION}: rebuild it with this version of dyadic")
    for key in ("inputs", "outputs"):
        v = plan.get(key)
        if not isinstance(v, list) or not v:
            problems.append(f"{key}: missing or empty")
            continue
        for j, t in enumerate(v):
            _tensor(t, f"{key}[{j}]", problems)
    layers = plan.get("layers")
    if not isinstance(layers, list):
        problems.append("layers: missing")
    else:
        for i, layer in enumerate(layers):
            _layer(i, layer, problems)
    lib = plan.get("library")
    if lib is not None or where == "model.json":
        if not (isinstance(lib, dict) and lib.get("file") == "model.so" and _is_int(lib.get("bytes"))
                and lib["bytes"] > 0 and isinstance(lib.get("sha256"), str) and len(lib["sha256"]) == 64
                and all(c in "0123456789abcdef" for c in lib["sha256"])):
            problems.append(f"library: {lib!r} is not {{file: model.so, bytes: N, sha256: 64 hex digits}}")
    tgt = plan.get("target")
    if not isinstance(tgt, dict) or not isinstance(tgt.get("preset"), str):
        problems.append("target: missing or without a preset")
    elif "requires" in tgt:
        req = tgt["requires"]
        if not (isinstance(req, dict) and isinstance(req.get("cpu_flags", []), list)
                and all(isinstance(f, str) and f.isidentifier() for f in req.get("cpu_flags", []))
                and isinstance(req.get("amx_tile_data", False), bool)):
            problems.append(f"target.requires: {req!r} is not {{cpu_flags: [names], amx_tile_data: bool}}")
    if "fidelity" in plan:
        _fidelity(plan["fidelity"], problems)
    norm = (plan.get("calibration") or {}).get("image_normalize")
    if norm is not None and not (isinstance(norm, dict) and all(
            isinstance(norm.get(k), list) and norm[k] and all(_is_num(v) for v in norm[k]) for k in ("mean", "std"))
            and all(v > 0 for v in norm["std"])):
        problems.append(f"calibration.image_normalize: {norm!r} is not {{mean: [numbers], std: [positive numbers]}}")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise BuildDirError(f"{where} fails the plan schema: {shown}")


def _fidelity(fid, problems: list[str]) -> None:
    outs = fid.get("outputs") if isinstance(fid, dict) else None
    if not isinstance(outs, list) or not _is_int(fid.get("inputs")) or fid["inputs"] < 1:
        problems.append("fidelity: not {inputs: N >= 1, outputs: [...]}")
        return
    for o in outs:
        vals = [o.get(k) for k in ("cosine_mean", "cosine_min", "step_cosine_mean", "top1_agreement")
                if isinstance(o, dict) and k in o]
        if not (isinstance(o, dict) and isinstance(o.get("name"), str) and "cosine_mean" in o and "cosine_min" in o
                and all(_is_num(v) and -1.0 - 1e-9 <= v <= 1.0 + 1e-9 for v in vals)):
            problems.append(f"fidelity.outputs: {o!r} is not {{name, cosine_mean, cosine_min in [-1, 1], ...}}")


def _reject_constant(c: str):
    raise ValueError(f"{c} is not JSON")


def read_plan(build_dir: str) -> dict:
    """Parse and validate `build_dir/model.json` (or the .json beside a .so path)."""
    js = os.path.join(build_dir, "model.json") if os.path.isdir(build_dir) else os.path.splitext(build_dir)[0] + ".json"
    if not os.path.isfile(js):
        raise BuildDirError(f"{js} not found: is {build_dir!r} the output directory of `dyadic compile`?")
    try:
        with open(js, "rb") as f:
            raw = f.read(64 << 20)
        plan = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise BuildDirError(f"{js} is not valid JSON ({' '.join(str(e).split())[:200]}): the build directory is "
                            "damaged; compile it again") from None
    except OSError as e:
        raise BuildDirError(f"{js} cannot be read: {e.strerror}") from None
    validate_plan(plan, where="model.json")
    return plan
