"""Shared machinery of the biosignal drivers (Cyton, HackEEG, QuSpin): sample framing with
fitted device-clock timestamps and counter-gap reporting.

:class:`SampleFramer` collects decoded samples ``(channels, n)`` that carry a device
sample index, cuts them into frames of ``frame_samples`` samples and stamps each frame
from a :class:`~medacq.drivers._clockfit.DeviceClock` fit (never from arrival times).
A jump in the device index flushes the partial frame and yields a
:class:`~medacq.drivers._base.Gap` with ``lost_samples`` -- samples are never bridged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ._base import Frame, Gap
from ._clockfit import DeviceClock

__all__ = ["SampleFramer", "default_frame_samples"]


def default_frame_samples(rate_hz: float, frames_per_s: float = 25.0) -> int:
    """Samples per frame for about ``frames_per_s`` frames a second (≥ 1)."""
    return max(1, int(round(rate_hz / frames_per_s)))


class SampleFramer:
    """Cut an indexed sample stream into frames.

    Args:
        n_channels: rows of every frame.
        rate_hz: nominal device sample rate (the clock fit's prior).
        frame_samples: samples per full frame (a gap flushes a shorter one; the stream's
            descriptor therefore announces shape ``(channels, -1)``).
        meta: called with ``(first_index, n)`` for each frame's metadata, or ``None``.

    Timestamps: ``t_mono_ns`` = fitted CLOCK_MONOTONIC time of the frame's first sample,
    ``t_host_ns`` = the same instant on CLOCK_REALTIME, ``t_device`` = that sample's
    device index (unwrapped counter).
    """

    def __init__(self, n_channels: int, rate_hz: float, frame_samples: int,
                 meta: Callable[[int, int], dict[str, Any] | None] | None = None) -> None:
        self.n_channels = n_channels
        self.rate_hz = rate_hz
        self.frame_samples = max(1, int(frame_samples))
        self.clock = DeviceClock(rate_hz, bucket_s=1.0, window_s=60.0)
        self._meta = meta
        self._real_minus_mono = time.time_ns() - time.monotonic_ns()
        self._blocks: list[np.ndarray] = []
        self._n = 0
        self._first: int | None = None   # device index of the first buffered sample
        self.next_index: int | None = None
        self.samples_in = 0
        self.samples_lost = 0
        self.out_of_order = 0

    @property
    def pending(self) -> int:
        """Samples buffered towards the next frame (not yet emitted)."""
        return self._n

    def hold_s(self, margin_s: float) -> float:
        """Seconds until the sample *before* the next frame's last one is due, less ``margin_s``
        (a driver's :meth:`~medacq.drivers._base.CodecDriver._hold_s` while streaming: the
        frame's samples then come in a few reads, not one each; the read that completes the
        frame still wakes on its last bytes). Negative: read now."""
        return (self.frame_samples - self._n - 1) / self.rate_hz - margin_s

    def observe(self, last_index: int, t_mono_ns: int) -> None:
        """A read delivered samples up to ``last_index`` at ``t_mono_ns`` (clock fit input)."""
        self.clock.update(last_index, t_mono_ns)

    def push(self, first_index: int, block: np.ndarray, out: list[Frame | Gap], reason: str = "") -> None:
        """Append ``block`` ``(channels, n)`` whose first sample has device index
        ``first_index``; completed frames (and a gap, if indices jumped) go to ``out``."""
        n = block.shape[1]
        if n == 0:
            return
        nxt = self.next_index
        if nxt is not None and first_index != nxt:
            if first_index < nxt:  # the device went backwards: restart numbering
                self.out_of_order += 1
                self.flush(out)
            else:
                self.flush(out)
                lost = first_index - nxt
                self.samples_lost += lost
                out.append(Gap(lost_frames=0, lost_samples=lost,
                               reason=reason or f"device sample index jumped {nxt - 1}->{first_index}"))
        if self._first is None:
            self._first = first_index
        self._blocks.append(block)
        self._n += n
        self.samples_in += n
        self.next_index = first_index + n
        fs = self.frame_samples
        while self._n >= fs:
            self._emit(fs, out)

    def flush(self, out: list[Frame | Gap]) -> None:
        """Emit whatever is buffered as a (short) frame."""
        if self._n:
            self._emit(self._n, out)

    def reset(self) -> None:
        """Forget buffered samples and index continuity (new acquisition run)."""
        self._blocks.clear()
        self._n = 0
        self._first = None
        self.next_index = None

    def _emit(self, n: int, out: list[Frame | Gap]) -> None:
        buf = self._blocks[0] if len(self._blocks) == 1 else np.concatenate(self._blocks, axis=1)
        data = np.ascontiguousarray(buf[:, :n], dtype=np.float32)
        rest = buf[:, n:]
        self._blocks = [rest] if rest.shape[1] else []
        first = self._first
        assert first is not None
        self._n -= n
        self._first = first + n if self._n else None
        t_mono = int(self.clock.time_of(first)) if self.clock.updates else time.monotonic_ns()
        meta = self._meta(first, n) if self._meta is not None else None
        out.append(Frame(data, t_mono + self._real_minus_mono, t_mono, t_device=first, meta=meta))
