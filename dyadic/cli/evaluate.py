"""Top-1 accuracy of any runner (compiled library or onnxruntime) over a labelled data set."""
from __future__ import annotations

from typing import Callable

import numpy as np

from dyadic.core.float_exec import batches
from dyadic.core.progress import Progress


def evaluate(run: Callable[[dict], np.ndarray], x: dict[str, np.ndarray], y: np.ndarray,
             batch: int = 100, quiet: bool = False) -> tuple[int, int]:
    correct = 0
    with Progress("eval", len(y), quiet=quiet) as bar:
        for i, b in enumerate(batches(x, batch)):
            logits = run(b)
            correct += int((np.argmax(logits, axis=1) == y[i * batch:i * batch + len(logits)]).sum())
            bar.advance(len(logits))
    return correct, len(y)
