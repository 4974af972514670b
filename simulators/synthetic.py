"""The synthetic device: configurable shape, dtype and rate, deterministic from a seed.

Model: frame ``k`` of a series is a function of ``(seed, k)`` only (:func:`synth_frame`),
so a test can recompute what the device sent from the seed and the sequence number.
Interface: :class:`SynthInterface` speaks :mod:`medacq.protocols.synthetic` in device role.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medacq.protocols._sansio import Garbage
from medacq.protocols.synthetic import SynthDeviceCodec, SynthFrame, SynthReply, check_dtype, check_shape

from ._interface import DeviceInterface

__all__ = ["SynthConfig", "synth_frame", "SynthInterface"]

class SynthConfig(BaseModel):
    """Settings of the synthetic device (also the ``CONF`` JSON keys).

    Attributes:
        shape: frame shape, e.g. ``[8, 32]`` = (channel, sample).
        dtype: numpy dtype string, little-endian (``<f4``, ``<i2``, ``<u2``, ``|u1``...).
        rate_hz: frames per second (paced mode).
        seed: model seed.
    """

    model_config = ConfigDict(extra="forbid")

    shape: list[int] = Field(default_factory=lambda: [8, 32], min_length=1, max_length=4)
    dtype: str = "<f4"
    rate_hz: float = Field(default=100.0, gt=0, le=100_000)
    seed: int = 0

    _shape = field_validator("shape")(classmethod(lambda cls, v: check_shape(v)))
    _dtype = field_validator("dtype")(classmethod(lambda cls, v: check_dtype(v)))


def synth_frame(config: SynthConfig, seq: int) -> np.ndarray:
    """Frame ``seq`` of the synthetic device: a per-row sine plus seeded noise.

    Floats: amplitude 1 sine at (row+1) Hz sampled along the last axis, plus N(0, 0.1).
    Integers: the same scaled to a quarter of the type's range. Depends only on
    ``(config, seq)``.
    """
    shape = tuple(config.shape)
    dtype = np.dtype(config.dtype)
    rng = np.random.default_rng([config.seed, seq])
    n = shape[-1]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    t = (seq * n + np.arange(n)) / (config.rate_hz * n)
    f = np.arange(1, rows + 1)[:, None]
    x = np.sin(2 * np.pi * f * t[None, :]) + rng.normal(0.0, 0.1, (rows, n))
    if dtype.kind == "f":
        return x.reshape(shape).astype(dtype)
    info = np.iinfo(dtype)
    mid = (int(info.max) + int(info.min)) / 2
    span = (int(info.max) - int(info.min)) / 8
    return np.clip(np.rint(mid + span * x), info.min, info.max).reshape(shape).astype(dtype)


class SynthInterface(DeviceInterface):
    """Synthetic device behaviour: commands, and frames at ``rate_hz`` while started.

    ``drop(n)`` (alias ``drop_frames``) makes the device skip the next ``n`` frames (their
    sequence numbers are consumed but never sent), which is how tests induce device-side gaps.
    """

    def __init__(self, config: SynthConfig | None = None, serial: str = "SYN0001") -> None:
        self.config = config or SynthConfig()
        self.serial = serial
        self._codec = SynthDeviceCodec()
        self._running = False
        self._t0 = 0.0
        self._seq = 0
        self._to_drop = 0
        self.sent = 0
        self.dropped: list[int] = []
        self._cache: tuple[int, np.ndarray] | None = None

    # -- fault side door -------------------------------------------------------------
    def drop_frames(self, n: int) -> None:
        """Skip the next ``n`` frames (device-side loss)."""
        self._to_drop += int(n)

    def drop(self, n: int) -> None:
        """Fault side door (``DeviceFaults``): :meth:`drop_frames`."""
        self.drop_frames(n)

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        """Fault side door (``DeviceFaults``): the next ``n`` commands are answered
        ``ERR <message>`` (the protocol has no numeric codes; ``code`` is ignored)."""
        self.queue_error(message, n, code)

    def truth(self) -> dict[str, Any]:
        return {"running": self._running, "next_seq": self._seq, "sent": self.sent, "dropped": list(self.dropped)}

    # -- DeviceInterface -------------------------------------------------------------
    def on_connect(self, t: float) -> bytes:
        self._codec = SynthDeviceCodec()
        return b""

    def on_disconnect(self, t: float) -> None:
        self._running = False

    def on_bytes(self, data: bytes, t: float) -> bytes:
        def handle(ev: Any) -> bytes:
            if isinstance(ev, Garbage):
                return self._codec.send(SynthReply(f"ERR garbage: {ev.reason}"))
            return self._codec.send(self._command(ev.verb, ev.argument, t))

        return self.dispatch(self._codec, data, handle, count_garbage=False)

    def _command(self, verb: str, arg: str, t: float) -> SynthReply:
        injected = self.take_injected_error()
        if injected is not None:
            return SynthReply(f"ERR {injected[0]}")
        if verb == "*IDN?":
            return SynthReply(f"MEDACQ,SYNTH,{self.serial},1.0")
        if verb == "CONF?":
            return SynthReply(self.config.model_dump_json())
        if verb == "CONF":
            if self._running:
                return SynthReply("ERR stop acquisition before CONF")
            try:
                changes = json.loads(arg)
                if not isinstance(changes, dict):
                    raise ValueError("CONF takes a JSON object")
                self.config = SynthConfig.model_validate({**self.config.model_dump(), **changes})
            except (ValueError, ValidationError) as exc:
                return SynthReply(f"ERR {str(exc).splitlines()[0]}")
            self._cache = None
            return SynthReply("OK")
        if verb == "START":
            self._running = True
            self._t0 = t
            self._seq = 0
            return SynthReply("OK")
        if verb == "STOP":
            self._running = False
            return SynthReply("OK")
        return SynthReply(f"ERR unknown command {verb}")

    def next_deadline(self) -> float | None:
        if not self._running:
            return None
        return self._t0 + self._seq / self.config.rate_hz

    def poll(self, t: float) -> bytes:
        if not self._running:
            return b""
        out = []
        period = 1.0 / self.config.rate_hz
        while self._t0 + self._seq * period <= t and len(out) < 64:
            seq = self._seq
            self._seq += 1
            if self._to_drop:
                self._to_drop -= 1
                self.dropped.append(seq)
                continue
            t_dev = int((self._t0 + seq * period) * 1e9)
            out.append(self._codec.send(SynthFrame(seq, t_dev, synth_frame(self.config, seq))))
            self.sent += 1
        return b"".join(out)


def make(**options: Any) -> SynthInterface:
    """Factory for ``medacq sim synthetic`` (options: SynthConfig fields and ``serial``)."""
    serial = str(options.pop("serial", "SYN0001"))
    return SynthInterface(SynthConfig.model_validate(options), serial=serial)
