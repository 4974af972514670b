"""Biosignal drivers against their simulators over real ptys and ``socket://`` (unpaced
unless timing matters): values equal what the simulator's model produced, counter gaps
become gaps with the exact number of lost samples, timestamps come from the fitted clock."""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import pytest

from medacq.drivers._base import DeviceError, Frame, Gap
from medacq.drivers.cyton import CytonDriver, CytonSettings
from medacq.drivers.hackeeg import HackEEGDriver, HackEEGSettings
from medacq.drivers.quspin import QuSpinDriver, QuSpinSettings, parse_ports
from medacq.protocols import cyton as cy
from medacq.protocols import hackeeg as he
from medacq.protocols import quspin as qs
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.biosignal_models import DEVICE_LEADS, EEG_LABELS_16, EEGModel, EKGModel, MEGModel
from medacq.simulators.cyton import CytonInterface
from medacq.simulators.hackeeg import HackEEGInterface
from medacq.simulators.quspin import QuSpinInterface


def collect(driver, n_samples: int, timeout: float = 20.0, until=None) -> list[Frame | Gap]:
    items: list[Frame | Gap] = []
    got = 0
    end = time.monotonic() + timeout
    while got < n_samples and time.monotonic() < end:
        for it in driver.read(0.2):
            items.append(it)
            if isinstance(it, Frame):
                got += it.data.shape[1]
        if until is not None:
            until(got)
    assert got >= n_samples, f"only {got} samples in {timeout} s"
    return items


def cyton_expected(seed: int, daisy: bool, n: int, gain: int = 24) -> np.ndarray:
    nch = 16 if daisy else 8
    m = EEGModel(seed, fs=125.0 if daisy else 250.0, labels=EEG_LABELS_16[:nch], mains_hz=50.0)
    scale = cy.uv_scale(gain)
    counts = np.clip(np.round(m.generate(n) / scale), -(2**23), 2**23 - 1)
    return counts * scale


def hackeeg_expected(seed: int, rate: int, n: int, gain: int = 6) -> np.ndarray:
    m = EKGModel(seed, fs=float(rate), heart_rate_bpm=72.0)
    scale = 2.4e6 / gain / (2**23 - 1)
    return np.clip(np.round(m.generate(n, DEVICE_LEADS) / scale), -(2**23), 2**23 - 1) * scale


def assemble(items: list[Frame | Gap]) -> tuple[np.ndarray, np.ndarray]:
    """(device indices, (channels, samples) values) of every delivered sample."""
    idx = np.concatenate([f.t_device + np.arange(f.data.shape[1]) for f in items if isinstance(f, Frame)])
    vals = np.concatenate([f.data for f in items if isinstance(f, Frame)], axis=1)
    return idx, vals


@pytest.mark.parametrize("daisy,transport", [(False, "pty"), (True, "pty"), (True, "tcp")])
def test_cyton_values_equal_the_model(daisy, transport):
    with SimulatorServer(CytonInterface(seed=5, daisy=True), transport, paced=False) as sim:
        d = CytonDriver("eeg0", sim.address, CytonSettings(daisy=daisy))
        d.open()
        try:
            desc = d.descriptor()
            assert desc.shape == [16 if daisy else 8, -1] and desc.units == "µV"
            assert desc.channel_names[:2] == ["Fp1", "Fp2"] and desc.sample_rate_hz == (125.0 if daisy else 250.0)
            d.start()
            items = collect(d, 1000)
        finally:
            d.stop()
            d.close()
    assert not [g for g in items if isinstance(g, Gap)]
    idx, vals = assemble(items)
    np.testing.assert_array_equal(idx, np.arange(idx.size))
    np.testing.assert_allclose(vals, cyton_expected(5, daisy, idx.size), rtol=1e-6, atol=1e-3)
    frames = [f for f in items if isinstance(f, Frame)]
    assert frames[0].data.shape[1] == (5 if daisy else 10)
    assert frames[0].meta == {"accel_g": [0.0, 0.0, 1.0]}  # the simulated board lies flat


def test_cyton_packet_loss_is_a_gap_with_lost_samples():
    with SimulatorServer(CytonInterface(seed=2, daisy=False), "pty", paced=True) as sim:
        d = CytonDriver("eeg0", sim.address, CytonSettings(daisy=False))
        d.open()
        d.start()
        try:
            items = collect(d, 60)
            sim.call(sim.interface.drop_packets, 7)
            items += collect(d, 120)
        finally:
            d.stop()
            d.close()
    gaps = [g for g in items if isinstance(g, Gap)]
    assert len(gaps) == 1 and gaps[0].lost_samples == 7 and gaps[0].lost_frames == 0
    idx, vals = assemble(items)
    dropped = sim.interface.packets_dropped
    assert not set(dropped) & set(idx.tolist())
    assert sorted(set(range(idx.max() + 1)) - set(idx.tolist())) == dropped
    exp = cyton_expected(2, False, int(idx.max()) + 1)
    np.testing.assert_allclose(vals, exp[:, idx], rtol=1e-6, atol=1e-3)


def test_cyton_refuses_daisy_it_does_not_have():
    with SimulatorServer(CytonInterface(seed=1, daisy=False), "pty", paced=False) as sim:
        d = CytonDriver("eeg0", sim.address, CytonSettings(daisy=True))
        with pytest.raises(DeviceError, match="Daisy"):
            d.open()
        d.close()


def test_cyton_gain_setting_reaches_the_board():
    with SimulatorServer(CytonInterface(seed=4, daisy=False), "pty", paced=False) as sim:
        d = CytonDriver("eeg0", sim.address, CytonSettings(daisy=False, gain=8, channels_off=[3]))
        d.open()
        d.start()
        try:
            items = collect(d, 300)
        finally:
            d.stop()
            d.close()
        assert sim.interface.gains().tolist() == [8] * 8
    idx, vals = assemble(items)
    exp = cyton_expected(4, False, idx.size, gain=8)
    exp[2] = 0.0
    np.testing.assert_allclose(vals, exp, rtol=1e-6, atol=1e-2)


@pytest.mark.parametrize("mode,transport", [("messagepack", "pty"), ("jsonlines", "pty"), ("messagepack", "tcp")])
def test_hackeeg_values_equal_the_model(mode, transport):
    with SimulatorServer(HackEEGInterface(seed=9), transport, paced=False) as sim:
        d = HackEEGDriver("ekg0", sim.address, HackEEGSettings(rate=1000, mode=mode, gain=4))
        d.open()
        try:
            assert sim.interface.rate == 1000 and sim.interface.gains().tolist() == [4] * 8
            desc = d.descriptor()
            assert desc.channel_names == ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
            assert desc.sample_rate_hz == 1000.0
            d.start()
            items = collect(d, 2000)
        finally:
            d.stop()
            d.close()
    assert not [g for g in items if isinstance(g, Gap)]
    idx, vals = assemble(items)
    np.testing.assert_array_equal(idx, np.arange(idx.size))
    np.testing.assert_allclose(vals, hackeeg_expected(9, 1000, idx.size, gain=4), rtol=1e-6, atol=1e-3)


def test_hackeeg_sample_loss_is_a_gap_and_reopen_from_messagepack_mode():
    with SimulatorServer(HackEEGInterface(seed=3), "pty", paced=True) as sim:
        d = HackEEGDriver("ekg0", sim.address, HackEEGSettings(rate=2000))
        d.open()
        d.start()
        try:
            items = collect(d, 400)
            sim.call(sim.interface.drop_samples, 13)
            items += collect(d, 800)
        finally:
            d.stop()
            d.close()
        gaps = [g for g in items if isinstance(g, Gap)]
        assert [g.lost_samples for g in gaps] == [13]
        idx, vals = assemble(items)
        assert sorted(set(range(idx.max() + 1)) - set(idx.tolist())) == sim.interface.samples_dropped
        np.testing.assert_allclose(vals, hackeeg_expected(3, 2000, int(idx.max()) + 1)[:, idx], atol=1e-3)
        # the board is still in MessagePack mode: a new session must get it back
        assert sim.interface.codec.mode == he.MESSAGEPACK
        d2 = HackEEGDriver("ekg0", sim.address, HackEEGSettings(rate=500, mode="jsonlines"))
        d2.open()
        d2.start()
        try:
            more = collect(d2, 100)
        finally:
            d2.stop()
            d2.close()
        assert sim.interface.rate == 500
        assert sum(f.data.shape[1] for f in more if isinstance(f, Frame)) >= 100


def test_hackeeg_fitted_clock_rejects_arrival_jitter():
    """Paced 4 kSPS through a pty: frame times follow the device clock within 2 ms
    although reads arrive in bursts."""
    with SimulatorServer(HackEEGInterface(seed=1, clock_ppm=300.0), "pty", paced=True) as sim:
        d = HackEEGDriver("ekg0", sim.address, HackEEGSettings(rate=4000, frame_samples=200))
        d.open()
        d.start()
        try:
            items = collect(d, 4000 * 3)
        finally:
            d.stop()
            d.close()
    frames = [f for f in items if isinstance(f, Frame)]
    idx = np.array([f.t_device for f in frames], dtype=float)
    t = np.array([f.t_mono_ns for f in frames], dtype=float) / 1e9
    late = idx > 4000  # after the first second of fitting
    slope, icpt = np.polyfit(idx[late], t[late], 1)
    resid = t[late] - (icpt + slope * idx[late])
    assert np.max(np.abs(resid)) < 2e-3
    assert abs(1 / slope / 4000 - 1 - 300e-6) < 400e-6  # device runs 300 ppm fast


def test_quspin_rig_merges_sensors_into_one_stream():
    with contextlib.ExitStack() as stack:
        sims = [stack.enter_context(SimulatorServer(QuSpinInterface(seed=4, sensor=i), "pty", paced=False))
                for i in range(3)]
        addr = ",".join(s.address for s in sims)
        assert parse_ports(addr) == [s.address for s in sims]
        # the merge alone: stalls and clock-found losses (tests/test_bio_quspin.py) kept out of
        # the way of unpaced simulator threads that a loaded machine may not schedule for a while
        d = QuSpinDriver("meg0", addr, QuSpinSettings(labels=["MEG1", "MEG2", "MEG3"], axis="y", stall_s=10.0,
                                                      clock_check=False))
        d.open()
        try:
            desc = d.descriptor()
            assert desc.shape == [3, -1] and desc.units == "pT" and desc.channel_names == ["MEG1", "MEG2", "MEG3"]
            assert desc.meta["axis"] == "y" and [s.interface.axis for s in sims] == ["y"] * 3
            assert [s["field_zeroed"] for s in desc.meta["sensors"]] == [True] * 3
            assert all(s.interface.model.calibrated and s.interface.model.zeroing for s in sims)
            d.start()
            items = collect(d, 400)
        finally:
            d.stop()
            d.close()
    frames = [f for f in items if isinstance(f, Frame)]
    assert frames[0].meta["sensor_state"] == ["ok", "ok", "ok"]
    idx, vals = assemble(items)
    np.testing.assert_array_equal(idx, np.arange(idx.size))
    assert np.isfinite(vals).all()
    # each channel is its own sensor: values are 0.01 pT quantised and differ between sensors
    assert np.allclose(np.round(vals * 100), vals * 100, atol=1e-2)
    assert not np.allclose(vals[0], vals[1])


def test_quspin_garbled_line_becomes_nan_and_keeps_alignment():
    with contextlib.ExitStack() as stack:
        sims = [stack.enter_context(SimulatorServer(QuSpinInterface(seed=4, sensor=i), "pty", paced=True))
                for i in range(2)]
        d = QuSpinDriver("meg0", ",".join(s.address for s in sims), QuSpinSettings(field_zero=False, calibrate=False))
        d.open()
        d.start()
        try:
            items = collect(d, 100)
            sims[1].faults.corrupt(3)  # flips bytes of the next line sensor 2 sends
            items += collect(d, 200)
        finally:
            d.stop()
            d.close()
    idx, vals = assemble(items)
    np.testing.assert_array_equal(idx, np.arange(idx.size))
    assert np.isfinite(vals[0]).all()
    assert 1 <= np.isnan(vals[1]).sum() <= 2
    assert d.counters.get("lost_samples", 0) == np.isnan(vals[1]).sum()


def test_quspin_rejects_blank_port_list():
    with pytest.raises(ValueError):
        parse_ports("/dev/a,,/dev/b")
