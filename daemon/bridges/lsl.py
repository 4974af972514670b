"""Republish medacq biosignal streams as Lab Streaming Layer outlets (``medacq[lsl]``).

:func:`run_lsl_bridge` subscribes to ``raw/...`` and/or ``recon/...`` topics and opens one
pylsl outlet per stream once its descriptor has arrived, so LabRecorder, MNE-LSL and
OpenViBE see the stream with no medacq code on their side:

* name = the medacq stream (``eeg0``, ``ekg0/hr``), type = modality in capitals
  (``EEG``, ``EKG``, ``MEG``), ``source_id = medacq:<topic>``;
* channel format float32; nominal rate = the descriptor's ``sample_rate_hz`` for
  ``(channel, sample)`` frames, irregular (0) for anything else (heart rate per beat, band
  power: flattened to one sample per frame);
* ``desc/channels/channel`` entries with ``label``, ``unit`` and ``type``; ``desc/acquisition``
  with ``manufacturer=medacq`` and the device string.

Timestamps: the chunk's last sample gets ``t_mono_ns / 1e9 + (n − 1) / fs`` (the fitted
device clock, on CLOCK_MONOTONIC, which is also LSL's ``local_clock`` on Linux). medacq gap
messages have no LSL equivalent (LSL carries no sequence numbers): they are counted.

Only biosignal modalities are bridged (``eeg``, ``ekg``, ``meg``, ``emg`` by default): images
and RF have no place in LSL and are counted as ``skipped_modality``. A descriptor whose
layout changes (channel count, rate, labels, units: the device was reconfigured) replaces the
stream's outlet; a frame that does not fit its outlet is counted (``skipped_bad_frame``) and
the bridge keeps running.

Exposure: an LSL outlet cannot be kept on this machine. liblsl listens for inlets on every
interface (its TCP data server and UDP service port bind ``0.0.0.0``, whatever ``lsl_api.cfg``'s
``ResolveScope``/``ListenAddress`` say: checked with the liblsl 1.18 that pylsl ships), answers multicast
discovery on the LAN, and has neither encryption nor authentication: anyone on the network can
find and read the streams. So the bridge starts only with an explicit opt-in
(``allow_lan=True``, ``medacq lsl --allow-lan``), else it refuses with one line
(:func:`check_lsl_exposure`, the rule of :func:`medacq.daemon.common.binding.check_exposure`).
``ResolveScope = machine`` in ``lsl_api.cfg`` still narrows *discovery* to this machine.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from medacq.daemon.common.binding import check_exposure

__all__ = ["run_lsl_bridge", "LslBridge", "BIOSIGNAL_MODALITIES", "check_lsl_exposure"]

#: Modalities republished by default.
BIOSIGNAL_MODALITIES = ("eeg", "ekg", "meg", "emg")

#: Where liblsl's outlets listen (every interface; not configurable, see the module doc).
LSL_LISTEN_ADDRESS = "0.0.0.0"


def check_lsl_exposure(allow_lan: bool) -> None:
    """Refuse (:class:`~medacq.daemon.common.binding.BindError`) to open LSL outlets unless
    ``allow_lan``: they listen on every interface, unencrypted and unauthenticated."""
    check_exposure("serve LSL outlets on", f"{LSL_LISTEN_ADDRESS} (every interface, multicast discovery)",
                   allowed=allow_lan,
                   needs="an explicit opt-in (medacq lsl --allow-lan; allow_lan=True): LSL has no encryption or "
                         "authentication, so anyone on the LAN can read the streams; use it on a trusted lab "
                         "network only")


class LslBridge:
    """The bridge's state: one outlet per stream. Use :func:`run_lsl_bridge`.

    ``allow_lan`` must be true (:func:`check_lsl_exposure`), else ``BindError`` before anything
    is opened.
    """

    def __init__(self, endpoints: str | list[str], topics: str | list[str],
                 modalities: tuple[str, ...] = BIOSIGNAL_MODALITIES, *, allow_lan: bool = False) -> None:
        check_lsl_exposure(allow_lan)
        import pylsl  # noqa: F401 - fail early with ImportError when LSL is absent

        from medacq.client import Subscriber

        self.sub = Subscriber(endpoints, topics, errors="skip")
        self.modalities = tuple(m.lower() for m in modalities)
        self.outlets: dict[str, Any] = {}
        self._shape: dict[str, tuple[int, float, bool]] = {}
        self._layout: dict[str, tuple[Any, ...]] = {}
        self._ignored: set[str] = set()
        self.samples: dict[str, int] = {}
        self.gaps: dict[str, int] = {}
        self.outlets_replaced = 0
        self.skipped_no_descriptor = 0
        self.skipped_modality = 0
        self.skipped_bad_frame = 0
        self.last_error: str | None = None

    @staticmethod
    def _layout_of(desc: dict[str, Any]) -> tuple[Any, ...]:
        """What an outlet's StreamInfo is made of; a change needs a new outlet."""
        meta = desc.get("meta") or {}
        names = desc.get("channel_names") or meta.get("channel_names")
        return (desc.get("stream"), desc.get("modality"), tuple(desc.get("shape") or ()), tuple(desc.get("axes") or ()),
                desc.get("sample_rate_hz") or meta.get("sample_rate_hz"), tuple(names or ()), desc.get("units"))

    def _outlet(self, topic: str, desc: dict[str, Any]) -> Any:
        import pylsl

        axes = desc.get("axes") or []
        shape = desc.get("shape") or []
        meta = desc.get("meta") or {}
        names = desc.get("channel_names") or meta.get("channel_names")
        sampled = len(axes) == 2 and axes[-1] == "sample"
        if sampled:
            nch = int(shape[0])
            rate = float(desc.get("sample_rate_hz") or meta.get("sample_rate_hz") or 0.0)
        else:
            nch = int(np.prod([s for s in shape if s > 0])) if shape else 1
            rate = 0.0
        info = pylsl.StreamInfo(desc["stream"], str(desc.get("modality", "")).upper() or "MISC", nch, rate,
                                pylsl.cf_float32, f"medacq:{topic}")
        chans = info.desc().append_child("channels")
        unit = str(desc.get("units") or "")
        for i in range(nch):
            c = chans.append_child("channel")
            c.append_child_value("label", str(names[i]) if names and i < len(names) and sampled else f"{i}")
            c.append_child_value("unit", unit)
            c.append_child_value("type", str(desc.get("modality", "")).upper())
        acq = info.desc().append_child("acquisition")
        acq.append_child_value("manufacturer", "medacq")
        acq.append_child_value("device", str(desc.get("device", "")))
        self._shape[topic] = (nch, rate, sampled)
        return pylsl.StreamOutlet(info, 32, 360)

    def step(self, timeout: float = 0.2) -> None:
        m = self.sub.recv(timeout=timeout)
        if m is None:
            return
        topic = m.topic
        if m.kind == "gap":
            self.gaps[topic] = self.gaps.get(topic, 0) + 1
            return
        if m.kind == "descriptor":
            d = m.header.get("descriptor")
            if d:
                self._descriptor(topic, d)
            return
        if m.array is None:
            return
        out = self.outlets.get(topic)
        if out is None:
            if topic in self._ignored:
                self.skipped_modality += 1
            else:
                self.skipped_no_descriptor += 1
            return
        nch, rate, sampled = self._shape[topic]
        t0 = m.header["t_mono_ns"] / 1e9
        if sampled and m.array.ndim == 2 and m.array.shape[0] == nch:
            x = np.ascontiguousarray(m.array.T, dtype=np.float32)  # (samples, channels)
            n = x.shape[0]
            out.push_chunk(x, t0 + (n - 1) / rate if rate else t0)
        elif not sampled and m.array.size == nch:
            n = 1
            out.push_sample(np.asarray(m.array, dtype=np.float32).ravel().tolist(), t0)
        else:
            self.skipped_bad_frame += 1
            self.last_error = f"{topic}: frame {list(m.array.shape)} does not fit the outlet ({nch} channels)"
            return
        self.samples[topic] = self.samples.get(topic, 0) + n

    def _descriptor(self, topic: str, d: dict[str, Any]) -> None:
        if str(d.get("modality", "")).lower() not in self.modalities:
            self._ignored.add(topic)
            return
        layout = self._layout_of(d)
        if self._layout.get(topic) == layout:
            return
        if topic in self.outlets:  # reconfigured: LSL consumers see a new stream (same source_id)
            self.outlets_replaced += 1
            del self.outlets[topic]
        self._layout[topic] = layout
        self.outlets[topic] = self._outlet(topic, d)

    def close(self) -> None:
        self.sub.close()
        self.outlets.clear()


def run_lsl_bridge(endpoints: str | list[str], topics: str | list[str] = ("raw/", "recon/"),
                   duration_s: float | None = None, stop: threading.Event | None = None,
                   modalities: tuple[str, ...] = BIOSIGNAL_MODALITIES, *, allow_lan: bool = False) -> dict[str, Any]:
    """Bridge ``topics`` from ``endpoints`` to LSL until ``duration_s`` elapses (``None``:
    forever) or ``stop`` is set. Returns ``{"samples": {topic: n}, "gaps": {...}, "outlets": [...],
    ...counters}``. Needs ``allow_lan=True`` (:func:`check_lsl_exposure`)."""
    b = LslBridge(endpoints, list(topics) if not isinstance(topics, str) else topics, modalities,
                  allow_lan=allow_lan)
    end = None if duration_s is None else time.monotonic() + duration_s
    try:
        while (end is None or time.monotonic() < end) and not (stop is not None and stop.is_set()):
            b.step(0.1)
    finally:
        result = {"samples": dict(b.samples), "gaps": dict(b.gaps), "outlets": sorted(b.outlets),
                  "outlets_replaced": b.outlets_replaced, "skipped_no_descriptor": b.skipped_no_descriptor,
                  "skipped_modality": b.skipped_modality, "skipped_bad_frame": b.skipped_bad_frame,
                  "last_error": b.last_error}
        b.close()
    return result
