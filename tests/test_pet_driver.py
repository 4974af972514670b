"""PET driver against the ring simulator over real TCP on 127.0.0.1."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medacq.drivers._base import DeviceError, Frame, Gap
from medacq.drivers.pet import PetDriver, PetSettings
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.pet_ring import make


def _collect(d: PetDriver, seconds: float) -> list[Frame | Gap]:
    out: list[Frame | Gap] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        out += d.read(0.05)
    return out


@pytest.fixture()
def sim():
    iface = make(blocks=8, crystals_per_block=12, radius_mm=300, fov_mm=300, singles_rate=2e5, seed=4, block_ms=5)
    with SimulatorServer(iface, "tcp", paced=False) as srv:
        yield iface, srv


def test_settings_config_and_frames(sim) -> None:
    iface, srv = sim
    d = PetDriver("pet0", srv.tcp_address, PetSettings(cwindow_ps=3000, ewindow_kev=(400, 640), threshold_kev=150))
    d.open()
    try:
        desc = d.descriptor()
        assert desc.modality == "pet" and desc.shape == [-1, 3] and desc.dtype == "<i8"
        assert desc.geometry["cwindow_ps"] == 3000 and desc.geometry["ewindow_kev"] == [400, 640]
        assert desc.geometry["ring"]["blocks"] == 8 and desc.geometry["n_crystals"] == 96
        assert iface.model.physics.threshold_kev == 150
        d.start()
        items = _collect(d, 1.0)
        d.stop()
        items += _collect(d, 0.3)  # blocks that raced the STOP
    finally:
        d.close()
    frames = [i for i in items if isinstance(i, Frame)]
    assert frames and not [i for i in items if isinstance(i, Gap)]
    blocks = [f.meta["block"] for f in frames]
    assert blocks == list(range(len(blocks)))
    assert sum(len(f.data) for f in frames) == iface.singles_sent
    data = np.concatenate([f.data for f in frames])
    assert np.all(np.diff(data[:, 0]) >= 0)  # time-ordered across blocks
    assert data[:, 1].min() >= 150_000  # the threshold was applied in the device (energies in eV)
    assert 0 <= data[:, 2].min() and data[:, 2].max() < 96
    # blocks tile device time
    assert all(a.meta["t_end_ps"] == b.meta["t_start_ps"] for a, b in zip(frames, frames[1:]))


def test_lost_blocks_become_gaps_and_errors_are_typed(sim) -> None:
    iface, srv = sim
    d = PetDriver("pet0", srv.tcp_address, PetSettings())
    d.open()
    try:
        d.start()
        _collect(d, 0.2)
        srv.call(iface.drop, 3)
        items = _collect(d, 0.5)
        gaps = [i for i in items if isinstance(i, Gap)]
        assert [g.lost_frames for g in gaps] == [3]
        assert d.counters["lost_blocks"] == 3
        with pytest.raises(DeviceError, match="BUSY"):
            d.command("SET CWINDOW 5000")  # settings are refused while running
        d.stop()
        with pytest.raises(DeviceError, match="OUT_OF_RANGE"):
            d.command("SET EWINDOW 600 500")
        srv.call(iface.inject_error, "HV trip", 1, None)
        with pytest.raises(DeviceError, match="DEVICE_FAULT.*HV trip"):
            d.command("GET STATUS")
        assert "state=stopped" in d.command("GET STATUS")
    finally:
        d.close()


def test_corrupted_bytes_cost_blocks_not_the_link(sim) -> None:
    iface, srv = sim
    d = PetDriver("pet0", srv.tcp_address, PetSettings())
    d.open()
    try:
        d.start()
        _collect(d, 0.2)
        srv.faults.corrupt(64)
        items = _collect(d, 0.6)
    finally:
        d.close()
    assert d.counters.get("bad_frames", 0) + d.counters.get("garbage_bytes", 0) > 0
    gaps = [i for i in items if isinstance(i, Gap)]
    assert sum(g.lost_frames for g in gaps) == d.counters["lost_blocks"] >= 1
    assert any(isinstance(i, Frame) for i in items[-3:])  # still streaming


def test_replayed_singles_still_decay_by_whole_annihilations() -> None:
    iface = make(blocks=8, crystals_per_block=12, radius_mm=300, fov_mm=300, singles_rate=1e6, seed=1,
                 block_ms=10, replay_s=0.05)
    assert iface.replay_s == 0.05
    src = iface._source
    half_life_ps = int(iface.model.phantom.iso.half_life_s * 1e12)
    k = 3
    t0 = (half_life_ps // src.period_ps) * src.period_ps + k * iface.block_ps  # one half-life later, same slot
    base = src.generate(k * iface.block_ps, (k + 1) * iface.block_ps)
    later = src.generate(t0, t0 + iface.block_ps)
    ratio = len(later.singles) / len(base.singles)
    assert 0.45 < ratio < 0.55
    assert np.all(later.singles["time_ps"] >= t0) and np.all(later.singles["time_ps"] < t0 + iface.block_ps)
    # thinning keeps or drops both singles of an annihilation together
    kept = set(later.event_id.tolist())
    ids, counts = np.unique(base.event_id, return_counts=True)
    pairs = ids[counts == 2]
    both = np.isin(later.event_id, pairs)
    _, c_later = np.unique(later.event_id[both], return_counts=True)
    assert np.all(c_later == 2) and len(kept) > 0
    assert make(singles_rate=1e6, blocks=4, crystals_per_block=4, radius_mm=100, fov_mm=100).replay_s == 0.5
    assert make(singles_rate=1e5, blocks=4, crystals_per_block=4, radius_mm=100, fov_mm=100).replay_s == 0.0
