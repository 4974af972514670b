"""Trigger events found in a device's samples, placed on the host timeline by its clock fit.

A TTL edge is latched by the device at its next sample: the edge happened within the sample
period before the first sample that reads it high. :func:`sample_trigger` places it in the middle
of that period on the stream's fitted device→host mapping (:class:`~medacq.drivers._clockfit.DeviceClock`),
so its error is at most half a sample period plus the fit's own error.
"""

from __future__ import annotations

import time
from typing import Literal

from medacq.protocols.markers import TriggerEvent

from ._clockfit import DeviceClock

__all__ = ["sample_trigger", "clock_trigger"]


def clock_trigger(clock: DeviceClock, index: int, line: str, real_minus_mono_ns: int | None = None,
                  edge: Literal["rising", "falling"] = "rising", t_device: float | None = None,
                  latched: bool = True, sample: int | None = None, frame_clock: bool = False) -> TriggerEvent:
    """The trigger event first seen in sample ``index`` of a stream fitted by ``clock``: its host
    time (CLOCK_MONOTONIC and CLOCK_REALTIME, ns) is the middle of the period before that sample
    when the device ``latched`` the level at its samples, else (a device that timestamps the edge
    itself, ``index`` being that timestamp in clock ticks) the mapped tick. ``sample`` overrides the
    event's ``sample`` (e.g. the frame number in which a timestamped edge was reported);
    ``frame_clock``: the stream's frames are stamped by this same ``clock``."""
    period = clock.period_s
    t_mono = int(clock.time_of(index)) - (int(round(period * 0.5e9)) if latched else 0)
    if real_minus_mono_ns is None:
        real_minus_mono_ns = time.time_ns() - time.monotonic_ns()
    return TriggerEvent(line, edge, int(index if sample is None else sample),
                        float(index if t_device is None else t_device), t_mono,
                        t_mono + real_minus_mono_ns, float(period), frame_clock)


def sample_trigger(framer: object, index: int, line: str, rate_hz: float) -> TriggerEvent:
    """:func:`clock_trigger` on a :class:`~medacq.drivers.bio_common.SampleFramer`'s clock (the frames'
    own mapping, so the event and the frame carrying it share one timeline)."""
    clock: DeviceClock = framer.clock  # type: ignore[attr-defined]
    rmm = getattr(framer, "_real_minus_mono", None)
    return clock_trigger(clock, index, line, rmm, frame_clock=True)
