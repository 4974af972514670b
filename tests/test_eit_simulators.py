"""EIT device simulators in memory: Sciospec and OpenEIT state machines over their codecs."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.protocols.models import eit_fem as em
from medacq.protocols import openeit as oe
from medacq.protocols import sciospec as sc
from medacq.protocols._sansio import NEED_DATA
from medacq.simulators.eit_phantom import ThoraxPhantom
from medacq.simulators.openeit import OpenEITSimulator
from medacq.simulators.sciospec import SciospecSimulator


def events(codec, data: bytes) -> list:
    codec.receive_data(data)
    out = []
    while (ev := codec.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def configure(sim: SciospecSimulator, host: sc.SciospecHostCodec, n_el: int, fps: float, bursts: int) -> list:
    cmds = [sc.ResetSetup(), sc.SetBurstCount(bursts), sc.SetFrameRate(fps), sc.SetFrequencies(50e3, 50e3, 1, False)]
    cmds += [sc.AddInjectionPair(i + 1, (i + 1) % n_el + 1) for i in range(n_el)]
    return events(host, b"".join(sim.on_bytes(host.send(c), 0.0) for c in cmds))


@pytest.fixture(scope="module")
def phantom16() -> ThoraxPhantom:
    return ThoraxPhantom(n_el=16, seed=7, snr_db=60.0)


def test_sciospec_session(phantom16) -> None:
    sim, host = SciospecSimulator(phantom16, 16), sc.SciospecHostCodec()
    assert sim.on_connect(0.0) == b""
    acks = configure(sim, host, 16, 20.0, 3)
    assert all(isinstance(a, sc.Ack) and a.ok for a in acks) and len(acks) == 4 + 16
    # unsupported frame rate and unknown command are refused
    assert events(host, sim.on_bytes(host.send(sc.SetFrameRate(80.0)), 0.0)) == [sc.Ack(0x81)]
    assert events(host, sim.on_bytes(host.send(sc.RawCommand(0xB0, b"\x7f")), 0.0)) == [sc.Ack(0x82)]
    got = events(host, sim.on_bytes(host.send(sc.GetSetup(sc.SetupOption.FRAME_RATE)), 0.0))
    assert got[0] == sc.SetupReply(3, b"\x41\xa0\x00\x00") and got[1].ok  # 20.0 f32 BE
    assert sim.next_deadline() is None
    assert events(host, sim.on_bytes(host.send(sc.StartMeasurement()), 1.0)) == [sc.Ack(0x83)]
    # setup is locked while measuring
    assert events(host, sim.on_bytes(host.send(sc.SetBurstCount(5)), 1.0)) == [sc.Ack(0x81)]
    frames, t = [], 1.0
    while (t := sim.next_deadline()) is not None:
        frames += events(host, sim.poll(t))
    assert len(frames) == 3 * 16 and all(isinstance(f, sc.DataFrame) for f in frames)
    assert sim.truth()["frames_sent"] == 3 and not sim.truth()["running"]
    f0 = frames[:16]
    assert [(f.inj, f.gnd) for f in f0] == [(i + 1, (i + 1) % 16 + 1) for i in range(16)]
    assert [f.timestamp_ms for f in frames[::16]] == [0, 50, 100]  # 20 fps device clock
    # values decode to the phantom's potentials (within noise) → 208 adjacent measurements
    U = np.array([f.values for f in f0])
    v = em.potentials_to_measurements(U.real.astype(np.float64), em.adjacent_pattern(16))
    ref = phantom16.frame(1.0, em.adjacent_pattern(16), noise=False)
    assert v.shape == (208,)
    assert np.abs(v - ref).max() < 10 * phantom16.noise_std()
    assert np.all(np.abs(U.imag) < 0.05 * np.abs(U.real).max())


def test_sciospec_stop_and_pacing(phantom16) -> None:
    sim, host = SciospecSimulator(phantom16, 16), sc.SciospecHostCodec()
    configure(sim, host, 16, 10.0, 0)
    events(host, sim.on_bytes(host.send(sc.StartMeasurement()), 2.0))
    assert sim.next_deadline() == pytest.approx(2.0)
    assert len(events(host, sim.poll(2.05))) == 16  # frame at t=2.0 only
    assert sim.next_deadline() == pytest.approx(2.1)
    assert sim.poll(2.09) == b""
    assert len(events(host, sim.poll(2.3))) == 3 * 16  # catches up on 2.1, 2.2, 2.3
    assert events(host, sim.on_bytes(host.send(sc.StopMeasurement()), 2.31)) == [sc.Ack(0x83)]
    assert sim.next_deadline() is None and sim.poll(5.0) == b""


def test_sciospec_needs_pairs_and_is_deterministic() -> None:
    def run(seed: int) -> bytes:
        ph = ThoraxPhantom(n_el=16, seed=seed, n_elements=1500)
        sim, host = SciospecSimulator(ph, 16), sc.SciospecHostCodec()
        out = sim.on_bytes(host.send(sc.StartMeasurement()), 0.0)  # no pairs yet → NACK
        configure(sim, host, 16, 25.0, 2)
        out += sim.on_bytes(host.send(sc.StartMeasurement()), 0.0)
        while (t := sim.next_deadline()) is not None:
            out += sim.poll(t)
        return out

    a, b, c = run(1), run(1), run(2)
    assert a[:4] == bytes.fromhex("18018118")
    assert a == b and a != c
    assert len(a) == 4 + 4 + 2 * 16 * 140


def test_sciospec_32_electrodes_two_groups() -> None:
    ph = ThoraxPhantom(n_el=32, seed=1, n_elements=3000)
    sim, host = SciospecSimulator(ph, 32), sc.SciospecHostCodec()
    configure(sim, host, 32, 5.0, 1)
    events(host, sim.on_bytes(host.send(sc.StartMeasurement()), 0.0))
    frames = events(host, sim.poll(0.0))
    assert len(frames) == 32 * 2
    assert [f.channel_group for f in frames[:4]] == [1, 2, 1, 2]
    U = np.concatenate([frames[0].values, frames[1].values]).real
    ref = ph.electrode_potentials(0.0, np.array([[0, 1]]), noise=False)[0]
    assert np.abs(U - ref).max() < 10 * ph.noise_std()


def test_openeit_session() -> None:
    """Mode letters and texts as in the real firmware (OpenEIT/EIT_Firmware OpenEIT.c)."""
    sim = OpenEITSimulator(fps=10.0, seed=2, phantom_factory=lambda n: ThoraxPhantom(n_el=n, seed=2, n_elements=2000))
    host = oe.OpenEITHostCodec()
    # the board boots into 16-electrode imaging (mode 4) and streams at once
    assert events(host, sim.on_connect(0.0)) == [oe.TextLine("OpenEIT")]
    assert sim.next_deadline() == 0.0 and sim.truth()["mode"] == 4
    boot = events(host, sim.poll(0.05))
    assert len(boot) == 1 and len(boot[0].values) == 192
    # "d" again re-initialises (the firmware tests mode != 3) and restarts the frame clock
    assert events(host, sim.on_bytes(b"d\n", 0.5)) == [oe.TextLine("mode 4: 16 electrode imaging")]
    got = events(host, sim.poll(0.65))
    assert len(got) == 2 and all(isinstance(g, oe.Magnitudes) for g in got)  # t = 0.5, 0.6
    assert got[0].n_electrodes == 16 and len(got[0].values) == 192
    ph = sim.phantom(16)
    expect = np.abs(ph.frame(0.5, em.opposition_pattern(16), noise=False)) / ph.current_a * sim.gain
    assert np.abs(got[0].values - expect).max() < 0.05 * expect.max()
    assert sim.next_deadline() == pytest.approx(0.7)
    # switch to 8 electrodes; in mode 3 the firmware ignores c/d/e
    assert events(host, sim.on_bytes(b"c\n", 1.0)) == [oe.TextLine("mode 3: 8 electrode imaging")]
    assert len(events(host, sim.poll(1.0))[0].values) == 32
    assert sim.on_bytes(b"e\n", 1.5) == b"" and sim.truth()["mode"] == 3
    # ... so leave it through time series, then 32 electrodes (announced "mode 3", sic)
    assert events(host, sim.on_bytes(b"a\n", 2.0)) == [oe.TextLine("mode 1: time series")]
    assert events(host, sim.on_bytes(b"e\n", 2.0)) == [oe.TextLine("mode 3: 32 electrode imaging")]
    assert len(events(host, sim.poll(2.0))[0].values) == 896
    sim.on_bytes(b"\x00zz\n", 2.0)
    assert sim.truth()["garbage_bytes"] == 4 and sim.truth()["mode"] == 5 and sim.truth()["mode_letter"] == "e"
