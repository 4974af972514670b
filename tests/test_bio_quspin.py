"""QuSpin OPM rig: the driver against simulated sensors over real ptys and TCP, values
compared with each sensor's MEGModel; stalls, losses on one or all sensors, clock drift,
live per-sensor status in frame meta, descriptor republication and ``status``."""

from __future__ import annotations

import contextlib
import re
import threading
import time

import numpy as np
import pytest

from medacq.daemon.acquisition.queue import DescriptorUpdate, FrameItem, FrameQueue, SeriesStart
from medacq.daemon.acquisition.worker import AcquisitionWorker, StreamStats
from medacq.drivers._base import Frame, Gap, SensorStatus
from medacq.drivers.quspin import QuSpinDriver, QuSpinSettings
from medacq.protocols import quspin as qs
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.biosignal_models import MEGModel
from medacq.simulators.quspin import QuSpinInterface
from test_bio_drivers import assemble, collect

# robust on a loaded 2-core machine: a simulator thread may be late by a good fraction of a
# second there, so the stall detector (not under test except where it is) gets more slack
RELAXED = dict(field_zero=False, calibrate=False, stall_s=1.0)
LSB = qs.FIELD_LSB_PT


def expected(sim: SimulatorServer, n: int) -> np.ndarray:
    """What a simulated sensor sends for stream samples ``0..n-1``, in pT (quantised)."""
    dev = sim.interface
    m = MEGModel(dev.seed, fs=dev.fs, sensor=dev.sensor, **dev._model_kwargs)
    start = dev.truth()["stream_start"]
    x = m.generate(start + n)[start:]
    return (np.array([qs.pt_to_counts(v) for v in x]) - qs.FIELD_OFFSET) * LSB


def assert_matches(vals: np.ndarray, model: np.ndarray, stream_index: np.ndarray) -> None:
    """Every finite value equals the model's sample at ``stream_index`` to 1 LSB (the model's
    beat window depends on chunking by ~1e-3 pT, which can flip a rounding), and the
    comparison would see a one-sample misalignment."""
    ok = np.isfinite(vals)
    assert ok.sum() > 100
    v, i = vals[ok], stream_index[ok]
    np.testing.assert_allclose(v, model[i], rtol=0, atol=LSB + 1e-3)
    assert np.mean(np.abs(v[:-1] - model[i[:-1] + 1])) > 3 * LSB


@contextlib.contextmanager
def rig(n: int, transport: str = "pty", seed: int = 11, paced: bool = True, ppm=None, **settings):
    with contextlib.ExitStack() as stack:
        sims = [stack.enter_context(SimulatorServer(
            QuSpinInterface(seed=seed, sensor=i, clock_ppm=(ppm or {}).get(i, 0.0)), transport, paced=paced))
            for i in range(n)]
        d = QuSpinDriver("meg0", ",".join(s.address for s in sims), QuSpinSettings(**{**RELAXED, **settings}))
        d.open()
        try:
            yield d, sims
        finally:
            d.stop()
            d.close()


def hole_counts(gaps: list[Gap], label: str) -> list[int]:
    """NaN counts that per-sensor ``Gap`` announcements give for ``label``."""
    return [int(re.search(r"(\d+) samples NaN-filled", g.reason).group(1))
            for g in gaps if g.reason.startswith(label + " ")]


def test_three_sensors_equal_their_models_with_live_status_in_frame_meta():
    with rig(3, paced=False) as (d, sims):
        desc = d.descriptor()
        d.start()
        items = collect(d, 2500)
        end = time.monotonic() + 10
        while "clock_checks_off" not in d.counters and time.monotonic() < end:  # they judge after 1 s
            items += d.read(0.2)
        truth = [s.interface.truth() for s in sims]
    frames = [f for f in items if isinstance(f, Frame)]
    assert not [g for g in items if isinstance(g, Gap)]
    idx, vals = assemble(items)
    np.testing.assert_array_equal(idx, np.arange(idx.size))  # slots = each sensor's stream index
    assert np.isfinite(vals).all()
    for ch, sim in enumerate(sims):
        assert_matches(vals[ch], expected(sim, idx.size), idx)
        assert not truth[ch]["samples_dropped"]
    # unpaced simulators outrun real time: the clock checks stand down instead of inventing losses
    assert d.counters.get("clock_checks_off") == 1 and "clock_losses" not in d.counters
    for f in frames:
        m = f.meta
        assert m["sensor_state"] == ["ok"] * 3 and m["nan_filled"] == [0] * 3 and m["lost_samples"] == [0] * 3
        assert [leds["master"] for leds in m["leds"]] == [True, False, False]  # sensor 0 is the master
        assert all(leds["laser_on"] for leds in m["leds"])
    # descriptor: slow facts only (a change rebuilds reconstructors); live status is per frame
    assert [set(s) for s in desc.meta["sensors"]] == [
        {"address", "laser_on", "cell_temp_lock", "laser_lock", "field_zeroed", "master", "last_message"}] * 3
    assert [s["address"] for s in desc.meta["sensors"]] == [s.address for s in sims]


@pytest.mark.parametrize("backlog", [True, False], ids=["hung-then-backlog", "samples-lost"])
def test_stalled_sensor_is_nan_filled_flagged_announced_and_realigned(backlog):
    seen_states: list[str] = []
    fired: list[bool] = []
    with rig(3) as (d, sims):
        d.start()

        def fault(got: int) -> None:
            if got >= 300 and not fired:
                fired.append(True)
                if backlog:  # the adapter hangs 2.5 s; the sensor's backlog comes out afterwards
                    sims[1].faults.stall(2.5)
                else:  # the sensor loses 2.5 s of samples: silent, then on time, 500 short
                    sims[1].call(sims[1].interface.drop_samples, 500)
            seen_states.append(d.status()["sensors"][1]["state"])

        items = collect(d, 1300, timeout=14, until=fault)
        status = d.status()
        dropped = sims[1].interface.truth()["samples_dropped"]
    frames = [f for f in items if isinstance(f, Frame)]
    gaps = [g for g in items if isinstance(g, Gap)]
    idx, vals = assemble(items)
    np.testing.assert_array_equal(idx, np.arange(idx.size))  # no stream sample lost
    nan = np.isnan(vals)
    assert not nan[0].any() and not nan[2].any()  # the others kept going
    hole = np.flatnonzero(nan[1])
    np.testing.assert_array_equal(hole, np.arange(hole[0], hole[0] + hole.size))  # one contiguous hole
    assert d.counters["sensor_stalls"] == 1
    if backlog:  # all of its 2.5 s of silence (the merge waits stall_s, then fills); the backlog
        # that came out afterwards was for slots already filled: discarded
        assert 480 <= hole.size <= 510 and not dropped
        assert d.counters["late_samples_dropped"] == hole.size and "clock_losses" not in d.counters
    else:  # filled while silent, then the clock found the rest: exactly the lost samples
        np.testing.assert_array_equal(idx[hole], dropped)
        assert d.counters["clock_losses"] == 1 and "late_samples_dropped" not in d.counters
    for ch, sim in enumerate(sims):  # every sample at its own slot: OPM2 lines up again
        assert_matches(vals[ch], expected(sim, idx.size), idx)
    # announced once, as a gap of no stream samples that names the sensor and the count
    assert [(g.lost_frames, g.lost_samples) for g in gaps] == [(0, 0)]
    assert hole_counts(gaps, "OPM2") == [hole.size] and "stalled" in gaps[0].reason
    assert sims[1].address in gaps[0].reason
    # frame meta: state at each frame's last sample, NaN in this frame, lost so far
    states = np.array([f.meta["sensor_state"][1] for f in frames])
    in_hole = np.array([hole[0] <= f.t_device + f.data.shape[1] - 1 <= hole[-1] for f in frames])
    assert (states[in_hole] == "stalled").all() and (states[~in_hole] == "ok").all()
    assert sum(f.meta["nan_filled"][1] for f in frames) == hole.size
    assert all(f.meta["nan_filled"][1] == int(np.isnan(f.data[1]).sum()) for f in frames)
    assert frames[-1].meta["lost_samples"] == [0, hole.size, 0]
    assert {f.meta["sensor_state"][0] for f in frames} == {"ok"}
    # status snapshot (for `medacq ctl status`) said so while it lasted, and has the tally
    assert "stalled" in seen_states and seen_states[-1] == "ok"
    assert [s["lost_samples"] for s in status["sensors"]] == [0, hole.size, 0]


def test_losses_found_by_the_clock_on_all_sensors_and_on_one():
    with rig(3) as (d, sims):
        for s in sims:  # the same 40 samples never leave any sensor: the stream lost them
            s.call(s.interface.drop_samples, 40, 400)
        sims[2].call(sims[2].interface.drop_samples, 25, 800)  # only sensor 3 loses these
        d.start()
        items = collect(d, 1100, timeout=14)
        dropped = [s.interface.truth()["samples_dropped"] for s in sims]
    assert dropped[0] == dropped[1] == list(range(400, 440)) and dropped[2] == [*range(400, 440), *range(800, 825)]
    gaps = [g for g in items if isinstance(g, Gap)]
    idx, vals = assemble(items)
    # all sensors: a stream gap, exactly where and as long as it was; nothing bridged
    stream_gaps = [g for g in gaps if g.lost_samples]
    assert [g.lost_samples for g in stream_gaps] == [40], (d.counters, gaps)
    assert "all 3 sensors" in stream_gaps[0].reason
    np.testing.assert_array_equal(idx, np.r_[0:400, 440:440 + idx.size - 400])
    # one sensor: NaN on its channel at exactly the lost samples, announced with the count
    nan = np.isnan(vals)
    assert not nan[0].any() and not nan[1].any(), (d.counters, gaps, [idx[n] for n in nan])
    np.testing.assert_array_equal(idx[nan[2]], np.arange(800, 825))
    assert hole_counts(gaps, "OPM3") == [25] and "rig clock" in gaps[1].reason
    assert [(g.lost_frames, g.lost_samples) for g in gaps[1:]] == [(0, 0)]
    for ch, sim in enumerate(sims):
        assert_matches(vals[ch], expected(sim, int(idx[-1]) + 1), idx)
    frames = [f for f in items if isinstance(f, Frame)]
    assert frames[-1].meta["lost_samples"] == [40, 40, 65]
    assert d.counters["clock_losses"] == 4 and "sensor_stalls" not in d.counters
    assert "clock_checks_off" not in d.counters


def test_one_sensor_over_socket_url_and_its_losses_are_stream_gaps():
    with rig(1, transport="tcp", seed=5) as (d, sims):
        assert d.ports[0].startswith("socket://127.0.0.1:")
        sims[0].call(sims[0].interface.drop_samples, 30, 400)
        d.start()
        items = collect(d, 800, timeout=14)
    gaps = [g for g in items if isinstance(g, Gap)]
    idx, vals = assemble(items)
    assert [(g.lost_frames, g.lost_samples) for g in gaps] == [(0, 30)]  # one sensor: its hole is the stream's
    np.testing.assert_array_equal(idx, np.r_[0:400, 430:430 + idx.size - 400])
    assert np.isfinite(vals).all()
    assert_matches(vals[0], expected(sims[0], int(idx[-1]) + 1), idx)


def test_clock_drift_between_sensors_is_slipped_with_nan():
    # sensor 2's clock runs 3000 ppm slow: 0.6 samples/s behind sensor 1 (a real rig drifts
    # far slower; the mechanism is the same)
    with rig(2, ppm={1: -3000.0}) as (d, sims):
        d.start()
        items = collect(d, 1700, timeout=14)
    gaps = [g for g in items if isinstance(g, Gap)]
    idx, vals = assemble(items)
    np.testing.assert_array_equal(idx, np.arange(idx.size))
    nan = np.isnan(vals)
    assert not nan[0].any()
    slips = np.flatnonzero(nan[1])
    lag = 3000e-6 * idx.size  # samples sensor 2 fell behind over the run
    assert 1 <= slips.size <= lag
    assert d.counters["clock_slips"] - slips.size in (0, 1)  # the last one may not be published yet
    assert all("drifted" in g.reason and g.lost_samples == 0 for g in gaps) and hole_counts(gaps, "OPM2")
    assert_matches(vals[0], expected(sims[0], idx.size), idx)
    # a slot after k slips holds sensor 2's sample (slot - k): aligned again, nothing bridged
    stream_index = idx - np.searchsorted(slips, idx)
    assert_matches(vals[1], expected(sims[1], idx.size), stream_index)


def test_daemon_republishes_the_descriptor_when_an_led_changes_and_status_shows_sensors():
    """The laser locks 3 s after auto start, mid-stream: the sensor reports it, the worker
    sees the driver's descriptor change and republishes it without waiting for the timer."""
    with contextlib.ExitStack() as stack:
        sims = [stack.enter_context(SimulatorServer(QuSpinInterface(seed=2, sensor=i), "pty", paced=True))
                for i in range(2)]
        q = FrameQueue(1000, threading.Event())
        w = AcquisitionWorker("meg0", QuSpinDriver, ",".join(s.address for s in sims),
                              QuSpinSettings(field_zero=False, calibrate=False, stall_s=1.0), q, StreamStats())
        w.descriptor_check_s = 0.2
        w.request_start()
        w.start()
        items: list = []
        try:
            end = time.monotonic() + 12
            while time.monotonic() < end and not any(
                    isinstance(it, DescriptorUpdate) and it.descriptor.meta["sensors"][1]["laser_lock"] for it in items):
                while (it := q.pop()) is not None:
                    items.append(it)
                time.sleep(0.05)
            # the status is a snapshot refreshed every 0.2 s while streaming, the descriptor is
            # republished at once: give the snapshot its next refresh (a single read raced it)
            status = w.driver_counters()
            until = time.monotonic() + 2.0
            while time.monotonic() < until and not all(s["leds"].get("laser_lock") for s in status["sensors"]):
                time.sleep(0.05)
                status = w.driver_counters()
        finally:
            w.shutdown()
            w.join(5)
    first = next(it.descriptor for it in items if isinstance(it, SeriesStart))
    again = [it.descriptor for it in items if isinstance(it, DescriptorUpdate)]
    assert [s["laser_lock"] for s in first.meta["sensors"]] == [False, False]
    # cell-temperature lock (2 s) and laser lock (3 s): one republication per change, at most
    assert 1 <= len(again) <= 4 and all(a != b for a, b in zip([first, *again], again))
    assert [s["laser_lock"] for s in again[-1].meta["sensors"]] == [True, True]
    assert [s["cell_temp_lock"] for s in again[-1].meta["sensors"]] == [True, True]
    assert again[-1].shape == first.shape and again[-1].channel_names == first.channel_names
    assert any(isinstance(it, FrameItem) for it in items)
    assert [(s["label"], s["state"]) for s in status["sensors"]] == [("OPM1", "ok"), ("OPM2", "ok")]
    assert all(s["leds"]["laser_lock"] for s in status["sensors"])
    assert all(set(s) == set(SensorStatus.__annotations__) for s in status["sensors"])  # the typed entry
