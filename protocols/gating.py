"""Cardiac gating: an imaging frame's cardiac phase from the ECG's R-peak markers (sans-I/O).

The reconstruction stage publishes every R peak of an EKG stream ``<s>`` on ``markers/<s>.rpeak``
(:mod:`medacq.protocols.markers` format; ``t_host_ns``/``t_mono_ns`` the peak's sample on the EKG
stream's fitted clock, meta ``origin: "rpeak"``, ``rr_s``). Every imaging frame carries
``t_host_ns`` on the same host timeline, so a subscriber tags a frame with its *cardiac phase*:
the fraction of the RR interval (R peak to next R peak) elapsed at the frame's time, 0 at an R
peak, approaching 1 just before the next one.

:class:`CardiacGate` holds the peaks (feed it marker headers with :meth:`CardiacGate.add_marker`,
or times with :meth:`CardiacGate.add_peak`) and answers :meth:`CardiacGate.phase`:

* **retrospective** (``retrospective=True``): the frame lies between two known peaks; phase =
  ``(t - R_k) / (R_{k+1} - R_k)``, exact up to the two peaks' time errors;
* **prospective**: the frame lies after the last known peak; phase = ``(t - R_k) / RR`` with the
  last RR interval as the forecast (what a live gate must do: the detector confirms a peak
  0.25-0.4 s after it, so a live frame is usually tagged prospectively, and once the next
  peak's marker arrived, the same query gives the retrospective answer);
* ``None``: before the first peak, an interval longer than ``max_rr_s`` (a missed beat, a pause:
  no phase is honest there), or prospectively once ``t`` passed the forecast next peak (phase
  would be >= 1).

Times are integer nanoseconds on one clock (``t_host_ns`` by default; ``clock="mono"`` uses
``t_mono_ns``: then the frames' ``t_mono_ns`` must be given). Pure: no sockets, no clocks.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CardiacGate", "CardiacPhase", "GatingError"]


class GatingError(ValueError):
    """A peak or a marker header the gate cannot use (no time, not an R-peak marker)."""


@dataclass(frozen=True, slots=True)
class CardiacPhase:
    """A frame's place in the cardiac cycle.

    Attributes:
        phase: fraction of the RR interval elapsed, in ``[0, 1)``.
        beat_ns: time of the R peak that opened the cycle (ns, the gate's clock).
        rr_s: the RR interval the phase is a fraction of (s): measured (retrospective) or the
            previous one (prospective).
        retrospective: True when both bounding peaks are known.
        beat: running number of that R peak in the gate (0 = the oldest kept).
    """

    phase: float
    beat_ns: int
    rr_s: float
    retrospective: bool
    beat: int


class CardiacGate:
    """R peaks in, cardiac phase of any time out.

    Args:
        max_rr_s: longest RR interval that is a cardiac cycle (s, default 2.0 = 30 bpm); a longer
            one is a missed beat or a pause, and times inside it get no phase.
        keep: most peaks kept (oldest dropped; default 4096, over an hour at 60 bpm).
        clock: which marker clock :meth:`add_marker` reads: ``"host"`` (``t_host_ns``) or
            ``"mono"`` (``t_mono_ns``).
    """

    def __init__(self, max_rr_s: float = 2.0, keep: int = 4096, clock: Literal["host", "mono"] = "host") -> None:
        if not max_rr_s > 0 or keep < 2:
            raise GatingError("max_rr_s must be > 0 and keep >= 2")
        if clock not in ("host", "mono"):
            raise GatingError(f"clock must be 'host' or 'mono', not {clock!r:.20}")
        self.max_rr_ns = int(round(max_rr_s * 1e9))
        self.keep = int(keep)
        self.key = "t_host_ns" if clock == "host" else "t_mono_ns"
        self._peaks: list[int] = []
        self._dropped = 0  # peaks dropped from the front (keeps ``beat`` numbers stable)
        self.refused = 0   # marker headers refused (count)

    def __len__(self) -> int:
        return len(self._peaks)

    @property
    def peaks_ns(self) -> list[int]:
        """The R-peak times kept, oldest first (ns)."""
        return list(self._peaks)

    def add_peak(self, t_ns: int) -> None:
        """An R peak at ``t_ns`` (ns on the gate's clock). Out-of-order peaks are placed in order;
        a repeat of a kept time is ignored."""
        if isinstance(t_ns, bool) or not isinstance(t_ns, int):
            raise GatingError(f"an R-peak time must be integer ns, got {type(t_ns).__name__}")
        i = bisect.bisect_left(self._peaks, t_ns)
        if i < len(self._peaks) and self._peaks[i] == t_ns:
            return
        self._peaks.insert(i, t_ns)
        if len(self._peaks) > self.keep:
            n = len(self._peaks) - self.keep
            del self._peaks[:n]
            self._dropped += n

    def add_marker(self, header: Mapping[str, Any]) -> None:
        """An R-peak marker's header (a ``frame`` of ``markers/<s>.rpeak``, live or recorded).
        Raises :class:`GatingError` (and counts it in :attr:`refused`) when it is not an R-peak
        marker (``meta.origin`` other than ``rpeak``) or has no integer time."""
        try:
            meta = header.get("meta") or {}
            if meta.get("origin", "rpeak") != "rpeak":
                raise GatingError(f"marker origin {meta.get('origin')!r:.30} is not 'rpeak'")
            t = header.get(self.key)
            if isinstance(t, float) and t.is_integer():
                t = int(t)
            self.add_peak(t)  # type: ignore[arg-type]
        except (GatingError, AttributeError) as exc:
            self.refused += 1
            raise exc if isinstance(exc, GatingError) else GatingError(f"not a marker header: {exc}") from None

    def phase(self, t_ns: int) -> CardiacPhase | None:
        """The cardiac phase at ``t_ns`` (an imaging frame's ``t_host_ns``; ns on the gate's
        clock), or ``None`` where there is no honest answer (module doc)."""
        p = self._peaks
        i = bisect.bisect_right(p, int(t_ns)) - 1
        if i < 0:
            return None
        if i + 1 < len(p):
            rr = p[i + 1] - p[i]
            if rr > self.max_rr_ns:
                return None
            return CardiacPhase((t_ns - p[i]) / rr, p[i], rr / 1e9, True, i + self._dropped)
        if i == 0:
            return None  # one peak: no RR to forecast with
        rr = p[i] - p[i - 1]
        if rr > self.max_rr_ns or t_ns - p[i] >= rr:
            return None
        return CardiacPhase((t_ns - p[i]) / rr, p[i], rr / 1e9, False, i + self._dropped)
