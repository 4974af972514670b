"""Driver for a MaRCoS MRI console (kind ``mri``, modality ``mri``) at ``tcp://host:11111``.

``open``: connect, ``are_you_real`` (the reply's version word is checked: a different major
version is refused, :class:`~medacq.drivers._base.DeviceError`), validate the sequence
(:class:`~medacq.protocols.mri_sequences.CartesianSequence`; a refusal names the limit, before
anything is sent). ``start``: the acquisition runs as ``run_seq`` requests of
``lines_per_run`` TRs each (after ``dummy_scans`` TRs); every reply's RX data becomes one
frame per phase-encode line: complex64 ``(coil, readout)`` (``rx0``, ``rx1``), in the
console's normalised units (counts × CIC correction / 2**24, as marcos_client's Experiment),
``meta`` = ``line`` (phase index 0..N-1), ``ky`` (cycles/m), ``image`` (repetition),
``last`` (the image's last line); slice-selective scans add ``slice`` (index) and
``slice_position_mm`` (every shot acquires its line in each slice, interleaved order). Images
repeat until ``stop`` (``repetitions`` = 0) or after ``repetitions``. ``sequence`` is a built-in
sequence (a table) or the path of a Pulseq ``.seq`` file (:mod:`medacq.protocols.pulseq`: read,
checked against ``limits`` and compiled when the settings are validated).

Safety: ``limits`` (``SystemLimits``: gradient amplitude/slew, RF duty, calibration) is marked
``config_only``: only the config file sets it, a control-plane ``configure`` that changes it is
refused; every sequence a ``configure`` asks for is validated against it. ``enter_safe_state`` sends
the emergency stop (command 1) and waits for its 129 reply.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from medacq.protocols.marcos import (
    EMERGENCY_STOP, REPLY_ERROR, SERVER_VERSION, MarcosConnection, Reply, Request, pack_version, unpack_version,
)
from medacq.protocols.mri_sequences import CartesianSequence, SequenceError, SequenceParams, SystemLimits
from medacq.protocols.pulseq import PulseqSequence, parse_seq
from medacq.protocols.stream import StreamDescriptor

from ._base import CodecDriver, ConnectionLost, DeviceError, Frame, Gap
from .transports import TcpTransport

__all__ = ["MriDriver", "MriSettings"]


def _cic_excess(rate: int) -> float:
    g = 6 * np.log2(4096 / rate)
    return float(2 ** (g - np.floor(g)))


class MriSettings(BaseModel):
    """``[device.settings]`` of an ``mri`` device: the sequence, and the console's limits."""

    model_config = ConfigDict(extra="forbid")

    sequence: SequenceParams | str = Field(
        default_factory=SequenceParams,
        description="a built-in sequence (table), or the path of a Pulseq v1.4/v1.5 .seq file (a path: "
                    "the config file only)",
        json_schema_extra={"config_only_path": True})
    # safety limits and calibration: the config file only (a control-plane configure may not touch them)
    limits: SystemLimits = Field(default_factory=SystemLimits, json_schema_extra={"config_only": True})
    lines_per_run: int = Field(4, ge=1, le=64)
    dummy_scans: int = Field(2, ge=0, le=64)
    repetitions: int = Field(0, ge=0, description="images to acquire; 0 = until stop")
    command_timeout_s: float = Field(3.0, gt=0)

    @model_validator(mode="after")
    def _valid_sequence(self) -> "MriSettings":
        try:
            build_sequence(self)
        except SequenceError as exc:
            raise ValueError(str(exc)) from None
        return self


def build_sequence(settings: MriSettings) -> CartesianSequence | PulseqSequence:
    """The sequence the settings name, validated against the limits (:class:`SequenceError`
    naming the limit): a built-in one, or a ``.seq`` file read and compiled."""
    if isinstance(settings.sequence, str):
        try:
            with open(settings.sequence, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise SequenceError(f"Pulseq file {settings.sequence}: {exc.strerror or exc}") from None
        return PulseqSequence(parse_seq(text), settings.limits, source=settings.sequence)
    return CartesianSequence(settings.sequence, settings.limits)


class MriDriver(CodecDriver):
    """MaRCoS console driver."""

    kind = "mri"
    modality = "mri"
    Settings = MriSettings

    def __init__(self, name: str, address: str, settings: MriSettings) -> None:
        super().__init__(name, address, settings)
        self.settings: MriSettings = settings
        self._codec = MarcosConnection("client")
        self._idx = 0
        self.seq = build_sequence(settings)
        self.server_version: tuple[int, int, int] | None = None
        self._running = False
        self._inflight: tuple[int, int, int] | None = None  # (packet idx, first line, count)
        self._next_line = 0
        self._image = 0
        self._prepared: tuple[int, int, bytes] | None = None  # the next run's machine code, compiled ahead

    # ---- protocol ---------------------------------------------------------------------------
    def _events(self):  # type: ignore[override]
        for ev in super()._events():
            if isinstance(ev, Reply):
                yield ev
            else:
                self.count("bad_packets")

    def _hold(self, ev: Any) -> None:
        if isinstance(ev, Reply) and self._inflight is not None and ev.index == self._inflight[0] + 1:
            self._pending.append(ev)
        else:
            self.count("stray_replies")

    def _send_request(self, commands: dict[str, Any], kind: int = 0) -> int:
        self._idx = (self._idx + 1) & 0xFFFF
        self._write(self._codec.send(Request(commands=commands, index=self._idx, kind=kind)))
        return self._idx

    def command(self, commands: dict[str, Any], timeout: float | None = None, kind: int = 0) -> Reply:
        """One request, its reply (DeviceError when the console reports errors)."""
        idx = self._send_request(commands, kind)
        t = timeout or self.settings.command_timeout_s
        ev = self._await(lambda e: isinstance(e, Reply) and e.index == idx + 1, t)
        if ev is None:
            raise ConnectionLost(f"{self.name}: no reply to {sorted(commands)} within {t} s")
        if ev.errors and kind == 0:
            raise DeviceError(f"{self.name}: console errors {ev.errors} for {sorted(commands)}")
        return ev

    # ---- Driver -----------------------------------------------------------------------------
    def open(self) -> None:
        self._link = TcpTransport(self.address)
        self._codec = MarcosConnection("client")
        self._pending.clear()
        r = self.command({"are_you_real": 0, "halt_and_reset": 0})
        self.server_version = unpack_version(r.version)
        if self.server_version[0] != SERVER_VERSION[0]:
            raise DeviceError(f"{self.name}: console speaks MaRCoS {'.'.join(map(str, self.server_version))}, "
                              f"this driver {'.'.join(map(str, SERVER_VERSION))} (major version differs)")
        self.console = str(r.results.get("are_you_real", "?"))

    def close(self) -> None:
        self._running = False
        super().close()

    def start(self) -> None:
        self._running = True
        self._image = 0
        self._next_line = -self.settings.dummy_scans
        self._inflight = None

    def stop(self) -> None:
        self._running = False
        if self._inflight is not None and self._link is not None:  # let the run finish
            try:
                self._await(lambda e: isinstance(e, Reply) and e.index == self._inflight[0] + 1,  # type: ignore[index]
                            self.settings.lines_per_run * self.seq.tr_s + 2)
            except ConnectionLost:
                pass
        self._inflight = None
        self._pending.clear()

    def enter_safe_state(self) -> str:
        """Emergency stop (command 1); the console must answer 129."""
        idx = self._send_request({}, kind=EMERGENCY_STOP)
        ev = self._await(lambda e: isinstance(e, Reply) and e.index == idx + 1, self.settings.command_timeout_s)
        self._running = False
        self._inflight = None
        self._pending.clear()
        if ev is None:
            raise ConnectionLost(f"{self.name}: no reply to the emergency stop")
        if ev.kind != REPLY_ERROR:
            raise DeviceError(f"{self.name}: emergency stop answered {ev.kind}, not 129")
        return "emergency stop sent; console answered 129 (sequence halted, RF and gradients off)"

    def descriptor(self) -> StreamDescriptor:
        seq = self.seq
        n = seq.matrix
        p = self.settings.sequence
        slice_mm = p.slice_mm if isinstance(p, SequenceParams) else None
        order = p.slice_order() if isinstance(p, SequenceParams) else list(range(seq.n_slices))
        return StreamDescriptor(
            stream=self.name, modality=self.modality, device=f"marcos:{getattr(self, 'console', '?')}",
            dtype="<c8", shape=[2, n], axes=["coil", "readout"], units="a.u.", channel_names=["rx0", "rx1"],
            sample_rate_hz=seq.bandwidth_hz, frame_rate_hz=1 / seq.tr_s,
            geometry={"fov_m": list(seq.fov_m), "matrix": [n, n], "readout_axis": "x",
                      "phase_axis": "y", "slice_mm": slice_mm, "phase_lines": seq.phase_lines, "orientation": "axial",
                      "slices": seq.n_slices, "slice_positions_mm": seq.slice_positions_mm, "slice_order": order,
                      "dk_per_m": self.seq.dk, "image_axes": ["y", "x"]},
            meta={"field_strength_t": self.settings.limits.b0_t, "larmor_hz": self.settings.limits.larmor_hz,
                  "sequence": self.seq.describe(), "address": self.address,
                  "server_version": list(self.server_version or ())},
        )

    def _chunk(self, first: int) -> tuple[int, int]:
        n = self.seq.shots
        return first, (min(self.settings.lines_per_run, n - first) if first >= 0 else -first)

    def _prepare(self, first: int) -> tuple[int, int, bytes]:
        if self._prepared is None or self._prepared[0] != first:
            f, count = self._chunk(first)
            self._prepared = (f, count, self.seq.lines(f, count).tobytes())
        return self._prepared

    def _launch(self) -> None:
        first, count, code = self._prepare(self._next_line)
        self._prepared = None
        idx = self._send_request({"run_seq": code})
        self._inflight = (idx, first, count)

    def _following(self, first: int, count: int) -> int:
        """The first line of the run after ``first..first+count-1``."""
        nxt = first + count
        return 0 if nxt >= self.seq.shots else nxt

    def read(self, timeout: float) -> list[Frame | Gap]:
        if not self._running and self._inflight is None:
            time.sleep(min(timeout, 0.05))
            return []
        if self._inflight is None:
            self._launch()
        idx, first, count = self._inflight  # type: ignore[misc]
        ev = None
        for e in self._pending:
            if isinstance(e, Reply) and e.index == idx + 1:
                ev = e
        if ev is None:
            # compile the next run while this one plays, so that it goes out the moment this
            # one's reply is in (and the frames are not held back by the compiler)
            t0 = time.monotonic()
            self._prepare(self._following(first, count))
            ev = self._await(lambda e: isinstance(e, Reply) and e.index == idx + 1,
                             max(0.0, timeout - (time.monotonic() - t0)))
        else:
            self._pending.remove(ev)
        if ev is None:
            return []
        self._inflight = None
        t_mono, t_host = time.monotonic_ns(), time.time_ns()
        out: list[Frame | Gap] = self._frames(ev, first, count, t_mono, t_host)
        self._next_line = first + count
        if first >= 0 and self._next_line >= self.seq.shots:
            self._next_line = 0
            self._image += 1
            if self.settings.repetitions and self._image >= self.settings.repetitions:
                self._running = False
        if self._running:
            self._launch()  # the next run plays while this one's frames are published
        return out

    def _frames(self, ev: Reply, first: int, count: int, t_mono: int, t_host: int) -> list[Frame | Gap]:
        if first < 0:
            return []
        n = self.seq.matrix
        acqs = [a for s in range(first, first + count) for a in self.seq.shot_acqs(s)]
        phases = np.asarray([ph for s in range(first, first + count) for ph in self.seq.acq_phases(s)])
        lines = [ln for _, ln in acqs]
        rx = ev.results.get("run_seq")
        need = n * len(lines)
        if not isinstance(rx, dict) or any(len(rx.get(k, ())) != need for k in ("rx0_i", "rx0_q", "rx1_i", "rx1_q")):
            self.count("short_runs")
            return [Gap(lost_frames=len(lines), reason=f"run of shots {first}..{first + count - 1}: "
                        f"{'; '.join(ev.errors) or 'RX data missing or short'}")]
        scale = _cic_excess(self.seq.dwell_cycles) / (1 << 24)
        data = np.empty((len(lines), 2, n), np.complex64)
        for ch in (0, 1):
            i = np.asarray(rx[f"rx{ch}_i"], dtype=np.int64).astype(np.uint32).view(np.int32)
            q = np.asarray(rx[f"rx{ch}_q"], dtype=np.int64).astype(np.uint32).view(np.int32)
            data[:, ch, :] = ((i + 1j * q.astype(np.float64)) * scale).reshape(len(lines), n)
        if phases.any():  # the ADC phase offsets of a Pulseq file (RF spoiling): turned back
            data *= np.exp(-1j * phases)[:, None, None].astype(np.complex64)
        out: list[Frame | Gap] = []
        image_done = first + count >= self.seq.shots
        pos = self.seq.slice_positions_mm
        for j, (sl, line) in enumerate(acqs):
            meta: dict[str, Any] = {"line": line, "ky": (line - n / 2) * self.seq.dk, "image": self._image,
                                    "last": image_done and j == len(lines) - 1}
            if pos is not None:
                meta["slice"], meta["slice_position_mm"] = sl, pos[sl]
            out.append(Frame(data[j], t_host, t_mono, t_device=None, meta=meta))
        return out
