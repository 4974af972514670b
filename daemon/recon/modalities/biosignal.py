"""Reconstructors for biosignal streams (modalities ``eeg``, ``ekg``, ``meg``).

All three filter causally, chunk by chunk, with one SOS cascade (Butterworth band-pass +
mains notch) whose state is carried between frames, so the filtered stream equals
filtering the whole record at once (see :class:`~.biosignal.StreamingSOSFilter`).

Outputs (``recon/<stream>...``):

* ``eeg``: ``recon/<stream>`` filtered ``(channel, sample)`` float32 µV;
  ``recon/<stream>/bandpower`` once per ``step_s`` (default 1 s) over the last
  ``window_s`` (default 2 s): ``(channel, band)`` float32 µV², bands delta, theta, alpha, beta.
* ``ekg``: ``recon/<stream>`` filtered 12-lead ``(lead, sample)`` float32 µV in the order
  I, II, III, aVR, aVL, aVF, V1–V6 (III, aVR, aVL, aVF derived from I and II by Einthoven
  and Goldberger); ``recon/<stream>/hr`` one frame per detected beat: ``(1,)`` float32 bpm,
  meta ``beat_sample`` (device sample index of the R peak), ``beat_t_mono_ns``,
  ``rr_s``; and every R peak as a marker (:mod:`medacq.protocols.markers` format) on
  ``markers/<stream>.rpeak``: label ``R peak``, ``t_host_ns``/``t_mono_ns`` the peak's sample on
  the stream's fitted clock, ``t_device`` its device sample index, meta ``origin: "rpeak"``,
  ``sample``, ``period_s``, ``rr_s`` (``None`` for the first), ``heart_rate_bpm``, ``lead``.
* ``meg``: ``recon/<stream>`` filtered ``(channel, sample)`` float32 pT.

NaN samples (a MEG sensor's lost samples) are held at the channel's last value inside the
filter and come out as NaN. Device-sample gaps (``t_device`` jumps) are bridged by the
filter state (a step, not a restart) and accounted for in beat/band-power sample indices.

Settings (``[recon.settings.<modality>]``, :class:`EEGSettings`, :class:`EKGSettings`,
:class:`MEGSettings`): ``band`` ``[lo, hi]`` Hz (``[]`` disables), ``order``,
``notch_hz`` (default: the descriptor's ``meta.mains_hz``, else 50; ``0`` disables),
``notch_q``; eeg: ``window_s``, ``step_s``; ekg: ``hr_lead`` (default ``"II"``).
Actions: ``reset`` (restart filter state and detectors), ``info`` (the settings in use).

Queue policy: ``fifo`` with ``max_age_ms`` 1000: every chunk in order (the filter state runs
on), unless it is more than a second old (counted from its last sample) when its turn
comes; such chunks are dropped, announced as a gap, and bridged by the filter state like a
device gap. A filtered trace or heart rate more than a second behind is no longer live;
on the 2-core rig chunks normally wait milliseconds, so the bound only acts on a stall.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medacq.protocols.markers import MARKER_TOPIC_PREFIX, encode_marker_text
from medacq.protocols.qos import QosPolicy
from medacq.protocols.stream import StreamDescriptor

from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError
from medacq.daemon.recon.algorithms.biosignal import EEG_BANDS, BandPowerTracker, RPeakDetector, StreamingSOSFilter, design_sos

__all__ = ["RPEAK_SOURCE_SUFFIX", "BiosignalFilter", "BiosignalSettings", "EEGReconstructor", "EEGSettings", "EKGReconstructor",
           "EKGSettings", "MEGReconstructor", "MEGSettings", "derive_12_leads", "TWELVE_LEADS"]

RPEAK_SOURCE_SUFFIX = ".rpeak"
"""An EKG stream ``<s>``'s R peaks are markers on ``markers/<s>.rpeak`` (``markers/<s>`` is the
device's own hardware trigger stream, published by the daemon)."""

TWELVE_LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def derive_12_leads(x: np.ndarray, names: list[str]) -> np.ndarray:
    """12 standard leads from a ``(lead, sample)`` array holding at least I and II (and
    V1–V6 when present; missing precordial leads are NaN). III = II − I,
    aVR = −(I + II)/2, aVL = I − II/2, aVF = II − I/2."""
    idx = {n: i for i, n in enumerate(names)}
    if "I" not in idx or "II" not in idx:
        raise ReconstructorError("EKG stream needs leads 'I' and 'II' in channel_names")
    lead_i, lead_ii = x[idx["I"]], x[idx["II"]]
    out = np.empty((12, x.shape[1]), dtype=np.float32)
    out[0], out[1] = lead_i, lead_ii
    out[2] = lead_ii - lead_i
    out[3] = -(lead_i + lead_ii) / 2
    out[4] = lead_i - lead_ii / 2
    out[5] = lead_ii - lead_i / 2
    for k, v in enumerate(("V1", "V2", "V3", "V4", "V5", "V6")):
        out[6 + k] = x[idx[v]] if v in idx else np.nan
    return out


def _band_field(lo: float, hi: float) -> Any:
    return Field(default=(lo, hi), description=f"Butterworth band-pass [lo, hi], Hz (default [{lo}, {hi}]; hi is "
                 "capped at 0.45 x the sample rate; [] = no band-pass)")


class BiosignalSettings(BaseModel):
    """Filter settings shared by ``[recon.settings.eeg]``, ``.ekg`` and ``.meg``."""

    model_config = ConfigDict(extra="forbid")

    band: tuple[float, float] | None = _band_field(0.5, 40.0)
    order: int = Field(default=4, ge=1, le=20, description="Butterworth order per band edge")
    notch_hz: float | None = Field(default=None, ge=0, description="mains notch, Hz (default: the descriptor's "
                                   "meta.mains_hz, else 50; 0 = no notch)")
    notch_q: float = Field(default=30.0, gt=0, description="notch quality factor (centre / -3 dB width)")

    @field_validator("band", mode="before")
    @classmethod
    def _no_band(cls, v: Any) -> Any:
        return None if v is None or v is False or (isinstance(v, (list, tuple)) and len(v) == 0) else v

    @field_validator("band")
    @classmethod
    def _band_order(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] < v[1]:
            raise ValueError("band must be [lo, hi] Hz with 0 < lo < hi")
        return v


class EEGSettings(BiosignalSettings):
    """``[recon.settings.eeg]``."""

    band: tuple[float, float] | None = _band_field(1.0, 40.0)
    window_s: float = Field(default=2.0, gt=0, description="band-power window, s")
    step_s: float = Field(default=1.0, gt=0, description="band-power output interval, s")


class EKGSettings(BiosignalSettings):
    """``[recon.settings.ekg]``."""

    band: tuple[float, float] | None = _band_field(0.5, 40.0)
    hr_lead: str = Field(default="II", description="channel name the R peaks are detected on (falls back to the "
                         "first channel when the stream has no such lead)")


class MEGSettings(BiosignalSettings):
    """``[recon.settings.meg]``."""

    band: tuple[float, float] | None = _band_field(1.0, 80.0)


class BiosignalFilter(Reconstructor):
    """Causal band-pass + notch on a ``(channel, sample)`` stream (base of the three)."""

    modality = "biosignal"
    Settings = BiosignalSettings
    qos = QosPolicy(policy="fifo", max_age_ms=1000.0)

    def __init__(self, descriptor: StreamDescriptor, settings: BiosignalSettings | dict[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        s: BiosignalSettings = self.settings  # type: ignore[assignment]
        if descriptor.axes != ["channel", "sample"] or len(descriptor.shape) != 2:
            raise ReconstructorError(f"{descriptor.stream}: expected (channel, sample) frames, got {descriptor.axes}")
        if not descriptor.sample_rate_hz:
            raise ReconstructorError(f"{descriptor.stream}: descriptor has no sample_rate_hz")
        self.fs = float(descriptor.sample_rate_hz)
        self.n_channels = int(descriptor.shape[0])
        self.channel_names = list(descriptor.channel_names or [f"ch{i}" for i in range(self.n_channels)])
        band = s.band
        self.band = (float(band[0]), min(float(band[1]), 0.45 * self.fs)) if band else None
        self.order = s.order
        mains = s.notch_hz if s.notch_hz is not None else descriptor.meta.get("mains_hz", 50.0)
        self.notch_hz = float(mains) if mains else None
        self.notch_q = s.notch_q
        self.sos = design_sos(self.fs, self.band, self.order, self.notch_hz, self.notch_q)
        self.reset()

    def reset(self) -> None:
        self.filter = StreamingSOSFilter(self.sos, self.n_channels)
        self._last = np.zeros(self.n_channels)
        self.next_index: int | None = None
        self.lost_samples = 0

    def info(self) -> dict[str, Any]:
        return {"fs": self.fs, "band": self.band, "order": self.order, "notch_hz": self.notch_hz,
                "notch_q": self.notch_q, "lost_samples": self.lost_samples}

    def _track(self, header: dict[str, Any], n: int) -> int:
        """Device index of the frame's first sample; counts samples lost before it."""
        t_dev = header.get("t_device")
        first = int(t_dev) if isinstance(t_dev, (int, float)) else (self.next_index or 0)
        if self.next_index is not None and first > self.next_index:
            self.lost_samples += first - self.next_index
        self.next_index = first + n
        return first

    def _filter(self, frame: np.ndarray) -> np.ndarray:
        x = np.asarray(frame, dtype=np.float64)
        bad = np.isnan(x)
        if bad.any():  # hold the last valid value inside the filter, report NaN outside
            x = x.copy()
            for c in np.flatnonzero(bad.any(axis=1)):
                row = x[c]
                last = self._last[c]
                for i in range(row.size):
                    if np.isnan(row[i]):
                        row[i] = last
                    else:
                        last = row[i]
        if x.shape[1]:
            self._last = x[:, -1].copy()
        y = self.filter.process(x)
        if bad.any():
            y[bad] = np.nan
        return y

    def _filtered_output(self, y: np.ndarray, first: int, names: list[str] | None = None) -> Output:
        return Output("", y.astype(np.float32), ["channel", "sample"], self.descriptor.units,
                      meta={"first_sample": first},
                      descriptor_meta={"channel_names": names or self.channel_names, "sample_rate_hz": self.fs,
                                       "filter": {"band_hz": self.band, "order": self.order,
                                                  "notch_hz": self.notch_hz, "notch_q": self.notch_q,
                                                  "causal": True}})

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        first = self._track(header, frame.shape[1])
        return [self._filtered_output(self._filter(frame), first)]

    def on_gap(self, first_seq: int | None, count: int) -> None:
        """Lost frames: the next frame's ``t_device`` tells how many samples; state is kept."""

    def control(self, action: str, args: dict[str, Any]) -> Any:
        if action == "reset":
            self.reset()
            return {"reset": True}
        if action == "info":
            return self.info()
        return super().control(action, args)


class EEGReconstructor(BiosignalFilter):
    """EEG: filtered stream + per-channel band power once per step."""

    modality = "eeg"
    Settings = EEGSettings

    def reset(self) -> None:
        super().reset()
        s: EEGSettings = self.settings  # type: ignore[assignment]
        self.window_s = s.window_s
        self.step_s = s.step_s
        self.bands = dict(EEG_BANDS)
        self.tracker = BandPowerTracker(self.fs, self.n_channels, self.window_s, self.step_s, self.bands)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "window_s": self.window_s, "step_s": self.step_s, "bands": self.bands}

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        first = self._track(header, frame.shape[1])
        y = self._filter(frame)
        outs = [self._filtered_output(y, first)]
        raw = np.nan_to_num(np.asarray(frame, dtype=np.float64))
        n_before = self.tracker._n  # samples the tracker had seen before this frame
        for end, powers in self.tracker.process(raw):
            bp = np.stack([powers[b] for b in self.bands], axis=1).astype(np.float32)
            outs.append(Output("bandpower", bp, ["channel", "band"], f"{self.descriptor.units}²",
                               meta={"end_sample": int(first + end - n_before), "window_s": self.window_s},
                               descriptor_meta={"channel_names": self.channel_names, "bands": list(self.bands),
                                                "band_edges_hz": {k: list(v) for k, v in self.bands.items()},
                                                "window_s": self.window_s, "step_s": self.step_s,
                                                "method": "Welch, 1 s segments, on the unfiltered signal"}))
        return outs


class EKGReconstructor(BiosignalFilter):
    """EKG: filtered 12-lead stream + R-peak detection → heart rate stream ``hr``."""

    modality = "ekg"
    Settings = EKGSettings

    def reset(self) -> None:
        super().reset()
        lead = self.settings.hr_lead  # type: ignore[attr-defined]
        self.hr_channel = self.channel_names.index(lead) if lead in self.channel_names else 0
        self.detector = RPeakDetector(self.fs)
        self._fed = 0          # samples fed to the detector
        self._offset = 0       # device index of detector sample 0 (+ lost samples)
        self._anchor: tuple[int, int] | None = None  # (device index, t_mono_ns) of a recent frame
        self._last_beat: int | None = None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "hr_lead": self.channel_names[self.hr_channel],
                "leads_out": TWELVE_LEADS, "beats": len(self.detector.beats)}

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        lost_before = self.lost_samples
        started = self.next_index is not None
        first = self._track(header, frame.shape[1])
        if not started:
            self._offset = first
        self._offset += self.lost_samples - lost_before
        y = self._filter(frame)
        outs = [self._filtered_output(derive_12_leads(y, self.channel_names), first, TWELVE_LEADS)]
        x = np.nan_to_num(np.asarray(frame[self.hr_channel], dtype=np.float64))
        beats = self.detector.process(x)
        self._fed += x.size
        t0 = int(header["t_mono_ns"])
        t0_host = int(header.get("t_host_ns", t0))
        for b in beats:
            dev_idx = b.index + self._offset
            rr = (dev_idx - self._last_beat) / self.fs if self._last_beat is not None else None
            self._last_beat = dev_idx
            dt_ns = int(round((dev_idx - first) / self.fs * 1e9))  # the beat's sample on the frame's fitted clock
            outs.append(self._rpeak_marker(b, dev_idx, t0 + dt_ns, t0_host + dt_ns, rr))
            if not np.isfinite(b.heart_rate_bpm):
                continue
            t_beat = t0 + dt_ns
            outs.append(Output("hr", np.array([b.heart_rate_bpm], dtype=np.float32), ["value"], "bpm",
                               meta={"beat_sample": int(dev_idx), "beat_t_mono_ns": t_beat,
                                     "rr_s": rr},
                               descriptor_meta={"lead": self.channel_names[self.hr_channel],
                                                "method": "causal Pan-Tompkins; bpm = median of the last 8 RR",
                                                "sample_rate_hz": self.fs}))
        return outs


    def _rpeak_marker(self, beat: Any, dev_idx: int, t_mono_ns: int, t_host_ns: int, rr: float | None) -> Output:
        """The R peak as a marker on ``markers/<stream>.rpeak`` (:data:`RPEAK_SOURCE_SUFFIX`)."""
        bpm = float(beat.heart_rate_bpm)
        return Output(MARKER_TOPIC_PREFIX + self.descriptor.stream + RPEAK_SOURCE_SUFFIX, encode_marker_text("R peak"),
                      ["byte"], "utf-8",
                      meta={"text": "R peak", "origin": "rpeak", "t_mono_ns": int(t_mono_ns),
                            "t_host_ns": int(t_host_ns), "t_device": int(dev_idx), "sample": int(dev_idx),
                            "period_s": 1.0 / self.fs, "rr_s": rr,
                            "heart_rate_bpm": bpm if np.isfinite(bpm) else None,
                            "lead": self.channel_names[self.hr_channel]},
                      descriptor_meta={"origin": "rpeak", "lead": self.channel_names[self.hr_channel],
                                       "method": "causal Pan-Tompkins; the R peak at the dominant deflection of "
                                                 "the 0.5 Hz high-passed lead, to the sample",
                                       "sample_rate_hz": self.fs})


class MEGReconstructor(BiosignalFilter):
    """MEG (OPM): filtered stream, pT."""

    modality = "meg"
    Settings = MEGSettings
