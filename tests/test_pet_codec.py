"""PETsys-style singles codec: record layout, both roles in memory, byte at a time, loss and garbage."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from medacq.protocols._sansio import NEED_DATA, Garbage, LocalProtocolError
from medacq.protocols.petsys import (
    SINGLE_DTYPE,
    BadFrame,
    Command,
    PetsysConnection,
    Reply,
    ReplyCode,
    SinglesBlock,
    petsys_channel_id,
)


def _singles(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.empty(n, SINGLE_DTYPE)
    s["time_ps"] = np.cumsum(rng.integers(1, 10**6, n))
    s["energy"] = rng.normal(511, 25, n).astype(np.float32)
    s["id"] = rng.integers(0, 360, n)
    return s


def _drain(codec: PetsysConnection) -> list:
    out = []
    while (ev := codec.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def test_record_is_petsys_event_struct() -> None:
    # DataFileWriter.hpp: struct Event { long long time; float e; int id; } __attribute__((__packed__))
    assert SINGLE_DTYPE.itemsize == 16
    rec = np.zeros(1, SINGLE_DTYPE)
    rec[0] = (123456789012345, 511.25, 4242)
    assert rec.tobytes() == struct.pack("<qfi", 123456789012345, 511.25, 4242)
    assert petsys_channel_id(1, 2, 3, 4) == (1 << 17) | (2 << 12) | (3 << 6) | 4


def test_block_frame_layout() -> None:
    dev = PetsysConnection("device")
    s = _singles(3)
    wire = dev.send(SinglesBlock(7, 1000, 2000, 5, s))
    magic, version, kind, _, length, counter = struct.unpack_from("<4sBBHII", wire)
    assert (magic, version, kind, length, counter) == (b"PSYS", 1, 1, 24 + 48, 7)
    assert struct.unpack_from("<qqII", wire, 16) == (1000, 2000, 3, 5)
    assert wire[40:88] == s.tobytes()
    assert struct.unpack_from("<I", wire, 88)[0] == zlib.crc32(wire[:88])


@pytest.mark.parametrize("step", [1, 7, None])
def test_host_device_pairs(step: int | None) -> None:
    host, dev = PetsysConnection("host"), PetsysConnection("device")
    cmd = Command(host.next_request_id(), "SET EWINDOW 425 650")
    wire = host.send(cmd)
    for i in range(0, len(wire), step or len(wire)):
        dev.receive_data(wire[i:i + (step or len(wire))])
    assert _drain(dev) == [cmd]
    s1, s2 = _singles(100, 1), _singles(0, 2)
    out = dev.send(Reply(cmd.request_id, ReplyCode.OK, "ok"))
    out += dev.send(SinglesBlock(dev.next_block_counter(), 0, 10, 0, s1))
    out += dev.send(SinglesBlock(dev.next_block_counter(), 10, 20, 3, s2))
    out += dev.send(Reply(9, ReplyCode.BUSY, "stop first"))
    events = []
    for i in range(0, len(out), step or len(out)):
        host.receive_data(out[i:i + (step or len(out))])
        events += _drain(host)
    assert [type(e) for e in events] == [Reply, SinglesBlock, SinglesBlock, Reply]
    assert events[0] == Reply(cmd.request_id, 0, "ok") and events[0].ok
    assert (events[1].counter, events[2].counter, events[2].dead_singles) == (0, 1, 3)
    np.testing.assert_array_equal(events[1].singles, s1)
    assert len(events[2].singles) == 0
    assert events[3].code == ReplyCode.BUSY and not events[3].ok


def test_corrupt_and_truncated_frames_are_lost_and_the_next_is_found() -> None:
    dev, host = PetsysConnection("device"), PetsysConnection("host")
    good = [dev.send(SinglesBlock(k, k, k + 1, 0, _singles(50, k))) for k in range(4)]
    bad = bytearray(good[1])
    bad[100] ^= 0xFF
    trunc = good[2][: len(good[2]) // 2]
    host.receive_data(b"\x00junk" + good[0] + bytes(bad) + trunc + good[3])
    events = _drain(host)
    blocks = [e for e in events if isinstance(e, SinglesBlock)]
    assert [b.counter for b in blocks] == [0, 3]
    assert sum(isinstance(e, BadFrame) for e in events) >= 1
    assert sum(e.nbytes for e in events if isinstance(e, Garbage)) >= 5


def test_roles_are_enforced() -> None:
    host, dev = PetsysConnection("host"), PetsysConnection("device")
    with pytest.raises(LocalProtocolError):
        host.send(Reply(1, 0, ""))
    with pytest.raises(LocalProtocolError):
        dev.send(Command(1, "START"))
    with pytest.raises(LocalProtocolError):
        dev.send(SinglesBlock(1 << 32, 0, 1, 0, _singles(1)))
    # a host never receives commands: the frame is rejected, not decoded
    other_host = PetsysConnection("host")
    other_host.receive_data(host.send(Command(5, "START")))
    (ev,) = _drain(other_host)
    assert isinstance(ev, BadFrame) and ev.counter == 5
    with pytest.raises(ValueError):
        PetsysConnection("server")  # type: ignore[arg-type]


def test_implausible_length_is_garbage_not_a_huge_buffer() -> None:
    host = PetsysConnection("host", max_payload=1024)
    hdr = struct.pack("<4sBBHII", b"PSYS", 1, 1, 0, 1 << 30, 0)
    good = PetsysConnection("device").send(SinglesBlock(0, 0, 1, 0, _singles(10)))
    host.receive_data(hdr + good)
    events = _drain(host)
    assert isinstance(events[-1], SinglesBlock) and len(events[-1].singles) == 10
    assert sum(e.nbytes for e in events if isinstance(e, Garbage)) == len(hdr)


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medacq.protocols.anger import AngerConnection, EventBlock, event_dtype  # noqa: E402


def _codecs():
    return [PetsysConnection("host"), PetsysConnection("device"), AngerConnection("host"), AngerConnection("device")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048), chunk=st.integers(1, 64))
def test_random_bytes_never_raise(data: bytes, chunk: int) -> None:
    for codec in _codecs():
        for i in range(0, len(data), chunk):
            codec.receive_data(data[i:i + chunk])
            _drain(codec)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos=st.integers(0, 10_000), junk=st.binary(min_size=1, max_size=40), cut=st.booleans())
def test_a_mangled_frame_costs_only_itself(pos: int, junk: bytes, cut: bool) -> None:
    pdev, adev = PetsysConnection("device"), AngerConnection("device")
    ev = np.zeros(3, event_dtype(7))
    for dev, host, mk in ((pdev, PetsysConnection("host"), lambda c: SinglesBlock(c, 0, 1, 0, _singles(20, c))),
                          (adev, AngerConnection("host"), lambda c: EventBlock(c, 0, 1, 0, ev))):
        first = dev.send(mk(0))
        p = pos % len(first)
        mangled = first[:p] + junk + (b"" if cut else first[p:])
        # a truncated frame can only be told from a slow one once enough bytes follow it
        host.receive_data(mangled + b"".join(dev.send(mk(c)) for c in range(1, 6)))
        got = _drain(host)
        counters = [g.counter for g in got if isinstance(g, (SinglesBlock, EventBlock))]
        assert counters[-5:] == [1, 2, 3, 4, 5]
