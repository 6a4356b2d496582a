"""Top-1 accuracy of any runner (compiled library or onnxruntime) over a labelled data set."""
from __future__ import annotations

from typing import Callable

import numpy as np

from dyadic.core.float_exec import batches
from dyadic.core.progress import Progress


def evaluate(run: Callable[[dict], np.ndarray], x: dict[str, np.ndarray], y: np.ndarray,
             batch: int = 100, quiet: bool = False) -> tuple[int, int]:
    if not isinstance(batch, int) or batch < 1:
        from dyadic.core.errors import DataError
        raise DataError(f"--batch must be a positive integer, got {batch!r}")
    correct = 0
    with Progress("eval", len(y), quiet=quiet) as bar:
        for i, b in enumerate(batches(x, batch)):
            logits = run(b)
            correct += int((np.argmax(logits, axis=1) == y[i * batch:i * batch + len(logits)]).sum())
            bar.advance(len(logits))
    return correct, len(y)


def agreement(run: Callable[[dict], np.ndarray], peer: Callable[[dict], np.ndarray], x: dict[str, np.ndarray],
              batch: int = 100, quiet: bool = False) -> dict:
    """Top-1 agreement and per-sample logit cosine of `run` against `peer` on the same inputs."""
    agree, cos = 0, []
    n = len(next(iter(x.values())))
    with Progress("compare", n, quiet=quiet) as bar:
        for b in batches(x, batch):
            a = np.asarray(run(b), np.float64).reshape(len(next(iter(b.values()))), -1)
            p = np.asarray(peer(b), np.float64).reshape(a.shape)
            agree += int((a.argmax(1) == p.argmax(1)).sum())
            cos.extend((a * p).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(p, axis=1), 1e-30))
            bar.advance(len(a))
    return {"agree": agree / n, "cos_mean": float(np.mean(cos)), "cos_min": float(np.min(cos)), "n": n}
