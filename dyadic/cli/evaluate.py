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
            if np.ndim(logits) != 2:
                from dyadic.core.errors import DataError
                raise DataError(f"labels score a [N, classes] output; the model's first output has shape "
                                f"{list(np.shape(logits))}: compare it with --vs MODEL.onnx and a data file "
                                "without 'labels'")
            correct += int((np.argmax(logits, axis=1) == y[i * batch:i * batch + len(logits)]).sum())
            bar.advance(len(logits))
    return correct, len(y)


def agreement(run: Callable[[dict], list], peer: Callable[[dict], list], x: dict[str, np.ndarray],
              batch: int = 100, quiet: bool = False) -> list[dict]:
    """Per output (both runners return their outputs as a list, in the model's order): top-1
    agreement and per-sample logit cosine (`core.fidelity.cosines`) of `run` against `peer` on the
    same inputs."""
    from dyadic.core.fidelity import cosines

    agree: list[int] = []
    cos: list[list[float]] = []
    n = len(next(iter(x.values())))
    with Progress("compare", n, quiet=quiet) as bar:
        for b in batches(x, batch):
            got, want = run(b), peer(b)
            if len(got) != len(want):
                from dyadic.core.errors import DyadicError
                raise DyadicError(f"the build has {len(got)} outputs, the model {len(want)}: not the same model")
            for j, (g, w) in enumerate(zip(got, want)):
                a = np.asarray(g, np.float64).reshape(len(g), -1)
                p = np.asarray(w, np.float64).reshape(a.shape)
                if j == len(agree):
                    agree.append(0)
                    cos.append([])
                agree[j] += int((a.argmax(1) == p.argmax(1)).sum())
                cos[j].extend(cosines(p, a))
            bar.advance(len(got[0]))
    return [{"agree": agree[j] / n, "cos_mean": float(np.mean(cos[j])), "cos_min": float(np.min(cos[j])), "n": n}
            for j in range(len(agree))]
