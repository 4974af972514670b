"""Cardiac gating (medacq.protocols.gating): R-peak markers in, an imaging frame's cardiac phase out."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.protocols.gating import CardiacGate, GatingError
from medacq.protocols.markers import encode_marker_text

T0 = 1_700_000_000_000_000_000  # an arbitrary CLOCK_REALTIME origin, ns


def _markers(rr_s):
    """Recorded R-peak marker headers (as a subscriber or a recording gives them back)."""
    t = T0 + np.concatenate([[0], np.cumsum(np.round(np.asarray(rr_s) * 1e9))]).astype(np.int64)
    return [{"stream": "ekg0.rpeak", "kind": "frame", "seq": k, "t_host_ns": int(x), "t_mono_ns": int(x) - T0,
             "meta": {"text": "R peak", "origin": "rpeak", "rr_s": None if k == 0 else float(rr_s[k - 1])}}
            for k, x in enumerate(t)], t


def test_phase_of_synthetic_frames_between_recorded_r_peaks():
    rng = np.random.default_rng(3)
    rr = 0.8 + 0.1 * rng.standard_normal(40)  # 75 bpm with variability
    hdrs, peaks = _markers(rr)
    gate = CardiacGate()
    for h in hdrs:
        gate.add_marker(h)
    assert len(gate) == len(peaks)
    assert encode_marker_text("R peak").size == 128  # the payload such headers come with
    # 30 frames/s across the record: every frame's phase is (t - R_k) / (R_k+1 - R_k)
    frames = np.arange(peaks[0] - 50_000_000, peaks[-1] + 2_000_000_000, 33_333_333)
    for t in frames:
        ph = gate.phase(int(t))
        k = int(np.searchsorted(peaks, t, side="right")) - 1
        if k < 0:
            assert ph is None  # before the first peak
        elif k + 1 < len(peaks):
            exp = (t - peaks[k]) / (peaks[k + 1] - peaks[k])
            assert ph is not None and ph.retrospective and ph.beat == k and ph.beat_ns == peaks[k]
            assert ph.phase == pytest.approx(exp, abs=1e-9) and 0 <= ph.phase < 1
            assert ph.rr_s == pytest.approx(rr[k], abs=1e-9)
        else:  # after the last peak: forecast with the last RR, none once it is overdue
            exp = (t - peaks[-1]) / (peaks[-1] - peaks[-2])
            if exp < 1:
                assert ph is not None and not ph.retrospective and ph.phase == pytest.approx(exp, abs=1e-9)
            else:
                assert ph is None
    # a frame at 40 % of beat 10's cycle
    t = int(peaks[10]) + round(0.4 * int(peaks[11] - peaks[10]))
    assert gate.phase(t).phase == pytest.approx(0.4, abs=1e-8)


def test_missed_beat_pause_and_late_peaks():
    hdrs, peaks = _markers([0.8, 0.8, 2.6, 0.8])  # a 2.6 s pause (or a missed beat)
    gate = CardiacGate(max_rr_s=2.0, clock="mono")
    for h in reversed(hdrs):  # out of order, as peaks from a reconnect may come: placed in order
        gate.add_marker(h)
    mono = peaks - T0
    assert gate.peaks_ns == list(mono)
    assert gate.phase(int(mono[2] + 1_000_000_000)) is None  # inside the pause: no phase
    assert gate.phase(int(mono[1] + 400_000_000)).phase == pytest.approx(0.5)
    # prospective, then the next peak's marker arrives and the same frame becomes retrospective
    live = CardiacGate()
    for h in hdrs[:3]:
        live.add_marker(h)
    t = int(peaks[2] + 0.7e9)
    p = live.phase(t)
    assert not p.retrospective and p.phase == pytest.approx(0.875)
    live.add_marker(hdrs[3])
    assert live.phase(t) is None  # that interval is 2.6 s: not a cycle
    live.add_peak(int(peaks[2] + 0.75e9))  # the true next peak, reported late
    p = live.phase(t)
    assert p.retrospective and p.phase == pytest.approx(0.7 / 0.75)


def test_bad_markers_are_typed_errors_and_counted():
    gate = CardiacGate()
    with pytest.raises(GatingError):
        gate.add_marker({"t_host_ns": T0, "meta": {"origin": "trigger"}})
    with pytest.raises(GatingError):
        gate.add_marker({"meta": {"origin": "rpeak"}})  # no time
    with pytest.raises(GatingError):
        gate.add_marker("not a header")  # type: ignore[arg-type]
    with pytest.raises(GatingError):
        gate.add_peak(1.5)  # type: ignore[arg-type]
    assert gate.refused == 3 and len(gate) == 0
    assert gate.phase(T0) is None
    with pytest.raises(GatingError):
        CardiacGate(clock="gps")  # type: ignore[arg-type]
    small = CardiacGate(keep=3)
    for k in range(5):
        small.add_peak(T0 + k * 1_000_000_000)
    assert len(small) == 3 and small.phase(T0 + 3_500_000_000).beat == 3  # numbering survives the trim
