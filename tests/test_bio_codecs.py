"""Biosignal codecs in memory: byte-at-a-time, host/device pairs, garbage resync."""

from __future__ import annotations

import base64
import json
import random

import numpy as np
import pytest

from medacq.protocols import cyton as cy
from medacq.protocols import hackeeg as he
from medacq.protocols import quspin as qs
from medacq.protocols._sansio import Garbage, LocalProtocolError

from conftest import drain, feed_bytewise


# ------------------------------------------------------------------------- Cyton
def _samples(n: int, seed: int = 0) -> list[cy.CytonSample]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        stop = 0xC0 + (k % 7)
        chans = tuple(rng.randint(-(2**23), 2**23 - 1) for _ in range(8))
        if stop == 0xC0:
            acc = tuple(rng.randint(-32768, 32767) for _ in range(3))
            out.append(cy.CytonSample(k % 256, chans, stop, b"\x00" * 6, acc, None))
        elif stop >= 0xC3:
            aux = bytes([rng.randrange(256), rng.randrange(256)]) + b"\x00" * 4
            out.append(cy.CytonSample(k % 256, chans, stop, aux, None, rng.randrange(2**32)))
        else:
            aux = bytes(rng.randrange(256) for _ in range(6))
            out.append(cy.CytonSample(k % 256, chans, stop, aux, None, None))
    return out


def _norm(s: cy.CytonSample) -> tuple:
    return (s.counter, s.channels, s.stop_byte, s.accel, s.timestamp_ms)


def test_cyton_packet_roundtrip_bytewise_every_stop_byte() -> None:
    dev, host = cy.CytonDeviceCodec(), cy.CytonHostCodec()
    sent = _samples(300)
    wire = b"".join(dev.send(s) for s in sent)
    assert len(wire) == 33 * 300
    got = feed_bytewise(host, wire)
    assert [_norm(g) for g in got] == [_norm(s) for s in sent]
    assert {g.stop_byte for g in got} == set(range(0xC0, 0xC7))
    # aux decoding per stop byte
    g0 = next(g for g in got if g.stop_byte == 0xC0)
    assert g0.accel is not None and g0.timestamp_ms is None
    g5 = next(g for g in got if g.stop_byte == 0xC5)
    assert g5.timestamp_ms == int.from_bytes(g5.aux[2:6], "big")
    g1 = next(g for g in got if g.stop_byte == 0xC1)
    assert g1.accel is None and g1.timestamp_ms is None and len(g1.aux) == 6


def test_cyton_known_bytes() -> None:
    # channel 1 = -1 (0xFFFFFF), channel 2 = 0x123456, accel x = -2
    pkt = bytes([0xA0, 7]) + b"\xff\xff\xff" + b"\x12\x34\x56" + b"\x00" * 18 + b"\xff\xfe\x00\x01\x00\x02" + b"\xc0"
    host = cy.CytonHostCodec()
    host.receive_data(pkt)
    (s,) = drain(host)
    assert s.counter == 7 and s.channels[:2] == (-1, 0x123456) and s.accel == (-2, 1, 2)
    counters, counts, stops = cy.decode_packets(pkt * 3)
    assert counts.shape == (8, 3) and counts[0, 0] == -1 and counts[1, 2] == 0x123456


def test_cyton_scaling() -> None:
    assert cy.counts_to_uv(1, 24) == pytest.approx(0.02235, rel=1e-3)
    assert cy.counts_to_uv(2**23 - 1, 1) == pytest.approx(4.5e6)
    x = cy.counts_to_uv(np.ones((2, 3)), np.array([24, 1]))
    assert x[1, 0] / x[0, 0] == pytest.approx(24)
    assert cy.accel_to_g(16) == pytest.approx(0.002)


def test_cyton_text_and_packets_interleaved() -> None:
    dev, host = cy.CytonDeviceCodec(), cy.CytonHostCodec()
    banner = "OpenBCI V3 8-16 channel\r\nOn Board ADS1299 Device ID: 0x3E\r\nLIS3DH Device ID: 0x33\r\nFirmware: v3.1.2\r\n"
    s = _samples(3)
    wire = dev.send(cy.CytonText(banner)) + b"".join(dev.send(x) for x in s) + dev.send(
        cy.CytonText("Success: Channel set for 3"))
    got = feed_bytewise(host, wire)
    assert isinstance(got[0], cy.CytonText) and got[0].text == banner
    assert [_norm(g) for g in got[1:4]] == [_norm(x) for x in s]
    assert got[4] == cy.CytonText("Success: Channel set for 3")


def test_cyton_garbage_resync_counts_bytes() -> None:
    dev, host = cy.CytonDeviceCodec(), cy.CytonHostCodec()
    s = _samples(20, seed=3)
    pk = [dev.send(x) for x in s]
    junk1 = bytes([0x01, 0xFF, 0xA0, 0x55, 0x80])  # includes a fake start byte
    truncated = pk[5][:17]  # a packet cut short
    wire = b"".join(pk[:5]) + junk1 + truncated + b"".join(pk[5:])
    got = feed_bytewise(host, wire)
    samples = [g for g in got if isinstance(g, cy.CytonSample)]
    garbage = [g for g in got if isinstance(g, Garbage)]
    assert [_norm(g) for g in samples] == [_norm(x) for x in s]
    assert sum(g.nbytes for g in garbage) == len(junk1) + len(truncated)
    assert host.garbage_bytes == len(junk1) + len(truncated)
    assert host.samples_decoded == 20


def test_cyton_random_noise_never_raises_and_buffer_bounded() -> None:
    rng = np.random.default_rng(1)
    host = cy.CytonHostCodec(max_buffer=4096)
    dev = cy.CytonDeviceCodec()
    total_junk = 0
    good = _samples(50, seed=9)
    for k in range(50):
        junk = rng.integers(0, 256, size=int(rng.integers(0, 80)), dtype=np.uint8).tobytes()
        total_junk += len(junk)
        host.receive_data(junk)
        host.receive_data(dev.send(good[k]))
        drain(host)
    host.receive_data(dev.send(good[0])[:20])  # a partial packet waits for more
    assert not any(isinstance(e, cy.CytonSample) for e in drain(host))
    assert len(host._buf) <= 4096
    # every good packet's counter made it through most of the time; at least 90 %
    assert host.samples_decoded >= 45


def test_cyton_host_commands_encode_and_device_parses() -> None:
    host, dev = cy.CytonHostCodec(), cy.CytonDeviceCodec()
    cmds = [
        cy.SoftReset(), cy.StartStreaming(), cy.StopStreaming(), cy.ChannelOff(3), cy.ChannelOn(3),
        cy.ChannelOff(12), cy.ChannelOn(16),
        cy.ChannelSettings(3, 0, 2, 0, 0, 0, 0), cy.ChannelSettings(9, 1, 6, 0, 1, 1, 0),
        cy.SetDefaultChannels(), cy.ReportDefaultChannels(), cy.SetSampleRate(6), cy.QuerySampleRate(),
        cy.DaisyMode(True), cy.DaisyMode(False), cy.QueryRegisters(), cy.QueryVersion(),
        cy.SetBoardMode(0), cy.QueryBoardMode(), cy.LeadOffSettings(2, 1, 0), cy.TestSignal("-"),
        cy.TimeStamping(True), cy.InsertMarker("A"),
    ]
    wire = b"".join(host.send(c) for c in cmds)
    assert host.send(cy.ChannelSettings(3, 0, 2, 0, 0, 0, 0)) == b"x3020000X"
    assert host.send(cy.ChannelOn(16)) == b"I" and host.send(cy.ChannelOff(9)) == b"q"
    got = feed_bytewise(dev, wire)
    assert got == cmds
    with pytest.raises(LocalProtocolError):
        host.send(cy.ChannelSettings(3, gain_code=7))
    with pytest.raises(LocalProtocolError):
        host.send(cy.SetSampleRate(9))


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"x102000X", cy.ChannelSettingsError("too few chars")),
        (b"x1020000V", cy.ChannelSettingsError("Err: 9th char not X")),
        (b"x1090000X", cy.ChannelSettingsError("invalid channel setting")),
        (b"x9020000X", cy.ChannelSettingsError("invalid channel setting")),
        (b"~9", cy.SampleRateError("sample value out of bounds")),
        (b"~x", cy.SampleRateError("invalid sample value")),
        (b"z1Z", cy.LeadOffError("too few chars")),
        (b"/7", cy.BoardModeError("board mode value out of bounds.")),
    ],
)
def test_cyton_device_rejects_bad_settings(raw: bytes, expected) -> None:
    dev = cy.CytonDeviceCodec()
    got = feed_bytewise(dev, raw)
    assert got == [expected]


def test_daisy_pairing_and_lost_samples() -> None:
    def pkt(c: int, base: int) -> cy.CytonSample:
        return cy.CytonSample(c, tuple(range(base, base + 8)), 0xC0, b"\x00" * 6, (0, 0, 0), None)

    p = cy.DaisyPairer()
    out = []
    # pairs (even Daisy, odd main): counters 0..8, drop 9 (main of 8) and 10 (Daisy of 10/11),
    # then 11..13; wrap 255/0
    for c in [0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13]:
        out += p.push(pkt(c, c * 100))
    merged = [o for o in out if isinstance(o, cy.DaisySample)]
    lost = [o for o in out if isinstance(o, cy.LostSample)]
    assert [m.counter for m in merged] == [0, 2, 4, 6, 12]
    assert merged[0].channels == tuple(range(100, 108)) + tuple(range(0, 8))  # main 1-8, Daisy 9-16
    assert [l.counter for l in lost] == [8, 10]
    p2 = cy.DaisyPairer()
    res = p2.push(pkt(253, 0)) + p2.push(pkt(254, 0)) + p2.push(pkt(255, 0)) + p2.push(pkt(0, 0)) + p2.push(pkt(1, 0))
    assert [r.counter for r in res if isinstance(r, cy.DaisySample)] == [254, 0]
    assert not any(isinstance(r, cy.LostSample) for r in res)


# ----------------------------------------------------------------------- HackEEG
def _he_samples(n: int) -> list[he.HackEEGSample]:
    rng = random.Random(5)
    return [
        he.HackEEGSample(rng.randrange(2**32), k, 0xC00000 | rng.randrange(2**20),
                         tuple(rng.randint(-(2**23), 2**23 - 1) for _ in range(8)))
        for k in range(n)
    ]


def test_hackeeg_record_layout() -> None:
    s = he.HackEEGSample(0x01020304, 0x0A0B0C0D, 0xC00001, (-1, 1, 0, 0, 0, 0, 0, 0x7FFFFF))
    rec = he.encode_record(s)
    assert len(rec) == 35
    assert rec[:4] == bytes([4, 3, 2, 1]) and rec[4:8] == bytes([0x0D, 0x0C, 0x0B, 0x0A])
    assert rec[8:11] == b"\xc0\x00\x01" and rec[11:14] == b"\xff\xff\xff" and rec[-3:] == b"\x7f\xff\xff"
    assert he.decode_record(rec) == s


@pytest.mark.parametrize("mode", ["text", "jsonlines", "messagepack"])
def test_hackeeg_samples_roundtrip_each_mode(mode: str) -> None:
    dev = he.HackEEGDeviceCodec(mode=mode)
    host = he.HackEEGHostCodec(mode=mode)
    sent = _he_samples(40)
    wire = b"".join(dev.send(s) for s in sent)
    if mode == "jsonlines":
        first = wire.split(b"\n")[0]
        obj = json.loads(first)
        assert obj["C"] == 200 and len(base64.b64decode(obj["D"])) == 35
    if mode == "messagepack":
        import msgpack

        obj = msgpack.unpackb(wire[: 9 + 35], raw=False)
        assert obj["C"] == 200 and he.decode_record(obj["D"]) == sent[0]
    got = feed_bytewise(host, wire)
    assert got == sent


def test_hackeeg_mode_switch_dialogue() -> None:
    host, dev = he.HackEEGHostCodec(), he.HackEEGDeviceCodec()
    # boot banner in text mode
    host.receive_data(dev.send(he.TextLine("Ready")))
    assert drain(host) == [he.TextLine("Ready")]
    # text-mode 'jsonlines' is answered in JSON
    wire = host.send(he.HackEEGCommand("jsonlines"))
    assert wire == b"jsonlines\n" and host.mode == "jsonlines"
    (cmd,) = feed_bytewise(dev, wire)
    assert cmd == he.HackEEGCommand("jsonlines") and dev.mode == "jsonlines"
    reply = dev.send(he.HackEEGResponse(200, "Ok"))
    assert json.loads(reply) == {"STATUS_CODE": 200, "STATUS_TEXT": "Ok"}
    assert feed_bytewise(host, reply) == [he.HackEEGResponse(200, "Ok", None)]
    # JSON commands with integer parameters
    wire = host.send(he.HackEEGCommand("wreg", (0x01, 0x86)))
    assert json.loads(wire) == {"COMMAND": "wreg", "PARAMETERS": [1, 0x86]}
    assert feed_bytewise(dev, wire) == [he.HackEEGCommand("wreg", (1, 0x86))]
    reply = dev.send(he.HackEEGResponse(200, "Ok", 0x92))
    assert feed_bytewise(host, reply) == [he.HackEEGResponse(200, "Ok", 0x92)]
    # messagepack: replies stay JSON, samples are MessagePack
    feed_bytewise(dev, host.send(he.HackEEGCommand("messagepack")))
    assert dev.mode == host.mode == "messagepack"
    s = _he_samples(2)
    wire = dev.send(he.HackEEGResponse(200, "Ok")) + dev.send(s[0]) + dev.send(s[1])
    assert feed_bytewise(host, wire) == [he.HackEEGResponse(200, "Ok", None), s[0], s[1]]
    # text-mode command with hex args
    t = he.HackEEGHostCodec()
    assert t.send(he.HackEEGCommand("wreg", (0x05, 0x60))) == b"wreg 05 60\n"
    assert feed_bytewise(he.HackEEGDeviceCodec(), b"wreg 05 60\r\n") == [he.HackEEGCommand("wreg", (5, 0x60))]
    assert feed_bytewise(he.HackEEGDeviceCodec(), b"{nope\n") == [he.MalformedCommand(b"{nope")]


@pytest.mark.parametrize("mode", ["jsonlines", "messagepack"])
def test_hackeeg_garbage_resync(mode: str) -> None:
    dev = he.HackEEGDeviceCodec(mode=mode)
    host = he.HackEEGHostCodec(mode=mode)
    s = _he_samples(10)
    junk = b"\x00\x13garbage\xff"
    half = dev.send(s[3])[:12]
    wire = b"".join(dev.send(x) for x in s[:3]) + junk + b"".join(dev.send(x) for x in s[3:])
    got = feed_bytewise(host, wire)
    assert [g for g in got if isinstance(g, he.HackEEGSample)] == s
    assert sum(g.nbytes for g in got if isinstance(g, Garbage)) == len(junk)
    # a truncated JSON/MP record followed by good records: the good ones survive
    host2 = he.HackEEGHostCodec(mode=mode)
    got2 = feed_bytewise(host2, half + b"\n" + b"".join(dev.send(x) for x in s[4:]))
    assert [g for g in got2 if isinstance(g, he.HackEEGSample)][-5:] == s[5:]
    assert any(isinstance(g, Garbage) for g in got2)


def test_ads1298_register_facts() -> None:
    assert he.rate_from_config1(0x86) == 500 and he.rate_from_config1(0x06) == 250
    assert he.rate_from_config1(0x81) == 16000 and he.rate_from_config1(0x80) == 32000
    for r in (250, 500, 1000, 2000, 4000, 8000, 16000, 32000):
        assert he.rate_from_config1(he.config1_for_rate(r)) == r
    assert he.gain_from_chnset(0x60) == 12 and he.gain_from_chnset(0x00) == 6
    assert he.chnset(gain=1) == 0x10
    assert he.counts_to_uv(2**23 - 1, 1) == pytest.approx(2.4e6)


# ------------------------------------------------------------------------ QuSpin
def test_quspin_roundtrip_and_scaling() -> None:
    dev, host = qs.QuSpinDeviceCodec(), qs.QuSpinHostCodec()
    evs = [qs.QuSpinMessage("Data stream on"), qs.QuSpinSample(8388608 + 12345),
           qs.QuSpinStatus(4, "8388608"), qs.QuSpinLed(3, True), qs.QuSpinSample(8388608 - 50)]
    wire = b"".join(dev.send(e) for e in evs)
    assert wire.startswith(b"#Data stream on\r\n!8400953\r\n~048388608\r\n|31\r\n")
    got = feed_bytewise(host, wire)
    assert got == evs
    assert got[1].field_pt == pytest.approx(123.45) and got[4].field_pt == pytest.approx(-0.5)
    assert qs.pt_to_counts(123.45) == 8388608 + 12345
    # commands both ways
    hostc = qs.QuSpinHostCodec()
    cmd_wire = b"".join(hostc.send(qs.QuSpinCommand(c)) for c in ">D97E8")
    assert cmd_wire == b">D97E8"
    assert [c.char for c in feed_bytewise(dev, cmd_wire)] == list(">D97E8")
    with pytest.raises(LocalProtocolError):
        hostc.send(qs.QuSpinCommand("Z"))


def test_quspin_garbage_resync() -> None:
    dev, host = qs.QuSpinDeviceCodec(), qs.QuSpinHostCodec()
    good = [qs.QuSpinSample(8388608 + k) for k in range(5)]
    wire = dev.send(good[0]) + b"!83x\r\n" + b"\xff\xfe\r\n" + b"".join(dev.send(g) for g in good[1:])
    got = feed_bytewise(host, wire)
    assert [g for g in got if isinstance(g, qs.QuSpinSample)] == good
    assert sum(g.nbytes for g in got if isinstance(g, Garbage)) == 6 + 4
    # a partial line at the start (as after opening a port mid-stream) is one Garbage
    host2 = qs.QuSpinHostCodec()
    got2 = feed_bytewise(host2, b"8608\r\n" + dev.send(good[0]))
    assert isinstance(got2[0], Garbage) and got2[1] == good[0]
    # no line ending at all: bounded
    host3 = qs.QuSpinHostCodec()
    host3.receive_data(b"x" * 1000)
    g = drain(host3)
    assert g and sum(x.nbytes for x in g) >= 999 and len(host3._buf) <= 256


def test_cyton_non_ascii_digits_are_errors_not_crashes() -> None:
    """Found by the fuzzer: latin-1 '¹' and '²' pass str.isdigit() but are no digits."""
    dev = cy.CytonDeviceCodec()
    evs = feed_bytewise(dev, b"/\xb9~\xb2")
    assert [type(e).__name__ for e in evs] == ["BoardModeError", "SampleRateError"]
    assert cy.parse_sample_rate_reply("Success: Sample rate is \u00b250Hz") is None
