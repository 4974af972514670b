"""Sciospec and OpenEIT codecs: byte-at-a-time, host/device pairs, garbage resync."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from medacq.protocols import openeit as oe
from medacq.protocols import sciospec as sc
from medacq.drivers._base import CodecDriver
from medacq.protocols import cyton as cy
from medacq.protocols import hackeeg as he
from medacq.protocols import quspin as qs
from medacq.protocols import synthetic as syn
from medacq.protocols import tactile as tp
from medacq.protocols._sansio import READ_ROOM, Garbage, LocalProtocolError, ReceiveBuffer

from conftest import drain, feed_bytewise


# ----------------------------------------------------------------------------- Sciospec


def test_sciospec_command_bytes_match_sciopy() -> None:
    host = sc.SciospecHostCodec()
    assert host.send(sc.ResetSetup()) == bytes.fromhex("B00101B0")
    assert host.send(sc.SetBurstCount(3)) == bytes.fromhex("B003020003B0")
    assert host.send(sc.SetFrameRate(20.0)) == bytes([0xB0, 5, 3]) + struct.pack(">f", 20.0) + b"\xb0"
    f = host.send(sc.SetFrequencies(10000.0, 10000.0, 1, False))
    assert f[:3] == bytes([0xB0, 0x0C, 0x04]) and len(f) == 15 and f[-4:] == bytes([0, 1, 0, 0xB0])
    assert host.send(sc.AddInjectionPair(1, 2)) == bytes.fromhex("B0030601 02B0".replace(" ", ""))
    assert host.send(sc.StartMeasurement()) == bytes.fromhex("B40101B4")
    assert host.send(sc.StopMeasurement()) == bytes.fromhex("B40100B4")
    with pytest.raises(LocalProtocolError):
        host.send(sc.AddInjectionPair(3, 3))
    with pytest.raises(LocalProtocolError):
        host.send(sc.SetAmplitude(0.5))


def test_sciospec_commands_roundtrip_bytewise() -> None:
    host, dev = sc.SciospecHostCodec(), sc.SciospecDeviceCodec()
    cmds = [
        sc.ResetSetup(),
        sc.SetBurstCount(513),
        sc.SetFrameRate(12.5),
        sc.SetFrequencies(1000.0, 100000.0, 7, True),
        sc.SetAmplitude(0.001),
        sc.AddInjectionPair(16, 1),
        sc.GetSetup(sc.SetupOption.FRAME_RATE),
        sc.SetOutputConfig(3, True),
        sc.StartMeasurement(),
        sc.StopMeasurement(),
        sc.GetDeviceInfo(),
    ]
    wire = b"".join(host.send(c) for c in cmds)
    got = feed_bytewise(dev, wire)
    assert got == cmds


def _frame(i: int) -> sc.DataFrame:
    rng = np.random.default_rng(i)
    vals = (rng.normal(size=16) + 1j * rng.normal(size=16)).astype(np.complex64)
    return sc.DataFrame(channel_group=1 + i % 2, inj=1 + i % 16, gnd=1 + (i + 1) % 16, freq_row=1, timestamp_ms=1000 * i + 7, values=vals)


def test_sciospec_data_frame_layout() -> None:
    dev = sc.SciospecDeviceCodec()
    fr = _frame(3)
    raw = dev.send(fr)
    assert len(raw) == sc.DATA_FRAME_SIZE
    assert raw[0] == 0xB4 and raw[139] == 0xB4 and raw[1] == 137
    assert raw[2] == fr.channel_group and (raw[3], raw[4]) == (fr.inj, fr.gnd)
    assert struct.unpack(">H", raw[5:7])[0] == 1
    assert struct.unpack(">I", raw[7:11])[0] == fr.timestamp_ms
    re0, im0 = struct.unpack(">ff", raw[11:19])
    assert re0 == pytest.approx(float(fr.values[0].real)) and im0 == pytest.approx(float(fr.values[0].imag))


def test_sciospec_replies_bytewise_and_pairs() -> None:
    host, dev = sc.SciospecHostCodec(), sc.SciospecDeviceCodec()
    frames = [_frame(i) for i in range(5)]
    wire = dev.send(sc.Ack(sc.AckCode.ACK))
    wire += b"".join(dev.send(f) for f in frames)
    wire += dev.send(sc.SetupReply(3, struct.pack(">f", 20.0)))
    wire += dev.send(sc.Ack(sc.AckCode.NOT_RECOGNISED))
    assert wire[:4] == bytes.fromhex("18018318")
    got = feed_bytewise(host, wire)
    assert isinstance(got[0], sc.Ack) and got[0].ok
    for f, g in zip(frames, got[1:6]):
        assert isinstance(g, sc.DataFrame)
        assert (g.channel_group, g.inj, g.gnd, g.freq_row, g.timestamp_ms) == (f.channel_group, f.inj, f.gnd, f.freq_row, f.timestamp_ms)
        np.testing.assert_array_equal(g.values, f.values)
    assert got[6] == sc.SetupReply(3, struct.pack(">f", 20.0))
    assert got[7] == sc.Ack(0x82) and not got[7].ok
    assert len(got) == 8
    # same bytes in one chunk give the same events
    host2 = sc.SciospecHostCodec()
    host2.receive_data(wire)
    assert len(drain(host2)) == 8


def test_sciospec_garbage_resync() -> None:
    host, dev = sc.SciospecHostCodec(), sc.SciospecDeviceCodec()
    f1, f2 = _frame(1), _frame(2)
    good1, good2 = dev.send(f1), dev.send(f2)
    junk = b"\x00\x01\x02junk\xff"
    truncated = good1[:70]  # a frame cut mid-way (cable glitch)
    wire = junk + good1 + truncated + good2 + dev.send(sc.Ack(0x83))
    got = feed_bytewise(host, wire)
    frames = [e for e in got if isinstance(e, sc.DataFrame)]
    lost = sum(e.nbytes for e in got if isinstance(e, Garbage))
    assert len(frames) == 2
    np.testing.assert_array_equal(frames[0].values, f1.values)
    np.testing.assert_array_equal(frames[1].values, f2.values)
    assert lost == len(junk) + len(truncated)
    assert isinstance(got[-1], sc.Ack)


def test_sciospec_buffer_bounded() -> None:
    host = sc.SciospecHostCodec(max_buffer=1024)
    # a data-frame header that never completes, followed by lots of bytes without a tag
    for _ in range(100):
        host.receive_data(b"\x00" * 1000)
        drain(host)
    assert len(host._framer._buf) <= 1024


def test_a_full_serial_read_behind_a_partial_frame_loses_nothing() -> None:
    """A starved driver's next pty read can be a whole 64 KiB chunk while the codec still holds
    the start of a frame. Every frame decodes, no Garbage (the old 64 KiB bound discarded the
    oldest bytes: "receive buffer overflow", announced as a lost EIT frame)."""
    host, dev = sc.SciospecHostCodec(), sc.SciospecDeviceCodec()
    wire = b"".join(dev.send(_frame(i % 16)) for i in range(1000))
    chunk = 64 << 10
    host.receive_data(wire[:100])  # a partial frame waits
    assert drain(host) == []
    host.receive_data(wire[100:100 + chunk])
    host.receive_data(wire[100 + chunk:])
    got = drain(host)
    assert not [g for g in got if isinstance(g, Garbage)]
    assert len(got) == 1000 and all(isinstance(g, sc.DataFrame) for g in got)


@pytest.mark.parametrize("codec", [sc.SciospecHostCodec(), oe.OpenEITHostCodec(), cy.CytonHostCodec(),
                                   qs.QuSpinHostCodec(), he.HackEEGHostCodec(), tp.TactileHostCodec(),
                                   syn.SynthHostCodec()], ids=lambda c: type(c).__name__)
def test_every_codec_a_codec_driver_feeds_has_room_for_one_read_beyond_a_message(codec: object) -> None:
    """The bound behind the test above, for each host codec a :class:`CodecDriver` feeds: its
    receive buffer holds its largest message plus one driver read (``READ_ROOM``)."""
    bufs = [b for b in (getattr(codec, "_buf", None), getattr(getattr(codec, "_framer", None), "_buf", None))
            if isinstance(b, ReceiveBuffer)]
    assert len(bufs) == 1
    largest = {"SciospecHostCodec": 258, "OpenEITHostCodec": oe._MAX_LINE, "CytonHostCodec": 33,
               "QuSpinHostCodec": qs._MAX_LINE, "HackEEGHostCodec": he._MAX_LINE, "TactileHostCodec": 2 * 64 * 64 + 64,
               "SynthHostCodec": syn.MAX_BODY + 64}[type(codec).__name__]
    assert bufs[0].max_size >= largest + READ_ROOM
    assert CodecDriver.read_max == READ_ROOM


# ----------------------------------------------------------------------------- OpenEIT


def test_openeit_mode_commands_bytewise() -> None:
    host, dev = oe.OpenEITHostCodec(), oe.OpenEITDeviceCodec()
    wire = b"".join(host.send(oe.SetMode(c)) for c in "cde")
    assert wire == b"c\nd\ne\n"
    got = feed_bytewise(dev, wire)
    assert got == [oe.SetMode("c"), oe.SetMode("d"), oe.SetMode("e")]
    assert [g.n_electrodes for g in got] == [8, 16, 32]
    with pytest.raises(LocalProtocolError):
        host.send(oe.SetMode("z"))
    dev.receive_data(b"zz\nxd\n")
    got = drain(dev)
    assert isinstance(got[0], Garbage) and got[0].nbytes == 3
    assert isinstance(got[1], Garbage) and got[1].nbytes == 1
    assert got[2] == oe.SetMode("d")


def test_openeit_fixed_point_format() -> None:
    assert oe.format_fixed(12.5) == b"      12.5000"
    assert oe.format_fixed(0.0625) == b"       0.0625"
    assert oe.format_fixed(3.03) == b"       3.0000"  # 28.4 fixed point: 1/16 steps


@pytest.mark.parametrize("n_el", [8, 16, 32])
def test_openeit_magnitudes_roundtrip(n_el: int) -> None:
    n = oe.MEASUREMENTS_PER_FRAME[n_el]
    rng = np.random.default_rng(n_el)
    vals = np.round(rng.uniform(0, 5000, n) * 16) / 16
    dev, host = oe.OpenEITDeviceCodec(), oe.OpenEITHostCodec()
    wire = dev.send(oe.TextLine("mode 3: imaging")) + dev.send(oe.Magnitudes(vals))
    assert wire.count(b",") == n and wire.endswith(b",\r\n")
    got = feed_bytewise(host, wire)
    assert got[0] == oe.TextLine("mode 3: imaging")
    assert isinstance(got[1], oe.Magnitudes) and got[1].n_electrodes == n_el
    np.testing.assert_array_equal(got[1].values, vals)


def test_openeit_garbage_lines() -> None:
    host = oe.OpenEITHostCodec()
    good = b"magnitudes: 1.0000,2.5000,\r\n"
    bad = b"magnitudes: 1.00x0,2\r\n"
    wire = b"\xff\xfe\x00\n" + bad + good
    got = feed_bytewise(host, wire)
    assert [type(g) for g in got] == [Garbage, Garbage, oe.Magnitudes]
    assert got[0].nbytes == 4 and got[1].nbytes == len(bad)
    np.testing.assert_array_equal(got[2].values, [1.0, 2.5])


def test_openeit_line_buffer_bounded() -> None:
    host = oe.OpenEITHostCodec(max_line=4096)
    lost = 0
    for _ in range(50):
        host.receive_data(b"7" * 1000)
        for ev in drain(host):
            assert isinstance(ev, Garbage)
            lost += ev.nbytes
    assert len(host._buf) <= 4096 and lost >= 50_000 - 4096
    host.receive_data(b"\nmagnitudes: 4.0000,\r\n")
    evs = drain(host)
    assert isinstance(evs[-1], oe.Magnitudes)
