"""Markers and trigger events: the ``markers/<source>`` streams (sans-I/O).

A marker is one ``frame`` message of the stream protocol on topic ``markers/<source>``, so every
subscriber, the recorder and the HDF5 file handle it like any other stream:

* ``source`` is ``operator`` (``medacq mark``, the ``mark`` control request), another name a
  client chose, or a device name (``eeg0``): the hardware trigger events that device's driver
  decoded from its own data (a TTL edge on a digital input, a GPIO bit, a frame-sync line);
* the payload is the marker's label, UTF-8, NUL-padded to :data:`MARKER_TEXT_BYTES` bytes
  (``|u1``, shape ``[MARKER_TEXT_BYTES]``, axis ``byte``): the text survives a recording, where
  frame ``meta`` is not kept; ``meta.text`` repeats it for live subscribers;
* ``t_host_ns`` / ``t_mono_ns`` are the event's time on the acquiring host: for a software marker
  the daemon's clocks when it took the request, for a trigger the fitted host time of the device
  sample (or frame) in which the edge was seen; ``t_device`` is the device's own time of the
  event (its sample index or its clock, as its stream's ``t_device``);
* ``meta``: ``text``, ``origin`` (``software`` or ``trigger``) and, for triggers, ``line``
  (the input, e.g. ``D11``), ``edge`` (``rising``/``falling``), ``sample`` (device sample index
  or frame number where it was seen) and ``period_s`` (that sample's period: the event lies in
  ``[t - period_s / 2, t + period_s / 2)``); where the daemon aligns the device to the rig's
  trigger reference (``[daemon] trigger_reference``), ``t_mono_ns_fit`` (the uncorrected fitted
  time) and ``bus_offset_ns`` (what was removed) too. A trigger on line ``frame_start`` is the
  device's own frame-start event (ultrasound, EIT), not an edge of the rig's trigger line.

Within one ``markers/<source>`` stream ``seq`` and the clocks increase together (markers in
order). A driver hands trigger events to the daemon in its frames' ``meta["triggers"]``
(:data:`FRAME_TRIGGERS_KEY`, a list of :meth:`TriggerEvent.to_meta` dicts); the daemon publishes
each on ``markers/<device>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from medacq.protocols.stream import StreamDescriptor

__all__ = ["MARKER_TEXT_BYTES", "MARKER_TOPIC_PREFIX", "FRAME_TRIGGERS_KEY", "MarkerError", "TriggerEvent",
           "check_source", "encode_marker_text", "decode_marker_text", "marker_descriptor", "marker_topic"]

MARKER_TEXT_BYTES: Final = 128
"""Longest marker label, in UTF-8 bytes (the payload's length)."""

MARKER_TOPIC_PREFIX: Final = "markers/"

FRAME_TRIGGERS_KEY: Final = "triggers"
"""Frame ``meta`` key under which a driver lists the trigger events it decoded."""

_SOURCE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class MarkerError(ValueError):
    """A marker that cannot be published (label too long, bad source name)."""


def check_source(source: str) -> str:
    """``source`` if it is a valid marker source name (1-64 of ``A-Z a-z 0-9 _ . -``), else :class:`MarkerError`."""
    if not isinstance(source, str) or not _SOURCE.match(source):
        raise MarkerError(f"marker source {source!r:.80} must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return source


def marker_topic(source: str) -> str:
    """``markers/<source>``."""
    return MARKER_TOPIC_PREFIX + check_source(source)


def encode_marker_text(text: str) -> np.ndarray:
    """The payload of a marker: ``text`` as UTF-8, NUL-padded to :data:`MARKER_TEXT_BYTES` (``uint8``).

    Raises :class:`MarkerError` when it is longer than :data:`MARKER_TEXT_BYTES` bytes or holds NUL.
    """
    if not isinstance(text, str):
        raise MarkerError(f"marker text must be a string, got {type(text).__name__}")
    raw = text.encode("utf-8")
    if len(raw) > MARKER_TEXT_BYTES:
        raise MarkerError(f"marker text is {len(raw)} UTF-8 bytes; the limit is {MARKER_TEXT_BYTES}")
    if b"\0" in raw:
        raise MarkerError("marker text must not contain NUL")
    out = np.zeros(MARKER_TEXT_BYTES, dtype=np.uint8)
    out[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def decode_marker_text(payload: np.ndarray) -> str:
    """The label of a marker payload (a recorded row too); undecodable bytes become U+FFFD."""
    raw = np.asarray(payload, dtype=np.uint8).tobytes()
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def marker_descriptor(source: str) -> StreamDescriptor:
    """The descriptor of stream ``markers/<source>``."""
    return StreamDescriptor(
        stream=check_source(source), modality="marker", device=source, dtype="|u1", shape=[MARKER_TEXT_BYTES],
        axes=["byte"], units="utf-8",
        meta={"payload": f"marker label, UTF-8, NUL-padded to {MARKER_TEXT_BYTES} bytes",
              "clocks": "t_host_ns/t_mono_ns: the event's host time (fitted for device triggers); "
                        "t_device: the device's own time of the event"})


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """A hardware trigger edge a driver found in its device's data.

    Attributes:
        line: the input that carried it (``D11``, ``GPIO1``, ``frame_sync``).
        edge: ``rising`` or ``falling``.
        sample: the device sample index (or frame number) in which the edge was first seen.
        t_device: the device's own time of that sample (its stream's ``t_device`` unit: a
            sample index, or seconds of the device clock).
        t_mono_ns, t_host_ns: the fitted host time of the event (CLOCK_MONOTONIC /
            CLOCK_REALTIME, ns): the middle of the sample period in which the edge was seen.
        period_s: that sample's period, s (the event's time is known to +- half of it).
        frame_clock: the stream's frames are stamped on the same fitted device clock as this
            event (Cyton, HackEEG: one sample clock), so a correction of the event's clock (the
            daemon's trigger-bus alignment) applies to the frames too.
    """

    line: str
    edge: Literal["rising", "falling"]
    sample: int
    t_device: float
    t_mono_ns: int
    t_host_ns: int
    period_s: float
    frame_clock: bool = False

    def to_meta(self) -> dict[str, Any]:
        """A JSON-able dict (frame ``meta["triggers"]`` entry)."""
        return {"line": self.line, "edge": self.edge, "sample": int(self.sample), "t_device": float(self.t_device),
                "t_mono_ns": int(self.t_mono_ns), "t_host_ns": int(self.t_host_ns), "period_s": float(self.period_s),
                "frame_clock": bool(self.frame_clock)}

    @classmethod
    def from_meta(cls, d: Any) -> "TriggerEvent":
        """Parse a :meth:`to_meta` dict; :class:`MarkerError` when a field is missing or mistyped."""
        try:
            edge = d["edge"]
            if edge not in ("rising", "falling"):
                raise MarkerError(f"trigger edge {edge!r:.20} is not rising/falling")
            ev = cls(str(d["line"])[:32], edge, int(d["sample"]), float(d["t_device"]), int(d["t_mono_ns"]),
                     int(d["t_host_ns"]), float(d["period_s"]), bool(d.get("frame_clock", False)))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, MarkerError):
                raise
            raise MarkerError(f"bad trigger event {d!r:.120}: {exc}") from None
        return ev

    @property
    def text(self) -> str:
        """The marker label: ``<line> <edge>``."""
        return f"{self.line} {self.edge}"
