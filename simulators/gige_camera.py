"""GigE Vision camera simulator: a :mod:`camera_models` model behind GVCP/GVSP on real UDP.

:class:`GigECameraDevice` is the device (bootstrap registers, feature registers, the
GenICam XML in its memory, the control channel and its heartbeat, the stream channel and its
resend buffer); :class:`GigEVisionServer` is its UDP adapter (GVCP on ``host:port``, 3956 by
default; GVSP from an ephemeral port to the destination the controller writes in SCDA0/SCP0).

Control channel (GigE Vision, as Aravis's fake camera does it): the first host that writes the
control channel privilege register (0x0A00) with CONTROL or EXCLUSIVE becomes the controller;
only it may write registers or memory (others get ACCESS_DENIED). Any command from it resets
the heartbeat; after ``heartbeat timeout`` (register 0x0938, ms, default 3000) of silence it
loses control: privilege 0, acquisition stopped, stream channel cleared. Reads are open to all.

Streaming: AcquisitionStart with a stream destination set. Continuous mode (TriggerMode Off)
sends frames at AcquisitionFrameRate; with TriggerMode On each TriggerSoftware (TriggerSource
Software) or each rising edge on the trigger input (TriggerSource Line0, TriggerActivation
RisingEdge: the rig's trigger bus, :func:`~medacq.simulators.trigger_bus.attach` with line
``Line0``) starts one exposure, ``trigger_latency_us`` after the edge; an edge during the previous
exposure is ignored (``triggers_ignored_busy``); SingleFrame stops after one. Packets leave paced
at the simulated link rate (``link_MBps``, 125 = 1 GbE; 0 = as fast as the socket takes them). The
last blocks' packets stay in a resend buffer (``resend_buffer_mb``): PACKETRESEND from any host
resends them with status 0x0100.

Clock and frame start: the camera counts its own timestamp clock (GevTimestampTickFrequency
1 GHz nominal) from ``clock_offset_s`` at the adapter's start, running ``clock_ppm`` fast
against the host's CLOCK_MONOTONIC; continuous frames are paced by that oscillator too. A frame's
GVSP leader timestamp is its exposure start on that clock; its packets leave once the exposure
(ExposureTime) is over and the frame is read out. :attr:`GigECameraDevice.frame_starts` keeps the
true exposure starts (adapter seconds; :meth:`GigEVisionServer.true_frame_starts` gives them on
CLOCK_MONOTONIC) for tests and benches; no driver sees them.

Faults (besides the adapter's ``stall``/``pull_cable``): ``drop(n)`` loses the next n GVSP
packets on the wire (recoverable by resend), :meth:`GigECameraDevice.lose` loses them for good
(also from the resend buffer: the frame is announced lost), :meth:`GigECameraDevice.reorder`
swaps neighbouring packets, ``inject_error`` answers the next n commands with an error status.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from medacq.protocols._sansio import NEED_DATA, Garbage
from medacq.protocols.genicam import Feature, genicam_xml
from medacq.protocols.gigev import (
    GVCP_PORT, Bootstrap, Capability, DiscoveryAck, DiscoveryCmd, GvcpCodec, GvcpCommand, GvcpErrorAck, GvcpStatus,
    GvspStatus, PacketResendCmd, Privilege, ReadMemAck, ReadMemCmd, ReadRegAck, ReadRegCmd, WriteMemAck, WriteMemCmd,
    WriteRegAck, WriteRegCmd, block_packets, bytes_per_pixel, make_genicam_url, next_block_id, pack_12p,
)
from medacq.simulators._interface import DeviceFaults
from medacq.simulators.adapters import FaultInjector, PortInUseError
from medacq.simulators.camera_models import CameraModel, EndoscopeModel, ModelFeature, PhotoModel, ThermalModel

__all__ = ["GigECameraDevice", "GigEVisionServer", "make", "FEATURE_BASE", "XML_ADDRESS"]

#: first feature register address
FEATURE_BASE = 0x0001_0000
#: where the GenICam XML lives in device memory
XML_ADDRESS = 0x0002_0000
_MEM_FEATURES = 0x1000
_TICKS_PER_S = 1_000_000_000  # timestamp tick frequency: 1 GHz (ns)

Dest = tuple[str, int]


class GigECameraDevice(DeviceFaults):
    """One GigE Vision camera (device role). Not thread-safe: the server calls it under its lock.

    ``handle(datagram, src, t)`` answers one GVCP datagram; ``poll(t)`` returns the GVSP
    packets due; both return ``[(bytes, destination)]``.
    """

    #: served on UDP (``medacq sim`` asks :meth:`udp_server` for its adapter)
    transport = "udp"

    def udp_server(self, host: str = "127.0.0.1", port: int = GVCP_PORT, link_MBps: float = 125.0) -> "GigEVisionServer":
        """The UDP adapter serving this camera (not started)."""
        return GigEVisionServer(self, host, port, link_MBps=link_MBps)

    def __init__(self, model: CameraModel, *, ip: str = "127.0.0.1", mac: bytes = b"\x02\x00\x4d\x41\x43\x01",
                 packet_size: int = 9000, heartbeat_ms: int = 3000, resend_buffer_mb: float = 64.0,
                 clock_ppm: float = 0.0, clock_offset_s: float = 0.0, trigger_latency_us: float = 20.0) -> None:
        if not (abs(clock_ppm) <= 10_000 and clock_offset_s >= 0 and 0 <= trigger_latency_us <= 1e6):
            raise ValueError("clock_ppm must be within +-10000, clock_offset_s >= 0, trigger_latency_us in [0, 1e6]")
        self.model = model
        #: the timestamp clock's rate error vs CLOCK_MONOTONIC (ppm; positive: the camera runs fast)
        self.clock_ppm = float(clock_ppm)
        #: the timestamp clock's reading (s) at the adapter's t = 0
        self.clock_offset_s = float(clock_offset_s)
        #: trigger input edge -> exposure start (s)
        self.trigger_latency_s = float(trigger_latency_us) * 1e-6
        #: the rig trigger bus cabled to input Line0 (:func:`~medacq.simulators.trigger_bus.attach`)
        self.trigger: Any = None
        self.trigger_source = 0  # Software
        #: true exposure starts of the frames sent: (frame index, block id, adapter time s, leader ticks)
        self.frame_starts: deque[tuple[int, int, float, int]] = deque(maxlen=100_000)
        self._starts: deque[float] = deque()  # triggered exposure starts waiting for their readout
        self._line_seen = 0.0
        self.codec = GvcpCodec("device")
        self.ip = ip
        self.features: list[Feature] = []
        self._setters: dict[int, Any] = {}
        self._getters: dict[int, Any] = {}
        self._build_features()
        self.xml = genicam_xml(self.features, model=model.model_name, vendor=model.vendor,
                               tooltip=f"medacq simulated {model.family} camera").encode()
        xml_len = (len(self.xml) + 3) // 4 * 4
        self.mem = bytearray(XML_ADDRESS + xml_len)
        self.mem[XML_ADDRESS:XML_ADDRESS + len(self.xml)] = self.xml
        self._init_bootstrap(mac, packet_size, heartbeat_ms, xml_len)
        self.controller: Dest | None = None
        self.controller_t = 0.0
        self.acquiring = False
        self.trigger_pending = 0
        self.acq_mode = 0  # Continuous
        self.trigger_mode = 0
        self.tl_locked = 0
        self.block_id = 0
        self.frame_index = 0
        self._next_frame: float | None = None
        self._resend: OrderedDict[int, list[bytes]] = OrderedDict()
        self._resend_bytes = 0
        self.resend_limit = int(resend_buffer_mb * 1e6)
        self._drop = 0
        self._lose = 0
        self._reorder = 0
        self.sent_blocks: dict[int, int] = {}  # block id → frame index (recent)
        self.last_frame: np.ndarray | None = None
        self.counters = {"commands": 0, "denied": 0, "garbage": 0, "resend_requests": 0, "resent_packets": 0,
                         "resend_unavailable": 0, "frames": 0, "packets": 0, "dropped_packets": 0, "lost_packets": 0,
                         "heartbeat_expired": 0, "frames_skipped_busy": 0, "line_triggers": 0,
                         "triggers_ignored_busy": 0}
        self.keep_frames = 0  # tests: keep the last n frames' pixels (frame index → array)
        self.frames: OrderedDict[int, np.ndarray] = OrderedDict()

    # -- registers --------------------------------------------------------------------------
    def _w32(self, addr: int, v: int) -> None:
        struct.pack_into(">I", self.mem, addr, v & 0xFFFFFFFF)

    def _r32(self, addr: int) -> int:
        return struct.unpack_from(">I", self.mem, addr)[0]

    def _wstr(self, addr: int, s: str, size: int) -> None:
        b = s.encode("ascii")[: size - 1]
        self.mem[addr:addr + size] = b.ljust(size, b"\0")

    def _init_bootstrap(self, mac: bytes, packet_size: int, heartbeat_ms: int, xml_len: int) -> None:
        m = self.model
        self._w32(Bootstrap.VERSION, 2 << 16 | 0)
        self._w32(Bootstrap.DEVICE_MODE, 1 << 31)  # big-endian registers, UTF-8 charset 0
        self._w32(Bootstrap.MAC_HIGH, int.from_bytes(mac[:2], "big"))
        self._w32(Bootstrap.MAC_LOW, int.from_bytes(mac[2:], "big"))
        self._w32(Bootstrap.SUPPORTED_IP_CONFIGURATION, 0x7)
        self._w32(Bootstrap.CURRENT_IP_CONFIGURATION, 0x6)
        self.mem[Bootstrap.CURRENT_IP:Bootstrap.CURRENT_IP + 4] = socket.inet_aton(self.ip)
        self.mem[Bootstrap.CURRENT_SUBNET_MASK:Bootstrap.CURRENT_SUBNET_MASK + 4] = socket.inet_aton("255.0.0.0")
        self._wstr(Bootstrap.MANUFACTURER_NAME, m.vendor, 32)
        self._wstr(Bootstrap.MODEL_NAME, m.model_name, 32)
        self._wstr(Bootstrap.DEVICE_VERSION, "medacq-sim 1.0", 32)
        self._wstr(Bootstrap.MANUFACTURER_INFO, f"simulated {m.family} camera", 48)
        self._wstr(Bootstrap.SERIAL_NUMBER, m.serial, 16)
        self._wstr(Bootstrap.USER_DEFINED_NAME, m.family, 16)
        self._wstr(Bootstrap.FIRST_URL, make_genicam_url(f"medacq_{m.family}.xml", XML_ADDRESS, len(self.xml)), 512)
        self._wstr(Bootstrap.SECOND_URL, "", 512)
        self._w32(Bootstrap.N_NETWORK_INTERFACES, 1)
        self._w32(Bootstrap.N_MESSAGE_CHANNELS, 0)
        self._w32(Bootstrap.N_STREAM_CHANNELS, 1)
        self._w32(Bootstrap.GVCP_CAPABILITY, Capability.WRITE_MEMORY | Capability.PACKET_RESEND
                  | Capability.SERIAL_NUMBER | Capability.NAME_REGISTER)
        self._w32(Bootstrap.HEARTBEAT_TIMEOUT, heartbeat_ms)
        self._w32(Bootstrap.TIMESTAMP_TICK_FREQUENCY_HIGH, _TICKS_PER_S >> 32)
        self._w32(Bootstrap.TIMESTAMP_TICK_FREQUENCY_LOW, _TICKS_PER_S & 0xFFFFFFFF)
        self._w32(Bootstrap.STREAM_CHANNEL_0_PACKET_SIZE, packet_size)
        _ = xml_len

    def _build_features(self) -> None:
        m = self.model
        addr = FEATURE_BASE
        feats: list[Feature] = []

        def add(f: Feature, get: Any, set_: Any = None) -> None:
            feats.append(f)
            self._getters[f.address] = get
            if set_ is not None:
                self._setters[f.address] = set_

        def nxt(size: int = 8) -> int:
            nonlocal addr
            a = addr
            addr += size
            return a

        add(Feature("Width", "int", nxt(), "RO", m.width, m.width, 1, category="ImageFormatControl"),
            lambda: m.width)
        add(Feature("Height", "int", nxt(), "RO", m.height, m.height, 1, category="ImageFormatControl"),
            lambda: m.height)
        add(Feature("PixelFormat", "enum", nxt(), "RW", entries={k: int(v) for k, v in m.pixel_formats.items()},
                    category="ImageFormatControl"), lambda: m.pfnc, self._set_pixel_format)
        add(Feature("PayloadSize", "int", nxt(), "RO", category="ImageFormatControl"), lambda: self.payload_size)
        add(Feature("AcquisitionMode", "enum", nxt(), "RW", entries={"Continuous": 0, "SingleFrame": 1},
                    category="AcquisitionControl"), lambda: self.acq_mode, self._set_acq_mode)
        add(Feature("AcquisitionStart", "command", nxt(), "WO", category="AcquisitionControl"), lambda: 0,
            lambda v: self._start())
        add(Feature("AcquisitionStop", "command", nxt(), "WO", category="AcquisitionControl"), lambda: 0,
            lambda v: self._stop())
        add(Feature("AcquisitionFrameRate", "float", nxt(), "RW", 0.1, m.max_frame_rate_hz, unit="Hz",
                    category="AcquisitionControl"), lambda: m.frame_rate_hz, self._float_setter("frame_rate_hz", 0.1,
                                                                                               m.max_frame_rate_hz))
        add(Feature("ExposureTime", "float", nxt(), "RW", 10.0, 1e6, unit="us", category="AcquisitionControl"),
            lambda: m.exposure_us, self._float_setter("exposure_us", 10.0, 1e6))
        add(Feature("TriggerMode", "enum", nxt(), "RW", entries={"Off": 0, "On": 1}, category="AcquisitionControl"),
            lambda: self.trigger_mode, self._set_trigger_mode)
        add(Feature("TriggerSource", "enum", nxt(), "RW", entries={"Software": 0, "Line0": 1},
                    category="AcquisitionControl"), lambda: self.trigger_source, self._set_trigger_source)
        add(Feature("TriggerActivation", "enum", nxt(), "RW", entries={"RisingEdge": 0},
                    category="AcquisitionControl"), lambda: 0, lambda v: self._check_entry(v, (0,)))
        add(Feature("TriggerSoftware", "command", nxt(), "WO", category="AcquisitionControl"), lambda: 0,
            lambda v: self._trigger())
        add(Feature("Gain", "float", nxt(), "RW", 0.0, 24.0, unit="dB", category="AnalogControl"),
            lambda: m.gain_db, self._float_setter("gain_db", 0.0, 24.0))
        add(Feature("DeviceTemperature", "float", nxt(), "RO", unit="C", category="DeviceControl"),
            lambda: m.device_temperature_c)
        add(Feature("TLParamsLocked", "int", nxt(), "RW", 0, 1, 1, category="TransportLayerControl"),
            lambda: self.tl_locked, lambda v: setattr(self, "tl_locked", int(v)))
        for mf in m.features():
            self._add_model_feature(mf, nxt(), add)
        self.features = feats

    def _add_model_feature(self, mf: ModelFeature, a: int, add: Any) -> None:
        m = self.model
        cat = f"{m.family.capitalize()}Control"
        if mf.kind == "command":
            add(Feature(mf.name, "command", a, "WO", description=mf.description, category=cat), lambda: 0,
                lambda v: getattr(m, mf.attr)())
            return
        f = Feature(mf.name, mf.kind, a, mf.access, mf.minimum, mf.maximum,  # type: ignore[arg-type]
                    unit=mf.unit, entries=mf.entries, description=mf.description, category=cat)
        setter = None
        if mf.access != "RO":
            if mf.kind == "float":
                setter = self._float_setter(mf.attr, mf.minimum, mf.maximum)
            else:
                entries = tuple(mf.entries.values())

                def setter(v: int, attr: str = mf.attr) -> None:
                    if entries and v not in entries:
                        raise _Refused(GvcpStatus.INVALID_PARAMETER)
                    setattr(m, attr, int(v))
        add(f, lambda: getattr(m, mf.attr), setter)

    def _float_setter(self, attr: str, lo: float | None, hi: float | None) -> Any:
        def set_(v: float) -> None:
            if (lo is not None and v < lo) or (hi is not None and v > hi) or v != v:
                raise _Refused(GvcpStatus.INVALID_PARAMETER)
            setattr(self.model, attr, float(v))
            if attr == "frame_rate_hz" and self._next_frame is not None:
                self._next_frame = min(self._next_frame, self._now + 1.0 / float(v))
        return set_

    @staticmethod
    def _check_entry(v: int, ok: tuple[int, ...]) -> None:
        if v not in ok:
            raise _Refused(GvcpStatus.INVALID_PARAMETER)

    def _set_pixel_format(self, v: int) -> None:
        names = {int(code): n for n, code in self.model.pixel_formats.items()}
        if v not in names:
            raise _Refused(GvcpStatus.INVALID_PARAMETER)
        if self.acquiring:
            raise _Refused(GvcpStatus.BUSY)
        self.model.pixel_format = names[v]

    def _set_acq_mode(self, v: int) -> None:
        self._check_entry(v, (0, 1))
        self.acq_mode = v

    def _set_trigger_mode(self, v: int) -> None:
        self._check_entry(v, (0, 1))
        self.trigger_mode = v

    def _set_trigger_source(self, v: int) -> None:
        self._check_entry(v, (0, 1))
        self.trigger_source = v

    # -- the camera's own clock ---------------------------------------------------------------
    def device_ticks(self, t: float) -> int:
        """The timestamp counter (ticks of 1 ns nominal) at adapter time ``t`` (s)."""
        return int(round((self.clock_offset_s + t * (1.0 + self.clock_ppm * 1e-6)) * _TICKS_PER_S))

    @property
    def exposure_s(self) -> float:
        """ExposureTime (s): a frame's packets leave this long after its exposure started."""
        return float(self.model.exposure_us) * 1e-6

    @property
    def frame_period_s(self) -> float:
        """Continuous mode's frame period on the host clock (the camera's oscillator paces it)."""
        return 1.0 / (self.model.frame_rate_hz * (1.0 + self.clock_ppm * 1e-6))

    def _line_edges(self, t: float) -> None:
        """Rising edges on Line0 up to adapter time ``t`` start exposures (trigger mode, Line0)."""
        inp = self.trigger
        if inp is None:
            self._line_seen = t
            return
        lo = self._line_seen
        while (e := inp.first_edge(lo, t)) is not None:
            lo = e + 1e-9
            start = e + self.trigger_latency_s
            busy_until = (self._starts[-1] if self._starts else self._last_start) + self.exposure_s
            if start < busy_until:
                self.counters["triggers_ignored_busy"] += 1
                continue
            self._starts.append(start)
            self.counters["line_triggers"] += 1
        self._line_seen = max(self._line_seen, t)

    _last_start = float("-inf")

    @property
    def payload_size(self) -> int:
        m = self.model
        return int(m.width * m.height * bytes_per_pixel(m.pfnc))

    @property
    def packet_size(self) -> int:
        return self._r32(Bootstrap.STREAM_CHANNEL_0_PACKET_SIZE) & 0xFFFF

    @property
    def stream_dest(self) -> Dest | None:
        port = self._r32(Bootstrap.STREAM_CHANNEL_0_PORT) & 0xFFFF
        ip = socket.inet_ntoa(bytes(self.mem[Bootstrap.STREAM_CHANNEL_0_IP_ADDRESS:Bootstrap.STREAM_CHANNEL_0_IP_ADDRESS
                                             + 4]))
        if not port or ip == "0.0.0.0":
            return None
        return ip, port

    def _refresh(self) -> None:
        """Feature registers show the model's current values."""
        for f in self.features:
            if f.kind in ("command",):
                continue
            v = self._getters[f.address]()
            if f.kind == "float":
                struct.pack_into(">d", self.mem, f.address, float(v))
            elif f.kind != "string":
                self._w32(f.address, int(v))

    def _feature_at(self, addr: int) -> Feature | None:
        for f in self.features:
            if f.address <= addr < f.address + f.size:
                return f
        return None

    def _write(self, addr: int, data: bytes) -> None:
        """Write bytes at ``addr`` (registers apply their effect); :class:`_Refused` on error."""
        if addr % 4 or len(data) % 4:
            raise _Refused(GvcpStatus.BAD_ALIGNMENT)
        end = addr + len(data)
        if end > len(self.mem):
            raise _Refused(GvcpStatus.INVALID_ADDRESS)
        if FEATURE_BASE <= addr < FEATURE_BASE + _MEM_FEATURES:
            f = self._feature_at(addr)
            if f is None or f.access == "RO":
                raise _Refused(GvcpStatus.WRITE_PROTECT)
            if f.kind == "float":
                if addr != f.address or len(data) != 8:
                    raise _Refused(GvcpStatus.INVALID_PARAMETER)
                v: Any = struct.unpack(">d", data)[0]
            else:
                v = struct.unpack(">I", data[:4])[0]
            setter = self._setters.get(f.address)
            if setter is None:
                raise _Refused(GvcpStatus.WRITE_PROTECT)
            setter(v)
            return
        if addr >= XML_ADDRESS or addr < Bootstrap.HEARTBEAT_TIMEOUT and addr not in (Bootstrap.CURRENT_IP_CONFIGURATION,):
            raise _Refused(GvcpStatus.WRITE_PROTECT)
        self.mem[addr:end] = data
        if addr <= Bootstrap.CONTROL_CHANNEL_PRIVILEGE < end:
            v = self._r32(Bootstrap.CONTROL_CHANNEL_PRIVILEGE) & (Privilege.CONTROL | Privilege.EXCLUSIVE)
            self._w32(Bootstrap.CONTROL_CHANNEL_PRIVILEGE, v)

    # -- control -----------------------------------------------------------------------------
    _now = 0.0

    def _start(self) -> None:
        if self.stream_dest is None:
            raise _Refused(GvcpStatus.INVALID_PARAMETER)  # no destination: nowhere to stream
        if not self.acquiring:
            self.acquiring = True
            self._next_frame = self._now
            self.trigger_pending = 0
            self._starts.clear()
            self._line_seen = self._now  # edges before AcquisitionStart start nothing

    def _stop(self) -> None:
        self.acquiring = False
        self._next_frame = None
        self.trigger_pending = 0
        self._starts.clear()

    def _trigger(self) -> None:
        if self.acquiring and self.trigger_mode and self.trigger_source == 0:
            self.trigger_pending += 1
            self._starts.append(self._now)

    @property
    def heartbeat_s(self) -> float:
        return self._r32(Bootstrap.HEARTBEAT_TIMEOUT) / 1000.0

    def _check_heartbeat(self, t: float) -> None:
        if self.controller is not None and t - self.controller_t > self.heartbeat_s:
            self.release_control()
            self.counters["heartbeat_expired"] += 1

    def release_control(self) -> None:
        """The controller is gone: privilege 0, acquisition stopped, stream channel cleared."""
        self.controller = None
        self._w32(Bootstrap.CONTROL_CHANNEL_PRIVILEGE, 0)
        self._stop()
        self._w32(Bootstrap.STREAM_CHANNEL_0_PORT, 0)
        self._w32(Bootstrap.STREAM_CHANNEL_0_IP_ADDRESS, 0)
        self.tl_locked = 0

    def handle(self, datagram: bytes, src: Dest, t: float) -> list[tuple[bytes, Dest]]:
        """Answer one GVCP datagram from ``src`` at time ``t`` (s)."""
        self._now = t
        if src == self.controller:  # any command from the controller is a heartbeat
            self.controller_t = t
        self._check_heartbeat(t)
        self.codec.receive_data(datagram)
        out: list[tuple[bytes, Dest]] = []
        while (ev := self.codec.next_event()) is not NEED_DATA:
            if isinstance(ev, Garbage):
                self.counters["garbage"] += 1
                continue
            self.counters["commands"] += 1
            if isinstance(ev, PacketResendCmd):
                out += self._resend_packets(ev)
                continue
            injected = None if isinstance(ev, DiscoveryCmd) else self.take_injected_error()
            if injected is not None:
                code = injected[1] if injected[1] is not None else GvcpStatus.BUSY
                out.append((self.codec.send(GvcpErrorAck(ev.req_id, _ACK_OF[type(ev)], int(code) | 0x8000)), src))
                continue
            try:
                reply = self._command(ev, src, t)
            except _Refused as exc:
                if exc.status == GvcpStatus.ACCESS_DENIED:
                    self.counters["denied"] += 1
                reply = GvcpErrorAck(ev.req_id, _ACK_OF[type(ev)], int(exc.status))
            out.append((self.codec.send(reply), src))
        return out

    def _writable_by(self, src: Dest) -> bool:
        return self.controller is None or self.controller == src

    def _command(self, ev: Any, src: Dest, t: float) -> Any:
        if isinstance(ev, DiscoveryCmd):
            self._refresh()
            return DiscoveryAck(ev.req_id, bytes(self.mem[:Bootstrap.DISCOVERY_DATA_SIZE]))
        if isinstance(ev, ReadRegCmd):
            self._refresh()
            vals = []
            for a in ev.addresses:
                if a % 4:
                    raise _Refused(GvcpStatus.BAD_ALIGNMENT)
                if a + 4 > len(self.mem):
                    raise _Refused(GvcpStatus.INVALID_ADDRESS)
                vals.append(self._r32(a))
            return ReadRegAck(ev.req_id, tuple(vals))
        if isinstance(ev, ReadMemCmd):
            self._refresh()
            if ev.address + ev.size > len(self.mem):
                raise _Refused(GvcpStatus.INVALID_ADDRESS)
            return ReadMemAck(ev.req_id, ev.address, bytes(self.mem[ev.address:ev.address + ev.size]))
        if isinstance(ev, (WriteRegCmd, WriteMemCmd)):
            if not self._writable_by(src):
                raise _Refused(GvcpStatus.ACCESS_DENIED)
            if isinstance(ev, WriteRegCmd):
                n = 0
                for a, v in ev.writes:
                    self._write(a, struct.pack(">I", v))
                    n += 1
                result: Any = WriteRegAck(ev.req_id, n)
            else:
                self._write(ev.address, ev.data)
                result = WriteMemAck(ev.req_id, len(ev.data))
            priv = self._r32(Bootstrap.CONTROL_CHANNEL_PRIVILEGE)
            if self.controller is None and priv:
                self.controller, self.controller_t = src, t
            elif self.controller is not None and not priv:
                self.release_control()
            return result
        raise _Refused(GvcpStatus.NOT_IMPLEMENTED)

    # -- streaming -----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        hb = self.controller_t + self.heartbeat_s + 1e-3 if self.controller is not None else None
        if not self.acquiring:
            return hb
        if not self.trigger_mode:
            frame = None if self._next_frame is None else self._next_frame + self.exposure_s
        elif self._starts:
            frame = self._starts[0] + self.exposure_s
        else:  # Line0: look at the line again soon
            frame = self._now + 0.002 if self.trigger_source == 1 and self.trigger is not None else None
        cands = [x for x in (hb, frame) if x is not None]
        return min(cands) if cands else None

    def poll(self, t: float) -> list[tuple[bytes, Dest]]:
        """GVSP packets due by ``t`` (one frame at most per call): :meth:`take_due`, :meth:`build`
        and :meth:`commit` in one (the server runs :meth:`build` outside its lock)."""
        job = self.take_due(t)
        if job is None:
            return []
        return self.commit(job, *self.build(job))

    def skip_due(self, t: float) -> bool:
        """A frame due by ``t`` that the camera cannot take because its frame buffer is full (the
        link has not carried the previous ones yet): its slot passes without an exposure, a block
        id or a frame index, counted in ``frames_skipped_busy`` (a real camera's frame-buffer
        overrun: what ``ResultingFrameRate`` below ``AcquisitionFrameRate`` means). ``True`` when a
        slot was skipped."""
        if (not self.acquiring or self.stream_dest is None or self.trigger_mode or self._next_frame is None
                or t < self._next_frame + self.exposure_s):
            return False
        period = self.frame_period_s
        self._next_frame += period
        if self._next_frame + self.exposure_s < t - 2 * period:
            self._next_frame = t + period
        self.counters["frames_skipped_busy"] += 1
        return True

    def take_due(self, t: float, ahead_s: float = 0.0) -> "_FrameJob | None":
        """The frame due by ``t``, if any (its block id and frame index are taken now). A frame is
        due when its exposure is over; ``ahead_s``: take it that much earlier (the adapter renders
        it during the exposure and holds its packets until ``job.t_ready``)."""
        self._now = t
        self._check_heartbeat(t)
        if not self.acquiring:
            return None
        dest = self.stream_dest
        if dest is None:
            return None
        if self.trigger_mode:
            if self.trigger_source == 1:
                self._line_edges(t)
            if not self._starts or t + ahead_s < self._starts[0] + self.exposure_s:
                return None
            start = self._starts.popleft()
            if self.trigger_source == 0:
                self.trigger_pending = max(0, self.trigger_pending - 1)
        else:
            if self._next_frame is None or t + ahead_s < self._next_frame + self.exposure_s:
                return None
            start = self._next_frame
            period = self.frame_period_s
            self._next_frame += period
            if self._next_frame + self.exposure_s < t - 2 * period:  # far behind: skip (frames are not queued)
                self._next_frame = t + period
        self._last_start = start
        self.block_id = next_block_id(self.block_id)
        job = _FrameJob(self.block_id, self.frame_index, t, dest, self.packet_size, start, self.device_ticks(start),
                        self.exposure_s)
        self.frame_index += 1
        if self.acq_mode == 1:
            self._stop()
        return job

    def build(self, job: "_FrameJob") -> tuple[np.ndarray, list[bytes]]:
        """Render and packetize a frame (touches only the model; may run outside the lock)."""
        m = self.model
        img = m.render(job.index, job.t)
        if m.pixel_format.endswith("12p"):
            payload: Any = pack_12p(img)
        elif img.dtype == np.uint8:
            payload = np.ascontiguousarray(img).reshape(-1)
        else:  # multi-byte pixels are little-endian on the wire (PFNC)
            payload = np.ascontiguousarray(img, dtype="<u2").tobytes()
        return img, block_packets(job.block_id, job.ticks, m.pfnc, m.width, m.height, payload, job.packet_size)

    def commit(self, job: "_FrameJob", img: np.ndarray, pk: list[bytes]) -> list[tuple[bytes, Dest]]:
        """Record a built frame (resend buffer, truth) and return its packets, faults applied."""
        self.sent_blocks[job.block_id] = job.index
        self.frame_starts.append((job.index, job.block_id, job.t_start, job.ticks))
        if len(self.sent_blocks) > 256:
            self.sent_blocks.pop(next(iter(self.sent_blocks)))
        if self.keep_frames:
            self.frames[job.index] = img.copy()
            while len(self.frames) > self.keep_frames:
                self.frames.popitem(last=False)
        self.last_frame = img
        self.counters["frames"] += 1
        self._resend[job.block_id] = pk
        self._resend_bytes += sum(len(p) for p in pk)
        while self._resend_bytes > self.resend_limit and len(self._resend) > 1:
            _, old = self._resend.popitem(last=False)
            self._resend_bytes -= sum(len(p) for p in old)
        return self._wire(pk, job.dest, job.block_id)

    def _wire(self, packets: list[bytes], dest: Dest, block_id: int) -> list[tuple[bytes, Dest]]:
        """Apply the stream faults (drop, lose, reorder) and address the packets."""
        out: list[tuple[bytes, Dest]] = []
        ring = self._resend.get(block_id)
        for i, p in enumerate(packets):
            if self._lose:
                self._lose -= 1
                self.counters["lost_packets"] += 1
                if ring is not None:
                    ring[i] = b""  # gone from the resend buffer too
                continue
            if self._drop:
                self._drop -= 1
                self.counters["dropped_packets"] += 1
                continue
            out.append((p, dest))
        if self._reorder and len(out) > 3:
            k = 1
            while self._reorder and k + 1 < len(out) - 1:
                out[k], out[k + 1] = out[k + 1], out[k]
                self._reorder -= 1
                k += 3
        self.counters["packets"] += len(out)
        return out

    def _resend_packets(self, ev: PacketResendCmd) -> list[tuple[bytes, Dest]]:
        self.counters["resend_requests"] += 1
        dest = self.stream_dest
        pk = self._resend.get(ev.block_id)
        if dest is None or pk is None:
            self.counters["resend_unavailable"] += 1
            return []
        out = []
        for pid in range(ev.first_packet, min(ev.last_packet, len(pk) - 1) + 1):
            p = pk[pid]
            if not p:
                self.counters["resend_unavailable"] += 1
                continue
            out.append((struct.pack(">H", GvspStatus.PACKET_RESEND) + p[2:], dest))
        self.counters["resent_packets"] += len(out)
        return out

    # -- faults ---------------------------------------------------------------------------------
    def drop(self, n: int) -> None:
        """The next ``n`` GVSP packets never reach the wire (still in the resend buffer)."""
        self._drop += int(n)

    def lose(self, n: int) -> None:
        """The next ``n`` GVSP packets are lost for good (resend cannot recover them)."""
        self._lose += int(n)

    def reorder(self, n: int) -> None:
        """Swap ``n`` pairs of neighbouring payload packets in the next frames."""
        self._reorder += int(n)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """The next ``n`` GVCP commands (not DISCOVERY) get an error acknowledge (``code``: a
        GVCP status, default BUSY 0x8007)."""
        self.queue_error(message, n, code)

    _injected: tuple[int, str, int | None] = (0, "", None)

    def queue_error(self, message: str, n: int, code: int | None) -> None:
        self._injected = (int(n), str(message), None if code is None else int(code))

    def take_injected_error(self) -> tuple[str, int | None] | None:
        n, message, code = self._injected
        if n <= 0:
            return None
        self._injected = (n - 1, message, code)
        return message, code

    @property
    def streaming(self) -> bool:
        return self.acquiring

    def truth(self) -> dict[str, Any]:
        return {**self.model.truth(), "frame_index": self.frame_index, "block_id": self.block_id,
                "acquiring": self.acquiring, "controller": self.controller, "clock_ppm": self.clock_ppm,
                "clock_offset_s": self.clock_offset_s, "trigger_source": "Line0" if self.trigger_source else "Software",
                "trigger_cabled": self.trigger is not None, **self.counters}


_UDP_IP_BYTES = 28
"""IPv4 and UDP header bytes a GVSP packet adds on the link."""
_MIN_BURST_BYTES = 256 * 1024
"""The link's credit (bytes) when no frame is queued: resent packets and garbage datagrams."""


@dataclass(frozen=True, slots=True)
class _FrameJob:
    block_id: int
    index: int
    t: float
    dest: Dest
    packet_size: int
    t_start: float = 0.0  # exposure start (adapter time, s)
    ticks: int = 0  # the same on the camera's timestamp clock (leader timestamp)
    exposure_s: float = 0.0

    @property
    def t_ready(self) -> float:
        """When the exposure is over and the frame's packets may leave (adapter time, s)."""
        return self.t_start + self.exposure_s


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status 0x{status:04x}")
        self.status = status


_ACK_OF: dict[type, int] = {DiscoveryCmd: GvcpCommand.DISCOVERY_ACK, ReadRegCmd: GvcpCommand.READREG_ACK,
                            WriteRegCmd: GvcpCommand.WRITEREG_ACK, ReadMemCmd: GvcpCommand.READMEM_ACK,
                            WriteMemCmd: GvcpCommand.WRITEMEM_ACK, PacketResendCmd: GvcpCommand.PACKETRESEND_ACK}


# ---------------------------------------------------------------------------------------------
class GigEVisionServer:
    """Serve a :class:`GigECameraDevice` on UDP in a background thread (the UDP adapter).

    Args:
        device: the camera.
        host, port: GVCP bind address (port 3956 is what Aravis talks to; 0 picks a free one).
        link_MBps: simulated link rate for GVSP (MB/s; 125 ≈ 1 GbE; 0 = unpaced). A frame's
            packets leave at that rate from the end of its exposure (or from the end of the
            previous frame on the link); when the host kept this thread off the CPU, the late
            packets leave at once, up to one frame's bytes, so the simulated link catches up with
            the camera's schedule instead of carrying the host's delay into every later frame (a
            1080p60 BayerRG8 stream fills 99.94 % of 1 GbE: at that rate it never could).
        sndbuf: GVSP socket send buffer (bytes).
        frame_buffer: frames the camera holds while the link carries them (the one being sent
            included): a frame due while that many are still queued is skipped
            (:meth:`GigECameraDevice.skip_due`), so a frame never waits behind a growing backlog
            (on a machine too busy to send 124 MB/s from Python, the timestamps of queued frames
            would otherwise fall further and further behind their send time).

    Same surface as :class:`~medacq.simulators.adapters.SimulatorServer` where the fault side
    door needs it (``interface``, ``faults``, ``call``, ``address``, ``connections``,
    ``bytes_out``, ``bytes_overrun``, ``error``): ``stall`` stops answering and sending,
    ``pull_cable`` drops all traffic for ``refuse_s``, ``corrupt`` flips bytes of outgoing GVSP
    packets, ``garbage`` sends a random datagram to the stream destination.
    """

    transport = "udp"

    def __init__(self, device: GigECameraDevice, host: str = "127.0.0.1", port: int = GVCP_PORT, *,
                 link_MBps: float = 125.0, sndbuf: int = 4 << 20, frame_buffer: int = 2) -> None:
        self.interface = device
        self.frame_buffer = max(1, int(frame_buffer))
        self._queued_frames: deque[int] = deque()  # packets left of each queued frame, oldest first
        self.device = device
        self.faults = FaultInjector()
        self.link_Bps = link_MBps * 1e6
        self._rng = random.Random(0)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream_thread: threading.Thread | None = None
        self.gvcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.gvcp.bind((host, port))
        except OSError as exc:
            self.gvcp.close()
            raise PortInUseError(exc.errno, f"UDP {host}:{port}: {exc.strerror}") from None
        self.host, self.port = self.gvcp.getsockname()[:2]
        self.gvsp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.gvsp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.gvsp.bind((host, 0))
        self._out: deque[tuple[bytes, Dest]] = deque()
        self._credit = 0.0
        self._t_credit = 0.0
        self._burst_bytes = float(_MIN_BURST_BYTES)
        self._t0 = time.monotonic()
        self.connections = 0
        self.bytes_out = 0
        self.bytes_overrun = 0
        self.send_errors = 0
        self.error: BaseException | None = None

    @property
    def address(self) -> str:
        """``gige://host:port`` -- what the ``gige`` driver takes."""
        return f"gige://{self.host}:{self.port}"

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` under the server's lock (the fault side door, tests)."""
        with self._lock:
            return fn(*args, **kwargs)

    def start(self) -> "GigEVisionServer":
        self.device.model.prepare()  # slow one-off rendering before the camera answers anything
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(self._control_loop,), name=f"sim-gvcp-{self.port}",
                                        daemon=True)
        self._stream_thread = threading.Thread(target=self._run, args=(self._stream_loop,),
                                               name=f"sim-gvsp-{self.port}", daemon=True)
        self._thread.start()
        self._stream_thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for th in (self._thread, self._stream_thread):
            if th is not None:
                th.join(5)
        self.gvcp.close()
        self.gvsp.close()

    def __enter__(self) -> "GigEVisionServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def true_frame_starts(self) -> list[tuple[int, float, float]]:
        """Every frame sent so far (the last 100 000): ``(block id, leader timestamp s on the camera's
        clock, true exposure start on CLOCK_MONOTONIC s)``, oldest first. True time: tests and
        benches only."""
        with self._lock:
            return [(bid, ticks / _TICKS_PER_S, self._t0 + t) for _, bid, t, ticks in self.device.frame_starts]

    def _run(self, loop: Any) -> None:
        try:
            loop()
        except BaseException as exc:  # reported through .error (status, tests)
            self.error = exc
            self._stop.set()

    def _blocked(self) -> tuple[bool, bool]:
        """``(stalled, unplugged)`` now, applying a pending cable pull."""
        f = self.faults
        now_m = time.monotonic()
        with f._lock:
            if f.pull_requested:
                f.pull_requested = False
                f.cable_pulls += 1
                self._out.clear()
                self._queued_frames.clear()
            return now_m < f.stall_until, now_m < f.refuse_until

    def _control_loop(self) -> None:
        """GVCP: answer each command at once (the stream thread renders frames meanwhile)."""
        dev = self.device
        while not self._stop.is_set():
            r, _, _ = select.select([self.gvcp], [], [], 0.05)
            if not r:
                continue
            try:
                data, src = self.gvcp.recvfrom(2048)
            except OSError:
                continue
            stalled, unplugged = self._blocked()
            if not data or stalled or unplugged:
                continue
            with self._lock:
                replies = dev.handle(data, (src[0], src[1]), self._now())
            for pkt, dest in replies:
                if dest == (src[0], src[1]):
                    self._sendto(self.gvcp, pkt, dest)
                else:  # resent GVSP packets: the stream thread sends them, in the link's pace
                    self._out.append((pkt, dest))

    def _stream_loop(self) -> None:
        """GVSP: frames due (rendered outside the lock, during their exposure), paced at the link rate.

        A frame is taken ``ahead`` of the end of its exposure (the longest recent render time plus
        2 ms, at most the exposure) and its packets are held until the exposure is over, so the
        leader leaves when the camera's would, however long Python takes to render it."""
        dev = self.device
        held: deque[tuple[float, list[tuple[bytes, Dest]]]] = deque()  # (release time, packets)
        build_s = 0.0
        while not self._stop.is_set():
            stalled, unplugged = self._blocked()
            ahead = min(dev.exposure_s, 1.5 * build_s + 0.002)
            with self._lock:
                busy = len(self._queued_frames) + len(held) >= self.frame_buffer
                if busy and not stalled:
                    dev.skip_due(self._now())
                job = None if stalled or busy else dev.take_due(self._now(), ahead)
                dl = dev.next_deadline()
            if job is not None:
                t_build = time.perf_counter()
                img, pk = dev.build(job)
                build_s = max(0.9 * build_s, time.perf_counter() - t_build)
                with self._lock:
                    wire = dev.commit(job, img, pk)
                if unplugged:
                    wire = []
                garbage = self.faults._take_garbage(self._rng)
                if garbage and wire:
                    wire.append((garbage, wire[0][1]))
                if wire:
                    held.append((job.t_ready, wire))
            while held and self._now() >= held[0][0]:
                self._release(*held.popleft())
            if unplugged:
                self._out.clear()
                self._queued_frames.clear()
                held.clear()
            if not stalled:
                self._drain()
            if job is None and not self._out:
                t = self._now()
                wake = [x for x in (None if dl is None else dl - ahead, held[0][0] if held else None) if x is not None]
                time.sleep(0.005 if not wake else max(0.0, min(0.005, min(wake) - t)))
            elif self._out and self.link_Bps > 0 and self._credit <= 0:
                time.sleep(0.0005)

    def _release(self, t_ready: float, wire: list[tuple[bytes, Dest]]) -> None:
        """Queue a frame's packets for the link once its exposure is over (``t_ready``, adapter s).
        An idle link starts the frame at ``t_ready``, not when this thread got here; the link may
        repay up to one frame's bytes of time the host kept this thread off the CPU."""
        if not self._out:
            self._credit = 0.0
            self._t_credit = max(self._t_credit, self._t0 + t_ready)
        self._burst_bytes = max(_MIN_BURST_BYTES, sum(len(p) + _UDP_IP_BYTES for p, _ in wire))
        self._out.extend(wire)
        self._queued_frames.append(len(wire))

    def _drain(self) -> None:
        """Send queued GVSP packets within the link's credit."""
        if not self._out:
            self._credit = 0.0
            self._t_credit = time.monotonic()
            return
        now = time.monotonic()
        if self.link_Bps > 0:
            self._credit = min(self._credit + max(0.0, now - self._t_credit) * self.link_Bps, self._burst_bytes)
        self._t_credit = now
        sent = 0
        while self._out and (self.link_Bps <= 0 or self._credit > 0) and sent < 512:
            pkt, dest = self._out.popleft()
            pkt = self.faults._mangle(pkt, self._rng) if self.faults.corrupt_bytes else pkt
            self._sendto(self.gvsp, pkt, dest)
            self._credit -= len(pkt) + _UDP_IP_BYTES
            sent += 1
        self._frame_packets_sent(sent)

    def _frame_packets_sent(self, n: int) -> None:
        """Account ``n`` packets just sent against the queued frames, oldest first (resent packets
        and garbage datagrams in the queue are counted too: a frame leaves the buffer no later
        than its last packet)."""
        q = self._queued_frames
        while n > 0 and q:
            if q[0] <= n:
                n -= q.popleft()
            else:
                q[0] -= n
                n = 0
        if not self._out:
            q.clear()

    def _sendto(self, sock: socket.socket, pkt: bytes, dest: Dest) -> None:
        try:
            sock.sendto(pkt, dest)
            self.bytes_out += len(pkt)
        except BlockingIOError:
            self.bytes_overrun += len(pkt)
        except OSError:
            self.send_errors += 1


def make(**options: Any) -> GigECameraDevice:
    """Factory for ``medacq sim gige``: ``model`` = ``thermal`` | ``endoscope`` | ``photo``.

    Options: ``seed`` (0); thermal: ``lepton`` (160×120), ``fever``, ``linear`` (temperature-linear
    mode), ``blackbody_c`` (35.0), ``netd_k`` (0.05), ``drift_k_per_min`` (0.4), ``drift0_k`` (drift
    already accumulated at start, K: 0); endoscope: ``fps``
    (30/60), ``pixel_format`` (BayerRG8 | BayerRG12p), ``width``/``height``; photo: ``width``/
    ``height`` (4000×3000), ``pixel_format``; all: ``packet_size`` (9000), ``heartbeat_ms`` (3000),
    ``ip`` (the address put in the bootstrap, 127.0.0.1), ``clock_ppm`` (the timestamp clock's rate
    error, ppm: 0), ``clock_offset_s`` (its reading at start, s: 0), ``trigger_latency_us`` (Line0
    edge to exposure start: 20).
    """
    opts = dict(options)
    kind = str(opts.pop("model", "thermal"))
    common = {k: opts.pop(k) for k in ("packet_size", "heartbeat_ms", "ip", "clock_ppm", "clock_offset_s",
                                       "trigger_latency_us") if k in opts}

    def b(v: Any) -> bool:
        return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes", "on")

    model: CameraModel
    if kind == "thermal":
        allowed = {"seed", "lepton", "fever", "linear", "blackbody_c", "netd_k", "drift_k_per_min", "auto_nuc_s",
                   "drift0_k"}
        bad = set(opts) - allowed
        if bad:
            raise ValueError(f"unknown gige thermal options: {', '.join(sorted(bad))}")
        model = ThermalModel(seed=int(opts.get("seed", 0)), lepton=b(opts.get("lepton", False)),
                             fever=b(opts.get("fever", False)), linear=b(opts.get("linear", False)),
                             blackbody_c=float(opts.get("blackbody_c", 35.0)), netd_k=float(opts.get("netd_k", 0.05)),
                             drift_k_per_min=float(opts.get("drift_k_per_min", 0.4)),
                             auto_nuc_s=float(opts.get("auto_nuc_s", 180.0)),
                             drift0_k=float(opts.get("drift0_k", 0.0)))
    elif kind == "endoscope":
        bad = set(opts) - {"seed", "fps", "pixel_format", "width", "height", "loop_frames"}
        if bad:
            raise ValueError(f"unknown gige endoscope options: {', '.join(sorted(bad))}")
        model = EndoscopeModel(seed=int(opts.get("seed", 0)), fps=float(opts.get("fps", 30.0)),
                               pixel_format=str(opts.get("pixel_format", "BayerRG8")),
                               width=int(opts.get("width", 1920)), height=int(opts.get("height", 1080)),
                               loop_frames=int(opts.get("loop_frames", 24)))
    elif kind == "photo":
        bad = set(opts) - {"seed", "pixel_format", "width", "height", "noise"}
        if bad:
            raise ValueError(f"unknown gige photo options: {', '.join(sorted(bad))}")
        model = PhotoModel(seed=int(opts.get("seed", 0)), pixel_format=str(opts.get("pixel_format", "BayerRG8")),
                           width=int(opts.get("width", 4000)), height=int(opts.get("height", 3000)),
                           noise=float(opts.get("noise", 0.004)))
    else:
        raise ValueError(f"unknown gige model {kind!r}: thermal, endoscope or photo")
    dev = GigECameraDevice(model, packet_size=int(common.get("packet_size", 9000)),
                           heartbeat_ms=int(common.get("heartbeat_ms", 3000)), ip=str(common.get("ip", "127.0.0.1")),
                           clock_ppm=float(common.get("clock_ppm", 0.0)),
                           clock_offset_s=float(common.get("clock_offset_s", 0.0)),
                           trigger_latency_us=float(common.get("trigger_latency_us", 20.0)))
    if kind == "photo":
        dev.trigger_mode = 1
    return dev
