"""The interpreter's settings for the services: the thread switch interval (``[daemon]``/``[recon]
gil_switch_ms``) and the frozen heap (:func:`freeze_heap`, :class:`GcPauses`).

A thread that wants the GIL while another thread runs Python code waits until the holder gives
it up: at the latest after :func:`sys.getswitchinterval` (CPython's default 5 ms), when the
waiting thread asks it to drop it. The daemon and the reconstruction stage are many threads in
one process -- a device worker per device, the publisher, a receive thread, one worker per
stream -- and most of their work is short Python steps between C calls that release the GIL
(ZeroMQ, numpy, scipy, numba ``nogil`` kernels). Each such step may wait up to one interval for
the GIL, so on a busy machine the interval is added to a frame's age several times over.

Measured with ``medacq bench rig --seconds 60 --warmup-s 10`` (2 cores, the whole rig), runs
alternated in pairs within the hour: 5 ms → 1 ms gave 40 → 47, 44 → 47, 41 → 49 and 49 → 47 of
50 bars (0.5 ms: 45 and 45). In the first two pairs the recon p99 ages fell: fluoroscopy 133/82 →
74/68 ms, EKG 137/110 → 87/92 ms, MEG 123/92 → 72/68 ms. A modest gain, of the size of the
run-to-run noise (±4 bars; unpaired runs at 1 ms in busier hours gave 38–45), kept because it
won three pairs of four and costs little: each extra hand-off is a futex wake-up; below 1 ms the
gain did not continue.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time

__all__ = ["set_switch_interval", "DEFAULT_SWITCH_MS", "GcPauses", "gc_pauses", "freeze_heap", "GC_FREEZE_ENV"]

log = logging.getLogger("medacq.interpreter")

DEFAULT_SWITCH_MS = 1.0
"""The services' switch interval (ms) unless the config says otherwise (module doc)."""


def set_switch_interval(ms: float) -> float:
    """Set this process's GIL switch interval to ``ms`` milliseconds (:func:`sys.setswitchinterval`,
    process-wide: every thread). Returns the previous interval, ms."""
    if not ms > 0:
        raise ValueError(f"switch interval must be > 0 ms, got {ms!r}")
    old = sys.getswitchinterval() * 1000.0
    sys.setswitchinterval(ms / 1000.0)
    if abs(old - ms) > 1e-9:
        log.info("GIL switch interval %.3g ms (was %.3g ms)", ms, old)
    return old


# -- the cyclic garbage collector ----------------------------------------------------------------
GC_FREEZE_ENV = "MEDACQ_GC_FREEZE"
"""Set to ``0`` to leave the heap unfrozen (to measure what freezing does)."""


class GcPauses:
    """Pauses of CPython's cyclic garbage collector in this process, per generation (0, 1, 2).

    A collection holds the GIL from start to end: every thread of the process waits. Measured
    with ``medacq up --no-view`` (2 cores, 90 s, a ``gc.callbacks`` probe, heap not frozen): the
    reconstruction stage holds ~177 000 tracked objects (numpy, scipy, pydantic, every
    reconstructor's module) and its full (generation 2) collections took 30, 69 and **141 ms**,
    all in the first 3 s (imports, preload); the daemon's ~60 000 one 27 ms; the simulators' host
    a 65-ms one 24 s in, in steady state. Steady state is otherwise quiet: allocations and frees
    balance, so collections are rare. :func:`freeze_heap` moves what start-up made out of the
    collector's sight (:func:`gc.freeze`): a later full collection scans only what was made
    since (~800 objects in the stage instead of ~177 000), so it cannot stall every stream for
    tens of milliseconds. ``status`` reports the pauses (``gc``), so a stall would be seen.
    """

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]
        self.frozen = 0
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        g = int(info.get("generation", 2))
        if 0 <= g <= 2 and self._t0:
            ms = (time.perf_counter() - self._t0) * 1000.0
            self.count[g] += 1
            self.total_ms[g] += ms
            if ms > self.max_ms[g]:
                self.max_ms[g] = ms

    def status(self) -> dict[str, object]:
        """``{"frozen": objects, "gen2": {"n", "max_ms", "total_ms"}, ...}`` for a service's ``status``."""
        out: dict[str, object] = {"frozen": gc.get_freeze_count()}
        for g in range(3):
            out[f"gen{g}"] = {"n": self.count[g], "max_ms": round(self.max_ms[g], 2),
                              "total_ms": round(self.total_ms[g], 1)}
        return out


_PAUSES: GcPauses | None = None


def gc_pauses() -> GcPauses:
    """This process's :class:`GcPauses`, its callback installed on first use."""
    global _PAUSES
    if _PAUSES is None:
        _PAUSES = GcPauses()
        gc.callbacks.append(_PAUSES._callback)
    return _PAUSES


def freeze_heap(why: str) -> int:
    """Collect, then :func:`gc.freeze` every object this process holds now (:class:`GcPauses`);
    returns how many objects are frozen (0 with ``MEDACQ_GC_FREEZE=0``). For a service's main,
    once it has started (and again after a preload): frozen objects are never collected, so
    garbage is collected first, and nothing that is later dropped in bulk should be frozen."""
    gc_pauses()
    if os.environ.get(GC_FREEZE_ENV, "1") == "0":
        return 0
    gc.collect()
    gc.freeze()
    n = gc.get_freeze_count()
    log.info("heap frozen (%s): %d objects out of the collector's scans", why, n)
    return n
