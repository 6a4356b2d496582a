"""All-or-nothing output directories for `dyadic compile -o OUT`.

    check_output_dir(OUT)             # before any work: OUT is not a file, can be created or written
    with staged_output(OUT) as st:    # lock, temp dir beside OUT, signal handlers, TVM temp files inside
        ... write st.path/model.so, st.path/model.json ...
        st.commit(["model.so", "model.json"])   # swap in by rename; the old build survives any failure

* **Lock**: `.OUT.dyadic-lock` beside OUT (an `flock`, released by the kernel if the process dies):
  a second compile into the same OUT fails at once with `OutputError` naming the holder's pid.
* **Staging**: `.OUT.tmp-XXXX/` beside OUT, on the same filesystem. The build is written to its
  `out/`; TVM's and the C compiler's temporary files go to its `tmp/` (Python's `tempfile.tempdir`
  points there during the compile).
* **Commit**: when OUT is missing, empty or holds only a previous build's files, the previous OUT
  is renamed away, the new one renamed in, then the old one deleted (if the second rename fails,
  the first is undone). When OUT holds other files too (`-o .`, a folder of the user's), or is a
  symlink, a mount point or the working directory, only the build's own entries are swapped, one
  rename each, rolled back on failure; nothing else in OUT is touched.
* **Signals**: SIGTERM (and SIGINT) during the compile raise `Terminated` / `KeyboardInterrupt` in
  the main thread, so the staging directory (TVM's temp files included) is removed on the way out.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager

from dyadic.core.errors import OutputError

#: names a build writes at the top of OUT (host: model.so/model.json; arm: lib/ bin/ README.txt; cuda: cuda/)
BUILD_NAMES = frozenset({"model.so", "model.json", "lib", "bin", "README.txt", "cuda"})

_ACTIVE = [0]
_ACTIVE_LOCK = threading.Lock()


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during a compile (a KeyboardInterrupt, so it unwinds like Ctrl-C)."""


def _nearest_existing(path: str) -> str:
    p = path
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def check_output_dir(path: str) -> str:
    """Raise OutputError unless `path` can be the output directory; returns its absolute path."""
    if not path or not str(path).strip():
        raise OutputError("the output directory (-o) is empty")
    out = os.path.abspath(os.fspath(path))
    if os.path.lexists(out):
        if not os.path.isdir(out):
            raise OutputError(f"output {path!r} exists and is not a directory (it is a file): choose a directory")
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputError(f"output directory {path!r} is not writable (permission denied)")
        return out
    base = _nearest_existing(out)
    if not os.path.isdir(base):
        raise OutputError(f"output {path!r} cannot be created: {base!r} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"output {path!r} cannot be created: {base!r} is not writable (permission denied)")
    return out


def _swap_whole(out: str) -> bool:
    """Whether OUT can be replaced as a whole directory (see the module docstring)."""
    if not os.path.lexists(out):
        return True
    if os.path.islink(out) or os.path.ismount(out) or out == os.getcwd():
        return False
    if not os.access(os.path.dirname(out), os.W_OK | os.X_OK):
        return False
    return set(os.listdir(out)) <= BUILD_NAMES


class _Lock:
    def __init__(self, path: str):
        import fcntl

        self.path = path
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = ""
                try:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                except OSError:
                    pass
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise OutputError(f"another compile (pid {holder or '?'}) is writing this output directory "
                                      f"(lock {path}): wait for it to finish or choose another -o") from None
                raise OutputError(f"cannot lock {path}: {e.strerror}") from None
            try:  # the file we locked may have been unlinked by a finishing holder: retry on a fresh one
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)


class Staging:
    def __init__(self, out: str | None):
        self.out = out
        self.lock = None
        self.created: str | None = None  # the first directory this compile created (removed if it fails)
        if out is not None and not os.path.isdir(os.path.dirname(out)):
            self.created = _nearest_missing(os.path.dirname(out))
            os.makedirs(os.path.dirname(out))
        if out is None:
            self.root = tempfile.mkdtemp(prefix="dyadic-build-")
        else:
            parent, name = os.path.split(out)
            if os.access(parent, os.W_OK | os.X_OK) and not (os.path.isdir(out) and os.path.ismount(out)):
                where, lockname, prefix = parent, f".{name}.dyadic-lock", f".{name}.tmp-"
            else:  # only OUT itself is writable: lock and stage inside it
                where, lockname, prefix = out, ".dyadic-lock", ".dyadic-tmp-"
            os.makedirs(where, exist_ok=True)
            self.lock = _Lock(os.path.join(where, lockname))
            try:
                self.root = tempfile.mkdtemp(prefix=prefix, dir=where)
            except OSError as e:
                self.lock.release()
                raise OutputError(f"cannot create a temporary directory in {where}: {e.strerror}") from None
        self.path = os.path.join(self.root, "out")
        self.tmp = os.path.join(self.root, "tmp")
        os.makedirs(self.path)
        os.makedirs(self.tmp)
        self.committed = False

    def commit(self, names: list[str]) -> None:
        """Move the entries `names` of the staged build into OUT (see the module docstring)."""
        out = self.out
        assert out is not None
        for n in os.listdir(self.path):  # nothing staged but what is committed
            if n not in names:
                _remove(os.path.join(self.path, n))
        if _swap_whole(out):
            old = None
            if os.path.lexists(out):
                old = os.path.join(self.root, "old")
                os.rename(out, old)
            try:
                os.rename(self.path, out)
            except BaseException:
                if old is not None:
                    os.rename(old, out)
                raise
        else:
            os.makedirs(out, exist_ok=True)
            old_dir = os.path.join(self.root, "old")
            os.makedirs(old_dir)
            moved: list[tuple[str, bool]] = []
            try:
                for n in names:
                    dest = os.path.join(out, n)
                    had = os.path.lexists(dest)
                    if had:
                        os.rename(dest, os.path.join(old_dir, n))
                    moved.append((n, had))
                    os.rename(os.path.join(self.path, n), dest)
            except BaseException:
                for n, had in reversed(moved):
                    dest = os.path.join(out, n)
                    if os.path.lexists(dest) and not os.path.lexists(os.path.join(self.path, n)):
                        os.rename(dest, os.path.join(self.path, n))
                    if had:
                        os.rename(os.path.join(old_dir, n), dest)
                raise
        self.committed = True

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if self.lock is not None:
            self.lock.release()
        if self.created and not self.committed:
            _remove_empty(self.created, os.path.dirname(self.out))


def _nearest_missing(path: str) -> str:
    p = path
    while not os.path.lexists(os.path.dirname(p)) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def _remove_empty(top: str, leaf: str) -> None:
    p = leaf
    while True:
        try:
            os.rmdir(p)
        except OSError:
            return
        if p == top:
            return
        p = os.path.dirname(p)


def _remove(p: str) -> None:
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p, ignore_errors=True)
    else:
        os.unlink(p)


def _on_term(signum, frame):
    raise Terminated(f"terminated by signal {signum}")


@contextmanager
def staged_output(out: str | None):
    """The staging directory of a compile into `out` (None: a private temp dir, never committed)."""
    if out is not None:
        out = check_output_dir(out)
    main = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, _on_term) if main else None
    try:
        st = Staging(out)
        with _ACTIVE_LOCK:
            _ACTIVE[0] += 1
            redirect = _ACTIVE[0] == 1
            old_tempdir = tempfile.tempdir
            if redirect:
                tempfile.tempdir = st.tmp
        try:
            yield st
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE[0] -= 1
                if redirect:
                    tempfile.tempdir = old_tempdir
            st.close()
    finally:
        if main:
            signal.signal(signal.SIGTERM, old_handler if old_handler is not None else signal.SIG_DFL)
