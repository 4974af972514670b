"""GigE Vision camera driver (``gige://host[:port]``; GVCP port 3956 by default).

Control (GVCP on UDP): at :meth:`GigEDriver.open` the driver discovers the device (unicast
DISCOVERY), reads the first URL register, loads the GenICam XML from the device's memory
(``Local:...;address;length``) and takes the control channel (privilege register CONTROL).
A heartbeat thread reads the privilege register every third of the heartbeat timeout, so the
camera keeps this host as its controller; if the camera stops answering for a whole heartbeat
timeout, or says this host lost control, the next
:meth:`GigEDriver.read` raises :class:`~medacq.drivers._base.ConnectionLost`. Features are read
and written through the register addresses the XML gives (:meth:`GigEDriver.get_feature`,
:meth:`GigEDriver.set_feature`). GVCP transactions retry 3 times (200 ms each).

Data (GVSP on UDP): a socket with a 4 MiB receive buffer takes the stream; the sans-I/O
:class:`~medacq.protocols.gigev.GvspReceiver` rebuilds blocks, and missing packets are asked
for again with PACKETRESEND (sent from the stream socket to the device's GVCP port, as Aravis
does). A block still incomplete after the resends is a :class:`~medacq.drivers._base.Gap` of
one frame -- never a torn frame. Frames are delivered in block order.

Frames: ``(y, x)`` arrays -- Mono16 and 12-bit formats as uint16 (12p unpacked), 8-bit formats
as uint8; Bayer frames are raw mosaics (``geometry.bayer = "RGGB"``), demosaiced by the
reconstruction stage. ``t_device``: the leader's timestamp in seconds (device ticks / tick
frequency). The stream's modality comes from the setting ``modality`` or, by default, the
device's user-defined name (``thermal``, ``endoscope``, ``photo``). Thermal cameras: the Planck
constants (R, B, F, O), emissivity, reflected temperature and the linear mode travel in the
descriptor's ``geometry.radiometry``; in temperature-linear mode ``scale``/``offset`` give °C.

Frame start (``frame_triggers = true``; ``markers/<device>``, :mod:`medacq.protocols.markers`): each
frame's meta lists a trigger event on line ``frame_start`` (``t_device`` the leader's timestamp in
seconds, ``sample`` the block id) whose host time is the leader's timestamp mapped through a fit of
the camera clock to the leaders' arrival times (:class:`~medacq.drivers._clockfit.DeviceClock`,
lower envelope; GevTimestampTickFrequency ticks), not the arrival. A camera sends the leader once
the exposure is over, so the fit is fed each leader's arrival minus ExposureTime (read at ``start``
and on every write of it): the marker is the exposure start as the least-delayed leaders place it,
whichever instant the camera latches its timestamp at (GigE Vision leaves that to the device; the
simulated camera stamps the exposure start), and the timestamps carry the drift and remove the
arrival jitter. What stays is the camera's own readout-to-leader delay and the link's least latency
(sub-millisecond on the simulated camera). A new 1-s bucket of the fit is opened with the least
delayed of its first 3 leaders, not its first alone. A leader that came in a resend round does not
feed the fit, nor one arriving over 20 ms later than the fit predicts (``late_leaders``: a stalled host
thread; the envelope's bucket minima are below it anyway, but as the first point of a new bucket it
would bend a fit of few buckets); a timestamp that steps back (GevTimestampControlReset) restarts it
(``timestamp_resets``).
``trigger = "line0"``: one frame per rising edge on the camera's trigger input (TriggerMode On,
TriggerSource Line0, TriggerActivation RisingEdge); each frame then also yields an event on line
``Line0`` at the same time (the edge, to the camera's trigger-to-exposure latency: µs), with or
without ``frame_triggers``: a bus edge the daemon's trigger alignment matches like any other.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols._sansio import NEED_DATA, Garbage
from medacq.protocols.genicam import Feature, parse_genicam_xml
from medacq.protocols.gigev import (
    GVCP_PORT, Bootstrap, BlockComplete, BlockLost, DiscoveryAck, DiscoveryCmd, DeviceInfo, GvcpCodec, GvcpErrorAck,
    GvcpStatus, GvspReceiver, PacketResendCmd, PixelFormat, Privilege, ReadMemAck, ReadMemCmd, ReadRegAck,
    ReadRegCmd, ResendRequest, WriteMemAck, WriteMemCmd, WriteRegAck, WriteRegCmd, bytes_per_pixel,
    parse_genicam_url, unpack_12p,
)
from medacq.protocols.markers import FRAME_TRIGGERS_KEY
from medacq.protocols.stream import StreamDescriptor

from ._base import ConnectionLost, DeviceError, DeviceNotFound, Driver, Frame, Gap
from ._clockfit import DeviceClock
from .triggers import clock_trigger

__all__ = ["GigEDriver", "GigESettings", "GvcpClient", "parse_gige_address"]

_PF_NAMES = {int(p): p.name for p in PixelFormat}
_LATE_LEADER_NS = 20_000_000  # a leader this much later than the fitted clock predicts does not feed the fit
_FIT_FIRST = 3  # a new 1-s bucket of the fit is opened with the least delayed of its first 3 leaders


def parse_gige_address(address: str) -> tuple[str, int]:
    """``gige://host[:port]`` (or ``host[:port]``) → ``(ip, port)``."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, _, port = rest.partition(":")
    try:
        ip = socket.gethostbyname(host or "127.0.0.1")
        return ip, int(port) if port else GVCP_PORT
    except (OSError, ValueError):
        raise DeviceNotFound(f"bad GigE Vision address {address!r}; expected gige://HOST[:PORT]") from None


class GvcpClient:
    """GVCP in host role on one UDP socket: request/acknowledge with retries, thread-safe.

    Raises :class:`ConnectionLost` when the device does not answer, :class:`DeviceError` on an
    error status (its name in the message).
    """

    def __init__(self, ip: str, port: int, *, timeout_s: float = 0.2, retries: int = 3) -> None:
        self.dest = (ip, port)
        self.timeout_s = timeout_s
        self.retries = retries
        self.codec = GvcpCodec("host")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(self.dest)  # picks the local interface; the device answers to it
        self.local_ip = self.sock.getsockname()[0]
        self._req = 0
        self._lock = threading.Lock()
        self.garbage = 0
        self.stray = 0
        self.retried = 0

    def close(self) -> None:
        self.sock.close()

    def _next_id(self) -> int:
        self._req = self._req % 0xFFFF + 1
        return self._req

    def transact(self, make: Any, expect: type) -> Any:
        """Send ``make(req_id)`` and return the matching acknowledge of type ``expect``."""
        with self._lock:
            req = self._next_id()
            msg = make(req)
            wire = self.codec.send(msg)
            for attempt in range(self.retries):
                try:
                    self.sock.send(wire)
                except OSError as exc:
                    raise ConnectionLost(f"GVCP send to {self.dest}: {exc}") from None
                deadline = time.monotonic() + self.timeout_s
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    r, _, _ = select.select([self.sock], [], [], left)
                    if not r:
                        break
                    try:
                        data = self.sock.recv(2048)
                    except ConnectionRefusedError:
                        raise DeviceNotFound(f"nothing answers GVCP at {self.dest[0]}:{self.dest[1]}") from None
                    except OSError as exc:
                        raise ConnectionLost(f"GVCP receive: {exc}") from None
                    self.codec.receive_data(data)
                    while (ev := self.codec.next_event()) is not NEED_DATA:
                        if isinstance(ev, Garbage):
                            self.garbage += 1
                        elif getattr(ev, "req_id", None) != req:
                            self.stray += 1
                        elif isinstance(ev, GvcpErrorAck):
                            name = GvcpStatus(ev.status).name if ev.status in GvcpStatus._value2member_map_ \
                                else f"0x{ev.status:04x}"
                            raise DeviceError(f"{type(msg).__name__} refused: {name}")
                        elif isinstance(ev, expect):
                            return ev
                        else:
                            self.stray += 1
                if attempt + 1 < self.retries:
                    self.retried += 1
            raise ConnectionLost(f"no GVCP answer from {self.dest[0]}:{self.dest[1]} to {type(msg).__name__} "
                                 f"after {self.retries} tries")

    # -- conveniences ---------------------------------------------------------------------------
    def discover(self) -> DeviceInfo:
        ack = self.transact(lambda r: DiscoveryCmd(r), DiscoveryAck)
        return ack.info()

    def read_reg(self, *addresses: int) -> tuple[int, ...]:
        return self.transact(lambda r: ReadRegCmd(r, tuple(addresses)), ReadRegAck).values

    def write_reg(self, *writes: tuple[int, int]) -> None:
        self.transact(lambda r: WriteRegCmd(r, tuple(writes)), WriteRegAck)

    def read_mem(self, address: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            n = min(512, size - len(out))
            ack = self.transact(lambda r, a=address + len(out), n=n: ReadMemCmd(r, a, n), ReadMemAck)
            out += ack.data[:n]
        return bytes(out)

    def write_mem(self, address: int, data: bytes) -> None:
        for off in range(0, len(data), 512):
            chunk = data[off:off + 512]
            self.transact(lambda r, a=address + off, c=chunk: WriteMemCmd(r, a, c), WriteMemAck)


class GigESettings(BaseModel):
    """Settings applied at ``open`` (``None``: keep the camera's value).

    Attributes:
        modality: stream modality (``thermal``, ``endoscope``, ``photo``); ``None``: the
            device's user-defined name.
        pixel_format: PFNC name (``Mono16``, ``BayerRG8``, ``BayerRG12p``).
        frame_rate_hz: AcquisitionFrameRate (Hz).
        exposure_us: ExposureTime (µs).
        gain_db: Gain (dB).
        trigger: ``off`` (free-running), ``software`` (one frame per :meth:`GigEDriver.trigger`) or
            ``line0`` (one frame per rising edge on the trigger input Line0, each edge published on
            ``markers/<device>``, line ``Line0``).
        features: other features to set, name → value (enum entries by name).
        packet_size: stream packet size (bytes incl. IP/UDP/GVSP headers; 9000 = jumbo frames).
        heartbeat_ms: heartbeat timeout written to the camera (ms).
        resend: ask for missing packets.
        max_resends: resend rounds per frame before it is announced lost.
        resend_timeout_ms: a resend round unanswered for this long is asked again (ms).
        rcvbuf_bytes: stream socket receive buffer.
        frame_triggers: publish every frame's start (the leader timestamp, fitted to the host
            clock) on ``markers/<device>`` (line ``frame_start``; module doc). Default off.
    """

    model_config = ConfigDict(extra="forbid")

    modality: str | None = None
    pixel_format: str | None = None
    frame_rate_hz: float | None = Field(None, gt=0, le=1000)
    exposure_us: float | None = Field(None, gt=0)
    gain_db: float | None = Field(None, ge=0)
    trigger: Literal["off", "software", "line0"] | None = None
    features: dict[str, float | int | str | bool] = Field(default_factory=dict)
    packet_size: int = Field(9000, ge=576, le=16000)
    heartbeat_ms: int = Field(3000, ge=500, le=60000)
    resend: bool = True
    max_resends: int = Field(4, ge=0, le=10)
    resend_timeout_ms: float = Field(50.0, gt=0, le=1000)
    rcvbuf_bytes: int = Field(4 << 20, ge=1 << 16)
    frame_triggers: bool = False


class GigEDriver(Driver):
    """GigE Vision camera (kind ``gige``); see the module docstring."""

    kind = "gige"
    modality = "camera"
    Settings = GigESettings

    def __init__(self, name: str, address: str, settings: GigESettings) -> None:
        super().__init__(name, address, settings)
        self.settings: GigESettings = settings
        self.ip, self.port = parse_gige_address(address)
        self.gvcp: GvcpClient | None = None
        self.info: DeviceInfo | None = None
        self.features: dict[str, Feature] = {}
        self.xml = b""
        self._stream: socket.socket | None = None
        self._rx: GvspReceiver | None = None
        self._hb_thread: threading.Thread | None = None
        self._hb_stop = threading.Event()
        self._hb_error: str | None = None
        self._buf = bytearray(65536)
        self._view = memoryview(self._buf)
        self._expected: int | None = None
        self._held: dict[int, Frame | Gap] = {}
        self._held_t: dict[int, float] = {}
        self._late: list[Gap] = []
        self.width = self.height = 0
        self.pixel_format = 0
        self.payload_size = 0
        self.tick_hz = 1e9
        self._radiometry: dict[str, Any] = {}
        self._frame_rate: float | None = None
        self._resend_id = 0
        self._exposure_ns = 0
        self._cam_clock: DeviceClock | None = None
        self._last_ticks = -1
        #: (bucket of the camera clock fit, leaders seen in it, the least delayed one held back)
        self._fit_bucket: tuple[int, int, tuple[int, int] | None] = (-1, 0, None)
        self._fit_t0 = 0  # the fit's first leader (ticks)

    # -- features --------------------------------------------------------------------------------
    def _client(self) -> GvcpClient:
        if self.gvcp is None:
            raise ConnectionLost(f"{self.name}: not connected")
        return self.gvcp

    def _feature(self, name: str) -> Feature:
        try:
            return self.features[name]
        except KeyError:
            raise DeviceError(f"{self.name}: the camera has no feature {name!r}") from None

    def get_feature(self, name: str) -> Any:
        """A feature's value: int, float, enum entry name, bool or str."""
        f = self._feature(name)
        c = self._client()
        if f.kind == "float":
            return struct.unpack(">d", c.read_mem(f.address, 8))[0]
        if f.kind == "string":
            return c.read_mem(f.address, f.size).split(b"\0", 1)[0].decode("ascii", "replace")
        v = c.read_reg(f.address)[0]
        if f.kind == "enum":
            return next((k for k, x in f.entries.items() if x == v), v)
        if f.kind == "bool":
            return bool(v)
        return v

    def set_feature(self, name: str, value: Any) -> None:
        """Write a feature (enum by entry name or value; command: any value executes it)."""
        f = self._feature(name)
        if f.access == "RO":
            raise DeviceError(f"{self.name}: feature {name} is read-only")
        c = self._client()
        if f.kind == "float":
            c.write_mem(f.address, struct.pack(">d", float(value)))
        elif f.kind == "command":
            c.write_reg((f.address, f.command_value))
        elif f.kind == "enum":
            v = f.entries.get(value) if isinstance(value, str) else int(value)
            if v is None:
                raise DeviceError(f"{self.name}: {name} has no entry {value!r} ({', '.join(f.entries)})")
            c.write_reg((f.address, v))
        elif f.kind in ("int", "bool"):
            c.write_reg((f.address, int(value)))
        else:
            raise DeviceError(f"{self.name}: cannot write {f.kind} feature {name}")
        if name == "ExposureTime":
            self._read_exposure()

    def _read_exposure(self) -> None:
        """ExposureTime (µs) as ns: a leader leaves the camera this long after its frame started."""
        self._exposure_ns = int(round(float(self.get_feature("ExposureTime")) * 1e3)) \
            if "ExposureTime" in self.features else 0

    def execute(self, name: str) -> None:
        """Execute a command feature (``AcquisitionStart``, ``TriggerSoftware``, ``NUCAction``)."""
        self.set_feature(name, 1)

    def trigger(self) -> None:
        """One software trigger (TriggerSoftware)."""
        self.execute("TriggerSoftware")

    # -- lifecycle ---------------------------------------------------------------------------------
    def open(self) -> None:
        s = self.settings
        self.gvcp = c = GvcpClient(self.ip, self.port)
        try:
            self.info = c.discover()
            url = c.read_mem(Bootstrap.FIRST_URL, 512).split(b"\0", 1)[0].decode("ascii", "replace")
            try:
                _, addr, length = parse_genicam_url(url)
            except ValueError as exc:
                raise DeviceError(f"{self.name}: {exc}") from None
            self.xml = c.read_mem(addr, (length + 3) // 4 * 4)[:length]
            try:
                self.features = parse_genicam_xml(self.xml)
            except ValueError as exc:
                raise DeviceError(f"{self.name}: {exc}") from None
            hi, lo = c.read_reg(Bootstrap.TIMESTAMP_TICK_FREQUENCY_HIGH, Bootstrap.TIMESTAMP_TICK_FREQUENCY_LOW)
            self.tick_hz = float(hi << 32 | lo) or 1e9
            c.write_reg((Bootstrap.CONTROL_CHANNEL_PRIVILEGE, Privilege.CONTROL))
            c.write_reg((Bootstrap.HEARTBEAT_TIMEOUT, s.heartbeat_ms))
            self._start_heartbeat()
            if self.features.get("AcquisitionStop"):
                self.execute("AcquisitionStop")
            if s.pixel_format is not None:
                self.set_feature("PixelFormat", s.pixel_format)
            if s.frame_rate_hz is not None:
                self.set_feature("AcquisitionFrameRate", s.frame_rate_hz)
            if s.exposure_us is not None:
                self.set_feature("ExposureTime", s.exposure_us)
            if s.gain_db is not None:
                self.set_feature("Gain", s.gain_db)
            if s.trigger is not None and "TriggerMode" in self.features:
                self.set_feature("TriggerMode", "Off" if s.trigger == "off" else "On")
                if s.trigger == "software":
                    self.set_feature("TriggerSource", "Software")
                elif s.trigger == "line0":
                    self.set_feature("TriggerSource", "Line0")
                    if "TriggerActivation" in self.features:
                        self.set_feature("TriggerActivation", "RisingEdge")
            elif s.trigger == "line0":
                raise DeviceError(f"{self.name}: trigger = 'line0' but the camera has no TriggerMode feature")
            for k, v in s.features.items():
                self.set_feature(k, v)
            self._read_geometry()
        except BaseException:
            self.close()
            raise

    def _read_geometry(self) -> None:
        self.width = int(self.get_feature("Width"))
        self.height = int(self.get_feature("Height"))
        pf = self.features["PixelFormat"]
        self.pixel_format = self._client().read_reg(pf.address)[0]
        self.payload_size = int(self.width * self.height * bytes_per_pixel(self.pixel_format))
        self._frame_rate = float(self.get_feature("AcquisitionFrameRate")) if "AcquisitionFrameRate" in \
            self.features else None
        self._radiometry = {}
        if all(k in self.features for k in ("R", "B", "F", "O")):
            self._radiometry = {k: float(self.get_feature(k)) for k in ("R", "B", "F", "O")}
            for k, key in (("ObjectEmissivity", "emissivity"), ("ReflectedTemperature", "reflected_c"),
                           ("ObjectDistance", "distance_m")):
                if k in self.features:
                    self._radiometry[key] = float(self.get_feature(k))
            if "TemperatureLinearMode" in self.features:
                self._radiometry["linear"] = self.get_feature("TemperatureLinearMode") == "On"
        self._read_exposure()

    def _start_heartbeat(self) -> None:
        self._hb_stop.clear()
        self._hb_error = None
        period = self.settings.heartbeat_ms / 3000.0

        def beat() -> None:
            last_ok = time.monotonic()
            while not self._hb_stop.wait(period):
                c = self.gvcp
                if c is None:
                    return
                try:
                    v = c.read_reg(Bootstrap.CONTROL_CHANNEL_PRIVILEGE)[0]
                    last_ok = time.monotonic()
                    if not v & (Privilege.CONTROL | Privilege.EXCLUSIVE):
                        self._hb_error = "the camera no longer grants this host control"
                        return
                except (ConnectionLost, DeviceError, OSError) as exc:
                    self.count("heartbeat_misses")
                    if time.monotonic() - last_ok > self.settings.heartbeat_ms / 1000.0:
                        self._hb_error = f"heartbeat failed: {exc}"
                        return

        self._hb_thread = threading.Thread(target=beat, name=f"gige-heartbeat-{self.name}", daemon=True)
        self._hb_thread.start()

    def start(self) -> None:
        c = self._client()
        self._read_geometry()
        s = self.settings
        if self._stream is None:
            st = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            st.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, s.rcvbuf_bytes)
            st.bind((c.local_ip, 0))
            st.setblocking(False)
            self._stream = st
        port = self._stream.getsockname()[1]
        ip_u32 = struct.unpack(">I", socket.inet_aton(c.local_ip))[0]
        c.write_reg((Bootstrap.STREAM_CHANNEL_0_PACKET_SIZE, s.packet_size),
                    (Bootstrap.STREAM_CHANNEL_0_IP_ADDRESS, ip_u32), (Bootstrap.STREAM_CHANNEL_0_PORT, port))
        self._rx = GvspReceiver(self.payload_size, s.packet_size, resend=s.resend, max_resends=s.max_resends,
                                resend_timeout_s=s.resend_timeout_ms / 1000, max_in_flight=16)
        self._expected = None
        self._held.clear()
        self._held_t.clear()
        self._cam_clock = DeviceClock(self.tick_hz, bucket_s=1.0, window_s=60.0) \
            if s.frame_triggers or s.trigger == "line0" else None
        self._last_ticks = -1
        self._fit_bucket = (-1, 0, None)
        if "TLParamsLocked" in self.features:
            self.set_feature("TLParamsLocked", 1)
        self.execute("AcquisitionStart")

    def stop(self) -> None:
        if self.gvcp is None:
            return
        try:
            self.execute("AcquisitionStop")
            if "TLParamsLocked" in self.features:
                self.set_feature("TLParamsLocked", 0)
        except (ConnectionLost, DeviceError):
            pass

    def close(self) -> None:
        self._hb_stop.set()
        c = self.gvcp
        if c is not None:
            try:
                c.write_reg((Bootstrap.CONTROL_CHANNEL_PRIVILEGE, 0))
            except (ConnectionLost, DeviceError, OSError):
                pass
        if self._hb_thread is not None:
            self._hb_thread.join(2)
            self._hb_thread = None
        if c is not None:
            c.close()
        self.gvcp = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    # -- descriptor -------------------------------------------------------------------------------
    def descriptor(self) -> StreamDescriptor:
        pf = _PF_NAMES.get(self.pixel_format, f"0x{self.pixel_format:08x}")
        bits = (self.pixel_format >> 16) & 0xFF
        dtype = "|u1" if bits == 8 else "<u2"
        modality = self.settings.modality or (self.info.user_name if self.info and self.info.user_name else "camera")
        geometry: dict[str, Any] = {"pixel_format": pf, "bits": 12 if "12" in pf else bits,
                                    "bayer": "RGGB" if pf.startswith("BayerRG") else None}
        scale = offset = None
        units = "counts"
        if self._radiometry:
            geometry["radiometry"] = self._radiometry
            if self._radiometry.get("linear"):
                scale, offset, units = 0.01, -273.15, "counts"
        return StreamDescriptor(
            stream=self.name, modality=modality,
            device=f"gige:{self.info.model if self.info else '?'} {self.info.serial if self.info else ''}".strip(),
            dtype=dtype, shape=[self.height, self.width], axes=["y", "x"], units=units,
            frame_rate_hz=self._frame_rate, scale=scale, offset=offset, geometry=geometry,
            meta={"address": self.address, "vendor": self.info.manufacturer if self.info else "",
                  "tick_hz": self.tick_hz})

    # -- data ---------------------------------------------------------------------------------------
    def _to_array(self, data: bytearray) -> np.ndarray:
        h, w = self.height, self.width
        pf = self.pixel_format
        if pf in (PixelFormat.BayerRG12p,):
            return unpack_12p(data, h * w).reshape(h, w)
        if (pf >> 16) & 0xFF == 8:
            return np.frombuffer(data, np.uint8).reshape(h, w)
        return np.frombuffer(data, "<u2").reshape(h, w)

    def read(self, timeout: float) -> Iterable[Frame | Gap]:
        if self._hb_error is not None:
            raise ConnectionLost(f"{self.name}: {self._hb_error}")
        st, rx, c = self._stream, self._rx, self._client()
        if st is None or rx is None:
            raise ConnectionLost(f"{self.name}: not started")
        deadline = time.monotonic() + timeout
        out: list[Frame | Gap] = []
        while True:
            got = 0
            while got < 2048:
                try:
                    n = st.recv_into(self._buf)
                except BlockingIOError:
                    break
                except OSError as exc:
                    raise ConnectionLost(f"{self.name}: stream socket: {exc}") from None
                rx.receive_data(self._view[:n], time.monotonic())
                got += 1
            now = time.monotonic()
            rx.tick(now)
            self._drain(rx, c, now)
            out.extend(self._release(now))
            left = deadline - time.monotonic()
            if out or left <= 0:
                return out
            select.select([st], [], [], min(left, 0.005))

    def _drain(self, rx: GvspReceiver, c: GvcpClient, now: float) -> None:
        t_mono = time.monotonic_ns()
        t_host = time.time_ns()
        while (ev := rx.next_event()) is not NEED_DATA:
            if isinstance(ev, BlockComplete):
                arr = self._to_array(ev.data)
                meta: dict[str, Any] = {"block_id": ev.block_id, "resent_packets": ev.resent_packets}
                if self._cam_clock is not None:
                    trig = self._frame_start(ev, t_host - t_mono)
                    if trig:
                        meta[FRAME_TRIGGERS_KEY] = trig
                self._hold(ev.block_id, Frame(arr, t_host, t_mono, t_device=ev.leader.timestamp / self.tick_hz,
                                              meta=meta), now)
                if ev.resent_packets:
                    self.count("frames_recovered")
            elif isinstance(ev, BlockLost):
                self.count("frames_lost")
                self._hold(ev.block_id, Gap(lost_frames=1, reason=f"block {ev.block_id}: {ev.reason} "
                                                                 f"({ev.missing} packets)"), now)
            elif isinstance(ev, ResendRequest):
                self._resend_id = self._resend_id % 0xFFFF + 1
                wire = c.codec.send(PacketResendCmd(self._resend_id, ev.block_id, ev.first_packet, ev.last_packet))
                try:
                    assert self._stream is not None
                    self._stream.sendto(wire, (self.ip, self.port))
                    self.count("resend_requests")
                except OSError:
                    self.count("resend_send_errors")
            elif isinstance(ev, Garbage):
                self.count("garbage_packets")
        self.counters["packets"] = rx.packets
        self.counters["resent_packets"] = rx.resent_packets
        self.counters["late_packets"] = rx.late_packets

    def _frame_start(self, ev: BlockComplete, real_minus_mono: int) -> list[dict[str, Any]]:
        """The block's trigger events (meta form) on the fitted camera clock: its frame start
        (``frame_triggers``) and, with ``trigger = "line0"``, the Line0 edge that started it; none
        (counted) when the leader carries no timestamp or none has fed the fit yet."""
        ticks = int(ev.leader.timestamp)
        if ticks <= 0:
            self.count("frame_starts_no_timestamp")
            return []
        if ticks >= 1 << 62:  # > 146 years at 1 GHz: not a clock reading (the fit's int64 would overflow)
            self.count("frame_starts_bad_timestamp")
            return []
        if ticks < self._last_ticks:  # the camera's timestamp was reset: a new clock
            self.count("timestamp_resets")
            self._cam_clock = DeviceClock(self.tick_hz, bucket_s=1.0, window_s=60.0)
            self._fit_bucket = (-1, 0, None)
        self._last_ticks = ticks
        clock = self._cam_clock
        assert clock is not None
        if ev.leader_t == ev.leader_t and (not ev.leader_resent or clock.updates == 0):
            t_arr = int(round(ev.leader_t * 1e9)) - self._exposure_ns
            if clock.updates and t_arr - int(clock.time_of(ticks)) > _LATE_LEADER_NS:
                # far above the envelope (a stalled thread): it cannot lower a bucket, but as the
                # first point of a new one it would bend a fit of few buckets
                self.count("late_leaders")
            else:
                self._feed(clock, ticks, t_arr)
        if clock.updates == 0:
            self.count("frame_starts_unplaced")
            return []
        lines = (["frame_start"] if self.settings.frame_triggers else []) + \
            (["Line0"] if self.settings.trigger == "line0" else [])
        return [clock_trigger(clock, ticks, line, real_minus_mono, t_device=ticks / self.tick_hz, latched=False,
                              sample=ev.block_id).to_meta() for line in lines]

    def _feed(self, clock: DeviceClock, ticks: int, t_arr_ns: int) -> None:
        """Feed the camera clock fit. The lower envelope keeps each 1-s bucket's least delayed
        leader, but the first leader of a new bucket alone would decide it, and while the fit has
        few buckets one delayed leader bends the line: a new bucket is fed the least delayed of its
        first :data:`_FIT_FIRST` leaders (or of all, if fewer come before the next bucket), the
        leaders after them directly."""
        if clock.updates == 0:
            clock.update(ticks, t_arr_ns)
            self._fit_t0 = ticks
            self._fit_bucket = (0, _FIT_FIRST, None)
            return
        k = (ticks - self._fit_t0) // max(1, int(round(self.tick_hz)))  # DeviceClock's 1-s buckets
        cur, seen, best = self._fit_bucket
        if k != cur:
            if best is not None:
                clock.update(*best)
            cur, seen, best = k, 0, None
        if seen >= _FIT_FIRST:
            clock.update(ticks, t_arr_ns)
        else:
            seen += 1
            p0 = 1e9 / self.tick_hz
            if best is None or t_arr_ns - ticks * p0 < best[1] - best[0] * p0:
                best = (ticks, t_arr_ns)
            if seen >= _FIT_FIRST:
                clock.update(*best)
                best = None
        self._fit_bucket = (cur, seen, best)

    def _hold(self, bid: int, item: Frame | Gap, now: float) -> None:
        if self._expected is None:
            self._expected = bid
        elif (bid - self._expected) % 0xFFFF > 0x8000:  # behind blocks already delivered
            self.count("late_blocks")
            if isinstance(item, Gap):  # still announced (its frame is lost), out of order
                self._late.append(item)
            return
        self._held[bid] = item
        self._held_t[bid] = now

    def _release(self, now: float, hold_s: float = 0.3) -> list[Frame | Gap]:
        """Held results in block order; a block id never seen at all is announced lost once a
        later block has waited ``hold_s``."""
        out: list[Frame | Gap] = self._late
        self._late = []
        while self._held and self._expected is not None:
            e = self._expected
            item = self._held.pop(e, None)
            if item is not None:
                self._held_t.pop(e, None)
                out.append(item)
                self._expected = 1 if e >= 0xFFFF else e + 1
                continue
            oldest = min(self._held_t.values())
            if now - oldest < hold_s:
                break
            # blocks between expected and the lowest held one never showed a single packet
            nxt = min(self._held, key=lambda b: (b - e) % 0xFFFF)
            missing = (nxt - e) % 0xFFFF
            out.append(Gap(lost_frames=missing, reason=f"blocks {e}..{nxt - 1}: no packet received"))
            self.count("frames_lost", missing)
            self._expected = nxt
        return out
