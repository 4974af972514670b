"""MTP/1 tactile codec in memory: both roles, byte at a time, garbage, resync, CRC, counter jumps."""

from __future__ import annotations

import binascii
import struct

import numpy as np
import pytest

from medacq.protocols import tactile as tp
from medacq.protocols._sansio import NEED_DATA, Garbage, LocalProtocolError


def drain(codec) -> list:
    out = []
    while (ev := codec.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def feed_bytewise(codec, data: bytes) -> list:
    out = []
    for i in range(len(data)):
        codec.receive_data(data[i:i + 1])
        out += drain(codec)
    return out


def frame(counter: int, rows: int = 16, cols: int = 16, seed: int = 0, depth_um: int = 1234) -> tp.PressureFrame:
    cells = np.random.default_rng(seed + counter).integers(0, 65536, size=(rows, cols), dtype=np.uint16)
    # make sure sync bytes, '#' and '\n' appear inside the payload
    cells[0, 0] = 0x5AA5
    cells[1, 1] = 0x0A23
    return tp.PressureFrame(counter, counter * 10_000, depth_um, cells)


def test_crc_check_value():
    assert tp.crc16_ccitt(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE check value


def test_frame_layout_is_as_documented():
    f = frame(7, rows=16, cols=24, depth_um=-5)
    raw = tp.encode_frame(f)
    assert len(raw) == tp.frame_size(16, 24) == 17 + 2 * 16 * 24 + 2
    assert raw[:2] == b"\xa5\x5a" and raw[2] == 0x01 and raw[3] == 16 and raw[4] == 24
    assert struct.unpack_from("<IIi", raw, 5) == (7, 70_000, -5)
    assert np.array_equal(np.frombuffer(raw, "<u2", 16 * 24, 17).reshape(16, 24), f.cells)
    assert struct.unpack_from("<H", raw, len(raw) - 2)[0] == binascii.crc_hqx(raw[2:-2], 0xFFFF)


@pytest.mark.parametrize("shape", [(16, 16), (32, 32), (20, 28)])
def test_host_decodes_device_frames_byte_at_a_time(shape):
    dev, host = tp.TactileDeviceCodec(), tp.TactileHostCodec()
    frames = [frame(k, *shape) for k in range(3)]
    data = b"".join(dev.send(f) for f in frames) + dev.send(tp.Reply("OK", ("STOP",)))
    evs = feed_bytewise(host, data)
    assert [type(e) for e in evs] == [tp.PressureFrame] * 3 + [tp.Reply]
    for got, want in zip(evs, frames):
        assert got.counter == want.counter and got.t_device_us == want.t_device_us
        assert got.depth_um == want.depth_um and got.cells.shape == shape
        np.testing.assert_array_equal(got.cells, want.cells)
    assert evs[-1] == tp.Reply("OK", ("STOP",))


def test_commands_pair_host_and_device():
    host, dev = tp.TactileHostCodec(), tp.TactileDeviceCodec()
    cmds = [tp.Identify(), tp.SetRate(250.0), tp.QueryRate(), tp.SetGain(8), tp.QueryGain(), tp.Zero(),
            tp.Start(), tp.Stop(), tp.SetRate(12.5)]
    wire = b"".join(host.send(c) for c in cmds)
    assert wire.startswith(b"ID?\nRATE 250\nRATE?\nGAIN 8\n")
    assert feed_bytewise(dev, wire) == cmds


@pytest.mark.parametrize("line,code", [(b"RATE 0\n", tp.ERR_ARGUMENT), (b"RATE fast\n", tp.ERR_ARGUMENT),
                                       (b"GAIN 3\n", tp.ERR_ARGUMENT), (b"START now\n", tp.ERR_ARGUMENT),
                                       (b"FLY\n", tp.ERR_UNKNOWN)])
def test_device_reports_bad_commands(line, code):
    dev = tp.TactileDeviceCodec()
    dev.receive_data(line)
    (ev,) = drain(dev)
    assert isinstance(ev, tp.BadCommand) and ev.code == code


def test_local_misuse_raises():
    host, dev = tp.TactileHostCodec(), tp.TactileDeviceCodec()
    with pytest.raises(LocalProtocolError):
        host.send(tp.SetRate(1000.0))
    with pytest.raises(LocalProtocolError):
        host.send(tp.SetGain(3))
    with pytest.raises(LocalProtocolError):
        dev.send(tp.PressureFrame(0, 0, 0, np.zeros((65, 2), np.uint16)))
    with pytest.raises(LocalProtocolError):
        dev.send(tp.PressureFrame(0, 0, 0, np.full((2, 2), 70000)))


def test_garbage_before_and_between_frames_is_reported_and_skipped():
    dev, host = tp.TactileDeviceCodec(), tp.TactileHostCodec()
    junk1, junk2 = b"\x00\x01\x02hello", b"\xa5\x00\x11"
    data = junk1 + dev.send(frame(0)) + junk2 + dev.send(frame(1))
    evs = feed_bytewise(host, data)
    frames = [e for e in evs if isinstance(e, tp.PressureFrame)]
    garbage = [e for e in evs if isinstance(e, Garbage)]
    assert [f.counter for f in frames] == [0, 1]
    assert sum(g.nbytes for g in garbage) == len(junk1) + len(junk2)


def test_corrupt_frame_costs_crc_then_counter_jump_and_resyncs():
    dev, host = tp.TactileDeviceCodec(), tp.TactileHostCodec()
    raws = [bytearray(dev.send(frame(k))) for k in range(4)]
    raws[1][100] ^= 0xFF  # one flipped byte inside frame 1's payload
    evs = feed_bytewise(host, b"".join(raws))
    kinds = [type(e).__name__ for e in evs]
    frames = [e.counter for e in evs if isinstance(e, tp.PressureFrame)]
    assert frames == [0, 2, 3]
    jumps = [e for e in evs if isinstance(e, tp.CounterJump)]
    assert jumps == [tp.CounterJump(1, 2, 1)]
    # the jump comes right before frame 2
    i = kinds.index("CounterJump")
    assert isinstance(evs[i + 1], tp.PressureFrame) and evs[i + 1].counter == 2
    assert host.crc_errors == 1
    assert sum(g.nbytes for g in evs if isinstance(g, Garbage)) == len(raws[1])


def test_counter_jump_and_wrap():
    dev, host = tp.TactileDeviceCodec(), tp.TactileHostCodec()
    seq = [0xFFFFFFFE, 0xFFFFFFFF, 0, 5]
    host.receive_data(b"".join(dev.send(frame(c)) for c in seq))
    evs = drain(host)
    assert [e.counter for e in evs if isinstance(e, tp.PressureFrame)] == seq
    assert [e for e in evs if isinstance(e, tp.CounterJump)] == [tp.CounterJump(1, 5, 4)]
    host.reset_counter()
    host.receive_data(dev.send(frame(0)))
    assert [type(e) for e in drain(host)] == [tp.PressureFrame]


def test_reply_lines_and_errors():
    host = tp.TactileHostCodec()
    host.receive_data(b"#ID medacq-tactile,16,16,1.0\r\n#ERR 2 rate outside 1..500\n#\xff\xfe\n#OK START\n")
    evs = drain(host)
    assert evs[0] == tp.Reply("ID", ("medacq-tactile,16,16,1.0",))
    assert evs[1].kind == "ERR" and evs[1].error_code == 2 and evs[1].text == "ERR 2 rate outside 1..500"
    assert isinstance(evs[2], Garbage)
    assert evs[-1] == tp.Reply("OK", ("START",))


def test_bad_header_does_not_hide_a_real_frame():
    dev, host = tp.TactileDeviceCodec(), tp.TactileHostCodec()
    # a false sync with an impossible size right before a real frame
    data = b"\xa5\x5a\x01\xff\xff" + dev.send(frame(3))
    evs = feed_bytewise(host, data)
    assert [e.counter for e in evs if isinstance(e, tp.PressureFrame)] == [3]
    assert sum(g.nbytes for g in evs if isinstance(g, Garbage)) == 5


def test_random_noise_never_raises_and_is_all_accounted():
    rng = np.random.default_rng(3)
    host = tp.TactileHostCodec()
    noise = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    for i in range(0, len(noise), 97):
        host.receive_data(noise[i:i + 97])
        drain(host)
    dev = tp.TactileDeviceCodec()
    host.receive_data(b"\n" * 200 + dev.send(frame(9)))  # a '#' may hold a partial line: newlines flush it
    evs = drain(host)
    assert [e.counter for e in evs if isinstance(e, tp.PressureFrame)][-1:] == [9]
