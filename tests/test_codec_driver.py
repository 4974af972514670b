"""The command loop of ``drivers/_base.py`` (:class:`CodecDriver`), tested once, in memory: the
deadline, the Garbage drain, and the data frames that race a command's reply; the typed
``Driver.status()`` and how the worker shows it.

The device side is scripted with the synthetic protocol's real codecs (device bytes built with
``SynthDeviceCodec.send``), so the driver under test decodes real packets.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from medacq.drivers._base import CodecDriver, ConnectionLost, DriverStatus, Frame, SensorStatus
from medacq.drivers.transports import TcpTransport
from medacq.protocols._sansio import Garbage
from medacq.protocols.stream import StreamDescriptor
from medacq.protocols.synthetic import SynthCommand, SynthDeviceCodec, SynthFrame, SynthHostCodec, SynthReply

GARBAGE = b"junk!!!"  # no sync byte in it: one Garbage event of 7 bytes


def frame(seq: int) -> bytes:
    return SynthDeviceCodec.send(SynthFrame(seq, 1000 * seq, np.full((2, 3), seq, "<f4")))


def reply(text: str) -> bytes:
    return SynthDeviceCodec.send(SynthReply(text))


class ScriptedLink:
    """An in-memory :class:`~medacq.drivers._base.ByteLink`. Each write makes the device answer
    with ``answer(data)``, delivered ``chunk`` bytes per ``read_some``; a read with nothing
    queued waits its timeout, as a real link would."""

    def __init__(self, answer: Callable[[bytes], bytes], chunk: int = 1 << 20) -> None:
        self.answer = answer
        self.chunk = chunk
        self.queued = bytearray()
        self.sent: list[bytes] = []
        self.reads = 0

    def write(self, data: bytes) -> None:
        self.sent.append(data)
        self.queued += self.answer(data)

    def read_some(self, timeout: float, max_bytes: int = 1 << 30) -> bytes:
        self.reads += 1
        if not self.queued:
            time.sleep(timeout)
            return b""
        n = min(self.chunk, max_bytes)
        out = bytes(self.queued[:n])
        del self.queued[:n]
        return out

    def reset_input(self) -> None:
        self.queued.clear()

    def close(self) -> None:
        pass


class _Settings(BaseModel):
    pass


class Probe(CodecDriver):
    """The smallest command/reply driver: ``ask(verb)`` → reply text; ``read`` → frames."""

    kind = "probe"
    modality = "synthetic"
    Settings = _Settings

    def __init__(self, link: ScriptedLink) -> None:
        super().__init__("dev0", "memory", _Settings())
        self._codec = SynthHostCodec()
        self._link = link

    def ask(self, verb: str, timeout: float = 1.0) -> str:
        r = self._request(self._codec.send(SynthCommand(verb)), lambda ev: isinstance(ev, SynthReply), timeout,
                          f"no reply to {verb} within {timeout} s")
        return str(r.text)

    def open(self) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def descriptor(self) -> StreamDescriptor:
        raise NotImplementedError

    def read(self, timeout: float) -> list[Any]:
        events = self._receive(timeout)
        t_mono, t_host = self._arrival()
        return [Frame(ev.data, t_host, t_mono, t_device=ev.seq) if isinstance(ev, SynthFrame) else ev
                for ev in events]


def _seqs(items: list[Any]) -> list[int]:
    return [int(f.t_device) for f in items if isinstance(f, Frame)]


def _read_frames(d: Probe, n: int, timeout: float = 5.0) -> list[Any]:
    out: list[Any] = []
    end = time.monotonic() + timeout
    while len(_seqs(out)) < n and time.monotonic() < end:
        out += d.read(0.01)
    return out


def test_frames_that_race_the_reply_are_kept_in_order_and_garbage_is_counted() -> None:
    """One chunk: frame 0, garbage, frame 1, the reply, frame 2. The reply is found; 0 and 1 wait
    for read(), 2 stays in the codec, and read() returns all three in order, nothing lost."""
    link = ScriptedLink(lambda cmd: frame(0) + GARBAGE + frame(1) + reply("OK") + frame(2))
    d = Probe(link)
    assert d.ask("START") == "OK"
    assert link.sent == [b"START\n"]
    assert [ev.seq for ev in d._pending] == [0, 1]
    assert d.counters == {"garbage_bytes": len(GARBAGE)}
    reads = link.reads
    t0 = time.monotonic_ns()
    items = d.read(0.5)
    assert _seqs(items) == [0, 1, 2]
    assert link.reads == reads  # all of it was already in hand: read() did not wait on the link
    assert all(f.t_mono_ns <= t0 for f in items)  # stamped with the arrival of their bytes
    np.testing.assert_array_equal(items[2].data, np.full((2, 3), 2, "<f4"))
    assert d._pending == [] and d.read(0.01) == []


def test_a_reply_fed_one_byte_at_a_time_is_found_and_nothing_is_lost() -> None:
    link = ScriptedLink(lambda cmd: frame(0) + GARBAGE + frame(1) + reply("OK") + frame(2), chunk=1)
    d = Probe(link)
    assert d.ask("START", timeout=5.0) == "OK"
    assert [ev.seq for ev in d._pending] == [0, 1]
    assert _seqs(_read_frames(d, 3)) == [0, 1, 2]
    assert d.counters == {"garbage_bytes": len(GARBAGE)}


def test_silence_is_connection_lost_at_the_deadline_and_the_data_is_kept() -> None:
    """A device that streams but never answers: ConnectionLost after ``timeout`` (not before,
    not much later), and the frames that came meanwhile are still delivered."""
    link = ScriptedLink(lambda cmd: frame(7) + frame(8))
    d = Probe(link)
    t0 = time.monotonic()
    with pytest.raises(ConnectionLost, match=r"^dev0: no reply to STOP within 0.3 s$"):
        d.ask("STOP", timeout=0.3)
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 0.3 + d.poll_s + 0.25
    assert _seqs(d.read(0.01)) == [7, 8]


def test_a_disconnected_driver_says_so() -> None:
    d = Probe(ScriptedLink(lambda cmd: b""))
    d.close()
    with pytest.raises(ConnectionLost, match="dev0: not connected"):
        d.ask("START")


def test_hold_and_pass_garbage_are_the_drivers_choice() -> None:
    class Idle(Probe):
        pass_garbage = True

        def _hold(self, ev: Any) -> None:  # e.g. samples left over while configuring: dropped
            self.count("dropped_while_waiting")

    link = ScriptedLink(lambda cmd: frame(0) + GARBAGE + reply("OK") + GARBAGE + frame(1))
    d = Idle(link)
    assert d.ask("START") == "OK"
    assert d._pending == []
    assert d.counters == {"dropped_while_waiting": 2, "garbage_bytes": len(GARBAGE)}  # frame 0, the garbage
    items = d.read(0.01)  # after the reply: the garbage is passed on (and counted), then frame 1
    assert [type(i) for i in items] == [Garbage, Frame] and items[0].nbytes == len(GARBAGE)
    assert d.counters["garbage_bytes"] == 2 * len(GARBAGE)


def test_a_backlog_larger_than_the_codecs_bound_is_read_in_slices_and_nothing_is_lost() -> None:
    """A starved driver finds 800 frames (~830 KiB) waiting on its link, far more than its codec
    may buffer (about 514 KiB). It reads at most ``read_max`` bytes at a time and drains the
    codec between reads, so every frame arrives and no byte is discarded as overflow (on the old
    code one read took the whole backlog, and the reply and all but the newest ~514 KiB were
    discarded)."""
    big = [SynthDeviceCodec.send(SynthFrame(i, 1000 * i, np.full((16, 16), i, "<f4"))) for i in range(800)]
    link = ScriptedLink(lambda cmd: reply("OK") + b"".join(big))
    d = Probe(link)
    d._codec = SynthHostCodec(max_body=CodecDriver.read_max + 2048)
    assert d.ask("START") == "OK"
    got = _read_frames(d, 800)
    assert _seqs(got) == list(range(800))
    assert d.counters == {}  # no garbage_bytes: nothing was discarded
    assert float(got[-1].data[15, 15]) == 799.0
    assert link.reads >= 830_000 // CodecDriver.read_max


# ------------------------------------------------------------------- typed status
def test_status_is_a_typed_snapshot() -> None:
    d = Probe(ScriptedLink(lambda cmd: b""))
    d.count("resyncs", 2)
    st = d.status()
    assert st == {"counters": {"resyncs": 2}}
    assert set(st) <= set(DriverStatus.__annotations__)
    d.count("resyncs")  # the snapshot does not move under its reader
    assert st["counters"] == {"resyncs": 2} and d.status()["counters"] == {"resyncs": 3}


def test_the_worker_shows_the_typed_status_flattened() -> None:
    from medacq.daemon.acquisition.queue import FrameQueue
    from medacq.daemon.acquisition.worker import AcquisitionWorker, StreamStats

    sensor: SensorStatus = {"label": "OPM1", "address": "/dev/ttyUSB0", "state": "ok", "lost_samples": 0,
                            "late_samples_dropped": 0, "leds": {"laser_on": True}, "last_message": ""}

    class Rig(Probe):
        def status(self) -> DriverStatus:
            return {"counters": dict(self.counters), "sensors": [sensor]}

    w = AcquisitionWorker("dev0", Probe, "memory", _Settings(), FrameQueue(10, threading.Event()), StreamStats())
    assert w.driver_counters() == {}  # no driver open
    w.driver = d = Probe(ScriptedLink(lambda cmd: b""))
    d.count("garbage_bytes", 5)
    assert w.driver_counters() == {"garbage_bytes": 5}
    w.driver = r = Rig(ScriptedLink(lambda cmd: b""))
    r.count("clock_slips")
    assert w.driver_counters() == {"clock_slips": 1, "sensors": [sensor]}


# ------------------------------------------------------------------- transports
def test_tcp_transport_reset_input_discards_what_was_received() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        t = TcpTransport(f"tcp://127.0.0.1:{srv.getsockname()[1]}")
        conn, _ = srv.accept()
        try:
            conn.sendall(b"stale bytes")
            time.sleep(0.1)
            t.reset_input()
            assert t.read_some(0.05) == b""
            conn.sendall(b"fresh")
            assert t.read_some(1.0) == b"fresh"
        finally:
            conn.close()
            t.close()
    finally:
        srv.close()

