"""Driver for medacq's synthetic device (see :mod:`medacq.protocols.synthetic`).

Reached over pyserial: a pty path or ``socket://host:port``. Frames arrive with the
device's own frame counter; a jump in the counter is reported as a :class:`Gap` of the
frames that never came, so subscribers see exactly which sequence numbers are missing.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medacq.protocols.stream import StreamDescriptor
from medacq.protocols.synthetic import SynthCommand, SynthHostCodec, SynthReply, check_dtype, check_shape, config_json

from ._base import CodecDriver, ConnectionLost, DeviceError, Frame, Gap
from .transports import SerialTransport

__all__ = ["SyntheticDriver", "SyntheticSettings"]


class SyntheticSettings(BaseModel):
    """Settings of the synthetic device (sent to it with ``CONF``).

    Attributes:
        shape: frame shape, ``(channel, sample)`` for 2-D.
        dtype: numpy dtype string, little-endian.
        rate_hz: frames per second.
        seed: the device model's seed.
        axes: axis names announced in the descriptor (default ``channel, sample``).
        units: physical unit of the values.
    """

    model_config = ConfigDict(extra="forbid")

    shape: list[int] = Field(default_factory=lambda: [8, 32], min_length=1, max_length=4)
    dtype: str = "<f4"
    rate_hz: float = Field(default=100.0, gt=0, le=100_000)
    seed: int = 0
    axes: list[str] | None = None
    units: str = "a.u."

    _shape = field_validator("shape")(classmethod(lambda cls, v: check_shape(v)))
    _dtype = field_validator("dtype")(classmethod(lambda cls, v: check_dtype(v)))


class SyntheticDriver(CodecDriver):
    """Synthetic device over a serial link (pty or ``socket://``). Frames that race a command's
    reply are kept for :meth:`read` (the :class:`CodecDriver` default)."""

    kind = "synthetic"
    modality = "synthetic"
    Settings = SyntheticSettings

    def __init__(self, name: str, address: str, settings: SyntheticSettings) -> None:
        super().__init__(name, address, settings)
        self.settings: SyntheticSettings = settings
        self._codec = SynthHostCodec()
        self._idn = ""
        self._next_counter: int | None = None

    def _command(self, verb: str, arg: str = "", timeout: float = 2.0) -> str:
        """Send ``verb arg``; the reply text. ``ERR ...`` → :class:`DeviceError`."""
        r = self._request(self._codec.send(SynthCommand(verb, arg)), lambda ev: isinstance(ev, SynthReply),
                          timeout, f"no reply to {verb} within {timeout} s")
        if r.text.startswith("ERR"):
            raise DeviceError(f"{self.name}: device answered {r.text!r} to {verb}")
        return r.text

    def open(self) -> None:
        self._link = link = SerialTransport(self.address)
        self._codec = SynthHostCodec()
        try:
            self._command("STOP")
        except DeviceError:
            pass
        link.reset_input()
        self._codec = SynthHostCodec()
        self._pending.clear()
        self._idn = self._command("*IDN?")
        if not self._idn.startswith("MEDACQ,SYNTH"):
            raise DeviceError(f"{self.name}: {self.address} is not a synthetic device (IDN {self._idn!r})")
        s = self.settings
        self._command("CONF", config_json({"shape": s.shape, "dtype": s.dtype, "rate_hz": s.rate_hz, "seed": s.seed}))

    def start(self) -> None:
        self._next_counter = None
        self._command("START")

    def stop(self) -> None:
        if self._link is not None:
            try:
                self._command("STOP", timeout=1.0)
            except (DeviceError, ConnectionLost):
                pass

    def descriptor(self) -> StreamDescriptor:
        s = self.settings
        axes = s.axes or (["channel", "sample"] if len(s.shape) == 2 else [f"axis{i}" for i in range(len(s.shape))])
        return StreamDescriptor(
            stream=self.name, modality=self.modality, device=self._idn or "synthetic",
            dtype=s.dtype, shape=list(s.shape), axes=axes, units=s.units,
            channel_names=[f"ch{i}" for i in range(s.shape[0])] if len(s.shape) == 2 else None,
            frame_rate_hz=s.rate_hz, meta={"seed": s.seed},
        )

    def read(self, timeout: float) -> list[Frame | Gap]:
        events = self._receive(timeout)
        t_mono, t_host = self._arrival()
        out: list[Frame | Gap] = []
        for ev in events:
            if isinstance(ev, SynthReply):
                continue
            expected = self._next_counter
            if expected is not None and ev.seq != expected:
                if ev.seq > expected:
                    out.append(Gap(lost_frames=ev.seq - expected, reason=f"device counter jumped {expected - 1}->{ev.seq}"))
                else:
                    self.count("out_of_order")
            self._next_counter = ev.seq + 1
            out.append(Frame(ev.data, t_host, t_mono, t_device=ev.t_device_ns))
        return out
