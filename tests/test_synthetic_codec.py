"""Synthetic device protocol: host/device codecs in memory, byte at a time, garbage."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.protocols._sansio import NEED_DATA, Garbage, LocalProtocolError
from medacq.protocols.synthetic import SynthCommand, SynthDeviceCodec, SynthFrame, SynthHostCodec, SynthReply
from medacq.simulators.synthetic import SynthConfig, SynthInterface, synth_frame


def _drain(codec):
    out = []
    while (ev := codec.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def _frames():
    rng = np.random.default_rng(1)
    return [
        SynthFrame(0, 10, rng.normal(size=(3, 5)).astype("<f4")),
        SynthFrame(1, 20, rng.integers(0, 60000, size=(7,), dtype="<u2")),
        SynthFrame(2, 30, rng.integers(-300, 300, size=(2, 2, 2), dtype="<i2")),
        SynthFrame(3, 40, np.arange(5, dtype=np.uint8)),
    ]


def test_roundtrip_byte_at_a_time():
    dev, host = SynthDeviceCodec(), SynthHostCodec()
    wire = b"".join(dev.send(f) for f in _frames()) + dev.send(SynthReply("OK"))
    events = []
    for i in range(len(wire)):
        host.receive_data(wire[i : i + 1])
        events += _drain(host)
    assert [type(e) for e in events] == [SynthFrame] * 4 + [SynthReply]
    for got, want in zip(events, _frames()):
        assert (got.seq, got.t_device_ns) == (want.seq, want.t_device_ns)
        np.testing.assert_array_equal(got.data, want.data)
        assert got.data.dtype == want.data.dtype
    assert events[-1].text == "OK"


def test_garbage_is_skipped_and_counted():
    dev, host = SynthDeviceCodec(), SynthHostCodec()
    good = [dev.send(f) for f in _frames()]
    corrupted = bytearray(good[1])
    corrupted[20] ^= 0xFF  # crc mismatch
    wire = b"junk\xa5" + good[0] + bytes(corrupted) + b"\x00" * 7 + good[2] + good[3]
    host.receive_data(wire)
    events = _drain(host)
    frames = [e for e in events if isinstance(e, SynthFrame)]
    assert [f.seq for f in frames] == [0, 2, 3]
    lost = sum(e.nbytes for e in events if isinstance(e, Garbage))
    assert lost == 5 + len(corrupted) + 7


def test_oversized_length_is_garbage_not_memory():
    host = SynthHostCodec(max_body=1024)
    host.receive_data(b"\xa5\x5aD\x00" + (10**8).to_bytes(4, "little") + b"x" * 100)
    events = _drain(host)
    assert events and all(isinstance(e, Garbage) for e in events)
    assert len(host._buf) < 2048


def test_device_commands_and_interface():
    iface = SynthInterface(SynthConfig(shape=[2, 4], rate_hz=10, seed=5))
    host = SynthHostCodec()
    for cmd in (SynthCommand("*IDN?"), SynthCommand("CONF", '{"rate_hz": 20}'), SynthCommand("CONF", '{"rate_hz": -1}'),
                SynthCommand("START")):
        host.receive_data(iface.on_bytes(host.send(cmd), 0.0))
    replies = [e.text for e in _drain(host)]
    assert replies[0].startswith("MEDACQ,SYNTH,")
    assert replies[1] == "OK" and replies[2].startswith("ERR") and replies[3] == "OK"
    host.receive_data(iface.poll(0.5))  # 20 Hz for 0.5 s -> frames 0..10
    frames = _drain(host)
    assert [f.seq for f in frames] == list(range(11))
    cfg = SynthConfig(shape=[2, 4], rate_hz=20, seed=5)
    for f in frames:
        np.testing.assert_array_equal(f.data, synth_frame(cfg, f.seq))
    with pytest.raises(LocalProtocolError):
        host.send(SynthCommand("REBOOT"))


def test_same_seed_same_bytes():
    def run():
        iface = SynthInterface(SynthConfig(shape=[3, 3], dtype="<i2", rate_hz=100, seed=9))
        iface.on_bytes(b"START\n", 0.0)
        return iface.poll(0.2)

    assert run() == run()
