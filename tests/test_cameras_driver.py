"""The ``gige`` driver against the GigE Vision camera simulator over real UDP on 127.0.0.1."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medacq.drivers._base import DeviceError, Frame, Gap
from medacq.drivers.gige import GigEDriver, GigESettings, GvcpClient
from medacq.protocols.gigev import Bootstrap, Privilege
from medacq.simulators.gige_camera import GigEVisionServer, make


@pytest.fixture
def cam(request):
    opts = getattr(request, "param", {"model": "thermal"})
    dev = make(**opts)
    dev.keep_frames = 64
    srv = GigEVisionServer(dev, "127.0.0.1", 0, link_MBps=0).start()
    yield dev, srv
    srv.stop()
    assert srv.error is None


def _collect(d: GigEDriver, n: int, timeout: float = 10.0) -> tuple[list[Frame], list[Gap]]:
    frames: list[Frame] = []
    gaps: list[Gap] = []
    t0 = time.monotonic()
    while len(frames) + sum(g.lost_frames for g in gaps) < n and time.monotonic() - t0 < timeout:
        for it in d.read(0.2):
            (frames if isinstance(it, Frame) else gaps).append(it)  # type: ignore[arg-type]
    return frames, gaps


def _assert_equal_to_truth(dev, frames: list[Frame]) -> int:
    checked = 0
    for f in frames:
        idx = dev.sent_blocks[f.meta["block_id"]]
        if idx in dev.frames:
            assert np.array_equal(f.data, dev.frames[idx]), f"frame {idx} differs from what the camera sent"
            checked += 1
    return checked


def test_thermal_features_descriptor_and_frames_equal(cam):
    dev, srv = cam
    d = GigEDriver("thermal0", srv.address, GigESettings(frame_rate_hz=30, gain_db=3.0))
    d.open()
    try:
        assert d.info is not None and d.info.model.startswith("TC-640")
        assert d.get_feature("Width") == 640 and d.get_feature("PixelFormat") == "Mono16"
        assert d.get_feature("Gain") == pytest.approx(3.0) and dev.model.gain_db == pytest.approx(3.0)
        assert d.get_feature("R") == pytest.approx(dev.model.R)
        d.set_feature("ObjectEmissivity", 0.95)
        assert dev.model.emissivity == pytest.approx(0.95)
        with pytest.raises(DeviceError, match="INVALID_PARAMETER"):
            d.set_feature("ObjectEmissivity", 1.5)
        with pytest.raises(DeviceError, match="read-only"):
            d.set_feature("Width", 320)
        desc = d.descriptor()
        assert (desc.modality, desc.shape, desc.dtype, desc.axes) == ("thermal", [480, 640], "<u2", ["y", "x"])
        assert desc.geometry["radiometry"]["B"] == pytest.approx(dev.model.B)
        d.start()
        frames, gaps = _collect(d, 10)
        d.stop()
        assert not gaps and len(frames) >= 10
        assert _assert_equal_to_truth(dev, frames) >= 10
        assert frames[0].data.dtype == np.uint16 and frames[0].data.shape == (480, 640)
        ts = [f.t_device for f in frames]
        assert all(b > a for a, b in zip(ts, ts[1:]))
    finally:
        d.close()
    assert dev.controller is None  # close released the control channel


@pytest.mark.parametrize("cam", [{"model": "endoscope", "width": 320, "height": 240, "pixel_format": "BayerRG12p",
                                  "loop_frames": 4}], indirect=True)
def test_bayer12p_frames_unpack_equal(cam):
    dev, srv = cam
    d = GigEDriver("endo0", srv.address, GigESettings(packet_size=1500, frame_rate_hz=60))
    d.open()
    try:
        assert d.descriptor().geometry["bayer"] == "RGGB" and d.descriptor().geometry["bits"] == 12
        d.start()
        frames, gaps = _collect(d, 6)
        d.stop()
        assert not gaps and _assert_equal_to_truth(dev, frames) >= 6
        assert frames[0].data.max() > 255  # 12-bit values survived the packing
    finally:
        d.close()


def test_dropped_and_reordered_packets_are_recovered_by_resend(cam):
    dev, srv = cam
    d = GigEDriver("thermal0", srv.address, GigESettings(frame_rate_hz=30))
    d.open()
    try:
        d.start()
        _collect(d, 2)
        srv.call(dev.drop, 7)
        srv.call(dev.reorder, 4)
        frames, gaps = _collect(d, 8)
        d.stop()
    finally:
        d.close()
    assert not gaps, gaps
    assert dev.counters["dropped_packets"] == 7 and dev.counters["resent_packets"] >= 7
    assert d.counters["frames_recovered"] >= 1 and d.counters["resend_requests"] >= 1
    assert _assert_equal_to_truth(dev, frames) >= 6


def test_unrecoverable_loss_is_a_gap_never_a_torn_frame(cam):
    dev, srv = cam
    d = GigEDriver("thermal0", srv.address, GigESettings(frame_rate_hz=30, max_resends=2))
    d.open()
    try:
        d.start()
        _collect(d, 2)
        srv.call(dev.lose, 3)  # leader and two payload packets gone, from the resend buffer too
        frames, gaps = _collect(d, 8)
        d.stop()
    finally:
        d.close()
    assert sum(g.lost_frames for g in gaps) == 1 and "resend" in gaps[0].reason
    assert d.counters["frames_lost"] == 1
    n = _assert_equal_to_truth(dev, frames)
    assert n == len([f for f in frames if dev.sent_blocks[f.meta["block_id"]] in dev.frames]) and n >= 6
    blocks = [f.meta["block_id"] for f in frames]
    assert blocks == sorted(blocks)  # delivered in block order


def test_heartbeat_loss_releases_control(cam):
    dev, srv = cam
    ip, port = srv.host, srv.port
    a = GvcpClient(ip, port)
    b = GvcpClient(ip, port)
    try:
        a.write_reg((Bootstrap.HEARTBEAT_TIMEOUT, 500), (Bootstrap.CONTROL_CHANNEL_PRIVILEGE, Privilege.CONTROL))
        assert dev.controller == ("127.0.0.1", a.sock.getsockname()[1])
        with pytest.raises(DeviceError, match="ACCESS_DENIED"):
            b.write_reg((Bootstrap.CONTROL_CHANNEL_PRIVILEGE, Privilege.CONTROL))
        assert b.read_reg(Bootstrap.CONTROL_CHANNEL_PRIVILEGE) == (Privilege.CONTROL,)  # reads stay open
        time.sleep(0.3)
        a.read_reg(Bootstrap.CONTROL_CHANNEL_PRIVILEGE)  # a heartbeat
        time.sleep(0.3)
        with pytest.raises(DeviceError):  # 0.6 s after taking control, but 0.3 s after the heartbeat
            b.write_reg((Bootstrap.CONTROL_CHANNEL_PRIVILEGE, Privilege.CONTROL))
        time.sleep(0.7)  # a stops heart-beating
        assert srv.call(lambda: dev.controller) is None and dev.counters["heartbeat_expired"] == 1
        b.write_reg((Bootstrap.CONTROL_CHANNEL_PRIVILEGE, Privilege.CONTROL))
        assert dev.controller == ("127.0.0.1", b.sock.getsockname()[1])
        with pytest.raises(DeviceError, match="ACCESS_DENIED"):
            a.write_reg((Bootstrap.CONTROL_CHANNEL_PRIVILEGE, Privilege.CONTROL))
    finally:
        a.close()
        b.close()


def test_heartbeat_loss_stops_the_stream_and_the_driver_notices(cam):
    dev, srv = cam
    d = GigEDriver("thermal0", srv.address, GigESettings(frame_rate_hz=30, heartbeat_ms=600))
    d.open()
    try:
        d.start()
        _collect(d, 2)
        srv.faults.stall(1.2)  # the camera hears nothing for longer than the heartbeat timeout
        time.sleep(1.4)
        assert not dev.acquiring and dev.controller is None
        with pytest.raises(Exception, match="no longer grants|heartbeat failed"):
            for _ in range(20):
                d.read(0.1)
    finally:
        d.close()


@pytest.mark.parametrize("cam", [{"model": "photo", "width": 800, "height": 600}], indirect=True)
def test_photo_stills_on_software_trigger(cam):
    dev, srv = cam
    d = GigEDriver("photo0", srv.address, GigESettings(trigger="software"))
    d.open()
    try:
        d.start()
        assert list(d.read(0.3)) == []  # no trigger, no frame
        d.trigger()
        frames, gaps = _collect(d, 1)
        assert len(frames) == 1 and not gaps and _assert_equal_to_truth(dev, frames) == 1
        assert list(d.read(0.3)) == []
        d.trigger()
        d.trigger()
        frames, _ = _collect(d, 2)
        assert len(frames) == 2
        d.stop()
    finally:
        d.close()


def test_injected_error_status_is_a_device_error(cam):
    dev, srv = cam
    d = GigEDriver("thermal0", srv.address, GigESettings())
    d.open()
    try:
        srv.call(dev.inject_error, "busy", 1, None)
        with pytest.raises(DeviceError, match="BUSY"):
            d.get_feature("Gain")
        assert d.get_feature("Gain") == pytest.approx(0.0)
    finally:
        d.close()


def test_unknown_model_option_is_refused():
    with pytest.raises(ValueError, match="unknown gige thermal options"):
        make(model="thermal", colour=True)
    with pytest.raises(ValueError, match="unknown gige model"):
        make(model="xray")


def test_medacq_sim_serves_the_camera_on_udp():
    import subprocess
    import sys

    from conftest import free_port

    port = free_port()  # a TCP-free port number; UDP is almost surely free too
    p = subprocess.Popen([sys.executable, "-m", "medacq.daemon.cli", "sim", "gige", "model=thermal", "lepton=1",
                          "--tcp", f"127.0.0.1:{port}", "--for", "20"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == f"gige://127.0.0.1:{port}"
        d = GigEDriver("lepton", f"gige://127.0.0.1:{port}", GigESettings())
        d.open()
        try:
            assert (d.get_feature("Width"), d.get_feature("Height")) == (160, 120)
            assert d.descriptor().modality == "thermal"
        finally:
            d.close()
    finally:
        p.terminate()
        p.wait(10)


def test_a_link_slower_than_the_frames_skips_exposures_and_never_builds_a_backlog():
    """A camera whose link cannot carry its frame rate holds at most ``frame_buffer`` frames: a
    frame due while they are still queued is skipped (``frames_skipped_busy``), without a block id,
    so nothing is announced lost, and the frames that do leave are recent. Without the bound the
    simulator queued every frame and their timestamps fell further behind their send time (seconds
    after a minute at 1080p60 on a busy machine)."""
    dev = make(model="thermal")  # 640 x 480 Mono16: 614 400 B a frame
    srv = GigEVisionServer(dev, "127.0.0.1", 0, link_MBps=3.0, frame_buffer=2).start()  # ~4.9 frames/s
    d = GigEDriver("thermal0", srv.address, GigESettings(frame_rate_hz=30))
    d.open()
    try:
        d.start()
        t0 = time.monotonic()
        frames, gaps = _collect(d, 8, timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        d.close()
        srv.stop()
    assert srv.error is None
    assert len(frames) >= 8 and not gaps, (len(frames), gaps)
    carried = 3.0e6 * elapsed / (640 * 480 * 2)  # frames the link could carry meanwhile
    assert dev.counters["frames"] <= carried + 2 + 1, (dev.counters["frames"], carried)
    assert dev.counters["frames_skipped_busy"] >= 2 * dev.counters["frames"], dev.counters
    ids = [f.meta["block_id"] for f in frames]
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids  # consecutive: skipped slots took no block id



class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_link_catches_up_after_the_host_kept_the_simulator_off_the_cpu(monkeypatch):
    """The simulated link repays a host stall (up to one frame's bytes) instead of carrying it into
    every later frame: at 1080p60 BayerRG8 the link is 99.94 % busy, so a frame that left 10 ms late
    made every later one 10 ms late (session 9: the endoscope's idle age p99 52 ms, 8 ms of it
    this). With a fake clock: the stream thread gets to a frame 12 ms after its exposure ended, and
    to the link again 30 ms after that."""
    import medacq.simulators.gige_camera as gc

    clock = _Clock()
    monkeypatch.setattr(gc.time, "monotonic", clock)
    srv = GigEVisionServer(make(model="endoscope", fps=60.0), "127.0.0.1", 0, link_MBps=125.0)
    sent: list[int] = []
    monkeypatch.setattr(srv, "_sendto", lambda sock, pkt, dest: sent.append(len(pkt)))
    try:
        srv._t0 = clock.t
        srv._drain()  # nothing queued: the link idles
        pkt = bytes(8972)  # a full 9000-byte GVSP packet less its IP and UDP headers
        wire = [(pkt, ("127.0.0.1", 9))] * 232  # one 1920 x 1080 frame
        frame_bytes = 232 * 9000
        t_ready = 0.5  # adapter time (s) the exposure ended
        clock.t = srv._t0 + t_ready + 0.012  # ... and this thread got here 12 ms later
        srv._release(t_ready, wire)
        srv._drain()
        # the 12 ms since the frame was ready are on the link's credit: 1.5 MB leave at once
        assert abs(sum(sent) + 28 * len(sent) - 0.012 * 125e6) <= 9000 + 28, sum(sent)
        n1 = len(sent)
        clock.t += 0.030  # the host kept the thread off the CPU for 30 ms: credit for one frame at most
        srv._drain()
        assert len(sent) == 232, (n1, len(sent))  # the rest of the frame (~4.7 ms of link) caught up
        # a stall longer than a frame repays no more than one frame's bytes
        srv._release(t_ready + 1 / 60, wire)
        clock.t += 0.5
        srv._drain()
        assert (len(sent) - 232) * 9000 <= frame_bytes + 9000
    finally:
        srv.gvcp.close()
        srv.gvsp.close()
