"""The command line's one error path.

* A `DyadicError` (the user's input or request is wrong): one paragraph on stderr, exit 2.
* Ctrl-C or SIGTERM: "interrupted", exit 130 (the compile has removed its temporary files).
* Anything else is a bug in dyadic: one paragraph asking for a bug report, naming a log file that
  holds the traceback (`$DYADIC_CACHE_DIR/logs/`, default `~/.cache/dyadic/logs/`); exit 2. The
  traceback never goes to the screen. `DYADIC_TRACEBACK=1` prints it too (for developers).
"""
from __future__ import annotations

import os
import sys
import time
import traceback

from dyadic.core.errors import DyadicError


def log_dir() -> str:
    base = os.environ.get("DYADIC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dyadic")
    return os.path.join(base, "logs")


def _one_line(text: str, limit: int = 2000) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def write_log(cmd: str, argv: list[str] | None, exc: BaseException) -> str | None:
    """The traceback of `exc` in a new file under `log_dir()`; returns its path (None if unwritable)."""
    try:
        d = log_dir()
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"dyadic-{cmd}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
        with open(path, "w") as f:
            import dyadic

            f.write(f"dyadic {dyadic.__version__}, python {sys.version.split()[0]}\n")
            f.write(f"argv: {argv if argv is not None else sys.argv[1:]}\n\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return path
    except OSError:
        return None


def report(cmd: str, exc: BaseException, argv: list[str] | None = None) -> int:
    """Print `exc` as one paragraph on stderr and return the exit code (see the module docstring)."""
    if isinstance(exc, KeyboardInterrupt):
        print(f"dyadic {cmd}: error: interrupted ({_one_line(exc) or 'SIGINT'}); no output was written",
              file=sys.stderr)
        return 130
    if isinstance(exc, DyadicError):
        print(f"dyadic {cmd}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if isinstance(exc, MemoryError):
        print(f"dyadic {cmd}: error: out of memory; the model or data is too large for this machine", file=sys.stderr)
        return 2
    path = write_log(cmd, argv, exc)
    where = f"the traceback is in {path}" if path else "the traceback could not be written to a log file"
    print(f"dyadic {cmd}: error: internal error ({type(exc).__name__}: {_one_line(exc, 300)}). This is a bug in "
          f"dyadic, not in your input: please report it at the project's issue tracker with the model and "
          f"command; {where}", file=sys.stderr)
    if os.environ.get("DYADIC_TRACEBACK"):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    return 2
