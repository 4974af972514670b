"""Driver for SCPI flat-panel X-ray detectors (Dexela 1512 class) over VISA.

Address: a VISA resource string, ``TCPIP::<host>::<port>::SOCKET`` (raw SCPI socket, port
5025 customary), opened through pyvisa with the pyvisa-py backend (``@py``) unless the
settings name another VISA library (``visa_library = ""`` picks pyvisa's default, e.g. a
vendor VISA).

Dialogue: ``*IDN?``, ``*RST;*CLS``, then each setting as ``<setter>;:SYST:ERR?`` (one round
trip; a non-zero error → :class:`DeviceError` carrying the device's SCPI message), ``INIT``,
then one ``FETC?;:FETC:META?`` per frame: an IEEE 488.2 definite block ``#<n><len><uint16
LE pixels>`` followed by ``;<index>,<angle deg>,<t s>,<KIND>\\n``. A jump of the device
frame index (on-board buffer overrun) becomes a :class:`Gap`.

Reading 6 MB blocks fast. pyvisa-py, with a read termination character set, returns from
its low-level read at every ``\\n`` byte *inside* the binary block and rescans its pending
buffer each time (≈200 000 reads and ≈1 s per 6 MB frame). Text stays on pyvisa with the
``\\n`` termination; for ``FETC?`` this driver writes the query through pyvisa and then, on
pyvisa-py's TCPIP SOCKET session, drains the session's pending buffer and pulls the block
with ``recv_into`` from the session's own socket into a preallocated frame array (one copy).
Any other backend gets the portable path: termination off, ``read_bytes(n, chunk_size=n)``.

Source: :meth:`FlatPanelDriver.start` enables the tube output (``SOUR:OUTP ON``; OFF for
``frame_type = "dark"``) before ``INIT``; nothing else turns it on. Safe state
(:meth:`FlatPanelDriver.enter_safe_state`): ``ABOR;:SOUR:OUTP OFF`` (exposure aborted, output
off), the reply of a ``FETC?`` in flight drained, then ``SOUR:OUTP?;:ACQ:STAT?`` must answer
``0;IDLE``. The same message, with no reply to wait for, is this driver's
:meth:`~FlatPanelDriver.cut_output`: any thread may send it at once (writes go through one lock),
so a safe state does not wait for an exposure or a ``configure`` in progress.

Frames: ``uint16`` ``(row, col)`` ADU, ``(1536, 1944) // binning``, row 0 at the top.
Per-frame meta: ``frame_index`` (device counter), ``frame_type`` (image/dark/flat),
``angle_deg`` (CT gantry angle; 0 otherwise), ``projection`` and ``rotation`` in CT.
"""

from __future__ import annotations

import math
import re
import select
import socket
import threading
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols.scpi import split_units, split_values
from medacq.protocols.markers import FRAME_TRIGGERS_KEY
from medacq.protocols.stream import StreamDescriptor

from ._base import ConnectionLost, DeviceError, DeviceNotFound, Driver, Frame, Gap
from ._bufpool import BufferPool
from ._clockfit import DeviceClock
from .triggers import clock_trigger

__all__ = ["FlatPanelDriver", "FlatPanelSettings", "READOUT_FPS", "PIXEL_PITCH_MM", "parse_visa_socket"]

READOUT_FPS: dict[int, float] = {1: 26.0, 2: 70.0, 4: 120.0}
"""Maximum frame rate per binning (Dexela 1512 class readout)."""
PIXEL_PITCH_MM = 0.0748
"""Unbinned pixel pitch, mm."""

_VISA_SOCKET = re.compile(r"^TCPIP(\d*)::([^:]+|\[[^\]]+\])::(\d+)::SOCKET$", re.I)


def parse_visa_socket(address: str) -> tuple[str, int] | None:
    """``TCPIP[n]::host::port::SOCKET`` → ``(host, port)``; ``None`` for other resources."""
    m = _VISA_SOCKET.match(address.strip())
    return (m.group(2).strip("[]"), int(m.group(3))) if m else None


class FlatPanelSettings(BaseModel):
    """Detector settings (config ``[device.settings]``). Ranges are the device's to check.

    Attributes:
        mode: ``RAD`` (radiography), ``FLUORO`` (continuous fluoroscopy), ``CT`` (rotation).
        binning: 1, 2 or 4 (frames ``(1536, 1944) // binning``).
        exposure_s: exposure per frame, s (frame period = max(exposure, readout)).
        gain: full-well mode ``HIGH`` (2 ADU/photon) or ``LOW`` (0.5 ADU/photon).
        frame_type: ``image``, ``dark`` (tube off) or ``flat`` (open beam) — calibration frames.
        trigger: ``INT`` (free running), ``EXT`` (external pulses every ``trigger_period_s``),
            ``SOFT`` (the driver triggers each frame with ``*TRG``).
        trigger_period_s: EXT pulse period, s.
        frame_count: frames per acquisition, 0 = until stopped.
        kvp: tube voltage, kV (40–150). ma: tube current, mA (0.1–500). ``kvp``, ``ma`` and
            ``exposure_s`` are *limited*: ``configure`` keeps them inside the config file's
            ``[device.limits]``.
        ct_projections: projections per rotation. ct_geometry: ``PARALLEL`` or ``FAN``.
        ct_range: ``FULL`` (360°) or ``SHORT`` (180° + fan angle).
        visa_library: pyvisa backend (``@py`` = pyvisa-py; ``""`` = pyvisa's default; a path
            is a VISA shared library). *Config-only*: ``configure`` cannot change it.
        timeout_s: I/O timeout for replies and block transfers, s.
        fast_read: use the socket fast path on pyvisa-py (False: the portable pyvisa path).
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["RAD", "FLUORO", "CT"] = "FLUORO"
    binning: Literal[1, 2, 4] = 1
    exposure_s: float = Field(default=0.03, gt=0, json_schema_extra={"limited": True})
    gain: Literal["HIGH", "LOW"] = "HIGH"
    frame_type: Literal["image", "dark", "flat"] = "image"
    trigger: Literal["INT", "EXT", "SOFT"] = "INT"
    trigger_period_s: float | None = Field(default=None, gt=0)
    frame_count: int = Field(default=0, ge=0)
    # physical output: a control-plane configure keeps them inside the config file's
    # [device.limits] (else inside these, the tube's own range)
    kvp: float = Field(default=70.0, ge=40.0, le=150.0, json_schema_extra={"limited": True})
    ma: float = Field(default=10.0, ge=0.1, le=500.0, json_schema_extra={"limited": True})
    ct_projections: int = Field(default=720, ge=2)
    ct_geometry: Literal["PARALLEL", "FAN"] = "PARALLEL"
    ct_range: Literal["FULL", "SHORT"] = "FULL"
    # names a shared library pyvisa loads (ctypes): code, so the config file alone sets it
    visa_library: str = Field(default="@py", json_schema_extra={"config_only": True})
    timeout_s: float = Field(default=5.0, gt=0)
    fast_read: bool = True


_FTYPE = {"image": "IMAG", "dark": "DARK", "flat": "FLAT"}


# --------------------------------------------------------------------------- links
class _Link:
    """Text through pyvisa (``\\n`` termination); block reads implemented by subclasses."""

    def __init__(self, inst: Any, timeout_s: float) -> None:
        self.inst = inst
        self.timeout_s = timeout_s

    def write(self, text: str) -> None:
        self.inst.write(text)

    def query(self, text: str) -> str:
        return self.inst.query(text).strip()

    def wait_reply(self, timeout: float) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_block(self, alloc: Any) -> tuple[np.ndarray | None, int]:  # pragma: no cover - abstract
        """One definite block: ``(array, n)`` with its ``n`` payload bytes in ``alloc(n)``;
        ``(None, -1)`` when the bytes are no block header; ``(None, n)`` when ``alloc`` refused
        the length (``None``): the payload is then left unread (the caller resynchronises)."""
        raise NotImplementedError

    def read_rest_of_line(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class _SocketLink(_Link):
    """pyvisa-py TCPIP SOCKET session: block payloads straight from its socket (recv_into)."""

    def __init__(self, inst: Any, session: Any, timeout_s: float) -> None:
        super().__init__(inst, timeout_s)
        self.session = session
        self.sock: socket.socket = session.interface

    def _pending(self) -> bytearray:
        return self.session._pending_buffer  # noqa: SLF001 - pyvisa-py keeps bytes read past a termchar here

    def wait_reply(self, timeout: float) -> bool:
        if len(self._pending()):
            return True
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        return bool(r)

    def drain(self, quiet_s: float = 0.1) -> None:
        """Device clear for a raw socket: drop what a previous session left in flight. Ours, not
        pyvisa-py's ``clear()``, which spins forever on a socket the peer has closed."""
        del self._pending()[:]
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            r, _, _ = select.select([self.sock], [], [], quiet_s)
            if not r:
                return
            try:
                if not self.sock.recv(65536):
                    raise ConnectionLost("the detector closed the connection")
            except OSError as exc:
                raise ConnectionLost(f"socket read failed: {exc}") from None

    def _read_into(self, mv: memoryview) -> None:
        pb = self._pending()
        pos = min(len(pb), len(mv))
        if pos:
            mv[:pos] = pb[:pos]
            del pb[:pos]
        n = len(mv)
        if pos == n:
            return
        self.sock.settimeout(self.timeout_s)
        try:
            while pos < n:
                k = self.sock.recv_into(mv[pos:])
                if not k:
                    raise ConnectionLost("the detector closed the connection")
                pos += k
        except socket.timeout:
            raise ConnectionLost(f"block transfer stalled ({pos} of {n} bytes in {self.timeout_s} s)") from None
        except OSError as exc:
            raise ConnectionLost(f"socket read failed: {exc}") from None
        finally:
            self.sock.settimeout(None)

    def read_block(self, alloc: Any) -> tuple[np.ndarray | None, int]:
        head = bytearray(2)
        self._read_into(memoryview(head))
        if head[:1] != b"#" or not 0x31 <= head[1] <= 0x39:
            return None, -1
        digits = bytearray(head[1] - 0x30)
        self._read_into(memoryview(digits))
        if not digits.isdigit():
            return None, -1
        n = int(digits)
        arr = alloc(n)
        if arr is not None:
            self._read_into(memoryview(arr).cast("B"))
        return arr, n

    def read_rest_of_line(self) -> str:
        out = bytearray()
        pb = self._pending()
        i = pb.find(b"\n")
        if i >= 0:
            out += pb[: i + 1]
            del pb[: i + 1]
            return out[:-1].decode("latin-1")
        out += pb
        del pb[:]
        self.sock.settimeout(self.timeout_s)
        try:
            while True:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionLost("the detector closed the connection")
                i = chunk.find(b"\n")
                if i >= 0:
                    out += chunk[:i]
                    pb[:0] = chunk[i + 1 :]  # bytes past the line belong to pyvisa's next read
                    return out.decode("latin-1")
                out += chunk
        except socket.timeout:
            raise ConnectionLost(f"no end of line within {self.timeout_s} s") from None
        except OSError as exc:
            raise ConnectionLost(f"socket read failed: {exc}") from None
        finally:
            self.sock.settimeout(None)


class _VisaLink(_Link):
    """Any VISA backend: termination off and ``read_bytes(n, chunk_size=n)`` for blocks."""

    def __init__(self, inst: Any, timeout_s: float) -> None:
        super().__init__(inst, timeout_s)
        self._first = b""

    def wait_reply(self, timeout: float) -> bool:
        if self._first:
            return True
        import pyvisa

        inst = self.inst
        inst.read_termination = None
        inst.timeout = max(1, int(timeout * 1000))
        try:
            self._first = inst.read_bytes(1)
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                return False
            raise
        finally:
            inst.timeout = int(self.timeout_s * 1000)
        return bool(self._first)

    def _read(self, n: int) -> bytes:
        head, self._first = self._first[:n], self._first[n:]
        return head + (self.inst.read_bytes(n - len(head), chunk_size=max(n - len(head), 1)) if n > len(head) else b"")

    def read_block(self, alloc: Any) -> tuple[np.ndarray | None, int]:
        self.inst.read_termination = None
        head = self._read(2)
        if head[:1] != b"#" or not head[1:2].isdigit() or head[1:2] == b"0":
            return None, -1
        digits = self._read(int(head[1:2]))
        if not digits.isdigit():
            return None, -1
        n = int(digits)
        arr = alloc(n)
        if n and arr is not None:
            memoryview(arr).cast("B")[:] = self._read(n)
        return arr, n

    def read_rest_of_line(self) -> str:
        self.inst.read_termination = "\n"
        return self.inst.read()

    def query(self, text: str) -> str:
        self.inst.read_termination = "\n"
        return super().query(text)


# --------------------------------------------------------------------------- driver
class FlatPanelDriver(Driver):
    """SCPI flat panel through pyvisa (see the module doc)."""

    kind = "flatpanel"
    modality = "xray"
    Settings = FlatPanelSettings

    def __init__(self, name: str, address: str, settings: FlatPanelSettings) -> None:
        super().__init__(name, address, settings)
        self.settings: FlatPanelSettings = settings
        self._rm: Any = None
        self._inst: Any = None
        self._link: _Link | None = None
        self._idn = ""
        self._shape = (0, 0)
        self._geometry: dict[str, Any] = {}
        self._outstanding = False
        self._finished = False
        self._bad_in_row = 0  # replies out of step in a row (see _resync)
        self._next_index: int | None = None
        self.fast_path = False
        # every write (and query) to the instrument, so that cut_output() may write from another thread
        self._wlock = threading.RLock()
        #: frame buffers, reused once nothing refers to them (see _bufpool)
        self._frames = BufferPool(keep=8)

    # -- plumbing -----------------------------------------------------------------------
    def _open_visa(self) -> None:
        import pyvisa

        s = self.settings
        try:
            self._rm = pyvisa.ResourceManager(s.visa_library) if s.visa_library else pyvisa.ResourceManager()
        except (OSError, ValueError) as exc:
            raise DeviceError(f"{self.name}: cannot load VISA library {s.visa_library!r}: {exc}") from None
        hp = parse_visa_socket(self.address)
        if hp is not None and "py" in type(self._rm.visalib).__module__:
            # pyvisa-py reports success on a refused connect; probe once so a missing device
            # is DeviceNotFound, not a timeout on the first query.
            try:
                socket.create_connection(hp, timeout=2.0).close()
            except ConnectionRefusedError:
                raise DeviceNotFound(f"{self.name}: nothing is listening at {self.address}") from None
            except OSError as exc:
                raise ConnectionLost(f"{self.name}: cannot reach {self.address}: {exc}") from None
        try:
            self._inst = self._rm.open_resource(
                self.address, read_termination="\n", write_termination="\n", timeout=int(s.timeout_s * 1000)
            )
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code == pyvisa.constants.StatusCode.error_resource_not_found:
                raise DeviceNotFound(f"{self.name}: VISA resource {self.address!r} not found") from None
            raise ConnectionLost(f"{self.name}: cannot open {self.address!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - backends raise plain Exception on connect failure
            raise ConnectionLost(f"{self.name}: cannot open {self.address!r}: {exc}") from None
        session = getattr(self._rm.visalib, "sessions", {}).get(getattr(self._inst, "session", None))
        if (
            s.fast_read and session is not None and hp is not None
            and isinstance(getattr(session, "interface", None), socket.socket)
            and isinstance(getattr(session, "_pending_buffer", None), bytearray)
        ):
            self._link, self.fast_path = _SocketLink(self._inst, session, s.timeout_s), True
        else:
            self._link, self.fast_path = _VisaLink(self._inst, s.timeout_s), False

    def _io(self, fn: Any, *args: Any) -> Any:
        """Run a link call, mapping VISA/socket failures to ConnectionLost."""
        import pyvisa

        try:
            return fn(*args)
        except pyvisa.errors.VisaIOError as exc:
            raise ConnectionLost(f"{self.name}: VISA I/O failed: {exc}") from None
        except (OSError, EOFError) as exc:
            raise ConnectionLost(f"{self.name}: connection failed: {exc}") from None
        except UnicodeDecodeError as exc:  # a text reply with bytes no SCPI device sends: the stream is out of step
            raise ConnectionLost(f"{self.name}: garbled reply ({exc.reason} at byte {exc.start}): the reply stream "
                                 "is out of step; reconnecting") from None

    def query(self, text: str) -> str:
        """One text query through pyvisa (``*IDN?``, ``CONF:BINN?``...)."""
        assert self._link is not None, "open() first"
        with self._wlock:
            return self._io(self._link.query, text)

    def _write(self, text: str) -> None:
        link = self._link
        assert link is not None, "open() first"
        with self._wlock:
            self._io(link.write, text)

    def command(self, text: str) -> None:
        """Send ``text`` and check the error queue: DeviceError with the SCPI message if the
        device reports an error (all queued errors are read and named)."""
        reply = self.query(f"{text};:SYST:ERR?")
        errors = []
        while True:
            code_s = split_values(reply)[0] if reply else "0"
            try:
                code = int(code_s)
            except ValueError:
                raise DeviceError(f"{self.name}: unexpected reply {reply!r} to {text!r}") from None
            if code == 0 or len(errors) >= 32:
                break
            errors.append(reply)
            reply = self.query("SYST:ERR?")
        if errors:
            raise DeviceError(f"{self.name}: {text!r} refused: {'; '.join(errors)}")

    # -- Driver ---------------------------------------------------------------------------
    def open(self) -> None:
        self._open_visa()
        with self._wlock:
            if isinstance(self._link, _SocketLink):
                self._link.drain()  # device clear: drop replies a previous session left in flight
            else:
                try:
                    self._inst.clear()
                except Exception:  # noqa: BLE001 - not every backend/resource supports it
                    pass
        self._idn = self.query("*IDN?")
        parts = split_values(self._idn)
        if len(parts) < 4 or not parts[0]:
            raise DeviceError(f"{self.name}: {self.address} did not identify (IDN {self._idn!r})")
        self._write("ABOR;*RST;*CLS")
        self.query("*OPC?")
        s = self.settings
        cmds = [
            f"CONF:MODE {s.mode}", f"CONF:BINN {s.binning}", f"CONF:EXP {s.exposure_s!r}",
            f"CONF:GAIN {s.gain}", f"CONF:FTYP {_FTYPE[s.frame_type]}", f"CONF:FCO {s.frame_count}",
            f"SOUR:VOLT {s.kvp!r} KV", f"SOUR:CURR {s.ma!r} MA", f"TRIG:SOUR {s.trigger}",
        ]
        if s.trigger_period_s is not None:
            cmds.append(f"TRIG:PER {s.trigger_period_s!r}")
        if s.mode == "CT":
            cmds += [f"CONF:CT:PROJ {s.ct_projections}", f"CONF:CT:GEOM {s.ct_geometry}", f"CONF:CT:RANG {s.ct_range}"]
        for c in cmds:
            self.command(c)
        rows, cols = int(self.query("FETC:ROWS?")), int(self.query("FETC:COL?"))
        self._shape = (rows, cols)
        geo: dict[str, Any] = {"pixel_pitch_mm": PIXEL_PITCH_MM * s.binning, "binning": s.binning,
                               "rows": rows, "cols": cols}
        if s.mode == "CT":
            sid, sdd = float(self.query("CONF:CT:SID?")) * 1e3, float(self.query("CONF:CT:SDD?")) * 1e3
            fan = 2 * math.degrees(math.atan(cols * PIXEL_PITCH_MM * s.binning / 2 / sdd))
            span = 360.0 if s.ct_range == "FULL" else 180.0 + (fan if s.ct_geometry == "FAN" else 0.0)
            geo.update(ct_geometry=s.ct_geometry.lower(), n_proj=s.ct_projections, angular_range_deg=span,
                       sid_mm=sid, sdd_mm=sdd, fan_angle_deg=fan, rotation_axis_col=cols // 2,
                       slice_rows=[int(rows * 0.45), int(rows * 0.55)])
        self._geometry = geo

    def close(self) -> None:
        with self._wlock:
            self._close()

    def _close(self) -> None:
        # Only this driver's instrument. pyvisa gives every ResourceManager(...) of one VISA library
        # in a process the same object, and closing it closes every resource it opened: another
        # panel of the same daemon (xr0 beside ct0) lost its session whenever this one closed
        # (reconnect, settings change, shutdown). The manager stays for the process's life
        # (pyvisa closes it at exit).
        # pyvisa-py keeps every closed session in its table (with what its buffer held), for the
        # process's life: a reconnecting panel added one per reconnect; this driver's goes with it.
        sid = getattr(self._inst, "session", None)
        try:
            if self._inst is not None:
                self._inst.close()
        except Exception:  # noqa: BLE001 - closing must not raise
            pass
        sessions = getattr(getattr(self._rm, "visalib", None), "sessions", None)
        if isinstance(sessions, dict) and sid is not None:
            sessions.pop(sid, None)
        self._inst = self._rm = self._link = None

    def start(self) -> None:
        """Enable the source (the only place that does: the operator's start) and ``INIT``."""
        self._outstanding = False
        self._finished = False
        self._next_index = None
        # the panel clock (µs ticks) -> host CLOCK_MONOTONIC, from each frame's ready time and arrival
        self._panel_clock = DeviceClock(1e6, bucket_s=1.0, window_s=60.0)
        self.command("SOUR:OUTP OFF" if self.settings.frame_type == "dark" else "SOUR:OUTP ON")
        self.command("INIT")

    _SAFE = "ABOR;:SOUR:OUTP OFF"

    def cut_output(self) -> str:
        """Any thread: send ``ABOR;:SOUR:OUTP OFF`` now (no reply to wait for; a ``FETC?`` in
        flight then answers an empty block, which the acquisition thread reads)."""
        with self._wlock:
            if self._link is None:
                raise ConnectionLost(f"{self.name}: not connected")
            self._write(self._SAFE)
        return f"sent {self._SAFE} (exposure aborted, source output off; unconfirmed)"

    def enter_safe_state(self) -> str:
        """Abort the exposure and switch the source output off; confirmed by the device."""
        link = self._link
        if link is None:
            raise ConnectionLost(f"{self.name}: not connected")
        self._write(self._SAFE)
        if self._outstanding:  # the FETC? in flight answers now: an empty block (or a ready frame)
            if self._io(link.wait_reply, self.settings.timeout_s):
                self._read_reply()
            self._outstanding = False
        self._finished = True  # nothing more to fetch until start()
        reply = self.query("SOUR:OUTP?;:ACQ:STAT?")
        errors = []
        for _ in range(32):  # the queue: -230 from the aborted FETC? is expected, anything else is said
            err = self.query("SYST:ERR?")
            code = split_values(err)[0] if err else "0"
            if code in ("0", "+0"):
                break
            if not code.lstrip("+").startswith("-230"):
                errors.append(err)
        parts = split_units(reply)
        if len(parts) < 2 or parts[0] not in ("0", "OFF") or parts[1].upper() != "IDLE":
            raise DeviceError(f"{self.name}: after {self._SAFE} the detector reports SOUR:OUTP?;:ACQ:STAT? = "
                              f"{reply!r}{' (errors: ' + '; '.join(errors) + ')' if errors else ''}")
        return (f"{self._SAFE}: exposure aborted, X-ray source output off (device reports output 0, "
                f"acquisition IDLE)" + (f"; device errors: {'; '.join(errors)}" if errors else ""))

    def stop(self) -> None:
        if self._link is None:
            return
        try:
            if self._outstanding:  # collect the reply in flight (a frame is at most one period away)
                period = max(self.settings.exposure_s, 1.0 / READOUT_FPS[self.settings.binning])
                if self._io(self._link.wait_reply, period + 1.0):
                    self._read_reply()
                self._outstanding = False
            self.command("ABOR")
        except (DeviceError, ConnectionLost):
            pass

    def descriptor(self) -> StreamDescriptor:
        s = self.settings
        rate = min(READOUT_FPS[s.binning], 1.0 / s.exposure_s)
        if s.trigger == "EXT" and s.trigger_period_s:
            rate = min(rate, 1.0 / s.trigger_period_s)
        meta = s.model_dump(exclude={"frame_type", "visa_library", "timeout_s", "fast_read"})
        meta["idn"] = self._idn
        return StreamDescriptor(
            stream=self.name, modality="ct" if s.mode == "CT" else "xray", device=self._idn or "flatpanel",
            dtype="<u2", shape=list(self._shape), axes=["row", "col"], units="ADU",
            frame_rate_hz=rate, geometry=dict(self._geometry), meta=meta,
        )

    def _alloc(self, n: int) -> np.ndarray | None:
        """Storage for a ``FETC?`` block of ``n`` bytes: a frame buffer (reused) when ``n`` is the
        frame's size, an empty array for the end-of-acquisition block, else ``None``: a length no
        reply can have (a corrupted header) is refused before anything is allocated or read (it
        could claim up to 999,999,999 bytes, and the frame pool would keep what was written)."""
        rows, cols = self._shape
        if n == 0:
            return np.empty(0, dtype="<u2")
        if n != rows * cols * 2:
            return None
        return self._frames.take(n).view("<u2")

    #: replies out of step in a row (garbage where a block was due, a block of the wrong size) before
    #: the link counts as lost and is reconnected: each one is followed by a drain of the link
    resync_limit = 3

    def _resync(self) -> None:
        """A reply was not the block it should have been (corrupted bytes on the wire, a reply that
        lost its start): drop whatever is in flight (the device's replies to the queries already
        sent, read until the link is quiet), so the next ``FETC?`` is answered in step. After
        :attr:`resync_limit` in a row the link is lost (``ConnectionLost``: the worker reconnects,
        which clears the device's output queue)."""
        self._bad_in_row += 1
        self.count("resyncs")
        link = self._link
        if self._bad_in_row >= self.resync_limit or not isinstance(link, _SocketLink):
            self._bad_in_row = 0
            raise ConnectionLost(f"{self.name}: {self.resync_limit} replies in a row out of step with their "
                                 "queries; reconnecting")
        with self._wlock:
            self._io(link.drain, 0.1)

    def _read_reply(self) -> tuple[np.ndarray | None, int, str]:
        arr, n = self._io(self._link.read_block, self._alloc)  # type: ignore[union-attr]
        if arr is None and n >= 0:  # a length no frame has: its payload was not read
            self.count("bad_blocks")
            return None, n, ""
        if n < 0:
            # not a block: resynchronise on the end of the line
            line = self._io(self._link.read_rest_of_line)  # type: ignore[union-attr]
            self.count("garbage_replies")
            return None, -1, line
        rest = self._io(self._link.read_rest_of_line)  # type: ignore[union-attr]
        return arr, n, rest.lstrip(";")

    def read(self, timeout: float) -> list[Frame | Gap]:
        link = self._link
        assert link is not None
        if self._finished:
            time.sleep(min(timeout, 0.05))
            return []
        if not self._outstanding:
            q = "FETC?;:FETC:META?"
            self._write(("*TRG;:" + q) if self.settings.trigger == "SOFT" else q)
            self._outstanding = True
        if not self._io(link.wait_reply, timeout):
            return []
        t_mono, t_host = time.monotonic_ns(), time.time_ns()
        arr, n, meta_text = self._read_reply()
        self._outstanding = False
        if n == 0:  # empty block: the acquisition is over (frame count reached)
            self._finished = True
            self.query("SYST:ERR?")  # the -230 "no frame" it queued
            return []
        if arr is None:  # not a block, or a block of a length no frame has (counted above)
            self._resync()
            return []
        rows, cols = self._shape
        self._bad_in_row = 0
        out: list[Frame | Gap] = []
        sync: float | None = None
        try:
            fields = split_values(meta_text)
            idx_s, ang_s, t_s, kind = fields[:4]
            idx, angle, t_dev = int(idx_s), float(ang_s), float(t_s)
            if len(fields) > 4 and fields[4].upper() != "NAN":  # trigger-input edge, panel clock (s)
                sync = float(fields[4])
        except ValueError:
            self.count("bad_meta")
            idx, angle, t_dev, kind = (self._next_index or 0), 0.0, None, "IMAGE"
        if self._next_index is not None and idx != self._next_index:
            if idx > self._next_index:
                lost = idx - self._next_index
                self.count("overrun_frames", lost)
                out.append(Gap(lost_frames=lost, reason=f"device frame counter jumped {self._next_index - 1}->{idx} "
                                                        "(on-board buffer overrun)"))
            else:
                self.count("out_of_order")
        self._next_index = idx + 1
        meta: dict[str, Any] = {"frame_index": idx, "frame_type": kind.lower(), "angle_deg": angle}
        if self.settings.mode == "CT":
            meta["projection"] = idx % self.settings.ct_projections
            meta["rotation"] = idx // self.settings.ct_projections
        if t_dev is not None and math.isfinite(t_dev):
            self._panel_clock.update(int(round(t_dev * 1e6)), t_mono)
            if sync is not None and math.isfinite(sync):
                # the panel timestamps the edge itself (µs ticks): mapped as it is, no half period
                ev = clock_trigger(self._panel_clock, int(round(sync * 1e6)), "frame_sync", t_host - t_mono,
                                   t_device=sync, latched=False, sample=idx)
                meta[FRAME_TRIGGERS_KEY] = [ev.to_meta()]
                self.count("trigger_edges")
        out.append(Frame(arr.reshape(rows, cols), t_host, t_mono, t_device=t_dev, meta=meta))
        return out
