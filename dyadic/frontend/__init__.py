"""Frontend: an ONNX model (or a built-in model name) and its data files -> the float `Graph` and
the arrays the passes take (`onnx_import`, `data`)."""
from __future__ import annotations

import os

from dyadic.frontend.onnx_import import import_onnx


def load_model_arg(name: str, image_size: int | None):
    """A command-line model argument: an .onnx path as is, or a built-in model name built (seeded
    random weights, `dyadic.models`)."""
    from dyadic.core.errors import DyadicError

    if os.path.exists(name) or name.endswith(".onnx"):
        return name
    from dyadic.models import BUILDERS, build

    if name not in BUILDERS:
        raise DyadicError(f"{name!r} is neither an existing file nor a built-in model ({', '.join(BUILDERS)})")
    return build(name, **({"image_size": image_size} if image_size else {}))


__all__ = ["import_onnx", "load_model_arg"]
