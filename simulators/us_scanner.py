"""Research ultrasound scanner on OpenIGTLink (device role), binding :mod:`us_model` to
:class:`~medacq.protocols.igtl.IgtlConnection`.

Control: the host sends STRING messages (any device name); every command gets exactly one
STRING reply, device name ``"ACK"``, echoing the command's header version and message id.
Replies start with ``OK`` or ``ERR <reason>``. Commands (case-insensitive keywords)::

    GET STATUS             OK state=<stopped|running|frozen> angles=<n> samples=<n> prf=<Hz> seq=<n>
    GET DESCRIPTOR         OK <JSON of PlaneWaveAcquisition.to_descriptor()>
    SET ANGLES <n> [<max_deg>]   n in 1..75, equally spaced in ±max_deg (default 16)
    SET SAMPLES <n>        samples per line, 64..65535
    SET DEPTH <mm>         samples for that depth (PlaneWaveAcquisition.for_depth)
    SET PRF <Hz>           transmit PRF; frame rate = PRF / angles
    START | STOP           acquisition on/off (the sequence counter keeps counting)
    FREEZE | UNFREEZE      hold / resume the live stream without leaving "running"

Acoustic output: the probe transmits only in state ``running`` (:attr:`transmitting`). FREEZE
halts transmission as on a clinical scanner, but keeps the sequence armed (UNFREEZE resumes it
at once); STOP disarms it (only START transmits again) and is accepted in every state: it is
the command that makes the scanner safe.

Settings are refused (``ERR busy``) while running: stop first. RF frames are IMAGE messages
(header version 2), device name ``"RF"``, pixels int16 ``(k, j, i) = (angles, elements,
samples)``, little-endian; the **sequence counter** travels in the extended header's
message id (u32, wraps) and, unwrapped, in the metadata key ``"seq"``; the header
timestamp is the adapter time of the frame (s). Frames are paced at PRF / angles; in
unpaced mode they come out as fast as the transport takes them, byte-identical.

Frame trigger and trigger input: the header timestamp is the frame's start on the scanner clock
(its first transmit: the scanner's frame-trigger event). The scanner's trigger input (the rig's
trigger bus, :mod:`medacq.simulators.trigger_bus`, cabled as ``trigger_in``) is timestamped on
the same clock: a frame whose metadata holds ``"trigger_in"`` (decimal seconds, the header
timestamp's clock) had a rising edge on the input at that time, the first since the previous
frame's start (an edge is reported with the next frame, once it has happened). This metadata
key is this simulated scanner's own (OpenIGTLink 3 metadata is free key/value text).
"""

from __future__ import annotations

import json
import os
from typing import Any

from medacq.protocols._sansio import NEED_DATA, Garbage
from medacq.protocols.igtl import (
    BadMessage,
    ConnectionClosed,
    IgtlConnection,
    ImageMessage,
    StringMessage,
)
from medacq.protocols.us_geometry import PlaneWaveAcquisition, plane_wave_angles
from medacq.simulators._interface import DeviceInterface
from medacq.simulators.trigger_bus import TriggerInput
from medacq.simulators.us_model import PlaneWaveRFModel

__all__ = ["UltrasoundScannerInterface", "make"]


class UltrasoundScannerInterface(DeviceInterface):
    """OpenIGTLink research scanner. ``model`` renders the RF; geometry in ``model.acquisition``."""

    def __init__(self, model: PlaneWaveRFModel | None = None) -> None:
        self.model = model or PlaneWaveRFModel(PlaneWaveAcquisition.with_angles(11))
        self.codec = IgtlConnection()
        self.state = "stopped"
        self.seq = 0
        self._next: float | None = None
        self.bad_messages = 0
        self.garbage_bytes = 0
        self._corrupt_next = 0
        self._truncate_next = 0
        self._drop_next = 0
        self._restart = False  # the frame train starts afresh at the next poll (see poll)
        self.faulted_seqs: list[int] = []
        #: the rig trigger bus's cable on the trigger input (``trigger_in``), set by
        #: :func:`medacq.simulators.trigger_bus.attach`; ``None``: nothing connected
        self.trigger: TriggerInput | None = None
        self._prev_frame_t: float | None = None

    # ---- faults side door (call under SimulatorServer.call) -----------------------------
    def corrupt_next_frames(self, n: int = 1) -> None:
        """Flip one pixel byte in each of the next ``n`` frames (header intact: a CRC error)."""
        self._corrupt_next += n

    def truncate_next_frames(self, n: int = 1) -> None:
        """Send only the first half of each of the next ``n`` frames (a truncated message)."""
        self._truncate_next += n

    def drop(self, n: int) -> None:
        """Fault side door (``DeviceFaults``): the next ``n`` frames are never sent (their
        sequence numbers are consumed; listed in ``faulted_seqs``)."""
        self._drop_next += int(n)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """Fault side door (``DeviceFaults``): the next ``n`` commands are answered
        ``ERR <message>`` (no numeric codes; ``code`` is ignored)."""
        self.queue_error(message, n, code)

    @property
    def transmitting(self) -> bool:
        """The probe is firing (acoustic output on): state ``running``, not ``frozen``/``stopped``."""
        return self.state == "running"

    # ---- DeviceInterface ---------------------------------------------------------------
    def on_connect(self, t: float) -> bytes:
        self.codec = IgtlConnection()
        return b""

    def on_disconnect(self, t: float) -> None:
        self.state = "stopped"
        self._next = None

    def on_bytes(self, data: bytes, t: float) -> bytes:
        self.codec.receive_data(data)
        out: list[bytes] = []
        while (ev := self.codec.next_event()) is not NEED_DATA:
            if isinstance(ev, StringMessage):
                injected = self.take_injected_error()
                reply = f"ERR {injected[0]}" if injected is not None else self.handle_command(ev.text, t)
                out.append(self.codec.send(StringMessage(
                    text=reply, device_name="ACK", header_version=ev.header_version,
                    message_id=ev.message_id, timestamp=t)))
            elif isinstance(ev, BadMessage):
                self.bad_messages += 1
            elif isinstance(ev, Garbage):
                self.garbage_bytes += ev.nbytes
            elif isinstance(ev, ConnectionClosed):
                break
        return b"".join(out)

    def next_deadline(self) -> float | None:
        return self._next if self.state == "running" else None

    def poll(self, t: float) -> bytes:
        if self.state != "running" or self._next is None or t < self._next:
            return b""
        if not self.model.frame_ready():
            # The first frame after START or a settings change is rendered here, not in the
            # command's reply (0.1-0.3 s per angle, seconds on a loaded machine). The scanner
            # fires once its sequence is loaded: the frame train starts at the next poll's time,
            # not back at START, which would come out as frames skipped behind the render.
            self.model.base_frame()
            self._restart = True
            return b""
        if self._restart:
            self._restart = False
            self._next = t
            self._prev_frame_t = None  # edges before the new train are not reported
        period = 1.0 / self.model.acquisition.frame_rate_hz
        frame_t = self._next
        self._next += period
        if self._next <= t - 4 * period:  # far behind: skip ahead, the counter shows the gap
            missed = int((t - self._next) / period)
            self.seq += missed
            self._next += missed * period
        if self._drop_next:  # fault side door: the frame never leaves the scanner
            self._drop_next -= 1
            self.faulted_seqs.append(self.seq)
            self.seq += 1
            return b""
        rf = self.model.frame(frame_t)
        msg = ImageMessage(image=rf, device_name="RF", timestamp=frame_t, header_version=2,
                           message_id=self.seq & 0xFFFFFFFF, metadata=self._frame_metadata(frame_t))
        self.seq += 1
        wire = self.codec.send(msg)
        if self._corrupt_next:
            self._corrupt_next -= 1
            self.faulted_seqs.append(self.seq - 1)
            b = bytearray(wire)
            b[len(b) // 2] ^= 0x5A
            return bytes(b)
        if self._truncate_next:
            self._truncate_next -= 1
            self.faulted_seqs.append(self.seq - 1)
            return wire[: len(wire) // 2]
        return wire

    def _frame_metadata(self, frame_t: float) -> dict[str, str]:
        """``seq``, and ``trigger_in`` where the input saw a rising edge since the previous frame."""
        meta = {"seq": str(self.seq)}
        prev, self._prev_frame_t = self._prev_frame_t, frame_t
        if self.trigger is not None and prev is not None:
            edge = self.trigger.first_edge(prev, frame_t)
            if edge is not None:
                meta["trigger_in"] = repr(float(edge))
        return meta

    def truth(self) -> dict:
        return {**self.model.truth(), "seq": self.seq, "state": self.state, "transmitting": self.transmitting,
                "acquisition": self.model.acquisition.to_descriptor()}

    # ---- commands ----------------------------------------------------------------------
    def handle_command(self, text: str, t: float) -> str:
        words = text.strip().split()
        if not words:
            return "ERR empty command"
        verb = " ".join(w.upper() for w in words[:2])
        acq = self.model.acquisition
        try:
            if verb == "GET STATUS":
                return (f"OK state={self.state} angles={acq.n_angles} samples={acq.n_samples} "
                        f"prf={acq.prf_hz:g} seq={self.seq}")
            if verb == "GET DESCRIPTOR":
                return "OK " + json.dumps(acq.to_descriptor())
            cmd = words[0].upper()
            if cmd == "START":
                if self.state == "stopped":
                    self.state, self._next = "running", t
                return "OK"
            if cmd == "STOP":
                self.state, self._next = "stopped", None
                return "OK"
            if cmd == "FREEZE":
                if self.state != "running":
                    return "ERR not running"
                self.state = "frozen"
                return "OK"
            if cmd == "UNFREEZE":
                if self.state != "frozen":
                    return "ERR not frozen"
                self.state, self._next = "running", t
                return "OK"
            if cmd == "SET":
                if self.state != "stopped":
                    return "ERR busy"
                what, args = words[1].upper(), words[2:]
                if what == "ANGLES":
                    n = int(args[0])
                    mx = float(args[1]) if len(args) > 1 else 16.0
                    new = acq.model_copy(update={"angles_deg": plane_wave_angles(n, mx)})
                elif what == "SAMPLES":
                    new = acq.model_copy(update={"n_samples": int(args[0])})
                elif what == "DEPTH":
                    n = PlaneWaveAcquisition.for_depth(float(args[0]) * 1e-3).n_samples
                    new = acq.model_copy(update={"n_samples": n})
                elif what == "PRF":
                    new = acq.model_copy(update={"prf_hz": float(args[0])})
                else:
                    return f"ERR unknown setting {what}"
                new = PlaneWaveAcquisition.model_validate(new.model_dump())  # re-validate
                self.model.set_acquisition(new)
                return "OK"
        except (ValueError, IndexError) as exc:
            return f"ERR {str(exc).splitlines()[0][:200]}"
        return f"ERR unknown command {words[0]}"


def make(**options: Any) -> UltrasoundScannerInterface:
    """Factory for ``medacq sim us``.

    Options: ``angles`` (1..75, default 3), ``max_angle_deg`` (16), ``samples`` (2048) or
    ``depth_mm``, ``prf_hz`` (300), ``seed`` (0), ``motion_mm`` (slow axial motion amplitude,
    0), ``speckle_density_per_mm2`` (20), ``noise_counts`` (3), ``attenuation_db_cm_mhz``
    (0.5), ``cache`` (True: cache rendered frames under ``$MEDACQ_CACHE_DIR`` or
    ``~/.cache/medacq``), ``start`` (False: stream without waiting for ``START``).
    """
    from medacq.simulators.us_model import Phantom

    known = {"angles", "max_angle_deg", "samples", "depth_mm", "prf_hz", "seed", "motion_mm",
             "speckle_density_per_mm2", "noise_counts", "attenuation_db_cm_mhz", "cache", "start"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown us simulator options: {', '.join(sorted(unknown))}")
    kw: dict[str, Any] = {"prf_hz": float(options.get("prf_hz", 300.0))}
    if "depth_mm" in options:
        kw["n_samples"] = PlaneWaveAcquisition.for_depth(float(options["depth_mm"]) * 1e-3).n_samples
    else:
        kw["n_samples"] = int(options.get("samples", 2048))
    acq = PlaneWaveAcquisition.with_angles(int(options.get("angles", 3)),
                                           float(options.get("max_angle_deg", 16.0)), **kw)
    phantom = Phantom.picmus_like()
    if "speckle_density_per_mm2" in options:
        from dataclasses import replace

        phantom = replace(phantom, speckle_density_per_mm2=float(options["speckle_density_per_mm2"]))
    cache = None
    if options.get("cache", True):
        cache = os.environ.get("MEDACQ_CACHE_DIR", os.path.expanduser("~/.cache/medacq"))
    model = PlaneWaveRFModel(acq, phantom, seed=int(options.get("seed", 0)),
                             noise_counts=float(options.get("noise_counts", 3.0)),
                             attenuation_db_cm_mhz=float(options.get("attenuation_db_cm_mhz", 0.5)),
                             motion_amplitude_m=float(options.get("motion_mm", 0.0)) * 1e-3,
                             cache_dir=cache)
    iface = UltrasoundScannerInterface(model)
    if options.get("start", False):
        iface.state, iface._next = "running", 0.0
    return iface
