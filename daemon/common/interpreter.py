"""The interpreter's thread switch interval for the services (``[daemon]``/``[recon] gil_switch_ms``).

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

import logging
import sys

__all__ = ["set_switch_interval", "DEFAULT_SWITCH_MS"]

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
