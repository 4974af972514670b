"""Ultrasound driver against the array simulator over real TCP (OpenIGTLink)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medacq.drivers._base import DeviceError, Frame, Gap
from medacq.drivers.registry import driver_class
from medacq.drivers.ultrasound import UltrasoundDriver, UltrasoundSettings
from medacq.protocols.us_geometry import PlaneWaveAcquisition
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.registry import make_simulator

SIM = {"angles": 1, "samples": 256, "speckle_density_per_mm2": 2.0, "cache": False, "seed": 4}


def _sim(paced: bool = False, **kw) -> SimulatorServer:
    return SimulatorServer(make_simulator("us", **{**SIM, **kw}), "tcp", paced=paced)


def _collect(d: UltrasoundDriver, n: int, timeout: float = 20.0) -> list[Frame | Gap]:
    import time

    out: list[Frame | Gap] = []
    end = time.monotonic() + timeout
    while sum(isinstance(i, Frame) for i in out) < n and time.monotonic() < end:
        out += d.read(0.2)
    return out


def test_settings_applied_and_frames_equal_the_model() -> None:
    assert driver_class("ultrasound") is UltrasoundDriver
    with _sim() as sim:
        d = UltrasoundDriver("us0", sim.tcp_address, UltrasoundSettings(angles=3, samples=320, prf_hz=900))
        d.open()
        try:
            acq = d.acquisition
            assert acq is not None and acq.n_angles == 3 and acq.n_samples == 320
            assert acq.angles_deg == (-16.0, 0.0, 16.0) and acq.prf_hz == 900
            desc = d.descriptor()
            assert desc.modality == "us" and desc.shape == [3, 128, 320] and desc.dtype == "<i2"
            assert PlaneWaveAcquisition.from_descriptor(desc.geometry["acquisition"]) == acq
            d.start()
            items = _collect(d, 12)
            d.stop()
        finally:
            d.close()
        frames = [i for i in items if isinstance(i, Frame)]
        assert len(frames) >= 12 and not [i for i in items if isinstance(i, Gap)]
        expect = sim.interface.model.base_frame()
        assert expect.shape == (3, 128, 320)
        seqs = [f.meta["seq"] for f in frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        for f in frames:
            np.testing.assert_array_equal(f.data, expect)


def test_device_refusal_is_a_device_error() -> None:
    with _sim() as sim:
        d = UltrasoundDriver("us0", sim.tcp_address, UltrasoundSettings(angles=1, samples=256))
        d.open()
        try:
            d.start()
            with pytest.raises(DeviceError, match="busy"):
                d.command("SET ANGLES 5")  # refused while running
        finally:
            d.close()


@pytest.mark.parametrize("fault", ["corrupt_next_frames", "truncate_next_frames"])
def test_bad_crc_or_truncation_costs_one_frame_not_the_connection(fault: str) -> None:
    with _sim() as sim:
        d = UltrasoundDriver("us0", sim.tcp_address, UltrasoundSettings(angles=1, samples=256))
        d.open()
        try:
            d.start()
            first = _collect(d, 5)
            sim.call(getattr(sim.interface, fault), 1)
            # the simulator may be many frames ahead of the reader: read until the faulted
            # frame has gone by (a gap, then a few good frames), not a fixed number of frames
            rest: list[Frame | Gap] = []
            end = time.monotonic() + 30
            while time.monotonic() < end:
                rest += _collect(d, 5)
                gap_at = next((k for k, i in enumerate(rest) if isinstance(i, Gap)), None)
                if gap_at is not None and sum(isinstance(i, Frame) for i in rest[gap_at:]) >= 5:
                    break
        finally:
            d.close()
        assert not [i for i in first if isinstance(i, Gap)]
        gaps = [i for i in rest if isinstance(i, Gap)]
        bad = sim.interface.faulted_seqs
        assert len(bad) == 1 and len(gaps) == 1 and gaps[0].lost_frames == 1
        assert "crc mismatch" in gaps[0].reason
        seqs = [i.meta["seq"] for i in first + rest if isinstance(i, Frame)]
        assert bad[0] not in seqs
        assert seqs == [s for s in range(seqs[0], seqs[-1] + 1) if s != bad[0]]
        assert d.counters.get("bad_messages", 0) == 1
        expect = sim.interface.model.base_frame()
        for f in rest:
            if isinstance(f, Frame):
                np.testing.assert_array_equal(f.data, expect)


@pytest.mark.parametrize("paced", [True, False], ids=["paced", "unpaced"])
def test_start_is_answered_at_once_while_the_scanner_renders_its_first_frame(paced: bool) -> None:
    """The scanner renders its first RF frame after START (seconds on a loaded machine). The
    START reply must not wait behind that work (it once did: ``no reply to 'START' within 3.0
    s`` on ``medacq up``), and the frame train starts after it without a spurious gap."""
    with _sim(paced=paced, prf_hz=100.0) as sim:
        model = sim.interface.model
        render = model.base_frame

        def slow_render() -> np.ndarray:
            if not model.frame_ready():
                time.sleep(1.5)  # stands in for a long render (longer than the reply timeout below)
            return render()

        model.base_frame = slow_render  # type: ignore[method-assign]
        d = UltrasoundDriver("us0", sim.tcp_address, UltrasoundSettings(angles=1, samples=256, prf_hz=100.0,
                                                                          command_timeout_s=1.0))
        d.open()
        try:
            t0 = time.monotonic()
            d.start()
            assert time.monotonic() - t0 < 1.0
            items = _collect(d, 10)
        finally:
            d.close()
    frames = [i for i in items if isinstance(i, Frame)]
    assert len(frames) >= 10 and not [i for i in items if isinstance(i, Gap)]
    assert [f.meta["seq"] for f in frames] == list(range(len(frames)))
