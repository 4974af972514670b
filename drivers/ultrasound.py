"""Driver for a plane-wave research ultrasound scanner on OpenIGTLink (``tcp://host:port``).

Control goes over the same link as STRING messages (header version 2, message id = a
request counter); each command gets exactly one STRING reply named ``ACK`` echoing the
message id, starting ``OK`` or ``ERR``. RF frames arrive as IMAGE messages named ``RF``:
int16 ``(angles, elements, samples)`` with the device's sequence counter in the metadata
key ``seq`` (and, wrapped to u32, in the message id).

Every frame is CRC64-checked by the codec. A bad CRC, a truncated or unparsable message
costs the stream that frame: the next good frame's sequence counter shows the hole, and
the driver reports it as a :class:`~medacq.drivers._base.Gap` (reason names the CRC /
truncation events seen). The connection is kept.

Acquisition parameters (probe, angles, sampling, samples, PRF, c) are read back from the
device with ``GET DESCRIPTOR`` and travel in the stream descriptor's ``geometry``
(:meth:`PlaneWaveAcquisition.to_descriptor` form), so the reconstruction stage needs
nothing else.

Safe state (:meth:`UltrasoundDriver.enter_safe_state`): ``STOP`` -- not ``FREEZE``, which on
this scanner keeps the sequence armed for ``UNFREEZE`` and is refused unless running -- then
``GET STATUS`` must report ``state=stopped`` (no acoustic output). Only ``start()`` sends
``START`` again.

Frame trigger and trigger input (``markers/<device>``, :mod:`medacq.protocols.markers`): the
IGTL header timestamp is the frame's start on the scanner clock; a fit of that clock to the
arrival times (:class:`~medacq.drivers._clockfit.DeviceClock`, lower envelope, µs ticks) places
scanner times on the host timeline. With ``frame_triggers`` every frame's start is published as a
trigger event (line ``frame_start``); a frame whose metadata holds ``trigger_in`` (scanner-clock
seconds of a rising edge on the scanner's trigger input, the simulated scanner's key) always
yields an event on line ``trigger_in``. Both are timestamped by the scanner, so no half-period
quantisation applies; the error is the fit's (the scanner's minimum delivery latency included).

Ingest path: ``recv_into`` a preallocated 8 MiB buffer, handed to the codec as a
memoryview (one copy into the codec's bounded buffer, one out of it per message).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medacq.protocols.igtl import BadMessage, ConnectionClosed, IgtlConnection, ImageMessage, StringMessage
from medacq.protocols.stream import StreamDescriptor
from medacq.protocols.us_geometry import MAX_ANGLE_DEG, MAX_ANGLES, PlaneWaveAcquisition

from medacq.protocols.markers import FRAME_TRIGGERS_KEY

from ._base import ConnectionLost, DeviceError, Frame, Gap
from ._bufpool import BufferPool
from ._clockfit import DeviceClock
from ._tcp_codec import TcpCodecDriver
from .transports import TcpTransport
from .triggers import clock_trigger

__all__ = ["UltrasoundDriver", "UltrasoundSettings"]

_POOLED_BODY_BYTES = 64 << 10  # message bodies from this size on are received into pooled buffers


class UltrasoundSettings(BaseModel):
    """Settings sent to the scanner at ``open``.

    Attributes:
        angles: number of plane-wave angles per frame (1..75), equally spaced.
        max_angle_deg: steering range ``±max_angle_deg`` (≤ 16°).
        samples: RF samples per line (64..65535); ``None`` keeps the device's value
            unless ``depth_mm`` is given.
        depth_mm: imaging depth (mm); sets ``samples`` on the device (``SET DEPTH``).
        prf_hz: transmit PRF (Hz); frame rate = prf_hz / angles. *Limited*: ``configure``
            keeps it inside the config file's ``[device.limits]``. (The scanner's transmit
            voltage is not a setting of this driver.)
        check_crc: verify each message's CRC64 (recommended).
        command_timeout_s: how long to wait for a command reply.
        frame_triggers: publish every frame's start as a trigger event on ``markers/<device>``
            (line ``frame_start``; default off: 20 markers/s at 20 frames/s).
    """

    model_config = ConfigDict(extra="forbid")

    angles: int = Field(3, ge=1, le=MAX_ANGLES)
    max_angle_deg: float = Field(MAX_ANGLE_DEG, gt=0, le=MAX_ANGLE_DEG)
    samples: int | None = Field(None, ge=64, le=65535)
    depth_mm: float | None = Field(None, gt=0, le=300)
    # transmit rate: acoustic output (time-averaged intensity, heating) scales with it, so a
    # control-plane configure keeps it inside the config file's [device.limits]
    prf_hz: float = Field(300.0, gt=0, le=50000, json_schema_extra={"limited": True})
    check_crc: bool = True
    command_timeout_s: float = Field(3.0, gt=0)
    frame_triggers: bool = False

    @model_validator(mode="after")
    def _one_depth(self) -> "UltrasoundSettings":
        if self.samples is not None and self.depth_mm is not None:
            raise ValueError("give samples or depth_mm, not both")
        return self


def _pooled_bodies(pool: BufferPool) -> Callable[[int], memoryview | None]:
    """The codec's body allocator: a pooled buffer for a large (RF) message body; ``None`` (a
    ``bytes`` copy) for small ones."""

    def body_buffer(nbytes: int) -> memoryview | None:
        return memoryview(pool.take(nbytes)) if nbytes >= _POOLED_BODY_BYTES else None

    return body_buffer


class UltrasoundDriver(TcpCodecDriver):
    """OpenIGTLink plane-wave RF driver (kind ``ultrasound``, modality ``us``).

    RF frames that race a command's reply are kept for :meth:`read`; a bad message is noted
    for the next gap's reason; a reply to another message id is counted (``stray_replies``).
    """

    kind = "ultrasound"
    modality = "us"
    Settings = UltrasoundSettings

    def __init__(self, name: str, address: str, settings: UltrasoundSettings) -> None:
        super().__init__(name, address, settings, buffer_bytes=8 << 20)
        self.settings: UltrasoundSettings = settings
        #: RF bodies are decoded from reusable buffers (no fresh pages per frame); small ones from bytes
        self._bodies = BufferPool(keep=8)
        #: the codec's body allocator: a closure over the pool, not a bound method, so the codec
        #: holds no reference back to the driver (a cycle kept every closed driver, its 8 MiB
        #: receive buffer and pooled RF bodies, until the cyclic GC ran: the daemon's RSS rose
        #: by ~25 MB per 10 reconnects and fell back only at a full collection)
        self._body_buffer = _pooled_bodies(self._bodies)
        self._codec = IgtlConnection(check_crc=settings.check_crc, body_buffer=self._body_buffer)
        self._msg_id = 0
        self._expected: int | None = None
        self._lost_reasons: dict[str, int] = {}
        self.acquisition: PlaneWaveAcquisition | None = None
        self._scanner_clock = DeviceClock(1e6, bucket_s=1.0, window_s=60.0)  # scanner µs -> host

    # ---- link (bytes in: TcpCodecDriver._pump) ------------------------------------------
    def _events(self) -> Iterator[Any]:
        """RF images, bad messages (counted, ordered with the frames around them) and replies."""
        for ev in super()._events():
            if isinstance(ev, BadMessage):
                self.count("bad_messages")
                yield ev
            elif isinstance(ev, ConnectionClosed):
                raise ConnectionLost(f"{self.name}: {self.address} closed the connection")
            elif isinstance(ev, StringMessage) or (isinstance(ev, ImageMessage) and ev.device_name == "RF"):
                yield ev
            else:
                self.count("other_messages")

    def _hold(self, ev: Any) -> None:
        """While a command waits: RF frames are kept for :meth:`read`, a bad message is noted
        for the next gap's reason, a reply to another message id is counted."""
        if isinstance(ev, BadMessage):
            self._note_lost(ev)
        elif isinstance(ev, StringMessage):
            self.count("stray_replies")
        else:
            self._pending.append(ev)

    def command(self, text: str, timeout: float | None = None) -> str:
        """Send one STRING command; return the reply text after ``OK`` (DeviceError on ERR)."""
        self._msg_id = mid = (self._msg_id + 1) & 0xFFFFFFFF
        t = timeout or self.settings.command_timeout_s
        msg = StringMessage(text=text, device_name="CMD", header_version=2, message_id=mid, timestamp=time.time())
        r = self._request(self._codec.send(msg), lambda ev: isinstance(ev, StringMessage) and ev.message_id == mid,
                          t, f"no reply to {text!r} within {t} s")
        if r.text.startswith("ERR"):
            raise DeviceError(f"{self.name}: device answered {r.text!r} to {text!r}")
        return r.text[2:].strip()

    # ---- Driver ------------------------------------------------------------------------
    def open(self) -> None:
        s = self.settings
        self._link = self._tcp = TcpTransport(self.address)
        self._codec = IgtlConnection(check_crc=s.check_crc, body_buffer=self._body_buffer)
        self._pending.clear()
        self.command("STOP")
        self._pending.clear()
        self.command(f"SET ANGLES {s.angles} {s.max_angle_deg:g}")
        if s.samples is not None:
            self.command(f"SET SAMPLES {s.samples}")
        elif s.depth_mm is not None:
            self.command(f"SET DEPTH {s.depth_mm:g}")
        self.command(f"SET PRF {s.prf_hz:g}")
        self.acquisition = PlaneWaveAcquisition.from_descriptor(json.loads(self.command("GET DESCRIPTOR")))

    def start(self) -> None:
        self._expected = None
        self._lost_reasons.clear()
        self._scanner_clock = DeviceClock(1e6, bucket_s=1.0, window_s=60.0)
        self.command("START")

    def enter_safe_state(self) -> str:
        """Stop transmitting (``STOP``) and check that the scanner reports ``state=stopped``."""
        self.command("STOP")
        status = self.command("GET STATUS")
        self._pending.clear()  # RF frames that raced the STOP belong to the series that ends here
        state = next((w.split("=", 1)[1] for w in status.split() if w.startswith("state=")), "?")
        if state != "stopped":
            raise DeviceError(f"{self.name}: after STOP the scanner reports state={state} ({status!r})")
        return "STOP: transmit stopped (scanner reports state=stopped: no acoustic output)"

    def freeze(self, on: bool = True) -> None:
        """Hold (``FREEZE``) or resume (``UNFREEZE``) the live stream."""
        self.command("FREEZE" if on else "UNFREEZE")

    def descriptor(self) -> StreamDescriptor:
        acq = self.acquisition or PlaneWaveAcquisition.with_angles(self.settings.angles)
        return StreamDescriptor(
            stream=self.name, modality=self.modality, device=f"igtl:{acq.probe.name}",
            dtype="<i2", shape=list(acq.rf_shape), axes=["angle", "element", "sample"], units="counts",
            sample_rate_hz=acq.sampling_frequency_hz, frame_rate_hz=acq.frame_rate_hz,
            geometry={"acquisition": acq.to_descriptor()},
            meta={"angles_deg": list(acq.angles_deg), "address": self.address},
        )

    def _note_lost(self, ev: BadMessage) -> None:
        reason = ev.reason.split(" (")[0]
        self._lost_reasons[reason] = self._lost_reasons.get(reason, 0) + 1

    def read(self, timeout: float) -> list[Frame | Gap]:
        events = self._receive(timeout)
        t_mono, t_host = self._arrival()
        out: list[Frame | Gap] = []
        shape = self.acquisition.rf_shape if self.acquisition else None
        for ev in events:
            if isinstance(ev, BadMessage):
                self._note_lost(ev)
                continue
            if not isinstance(ev, ImageMessage):
                self.count("stray_replies")
                continue
            try:
                seq = int(ev.metadata.get("seq", ev.message_id))
            except ValueError:
                seq = ev.message_id
            img = ev.image
            if shape is not None and img.shape != shape:
                self.count("bad_shape")
                continue
            exp = self._expected
            if exp is not None and seq != exp:
                if seq > exp:
                    why = ", ".join(f"{n}× {r}" for r, n in self._lost_reasons.items()) or "device counter jumped"
                    out.append(Gap(lost_frames=seq - exp, reason=f"seq {exp}->{seq}: {why}"))
                else:
                    self.count("out_of_order")
            self._lost_reasons.clear()
            self._expected = seq + 1
            meta: dict[str, Any] = {"seq": seq}
            trig = self._triggers(ev, seq, t_mono, t_host - t_mono)
            if trig:
                meta[FRAME_TRIGGERS_KEY] = trig
            out.append(Frame(img, t_host, t_mono, t_device=ev.timestamp, meta=meta))
        return out

    def _triggers(self, ev: ImageMessage, seq: int, t_mono: int, real_minus_mono: int) -> list[dict[str, Any]]:
        """The frame's trigger events (frame start, trigger input edge) on the fitted scanner clock."""
        ts = ev.timestamp
        if not (math.isfinite(ts) and ts > 0):
            return []
        self._scanner_clock.update(int(round(ts * 1e6)), t_mono)
        out = []
        if self.settings.frame_triggers:
            out.append(clock_trigger(self._scanner_clock, int(round(ts * 1e6)), "frame_start", real_minus_mono,
                                     t_device=ts, latched=False, sample=seq).to_meta())
        raw = ev.metadata.get("trigger_in")
        if raw is not None:
            try:
                edge = float(raw)
                if not math.isfinite(edge):
                    raise ValueError(raw)
            except ValueError:
                self.count("bad_trigger_meta")
            else:
                out.append(clock_trigger(self._scanner_clock, int(round(edge * 1e6)), "trigger_in", real_minus_mono,
                                         t_device=edge, latched=False, sample=seq).to_meta())
                self.count("trigger_edges")
        return out
