"""Ultrasound geometry descriptors and the plane-wave RF model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medacq.protocols.us_geometry import PixelGrid, PlaneWaveAcquisition, plane_wave_angles
from medacq.simulators.us_model import Phantom, PlaneWaveRFModel


def test_acquisition_descriptor_roundtrip_and_limits() -> None:
    acq = PlaneWaveAcquisition.with_angles(11, n_samples=1024, prf_hz=8000)
    d = acq.to_descriptor()
    assert d["layout"]["shape"] == [11, 128, 1024]
    back = PlaneWaveAcquisition.from_descriptor(d)
    assert back == acq and back.frame_rate_hz == pytest.approx(8000 / 11)
    assert acq.probe.element_x[0] == pytest.approx(-63.5 * 0.3e-3)
    assert acq.wavelength_m == pytest.approx(1540 / 5.208e6)
    assert plane_wave_angles(75)[0] == -16.0 and len(plane_wave_angles(75)) == 75
    with pytest.raises(ValueError):
        PlaneWaveAcquisition.with_angles(76)
    with pytest.raises(ValueError):
        PlaneWaveAcquisition(angles_deg=(20.0,))
    with pytest.raises(ValueError):  # 4096 samples need 197 µs: 10 kHz PRF is too fast
        PlaneWaveAcquisition(n_samples=4096, prf_hz=10000)
    assert PixelGrid.from_descriptor(PixelGrid().to_descriptor()).shape == (256, 256)
    deep = PlaneWaveAcquisition.for_depth(40e-3)
    assert deep.n_samples % 64 == 0 and deep.max_depth_m > 40e-3


def one_wire(**kw) -> PlaneWaveRFModel:
    acq = PlaneWaveAcquisition(angles_deg=(-12.0, 7.0), n_samples=1024)
    ph = Phantom(wires=((4e-3, 18e-3),), speckle_density_per_mm2=0.0)
    return PlaneWaveRFModel(acq, ph, **kw)


def test_echo_arrival_matches_two_way_travel_time() -> None:
    m = one_wire(noise_counts=0.0, attenuation_db_cm_mhz=0.0)
    rf = m.base_frame().astype(np.float64)
    acq = m.acquisition
    for a, ang in enumerate(acq.angles_deg):
        th = np.radians(ang)
        for e in (0, 40, 64, 127):
            xe = acq.probe.element_x[e]
            tau = (4e-3 * np.sin(th) + 18e-3 * np.cos(th) + np.hypot(4e-3 - xe, 18e-3)) / 1540
            n = tau * acq.sampling_frequency_hz
            k = int(round(n))
            seg = rf[a, e, k - 8 : k + 9]
            # envelope peak via the analytic signal of the segment's neighbourhood
            from scipy.signal import hilbert

            env = np.abs(hilbert(rf[a, e]))
            peak = k - 8 + int(np.argmax(env[k - 8 : k + 9]))
            assert abs(peak - n) <= 1.0, (ang, e, peak, n)
            assert np.abs(seg).max() > 100


def test_deterministic_from_seed_and_motion_shift() -> None:
    a = one_wire(seed=3, motion_amplitude_m=0.5e-3, motion_period_s=4.0)
    b = one_wire(seed=3, motion_amplitude_m=0.5e-3, motion_period_s=4.0)
    c = one_wire(seed=4)
    np.testing.assert_array_equal(a.frame(0.0), b.frame(0.0))
    assert not np.array_equal(a.frame(0.0), c.frame(0.0))  # noise differs
    k = a.shift_samples(1.0)  # quarter period: full amplitude
    assert k == round(2 * 0.5e-3 / 1540 * 20.832e6)
    np.testing.assert_array_equal(a.frame(1.0)[..., k:], a.base_frame()[..., :-k])
    dz = a.truth(1.0)["wires"][0][1] - a.truth(0.0)["wires"][0][1]
    assert dz == pytest.approx(k * 1540 / 20.832e6 / 2)


def test_cysts_are_empty_and_wires_are_placed() -> None:
    ph = Phantom.picmus_like()
    x, z, amp = ph.scatterers(0)
    for c in ph.cysts:
        inside = (x - c.x) ** 2 + (z - c.z) ** 2 < c.radius**2
        if np.isneginf(c.contrast_db):
            assert inside.sum() == 0
        else:
            assert inside.sum() > 100
    assert np.sum(amp == ph.wire_amplitude) == len(ph.wires) == 12


def test_frames_are_cheap_after_rendering() -> None:
    m = one_wire(motion_amplitude_m=0.3e-3)
    m.base_frame()
    out = np.empty(m.acquisition.rf_shape, np.int16)
    t0 = time.perf_counter()
    for i in range(50):
        m.frame(i * 0.01, out=out)
    per = (time.perf_counter() - t0) / 50
    assert per < 0.005  # a copy per frame; 2 angles × 128 × 1024 int16
    assert m.frame(0.0).dtype == np.int16 and m.frame(0.0).shape == (2, 128, 1024)


def test_scanner_interface_commands_and_paced_frames() -> None:
    from medacq.protocols._sansio import NEED_DATA
    from medacq.protocols.igtl import IgtlConnection, ImageMessage, StringMessage
    from medacq.simulators.us_scanner import UltrasoundScannerInterface

    dev = UltrasoundScannerInterface(one_wire())
    host = IgtlConnection()

    def ask(text: str, t: float = 0.0) -> str:
        host.receive_data(dev.on_bytes(host.send(StringMessage(text=text, header_version=2,
                                                               message_id=7)), t))
        ev = host.next_event()
        assert isinstance(ev, StringMessage) and ev.device_name == "ACK" and ev.message_id == 7
        return ev.text

    dev.on_connect(0.0)
    assert ask("SET ANGLES 76").startswith("ERR")
    assert ask("SET ANGLES 3") == "OK"
    assert ask("SET SAMPLES 512") == "OK"
    assert ask("SET PRF 3000") == "OK"
    assert ask("get status") == "OK state=stopped angles=3 samples=512 prf=3000 seq=0"
    assert ask("START") == "OK"
    assert ask("SET PRF 100").startswith("ERR busy")
    assert dev.next_deadline() == 0.0
    assert dev.poll(0.0) == b""  # the first poll renders the sequence; the frame train starts at the next one
    seqs = []
    for _ in range(3):
        t = dev.next_deadline()
        host.receive_data(dev.poll(t))
        ev = host.next_event()
        assert isinstance(ev, ImageMessage) and ev.image.shape == (3, 128, 512)
        np.testing.assert_array_equal(ev.image, dev.model.frame(t))
        seqs.append((ev.message_id, int(ev.metadata["seq"]), ev.timestamp))
    assert [s[0] for s in seqs] == [0, 1, 2] == [s[1] for s in seqs]
    assert seqs[1][2] - seqs[0][2] == pytest.approx(3 / 3000)  # frame period = angles / PRF
    assert ask("FREEZE") == "OK" and dev.next_deadline() is None
    assert ask("UNFREEZE", 1.0) == "OK" and ask("STOP") == "OK"
    assert host.next_event() is NEED_DATA
