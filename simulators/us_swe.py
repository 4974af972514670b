"""Research ultrasound scanner with shear-wave elastography (OpenIGTLink, device role).

Everything of :class:`~medacq.simulators.us_scanner.UltrasoundScannerInterface` (B-mode RF
frames, STRING commands with ``ACK`` replies), plus a push-and-track sequence
(``docs/elastography.md``)::

    SET PUSH <duration_us> <depth_mm> <voltage_v>   push: 50..1000 µs, focus 5..60 mm, 1..90 V
    SET TRACKING <prf_hz> <frames> [IQ|RF]          5000..10000 Hz, 10..20 ms of frames; what the
                                                    ensemble carries (default IQ)
    GET SWE    OK push_us=<> depth_mm=<> voltage_v=<> prf=<> frames=<> nz=<> nx=<> z0_mm=<>
               dz_mm=<> x0_mm=<> dx_mm=<> f0=<> fs_iq=<> pushes=<n> data=<iq|rf>
    GET TRACKING   OK <JSON of the tracking PlaneWaveAcquisition.to_descriptor()> (RF mode's
                   probe, sampling, receive window and PRF)
    PUSH       OK push=<n>   (only while running: START arms the scanner, STOP disarms it)

After ``PUSH`` (one long focused transmit at the set depth), the scanner tracks with plane
waves at the tracking PRF and sends the ensemble as one NDARRAY message named ``SWE``:
int16 ``(frame, z, x, 2)`` = beamformed IQ (I, Q) counts (``IQ``), or int16 ``(frame, angle,
element, sample)`` channel RF counts of the 0° tracking plane wave (``RF``: the receiver
beamforms; the acquisition is ``GET TRACKING``'s), metadata ``data`` (``iq``/``rf``), ``push`` (counter),
``prf_hz``, ``f0_hz``, ``fs_iq_hz``, ``c_m_s``, ``z0_mm``, ``dz_mm``, ``x0_mm``, ``dx_mm``,
``iq_scale`` (counts per unit IQ), ``push_us``, ``push_depth_mm``, ``push_voltage_v``. It
leaves ``frames / prf`` s after the push. ``SET`` is refused while running (``ERR busy``), a
second ``PUSH`` while an ensemble is in flight (``ERR busy push``); ``STOP`` cancels a
push in flight (no ensemble is sent) and disarms pushes: it is the safe state.

Physics: :mod:`medacq.simulators.swe_model` (stiffness map, straight-ray or eikonal shear
wave, speckle that moves with the displacement; RF through the B-mode model's echo
synthesis). The push amplitude scales with ``duration / 200 µs × (voltage / 50 V)²``
(radiation force ∝ intensity × time). Ensembles are rendered once per push setting and
cached (seconds for IQ, 15–25 s for 150 RF frames on the full grid, on a shared 2-core machine).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import json

import numpy as np

from medacq.protocols.igtl import NdArrayMessage
from medacq.protocols.us_geometry import PlaneWaveAcquisition
from medacq.simulators.swe_model import (C_SOUND_M_S, Ensemble, RfEnsemble, ShearWave, StiffnessPhantom, TrackingSetup,
                                         render_ensemble, render_rf_ensemble, tracking_acquisition)
from medacq.simulators.us_model import PlaneWaveRFModel
from medacq.simulators.us_scanner import UltrasoundScannerInterface

__all__ = ["ElastographyScannerInterface", "make", "PUSH_LIMITS"]

#: the scanner's own hardware bounds: name -> (low, high)
PUSH_LIMITS = {"duration_us": (50.0, 1000.0), "depth_mm": (5.0, 60.0), "voltage_v": (1.0, 90.0),
               "prf_hz": (5000.0, 10000.0), "tracking_ms": (10.0, 20.0)}


class ElastographyScannerInterface(UltrasoundScannerInterface):
    """The OpenIGTLink scanner plus pushes and tracking ensembles (module doc)."""

    def __init__(self, model: PlaneWaveRFModel | None = None, phantom: StiffnessPhantom | None = None,
                 setup: TrackingSetup | None = None, seed: int = 0) -> None:
        super().__init__(model)
        self.phantom = phantom or StiffnessPhantom()
        self.setup = setup or TrackingSetup()
        self.swe_seed = seed
        self.push_us = 200.0
        self.push_depth_mm = 25.0
        self.push_voltage_v = 50.0
        self.pushes = 0
        self.tracking_data = "iq"
        self.propagation = "rays"  # the shear wave's model: "rays" or "eikonal" (swe_model.ShearWave)
        self._push_due: float | None = None
        self._cache: dict[tuple[float, float, float, float, int, str], tuple[np.ndarray, float, Ensemble]] = {}
        self._rf_cache: dict[tuple[float, float, float, float, int, str], RfEnsemble] = {}

    # ---- ensembles -----------------------------------------------------------------------
    def wave(self) -> ShearWave:
        amp = 20.0 * (self.push_us / 200.0) * (self.push_voltage_v / 50.0) ** 2
        return ShearWave(z_push_mm=self.push_depth_mm, amplitude_um=amp, propagation=self.propagation)

    def ensemble(self) -> tuple[np.ndarray, float, Ensemble]:
        """``(int16 (frame, z, x, 2), iq_scale, Ensemble)`` for the current settings (cached)."""
        key = (self.push_us, self.push_depth_mm, self.push_voltage_v, self.setup.prf_hz, self.setup.n_frames,
               self.propagation)
        if key not in self._cache:
            ens = render_ensemble(self.phantom, self.wave(), self.setup, seed=self.swe_seed)
            scale = 8000.0 / float(np.abs(ens.iq).max())
            q = np.empty(ens.iq.shape + (2,), np.int16)
            q[..., 0] = np.clip(np.rint(ens.iq.real * scale), -32768, 32767)
            q[..., 1] = np.clip(np.rint(ens.iq.imag * scale), -32768, 32767)
            self._cache[key] = (q, scale, ens)
        return self._cache[key]

    def rf_ensemble(self) -> RfEnsemble:
        """The channel-RF ensemble (``RF`` mode) for the current settings (cached)."""
        key = (self.push_us, self.push_depth_mm, self.push_voltage_v, self.setup.prf_hz, self.setup.n_frames,
               self.propagation)
        if key not in self._rf_cache:
            self._rf_cache[key] = render_rf_ensemble(self.phantom, self.wave(), self.setup, seed=self.swe_seed)
        return self._rf_cache[key]

    def _load(self) -> None:
        """Render the ensemble of the current settings and mode (before a push fires)."""
        if self.tracking_data == "iq":
            self.ensemble()
        else:
            self.rf_ensemble()

    def truth(self) -> dict:
        d = super().truth()
        d.update(pushes=self.pushes, push_us=self.push_us, push_depth_mm=self.push_depth_mm,
                 push_voltage_v=self.push_voltage_v, push_in_flight=self._push_due is not None,
                 e_background_kpa=self.phantom.e_background_kpa,
                 regions=[{"x_mm": r.x_mm, "z_mm": r.z_mm, "radius_mm": r.radius_mm, "e_kpa": r.e_kpa}
                          for r in self.phantom.regions])
        return d

    # ---- DeviceInterface -----------------------------------------------------------------
    def next_deadline(self) -> float | None:
        a = super().next_deadline()
        b = self._push_due
        if a is None:
            return b
        return a if b is None else min(a, b)

    def poll(self, t: float) -> bytes:
        out = super().poll(t)
        if self._push_due is not None and t >= self._push_due:
            self._push_due = None
            s = self.setup
            if self.tracking_data == "rf":
                rf = self.rf_ensemble()
                z, x = s.depth_mm(), s.lateral_mm()
                meta = {"data": "rf", "push": str(self.pushes - 1), "prf_hz": f"{s.prf_hz:g}",
                        "f0_hz": f"{rf.acquisition.probe.center_frequency_hz:g}", "fs_iq_hz": f"{s.fs_iq_hz:g}",
                        "c_m_s": f"{C_SOUND_M_S:g}", "z0_mm": repr(float(z[0])), "dz_mm": repr(float(z[1] - z[0])),
                        "x0_mm": repr(float(x[0])), "dx_mm": repr(float(x[1] - x[0])),
                        "fs_hz": f"{rf.acquisition.sampling_frequency_hz:g}",
                        "t0_s": repr(rf.acquisition.start_time_s), "push_us": f"{self.push_us:g}",
                        "push_depth_mm": f"{self.push_depth_mm:g}", "push_voltage_v": f"{self.push_voltage_v:g}"}
                return out + self.codec.send(NdArrayMessage(array=rf.rf, device_name="SWE", timestamp=t,
                                                            header_version=2, message_id=(self.pushes - 1) & 0xFFFFFFFF,
                                                            metadata=meta))
            q, scale, ens = self.ensemble()
            meta = {"data": "iq", "push": str(self.pushes - 1), "prf_hz": f"{s.prf_hz:g}", "f0_hz": f"{s.f0_hz:g}",
                    "fs_iq_hz": f"{s.fs_iq_hz:g}", "c_m_s": f"{C_SOUND_M_S:g}",
                    "z0_mm": repr(float(ens.z_mm[0])), "dz_mm": repr(float(ens.z_mm[1] - ens.z_mm[0])),
                    "x0_mm": repr(float(ens.x_mm[0])), "dx_mm": repr(float(ens.x_mm[1] - ens.x_mm[0])),
                    "iq_scale": repr(scale), "push_us": f"{self.push_us:g}",
                    "push_depth_mm": f"{self.push_depth_mm:g}", "push_voltage_v": f"{self.push_voltage_v:g}"}
            out += self.codec.send(NdArrayMessage(array=q, device_name="SWE", timestamp=t, header_version=2,
                                                  message_id=(self.pushes - 1) & 0xFFFFFFFF, metadata=meta))
        return out

    def handle_command(self, text: str, t: float) -> str:
        words = text.strip().split()
        if not words:
            return "ERR empty command"
        cmd = words[0].upper()
        verb = " ".join(w.upper() for w in words[:2])
        try:
            if cmd == "STOP":
                self._push_due = None
                return super().handle_command(text, t)
            if cmd == "PUSH":
                if self.state != "running":
                    return "ERR not armed (START first)"
                if self._push_due is not None:
                    return "ERR busy push"
                self._load()  # the sequence is loaded before the push fires
                self.pushes += 1
                self._push_due = t + self.setup.n_frames / self.setup.prf_hz
                return f"OK push={self.pushes - 1}"
            if verb == "GET SWE":
                self._load()
                s = self.setup
                z, x = s.depth_mm(), s.lateral_mm()
                f0 = tracking_acquisition(s).probe.center_frequency_hz if self.tracking_data == "rf" else s.f0_hz
                return (f"OK push_us={self.push_us:g} depth_mm={self.push_depth_mm:g} "
                        f"voltage_v={self.push_voltage_v:g} prf={s.prf_hz:g} frames={s.n_frames} "
                        f"nz={len(z)} nx={len(x)} z0_mm={float(z[0])!r} "
                        f"dz_mm={float(z[1] - z[0])!r} x0_mm={float(x[0])!r} "
                        f"dx_mm={float(x[1] - x[0])!r} f0={f0:g} fs_iq={s.fs_iq_hz:g} "
                        f"pushes={self.pushes} data={self.tracking_data}")
            if verb == "GET TRACKING":
                return "OK " + json.dumps(tracking_acquisition(self.setup).to_descriptor())
            if verb in ("SET PUSH", "SET TRACKING"):
                if self.state != "stopped":
                    return "ERR busy"
                data = self.tracking_data
                if verb == "SET TRACKING" and len(words) == 5 and words[4].upper() in ("IQ", "RF"):
                    data = words.pop().lower()
                args = [float(a) for a in words[2:]]
                if verb == "SET PUSH":
                    if len(args) != 3:
                        return "ERR SET PUSH <duration_us> <depth_mm> <voltage_v>"
                    for name, v in zip(("duration_us", "depth_mm", "voltage_v"), args):
                        lo, hi = PUSH_LIMITS[name]
                        if not lo <= v <= hi:
                            return f"ERR {name} {v:g} outside {lo:g}..{hi:g}"
                    self.push_us, self.push_depth_mm, self.push_voltage_v = args
                    return "OK"
                if len(args) != 2:
                    return "ERR SET TRACKING <prf_hz> <frames> [IQ|RF]"
                prf, frames = args[0], int(args[1])
                lo, hi = PUSH_LIMITS["prf_hz"]
                if not lo <= prf <= hi:
                    return f"ERR prf {prf:g} outside {lo:g}..{hi:g}"
                ms = frames / prf * 1e3
                lo, hi = PUSH_LIMITS["tracking_ms"]
                if not lo - 1e-9 <= ms <= hi + 1e-9:
                    return f"ERR tracking {ms:g} ms outside {lo:g}..{hi:g}"
                self.setup = replace(self.setup, prf_hz=prf, n_frames=frames)
                self.tracking_data = data
                return "OK"
        except (ValueError, IndexError) as exc:
            return f"ERR {str(exc).splitlines()[0][:200]}"
        return super().handle_command(text, t)


def make(**options: Any) -> ElastographyScannerInterface:
    """Factory for ``medacq sim us_swe``. Options: ``seed`` (0), ``half_width_mm`` (lateral
    half-width of the tracking grid, 15), ``pitch_mm`` (0.3), ``z_min_mm``/``z_max_mm`` (15, 36),
    ``snr_db`` (30, IQ mode), ``e_background_kpa`` (15), ``propagation`` (``rays``: straight
    lateral rays; ``eikonal``: first arrivals, :class:`~medacq.simulators.swe_model.ShearWave`);
    B-mode: 1 angle at 1 Hz (the tracking is
    what this scanner is for). Ensembles are IQ until ``SET TRACKING <prf> <frames> RF``."""
    known = {"seed", "half_width_mm", "pitch_mm", "z_min_mm", "z_max_mm", "snr_db", "e_background_kpa", "propagation"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown us_swe simulator options: {', '.join(sorted(unknown))}")
    hw = float(options.get("half_width_mm", 15.0))
    setup = TrackingSetup(x_mm=(-hw, hw), pitch_mm=float(options.get("pitch_mm", 0.3)),
                          z_mm=(float(options.get("z_min_mm", 15.0)), float(options.get("z_max_mm", 36.0))),
                          snr_db=float(options.get("snr_db", 30.0)), n_frames=120, prf_hz=8000.0)
    phantom = StiffnessPhantom(e_background_kpa=float(options.get("e_background_kpa", 15.0)))
    acq = PlaneWaveAcquisition.with_angles(1, prf_hz=1.0, n_samples=512)
    model = PlaneWaveRFModel(acq, seed=int(options.get("seed", 0)), cache_dir=None)
    sim = ElastographyScannerInterface(model, phantom, setup, seed=int(options.get("seed", 0)))
    sim.propagation = str(ShearWave(propagation=str(options.get("propagation", "rays"))).propagation)
    return sim
