"""What a host library needs from the CPU and the OS before it runs (no TVM import).

* `check_cpu(requires)`: every flag in model.json `target.requires.cpu_flags` must be in this CPU's
  /proc/cpuinfo flags; otherwise a `BuildDirError` naming the missing ones (never a SIGILL later).
* `request_amx_tile_data()`: Linux (>= 5.16) gives a process the 8 KiB AMX tile state only on request,
  `arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18)` (syscall 158 on x86-64); the
  first tile instruction without it faults. Checked afterwards with ARCH_GET_XCOMP_PERM (0x1022).
  The permission is per process (all threads) and idempotent.
"""
from __future__ import annotations

import ctypes
import os
import platform

from dyadic.core.errors import BuildDirError

SYS_ARCH_PRCTL = 158
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """This CPU's flags (the first processor's `flags` line), or None where there is no /proc/cpuinfo."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def check_cpu(requires: dict | None, what: str = "the library", flags: set[str] | None = None) -> None:
    """Refuse a library whose required CPU flags this CPU lacks (see the module docstring)."""
    need = list((requires or {}).get("cpu_flags", []))
    if requires and requires.get("amx_tile_data"):
        need = ["amx_int8", "amx_tile"] + [f for f in need if f not in ("amx_int8", "amx_tile")]
    if not need:
        return
    flags = cpu_flags() if flags is None else flags
    if flags is None:  # not Linux: cannot tell; AMX is refused below if it is needed
        return
    missing = [f for f in need if f not in flags]
    if missing:
        amx = " (Intel AMX tiles)" if any(f.startswith("amx") for f in missing) else ""
        raise BuildDirError(f"{what} was built for a CPU with {', '.join(need)}; this CPU lacks {', '.join(missing)}"
                            f"{amx}, so it cannot run here (it would crash with SIGILL). Compile it for this "
                            "machine (`dyadic compile --target host`) or run it on a CPU that has them")


def request_amx_tile_data(what: str = "the library") -> None:
    """Ask Linux for AMX tile-data permission for this process; a `BuildDirError` if it is refused."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise BuildDirError(f"{what} uses Intel AMX tiles, which dyadic enables only on x86-64 Linux "
                            f"(this is {platform.system()} {platform.machine()})")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(ARCH_REQ_XCOMP_PERM),
                      ctypes.c_long(XFEATURE_XTILEDATA))
    if rc != 0:
        err = ctypes.get_errno()
        raise BuildDirError(f"{what} uses Intel AMX tiles, but the Linux kernel refused tile-data permission "
                            f"(arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): {os.strerror(err)}); AMX needs "
                            f"Linux >= 5.16 with AMX enabled (kernel {platform.release()})")
    mask = ctypes.c_uint64(0)
    rc = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(ARCH_GET_XCOMP_PERM), ctypes.byref(mask))
    if rc != 0 or not (mask.value >> XFEATURE_XTILEDATA) & 1:
        raise BuildDirError(f"{what} uses Intel AMX tiles, but after the request Linux does not report tile-data "
                            f"permission (ARCH_GET_XCOMP_PERM: rc {rc}, mask {mask.value:#x})")


def prepare(requires: dict | None, what: str = "the library") -> None:
    """`check_cpu`, then the AMX request where the library has AMX kernels: call before mapping it."""
    check_cpu(requires, what)
    if requires and requires.get("amx_tile_data"):
        request_amx_tile_data(what)
