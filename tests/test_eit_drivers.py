"""EIT drivers against their simulators over real ptys: byte-faithful frames, gaps, modes."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.drivers._base import DeviceError, Frame, Gap
from medacq.drivers.openeit import OpenEITDriver, OpenEITSettings
from medacq.drivers.sciospec import FrameAssembler, SciospecDriver, SciospecSettings
from medacq.protocols.models import eit_fem as em
from medacq.protocols import openeit as oe
from medacq.protocols import sciospec as sc
from medacq.protocols._sansio import NEED_DATA
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.eit_phantom import ThoraxPhantom
from medacq.simulators.openeit import OpenEITSimulator
from medacq.simulators.sciospec import SciospecSimulator

from conftest import wait_for

MESH = 1500  # small phantom mesh: these tests are about bytes, not physics


def phantom(n_el: int = 16, seed: int = 5) -> ThoraxPhantom:
    return ThoraxPhantom(n_el=n_el, seed=seed, n_elements=MESH, snr_db=50.0)


def collect(driver, n_frames: int, timeout: float = 20.0) -> list[Frame | Gap]:
    items: list[Frame | Gap] = []
    wait_for(lambda: items.extend(driver.read(0.2)) or sum(isinstance(i, Frame) for i in items) >= n_frames, timeout)
    return items


def twin_frames(n_el: int, fps: float, n: int, seed: int = 5) -> list[np.ndarray]:
    """What the simulator sends, recomputed in memory (same seed, same virtual times)."""
    sim, host = SciospecSimulator(phantom(n_el, seed), n_el), sc.SciospecHostCodec()
    pat = em.adjacent_pattern(n_el)
    cmds = [sc.ResetSetup(), sc.SetBurstCount(0), sc.SetFrameRate(fps), sc.SetFrequencies(50e3, 50e3, 1, False),
            sc.SetAmplitude(1e-3)] + [sc.AddInjectionPair(int(a) + 1, int(b) + 1) for a, b in pat.ex_mat]
    for c in cmds + [sc.StartMeasurement()]:
        sim.on_bytes(host.send(c), 0.0)
    out = []
    k = np.arange(pat.n_exc)[:, None]
    for _ in range(n):
        host.receive_data(sim.poll(sim.next_deadline()))
        dfs = []
        while (ev := host.next_event()) is not NEED_DATA:
            dfs.append(ev)
        U = np.zeros((pat.n_exc, n_el), np.complex64)
        for d in dfs:
            U[d.inj - 1, 16 * (d.channel_group - 1): 16 * d.channel_group] = d.values
        v = U[k, pat.meas_mat[:, :, 0]] - U[k, pat.meas_mat[:, :, 1]]
        out.append(v.real.reshape(-1).astype("<f4"))
    return out


@pytest.mark.parametrize("n_el", [16, 32])
def test_sciospec_frames_are_byte_faithful(n_el):
    fps = 50.0
    with SimulatorServer(SciospecSimulator(phantom(n_el), n_el), "pty", paced=False) as srv:
        d = SciospecDriver("eit0", srv.address, SciospecSettings(n_el=n_el, fps=fps))
        d.open()
        try:
            assert srv.interface.pairs == [(i + 1, (i + 1) % n_el + 1) for i in range(n_el)]
            assert srv.interface.fps == fps and srv.interface.amplitude_a == pytest.approx(1e-3)
            desc = d.descriptor()
            d.start()
            items = collect(d, 12)
            d.stop()
            assert not srv.interface.truth()["running"]
        finally:
            d.close()
    frames = [i for i in items if isinstance(i, Frame)]
    assert not [i for i in items if isinstance(i, Gap)]
    n_meas = 208 if n_el == 16 else 928
    assert desc.shape == [n_meas] and desc.dtype == "<f4" and desc.modality == "eit" and desc.units == "V"
    assert desc.geometry["pattern"] == "adjacent" and np.asarray(desc.geometry["meas_mat"]).shape[0] == n_el
    expect = twin_frames(n_el, fps, len(frames))
    for i, f in enumerate(frames):
        assert f.data.shape == (n_meas,) and f.data.dtype == np.float32
        np.testing.assert_array_equal(f.data, expect[i])
        assert f.t_device == pytest.approx(i / fps, abs=1e-3) and f.meta["device_frame"] == i
    # values are the adjacent-pattern voltages of the thorax (V, 1 mA): mostly mV-scale, never zero
    assert 1e-5 < np.abs(frames[0].data).max() < 1.0 and np.all(frames[0].data != 0)


def test_sciospec_incomplete_frame_is_a_gap():
    with SimulatorServer(SciospecSimulator(phantom(), 16), "pty", paced=True) as srv:
        d = SciospecDriver("eit0", srv.address, SciospecSettings(fps=50.0))
        d.open()
        try:
            d.start()
            first = collect(d, 3)
            # the next EIT frame loses 3 of its 16 sub-frames (device FIFO overrun)
            srv.call(srv.interface.drop_subframes, 3)
            items = first + collect(d, 6)
            d.stop()
        finally:
            d.close()
    kinds = [("F", i.meta["device_frame"]) if isinstance(i, Frame) else ("G", i.lost_frames) for i in items]
    frames = [k for k in kinds if k[0] == "F"]
    gaps = [i for i in items if isinstance(i, Gap)]
    assert len(gaps) == 1 and gaps[0].lost_frames == 1 and "incomplete" in gaps[0].reason
    # the frame that lost sub-frames is missing, its neighbours are whole and in order
    idx = [k[1] for k in frames]
    missing = sorted(set(range(idx[0], idx[-1] + 1)) - set(idx))
    assert len(missing) == 1 and idx == sorted(idx)
    assert d.counters["incomplete_frames"] == 1


def test_assembler_counts_whole_missing_frames():
    pairs = [(i + 1, (i + 1) % 16 + 1) for i in range(16)]
    asm = FrameAssembler(16, pairs, fps=20.0)
    vals = np.ones(16, np.complex64)

    def frame(idx):
        return [sc.DataFrame(1, a, b, 1, int(round(50 * idx + 50 * k / 16)), vals * idx) for k, (a, b) in enumerate(pairs)]

    out = []
    for idx in (0, 1, 4, 5):  # frames 2 and 3 never came
        for df in frame(idx):
            out += asm.push(df)
    assert [o[0] for o in out] == ["frame", "frame", "gap", "frame", "frame"]
    assert out[2][1] == 2 and [o[1] for o in out if o[0] == "frame"] == [0, 1, 4, 5]
    np.testing.assert_array_equal(out[-1][2][3], vals * 5)
    # a frame broken by lost bytes (garbage) is not delivered even if the positions line up
    for df in frame(6)[:5]:
        out += asm.push(df)
    asm.lost("7 garbage byte(s)")
    for df in frame(6)[5:] + frame(7):
        out += asm.push(df)
    assert [o[0] for o in out[5:]] == ["gap", "frame"] and out[5][1] == 1 and out[6][1] == 7


def test_sciospec_refusal_is_device_error():
    sim = SciospecSimulator(phantom(), 16)
    with SimulatorServer(sim, "pty", paced=False) as srv:
        d = SciospecDriver("eit0", srv.address, SciospecSettings(fps=20.0))
        d.open()
        d.start()
        try:
            with pytest.raises(DeviceError, match="SetFrameRate"):
                d._command(sc.SetFrameRate(10.0))  # setup is locked while measuring
        finally:
            d.stop()
            d.close()


def test_openeit_modes_follow_the_firmware():
    sim = OpenEITSimulator(fps=20.0, seed=2, phantom_factory=lambda n: phantom(n, 2))
    with SimulatorServer(sim, "pty", paced=True) as srv:
        # the board boots streaming 16-electrode imaging (mode 4)
        wait_for(lambda: srv.interface.frames_sent >= 1, 10)
        assert srv.interface.truth()["mode"] == 4
        d = OpenEITDriver("eit1", srv.address, OpenEITSettings(n_el=8, fps=20.0))
        d.open()
        try:
            assert srv.interface.truth()["mode"] == 3
            d.start()
            items = collect(d, 5)
        finally:
            d.close()
        # in mode 3 the firmware ignores c/d/e: the driver goes through time series
        d16 = OpenEITDriver("eit1", srv.address, OpenEITSettings(n_el=16, fps=20.0))
        d16.open()
        try:
            assert srv.interface.truth()["mode"] == 4
            desc = d16.descriptor()
            d16.start()
            items16 = collect(d16, 4)
        finally:
            d16.close()
    f8 = [i for i in items if isinstance(i, Frame)]
    assert all(f.data.shape == (32,) for f in f8) and not [i for i in items if isinstance(i, Gap)]
    f16 = [i for i in items16 if isinstance(i, Frame)]
    assert all(f.data.shape == (192,) and f.data.dtype == np.float32 for f in f16)
    assert desc.geometry["pattern"] == "opposition" and desc.meta["quantity"] == "magnitude"
    assert desc.units == "ohm" and desc.shape == [192]
    # values are the opposition-pattern transfer impedances of the phantom, to the 1/16 ohm wire resolution
    ph = phantom(16, 99)
    ref = np.abs(ph.frame(0.0, em.opposition_pattern(16), noise=False)) / ph.current_a * sim.gain
    for f in f16:
        assert np.all(f.data * 16 == np.round(f.data * 16))
        assert np.abs(f.data - ref).max() < 0.15 * ref.max()


def test_openeit_corrupted_line_is_a_gap():
    sim = OpenEITSimulator(fps=50.0, seed=2, phantom_factory=lambda n: phantom(n, 2))
    with SimulatorServer(sim, "pty", paced=True) as srv:
        d = OpenEITDriver("eit1", srv.address, OpenEITSettings(n_el=16))
        d.open()
        try:
            d.start()
            items = collect(d, 3)
            # a truncated imaging line (100 of 192 values) arrives between two good lines
            srv.call(srv.interface.truncate_next, 100)
            wait_for(lambda: items.extend(d.read(0.2)) or any(isinstance(i, Gap) for i in items), 10)
            items += collect(d, 2)
        finally:
            d.close()
    gaps = [i for i in items if isinstance(i, Gap)]
    assert len(gaps) == 1 and gaps[0].lost_frames == 1 and "100 values" in gaps[0].reason
    assert all(f.data.shape == (192,) for f in items if isinstance(f, Frame))
    assert d.counters["bad_lines"] == 1
