"""MRI console simulator and ``mri`` driver over real TCP: sequences, limits, the image's
phantom features, coils, emergency stop mid-sequence, the fault side door."""

from __future__ import annotations

import socket
import time

import msgpack
import numpy as np
import pytest
from pydantic import ValidationError

from medacq.daemon.recon.algorithms.mri import CartesianKspace
from medacq.drivers._base import Frame, Gap
from medacq.drivers.mri import MriDriver, MriSettings
from medacq.protocols.marcos import MarcosConnection, Request
from medacq.protocols.models.mri_phantom import spin_echo_signal, spoiled_gre_signal
from medacq.protocols.mri_sequences import CartesianSequence, SequenceError, SequenceParams, SystemLimits
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.mri import make


def _acquire(seq: dict, n_frames: int, paced: bool = False, **sim):
    iface = make(**sim)
    with SimulatorServer(iface, "tcp", paced=paced) as srv:
        d = MriDriver("mri0", srv.tcp_address, MriSettings.model_validate(
            {"sequence": seq, "repetitions": 1, "lines_per_run": 8, "dummy_scans": 4}))
        d.open()
        d.start()
        items: list = []
        deadline = time.monotonic() + 30
        while sum(isinstance(i, Frame) for i in items) < n_frames and time.monotonic() < deadline:
            items += d.read(0.5)
        desc = d.descriptor()
        d.close()
    return iface, desc, items


def _image(frames, n):
    ks = CartesianKspace(2, n, n)
    for f in frames:
        ks.add(f.meta["line"], f.data)
    return ks


def test_refused_with_the_limit_named_before_anything_is_sent():
    lim = SystemLimits()
    with pytest.raises(SequenceError, match="TE 1 ms is below the minimum"):
        CartesianSequence(SequenceParams(te_ms=1, matrix=128), lim)
    with pytest.raises(SequenceError, match="max_grad_mt_per_m"):
        CartesianSequence(SequenceParams(fov_mm=20, matrix=64, bandwidth_hz=200000), lim)
    with pytest.raises(SequenceError, match="TR 10 ms is below"):
        CartesianSequence(SequenceParams(te_ms=15, tr_ms=10), lim)
    with pytest.raises(SequenceError, match="max_rf_duty"):
        CartesianSequence(SequenceParams(sequence="gre", te_ms=3, tr_ms=10, matrix=32),
                          SystemLimits(max_rf_duty=0.001))
    with pytest.raises(SequenceError, match="CIC"):
        CartesianSequence(SequenceParams(bandwidth_hz=20000000), lim)
    with pytest.raises(ValidationError, match="below the minimum"):
        MriSettings.model_validate({"sequence": {"te_ms": 1}})
    # the limits come from the config file only: a control-plane configure may not change them
    from medacq.daemon.acquisition.devices import check_settings_change
    from medacq.protocols.control import ControlError
    cur = MriSettings()
    with pytest.raises(ControlError, match="config file"):
        check_settings_change(MriDriver, cur, {"limits": {"max_grad_mt_per_m": 100}}, {})
    with pytest.raises(ControlError, match="below the minimum"):
        check_settings_change(MriDriver, cur, {"sequence": {"te_ms": 1}}, {})
    assert check_settings_change(MriDriver, cur, {"sequence": {"te_ms": 20}}, {}).sequence.te_ms == 20


def test_spin_echo_image_has_the_phantoms_features_where_the_phantom_put_them():
    n = 64
    iface, desc, items = _acquire({"sequence": "se", "matrix": n, "te_ms": 15, "tr_ms": 300}, n)
    frames = [f for f in items if isinstance(f, Frame)]
    assert len(frames) == n and [f.meta["line"] for f in frames] == list(range(n))
    f = frames[0]
    assert f.data.shape == (2, n) and f.data.dtype == np.complex64 and f.meta["last"] is False
    assert desc.axes == ["coil", "readout"] and desc.dtype == "<c8" and desc.shape == [2, n]
    assert desc.meta["field_strength_t"] == 0.2 and abs(desc.meta["larmor_hz"] - 8.5155e6) < 1e3
    assert desc.meta["sequence"]["te_ms"] == 15 and desc.geometry["fov_m"] == [0.2, 0.2]
    img = _image(frames, n).image()
    ph = iface.model.phantom
    sig = spin_echo_signal(ph.m0, ph.t1, ph.t2, 15e-3, 0.3)
    truth = ph.image(sig, n, 0.2)
    a = (img * truth).sum() / (truth ** 2).sum()
    assert np.linalg.norm(img / a - truth) / np.linalg.norm(truth) < 0.15
    d = 0.2 / n

    def at(x, y):  # pixel value at (x, y) in metres (row = y, column = x)
        return img[int(round(y / d + n / 2)), int(round(x / d + n / 2))] / a

    # left ventricle (x = -22 mm, CSF: T1 4.2 s, dark at TR 300 ms) and the white matter above
    assert at(-0.022, 0.0) == pytest.approx(sig[4] - 0 * sig[3], abs=0.05)
    assert at(0.0, 0.035) == pytest.approx(sig[6], abs=0.05)
    assert at(0.0, -0.04) == pytest.approx(sig[3], abs=0.05)  # grey matter
    assert at(0.0, 0.0) == pytest.approx(sig[3], abs=0.05)
    assert at(0.09, 0.09) == pytest.approx(0.0, abs=0.02)  # outside the head


def test_coils_see_their_own_side_and_gre_contrast():
    n = 32
    iface, desc, items = _acquire({"sequence": "gre", "matrix": n, "te_ms": 5, "tr_ms": 40, "flip_deg": 30}, n)
    frames = [f for f in items if isinstance(f, Frame)]
    ks = _image(frames, n)
    from medacq.daemon.recon.algorithms.mri import centred_ifft2
    coil = np.abs(centred_ifft2(ks.k))
    left, right = coil[:, :, : n // 4].sum(axis=(1, 2)), coil[:, :, 3 * n // 4:].sum(axis=(1, 2))
    # coil 0 sees the left quarter better, coil 1 the right, as the model's sensitivities say
    x = (np.arange(n) - n / 2) * 0.2 / n
    sens = np.abs(iface.model.coil_sensitivity(x, 0 * x))
    ph = iface.model.phantom
    obj = ph.image(spoiled_gre_signal(ph.m0, ph.t1, ph.t2, 5e-3, 40e-3, 30), n, 0.2)
    want = [(obj * sens[c])[:, : n // 4].sum() / (obj * sens[c])[:, 3 * n // 4:].sum() for c in (0, 1)]
    assert left[0] / right[0] == pytest.approx(want[0], rel=0.2) and want[0] > 1.3
    assert right[1] / left[1] == pytest.approx(1 / want[1], rel=0.2) and 1 / want[1] > 1.3
    assert np.allclose(np.sqrt((np.abs(iface.model.coil_sensitivity(np.linspace(-.1, .1, 9), 0)) ** 2).sum(0)), 1)
    ph = iface.model.phantom
    img = ks.image()
    sig = spoiled_gre_signal(ph.m0, ph.t1, ph.t2, 5e-3, 40e-3, 30)
    truth = ph.image(sig, n, 0.2)
    a = (img * truth).sum() / (truth ** 2).sum()
    assert np.corrcoef(img.ravel(), truth.ravel())[0, 1] > 0.93
    assert img[n // 2, n // 2] / a == pytest.approx(sig[3], rel=0.1)


def test_emergency_stop_halts_the_sequence_mid_run():
    iface = make()
    seq = CartesianSequence(SequenceParams(sequence="gre", matrix=32, te_ms=5, tr_ms=100, flip_deg=30), SystemLimits())
    words = seq.lines(0, 20)  # 2 s of sequence
    codec = MarcosConnection("client")
    with SimulatorServer(iface, "tcp", paced=True) as srv, \
            socket.create_connection((srv.host, srv.port)) as s:
        s.sendall(codec.send(Request({"run_seq": words.tobytes()}, index=1)))
        time.sleep(0.35)
        assert srv.call(getattr, iface, "transmitting") is True
        t0 = time.monotonic()
        s.sendall(codec.send(Request({}, index=2, kind=1)))
        replies = []
        s.settimeout(5)
        while len(replies) < 2:
            codec.receive_data(s.recv(1 << 20))
            while (ev := codec.next_event()):
                replies.append(ev)
        assert time.monotonic() - t0 < 0.5
        run, stop = replies
        assert run.index == 2 and "sequence halted by emergency stop" in run.errors
        got = len(run.results["run_seq"]["rx0_i"])
        assert 32 <= got < 20 * 32  # some lines, not all
        assert stop.kind == 129 and stop.index == 3
        assert srv.call(getattr, iface, "transmitting") is False


def test_driver_safe_state_and_fault_side_door():
    iface = make()
    with SimulatorServer(iface, "tcp", paced=False) as srv:
        d = MriDriver("mri0", srv.tcp_address, MriSettings.model_validate(
            {"sequence": {"sequence": "gre", "matrix": 16, "te_ms": 4, "tr_ms": 20, "flip_deg": 30},
             "lines_per_run": 4, "dummy_scans": 0}))
        d.open()
        d.start()
        items: list = []
        while sum(isinstance(i, Frame) for i in items) < 4:
            items += d.read(0.5)
        srv.call(iface.drop, 1)  # one ADC window lost at the console: the run comes back short
        while not any(isinstance(i, Gap) for i in items):
            items += d.read(0.5)
        gap = next(i for i in items if isinstance(i, Gap))
        assert gap.lost_frames == 4 and "RX FIFO" in gap.reason
        assert d.counters["short_runs"] == 1
        assert "129" in d.enter_safe_state()
        srv.call(iface.inject_error, "coil fault", 1)
        with pytest.raises(Exception, match="coil fault"):
            d.command({"are_you_real": 0})
        d.close()


def test_garbage_from_the_host_is_counted_and_the_console_keeps_serving():
    iface = make()
    codec = MarcosConnection("client")
    with SimulatorServer(iface, "tcp", paced=False) as srv, socket.create_connection((srv.host, srv.port)) as s:
        s.sendall(b"\xc1\xc1" + codec.send(Request({"are_you_real": 0}, index=4)))
        s.settimeout(5)
        reply = msgpack.Unpacker(raw=False)
        reply.feed(s.recv(65536))
        assert next(reply)[4] == {"are_you_real": "simulation"}
        assert srv.call(getattr, iface, "garbage_bytes") >= 1


def test_turbo_spin_echo_fills_kspace_in_echo_trains():
    n, etl = 32, 8
    seq = CartesianSequence(SequenceParams(sequence="tse", matrix=n, te_ms=48, tr_ms=800, etl=etl,
                                           echo_spacing_ms=12), SystemLimits())
    assert seq.shots == n // etl
    # TE 48 ms = 4th echo: the centre line (16) is acquired there
    assert all(seq.shot_lines(s)[3] // (n // etl) == (n // 2) // (n // etl) for s in range(seq.shots))
    assert sorted(ln for s in range(seq.shots) for ln in seq.shot_lines(s)) == list(range(n))
    with pytest.raises(SequenceError, match="multiple of the echo spacing"):
        CartesianSequence(SequenceParams(sequence="tse", matrix=n, te_ms=50, etl=etl, echo_spacing_ms=12), SystemLimits())
    with pytest.raises(SequenceError, match="multiple of the echo train length"):
        CartesianSequence(SequenceParams(sequence="tse", matrix=36, te_ms=48, etl=etl, echo_spacing_ms=12), SystemLimits())
    with pytest.raises(SequenceError, match="echo spacing 1 ms is below the minimum"):
        CartesianSequence(SequenceParams(sequence="tse", matrix=n, te_ms=4, etl=etl, echo_spacing_ms=1), SystemLimits())
    iface, desc, items = _acquire({"sequence": "tse", "matrix": n, "te_ms": 48, "tr_ms": 800, "etl": etl,
                                   "echo_spacing_ms": 12}, n)
    frames = [f for f in items if isinstance(f, Frame)]
    assert [f.meta["line"] for f in frames[:etl]] == seq.shot_lines(0) and frames[-1].meta["last"]
    img = _image(frames, n).image()
    ph = iface.model.phantom
    truth = ph.image(spin_echo_signal(ph.m0, ph.t1, ph.t2, 48e-3, 0.8), n, 0.2)
    assert np.corrcoef(img.ravel(), truth.ravel())[0, 1] > 0.93
