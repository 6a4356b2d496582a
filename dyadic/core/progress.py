"""A one-line progress indicator on stderr for the long steps (calibration, build, eval)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int | None = None, quiet: bool = False):
        self.label, self.total, self.quiet = label, total, quiet
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = 0.0

    def __enter__(self) -> "Progress":
        self._draw(force=True)
        return self

    def advance(self, k: int = 1) -> None:
        self.done += k
        self._draw()

    def _draw(self, force: bool = False, end: str = "") -> None:
        now = time.perf_counter()
        if self.quiet or (not force and now - self._last < 0.5):
            return
        self._last = now
        of = f"/{self.total}" if self.total else ""
        sys.stderr.write(f"\r{self.label}: {self.done}{of} ({now - self.t0:.1f}s){end}")
        sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        self._draw(force=True, end="\n")
