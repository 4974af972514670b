"""Flat-panel driver against the simulator over real TCP, through pyvisa (pyvisa-py)."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.drivers._base import DeviceError, DeviceNotFound, Frame, Gap
from medacq.drivers.flatpanel import FlatPanelDriver, FlatPanelSettings, parse_visa_socket
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.flatpanel import make
from medacq.simulators.xray_model import DetectorConfig, XrayModel

from conftest import free_port


def _visa(srv: SimulatorServer) -> str:
    return f"TCPIP::{srv.host}::{srv.port}::SOCKET"


def _collect(d: FlatPanelDriver, n: int, timeout: float = 20.0) -> tuple[list[Frame], list[Gap]]:
    import time

    frames: list[Frame] = []
    gaps: list[Gap] = []
    end = time.monotonic() + timeout
    while len(frames) < n and time.monotonic() < end:
        for it in d.read(0.5):
            (frames if isinstance(it, Frame) else gaps).append(it)
    return frames, gaps


def test_parse_visa_socket() -> None:
    assert parse_visa_socket("TCPIP::127.0.0.1::5025::SOCKET") == ("127.0.0.1", 5025)
    assert parse_visa_socket("tcpip0::det.lab::5025::socket") == ("det.lab", 5025)
    assert parse_visa_socket("TCPIP::1.2.3.4::inst0::INSTR") is None


@pytest.mark.parametrize("fast", [True, False])
def test_frames_equal_what_the_simulator_sent(fast: bool) -> None:
    with SimulatorServer(make(seed=3), "tcp", paced=False) as srv:
        s = FlatPanelSettings(mode="RAD", binning=4, exposure_s=0.02, kvp=80, ma=5, fast_read=fast)
        d = FlatPanelDriver("fp0", _visa(srv), s)
        d.open()
        try:
            assert d.fast_path is fast
            desc = d.descriptor()
            assert desc.modality == "xray" and desc.shape == [384, 486] and desc.dtype == "<u2"
            assert desc.axes == ["row", "col"] and desc.device.startswith("MEDACQ,XP1512-SIM,000003")
            assert desc.geometry["pixel_pitch_mm"] == pytest.approx(0.0748 * 4)
            assert d.query("CONF:BINN?") == "4" and float(d.query("SOUR:VOLT?")) == pytest.approx(80e3)
            d.start()
            frames, gaps = _collect(d, 6)
            d.stop()
        finally:
            d.close()
    assert len(frames) == 6 and gaps == []
    assert [f.meta["frame_index"] for f in frames] == list(range(6))
    ref = XrayModel(3, DetectorConfig(binning=4, exposure_s=0.02, mode="RAD"))
    ref.configure(kvp=80.0, ma=5.0)
    for f in frames:
        assert f.data.shape == (384, 486) and f.data.dtype == np.uint16
        np.testing.assert_array_equal(f.data, ref.frame(f.meta["frame_index"]))
        assert f.meta["frame_type"] == "image" and f.t_device is not None


def test_ct_frames_carry_gantry_angle() -> None:
    with SimulatorServer(make(seed=1), "tcp", paced=False) as srv:
        s = FlatPanelSettings(mode="CT", binning=4, exposure_s=0.01, ct_projections=36)
        d = FlatPanelDriver("ct0", _visa(srv), s)
        d.open()
        try:
            desc = d.descriptor()
            d.start()
            frames, gaps = _collect(d, 40)
            d.stop()
        finally:
            d.close()
    assert desc.modality == "ct"
    assert desc.geometry["n_proj"] == 36 and desc.geometry["angular_range_deg"] == 360.0
    assert gaps == [] and len(frames) == 40
    for f in frames:
        i = f.meta["frame_index"]
        assert f.meta["angle_deg"] == pytest.approx((i % 36) * 10.0)
        assert (f.meta["projection"], f.meta["rotation"]) == (i % 36, i // 36)


def test_scpi_errors_become_device_errors_with_the_message() -> None:
    with SimulatorServer(make(), "tcp", paced=False) as srv:
        d = FlatPanelDriver("fp0", _visa(srv), FlatPanelSettings(exposure_s=20.0))
        with pytest.raises(DeviceError, match=r'-222,"Data out of range'):
            d.open()
        d.close()
        d = FlatPanelDriver("fp0", _visa(srv), FlatPanelSettings(binning=2))
        d.open()
        try:
            assert d.query("CONF:MODE?") == "FLUO" and srv.call(lambda: srv.interface.model.config.mode) == "FLUORO"
            with pytest.raises(DeviceError, match=r'-113,"Undefined header'):
                d.command("CONF:BOGUS 1")
            with pytest.raises(DeviceError, match=r"-222"):
                d.command("SOUR:VOLT 200 KV")
            assert d.query("SYST:ERR?") == '0,"No error"'  # the driver drained the queue
            d.command("CONF:EXP 50 MS")
            assert float(d.query("CONF:EXP?")) == pytest.approx(0.05)
        finally:
            d.close()


def test_buffer_overrun_is_a_gap_of_exactly_the_lost_frames() -> None:
    import time

    with SimulatorServer(make(seed=2), "tcp", paced=True) as srv:
        d = FlatPanelDriver("fp0", _visa(srv), FlatPanelSettings(mode="FLUORO", binning=4, exposure_s=0.005))
        d.open()
        try:
            d.start()
            first, _ = _collect(d, 3)
            time.sleep(0.6)  # the host stalls: ~120 frames at 200 fps, the panel keeps 16
            frames, gaps = _collect(d, 30)
            d.stop()
            overruns = srv.call(lambda: srv.interface.overruns)
        finally:
            d.close()
    assert gaps and sum(g.lost_frames for g in gaps) == overruns > 50
    idx = [f.meta["frame_index"] for f in first + frames]
    assert idx[-1] - idx[0] + 1 == len(idx) + overruns  # every missing index is accounted for
    assert "overrun" in gaps[0].reason


def test_soft_trigger_and_finite_frame_count() -> None:
    with SimulatorServer(make(), "tcp", paced=False) as srv:
        d = FlatPanelDriver("fp0", _visa(srv), FlatPanelSettings(binning=4, trigger="SOFT", frame_count=3))
        d.open()
        try:
            d.start()
            frames, _ = _collect(d, 5, timeout=3.0)
            d.stop()
        finally:
            d.close()
    assert [f.meta["frame_index"] for f in frames] == [0, 1, 2]


def test_nothing_listening_is_device_not_found() -> None:
    d = FlatPanelDriver("fp0", f"TCPIP::127.0.0.1::{free_port()}::SOCKET", FlatPanelSettings())
    with pytest.raises(DeviceNotFound):
        d.open()
    d.close()


def test_a_reply_stream_out_of_step_is_resynchronised_or_reconnected() -> None:
    """Corrupted bytes where a frame's block header was due leave the SCPI reply stream out of step
    with the queries (found in ``bench chaos``: the driver then read every later frame's bytes as
    garbage lines, 5500 of them, and never recovered). Now each such reply drains the link, and a
    few in a row are a lost link (``ConnectionLost``): the worker reconnects. Here a caller does
    what the worker does; frames must come back, equal to what the simulator made."""
    import time

    from medacq.drivers._base import ConnectionLost
    from medacq.simulators.faults import apply_fault

    with SimulatorServer(make(seed=5), "tcp", paced=False) as srv:
        s = FlatPanelSettings(mode="FLUORO", binning=4, exposure_s=0.02)
        d = FlatPanelDriver("fp0", _visa(srv), s)
        d.open()
        d.start()
        try:
            assert len(_collect(d, 2)[0]) == 2
            apply_fault(srv, "corrupt", {"nbytes": 300})  # the next reply's header and first bytes
            after: list[Frame] = []
            reconnects = 0
            end = time.monotonic() + 30
            while len(after) < 3 and time.monotonic() < end:
                try:
                    after += [f for f in d.read(0.5) if isinstance(f, Frame)]
                except ConnectionLost:
                    reconnects += 1
                    d.close()
                    d = FlatPanelDriver("fp0", _visa(srv), s)
                    d.open()
                    d.start()
            assert len(after) == 3, (reconnects, d.counters)
            assert reconnects > 0 or d.counters.get("resyncs", 0) > 0  # it noticed, and said so
        finally:
            d.close()
    ref = XrayModel(5, DetectorConfig(binning=4, exposure_s=0.02, mode="FLUORO"))
    for f in after:  # whole frames, never a torn one
        np.testing.assert_array_equal(f.data, ref.frame(f.meta["frame_index"]))


def test_a_block_length_no_frame_has_is_refused_before_anything_is_allocated_or_read() -> None:
    """A corrupted ``FETC?`` header may claim up to 999,999,999 bytes. The driver used to allocate
    that from its frame pool and read into it until the link timed out, and the pool kept the
    buffer with every byte written (the daemon's RSS grew in steps in ``bench chaos``). Now a length
    other than the frame's (or 0, the end) is refused at once: counted, payload left unread, the
    caller resynchronises. A block of the frame's length still arrives whole."""
    import socket
    import threading
    import time
    from types import SimpleNamespace

    from medacq.drivers.flatpanel import _SocketLink

    a, b = socket.socketpair()
    try:
        d = FlatPanelDriver("fp0", "TCPIP::127.0.0.1::5025::SOCKET", FlatPanelSettings(binning=4))
        d._shape = (384, 486)
        d._link = _SocketLink(SimpleNamespace(), SimpleNamespace(interface=a, _pending_buffer=bytearray()), 2.0)
        b.sendall(b"#9900000000" + b"\xff" * 1000)
        t0 = time.monotonic()
        arr, n, rest = d._read_reply()
        assert (arr, n, rest) == (None, 900_000_000, "") and time.monotonic() - t0 < 0.5
        assert d.counters == {"bad_blocks": 1} and d._frames.allocated == 0
        assert a.recv(2000) == b"\xff" * 1000  # the payload was left for the resync to drain
        frame = np.arange(384 * 486, dtype="<u2")
        sender = threading.Thread(target=b.sendall, args=(b"#6373248" + frame.tobytes() + b";7,0.0,1.5,IMAGE\n",))
        sender.start()  # (more than a socketpair buffers)
        arr, n, rest = d._read_reply()
        sender.join(5)
        assert n == 373_248 and rest == "7,0.0,1.5,IMAGE" and d._frames.allocated == 1
        np.testing.assert_array_equal(arr, frame)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("fast", [True, False])
def test_closing_one_panel_leaves_another_panels_session_open(fast: bool) -> None:
    """pyvisa hands every ``ResourceManager(...)`` of one VISA library in a process the same
    object, and closing it closes every resource it opened. A rig has two panels in one daemon
    (``xr0`` and ``ct0``): when one driver closes (a reconnect, a settings change, shutdown), the
    other one's session must stay open. (Each driver used to close the shared manager: the
    other panel's next query failed with EBADF or a ``TypeError`` from pyvisa-py, and it
    reconnected.) And reconnects leave nothing behind in pyvisa-py's session table, which keeps
    closed sessions (and what their buffers held) otherwise."""
    with SimulatorServer(make(seed=3), "tcp", paced=False) as a, SimulatorServer(make(seed=4), "tcp", paced=False) as b:
        s = FlatPanelSettings(mode="RAD", binning=4, exposure_s=0.02, fast_read=fast)
        da, db = FlatPanelDriver("xr0", _visa(a), s), FlatPanelDriver("ct0", _visa(b), s)
        da.open()
        db.open()
        try:
            db.start()
            before, _ = _collect(db, 2)
            da.close()
            assert db.query("CONF:BINN?") == "4"  # the other panel's session is still open
            after, gaps = _collect(db, 3)
            db.stop()
            da.open()  # and the closed one opens again beside it
            assert da.query("CONF:BINN?") == "4" and db.query("CONF:BINN?") == "4"
            sessions = da._rm.visalib.sessions  # pyvisa-py's table of sessions (the backend here)
            n = len(sessions)
            for _ in range(5):  # reconnects leave nothing behind in it
                da.close()
                da.open()
            assert len(sessions) == n
            assert da.query("CONF:BINN?") == "4" and db.query("CONF:BINN?") == "4"
        finally:
            da.close()
            db.close()
    assert len(before) == 2 and len(after) == 3 and gaps == []
    assert [f.meta["frame_index"] for f in before + after] == list(range(5))
