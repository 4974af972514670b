"""Give freed frame memory back to the OS: fixed glibc ``malloc`` thresholds for the services.

glibc raises its mmap threshold whenever an mmapped block is freed (up to 32 MiB), so after the
first frames of a few hundred kB to a few MB, frames come from the heap arenas instead, and each
thread that allocates (every device worker, the receive threads) has its own arena. Frames held
for a while -- a subscriber that stalls and the publisher queues up to its high-water mark, a
recorder catching up -- then leave that memory in the arenas after they are freed: measured in a
three-thread producer test, 134 MB of 0.4-1.5 MB frames held once left RSS 114-175 MB above its
start for good, and the daemon's RSS grew in steps after every subscriber stall
(``medacq bench chaos``). With the threshold fixed (``M_MMAP_THRESHOLD``, which also turns the
dynamic adjustment off) every frame-sized block is its own mapping and goes back to the OS when
freed: the same test returns to within 0.6 MB. Costs: one ``mmap``/``munmap`` and the page faults
of a fresh mapping per frame (a 1.5 MB frame: 366 pages, tens of µs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["pin_malloc_thresholds", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

log = logging.getLogger("medacq.malloc")

MMAP_THRESHOLD = 256 * 1024
"""Blocks of this size (bytes) and more are their own mapping (a CT projection at 4x4 binning is 370 kB)."""
TRIM_THRESHOLD = 1 << 20
"""Free memory at the top of a heap beyond this (bytes) is given back."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def pin_malloc_thresholds(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's mmap and trim thresholds for this process (module doc). Call once at start,
    before threads allocate. Returns whether it took effect (False off glibc, e.g. musl, macOS,
    or with ``MEDACQ_MALLOC_PIN=0`` in the environment: glibc's own dynamic thresholds)."""
    import os

    if os.environ.get("MEDACQ_MALLOC_PIN", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    if not ok:
        log.debug("mallopt refused the thresholds")
    return ok
