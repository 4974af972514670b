"""A TTL trigger wired into an analog channel: its edges, to a fraction of a sample, as trigger events.

A digital input read once per sample places an edge only within its sample period (±half a
period). Fed through a divider into an ADC channel instead, the TTL step passes the converter's
sinc^3 decimation filter and spreads over 3 samples; :mod:`medacq.protocols.step_edge` fits that
known response and gives the edge's position in fractional samples. :class:`AnalogTrigger` runs
it on a driver's sample stream and turns each edge into a
:class:`~medacq.protocols.markers.TriggerEvent` on the stream's own fitted device→host clock (the
frames' mapping, so the daemon's trigger-bus alignment of the events applies to the frames too).

Event fields: ``line`` ``ch<N>``; ``sample`` the first sample the step reaches (an integer, as for
a digital input); ``t_device`` the edge's fractional sample index; ``t_mono_ns``/``t_host_ns``
the time of that fractional index as the frame holding it was stamped (its first sample's fitted
time plus the fraction of periods since), so the marker and the frame's data agree exactly;
``period_s`` the sample period. An edge is known once 9 samples after it have arrived (3 of
settling, 3 for the level, 3 for a possible next edge of the same pulse), so it rides in a frame
up to ~2 frames after its own.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Literal

import numpy as np

from medacq.protocols.markers import TriggerEvent
from medacq.protocols.step_edge import StepEdge, StepTracker

from ._clockfit import DeviceClock

__all__ = ["AnalogTrigger", "step_trigger"]


def step_trigger(clock: DeviceClock, edge: StepEdge, line: str, real_minus_mono_ns: int | None = None,
                 anchor: tuple[int, int] | None = None) -> TriggerEvent:
    """The trigger event of ``edge`` (positions in the stream's sample indices) on ``clock``, or
    from ``anchor`` = (sample index, its host time in ns as a frame was stamped) and the clock's period."""
    k = edge.first_sample
    period = clock.period_s
    i0, t0 = anchor if anchor is not None else (k, int(clock.time_of(k)))
    t_mono = int(t0) + int(round((edge.position - i0) * period * 1e9))
    if real_minus_mono_ns is None:
        real_minus_mono_ns = time.time_ns() - time.monotonic_ns()
    return TriggerEvent(line, edge.edge, k, float(edge.position), t_mono, t_mono + real_minus_mono_ns,
                        float(period), frame_clock=True)


class AnalogTrigger:
    """Edges of a TTL wired into channel ``channel`` (1-based) of a stream of ``(channel, sample)``
    blocks, as frame ``meta["triggers"]`` entries.

    Args:
        channel: the 1-based channel carrying the TTL.
        min_step: the smallest step that counts (the channel's units, µV), well above its noise
            and its signal's fastest swings, below the divided TTL level.
        edges: which edges become events (``rising``: as a digital input's; the daemon's bus
            alignment pairs each event with the reference's rising edge).
    """

    def __init__(self, channel: int, min_step: float,
                 edges: tuple[Literal["rising", "falling"], ...] = ("rising",)) -> None:
        self.channel = int(channel)
        self.line = f"ch{self.channel}"
        self.edges = tuple(edges)
        self.tracker = StepTracker(min_step)
        self._pending: list[StepEdge] = []
        self._frames: deque[tuple[int, int, int]] = deque(maxlen=16)  # (first, n, t_mono_ns of first)
        self.found = 0

    def push(self, first_index: int, block: np.ndarray) -> int:
        """Samples ``first_index...`` (the block's columns) of the stream; returns the edges found."""
        new = [e for e in self.tracker.push(first_index, block[self.channel - 1]) if e.edge in self.edges]
        self._pending += new
        self.found += len(new)
        return len(new)

    def take(self, framer: Any, first: int, n: int) -> list[dict[str, Any]]:
        """Meta entries of the edges due in the frame of samples ``[first, first + n)`` (an edge found
        after its own frame left rides in the next one), placed on the stamp of the frame that holds
        it (``framer.clock`` at that frame's emission; call this for every frame, as its stamp is taken)."""
        clock = framer.clock
        if clock.updates:
            self._frames.append((first, n, int(clock.time_of(first))))  # what the framer stamps it with
        if not self._pending:
            return []
        due = [e for e in self._pending if e.first_sample < first + n]
        if not due:
            return []
        self._pending = [e for e in self._pending if e.first_sample >= first + n]
        rmm = getattr(framer, "_real_minus_mono", None)
        out = []
        for e in due:
            anchor = next(((f, t) for f, m, t in reversed(self._frames) if f <= e.first_sample < f + m), None)
            out.append(step_trigger(clock, e, self.line, rmm, anchor).to_meta())
        return out
