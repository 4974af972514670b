"""HackEEG protocol modes as the firmware has them (starcat-io/hackeeg-driver-arduino
``hackeeg_driver.ino`` ``loop()`` and ``JsonCommand.cpp``): text commands only in text mode,
JSON commands only in JSON Lines and MessagePack modes, the board's own replies to lines it
cannot use; and the driver's open sequence from a board left in any mode, even streaming
(as hackeeg-client-python ``HackEEGBoard.connect`` does it).

Codecs byte at a time and in host/device pairs; the simulator in memory; the driver against
the simulator over real ptys.
"""

from __future__ import annotations

import json
import os
import time

import msgpack
import numpy as np
import pytest

from medacq.drivers._base import Gap
from medacq.drivers.hackeeg import HackEEGDriver, HackEEGSettings
from medacq.protocols import hackeeg as he
from medacq.protocols._sansio import Garbage
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.biosignal_models import DEVICE_LEADS, EKGModel
from medacq.simulators.hackeeg import HackEEGInterface

from conftest import drain, feed_bytewise
from test_bio_drivers import assemble, collect, hackeeg_expected

JSON_400 = b'{"STATUS_CODE":400,"STATUS_TEXT":"Bad Request"}\r\n'
JSON_406 = b'{"STATUS_CODE":406,"STATUS_TEXT":"Unrecognized command"}\r\n'
TEXT_406 = b"406 Error: Unrecognized command.\r\n\r\n"


def jcmd(name: str, *params: int) -> bytes:
    return he.encode_command(he.HackEEGCommand(name, params), he.JSONLINES)


def tcmd(name: str, *params: int) -> bytes:
    return he.encode_command(he.HackEEGCommand(name, params), he.TEXT)


# ----------------------------------------------------------------- device codec rules
def test_text_mode_parses_only_text_commands_bytewise() -> None:
    dev = he.HackEEGDeviceCodec()
    got = feed_bytewise(dev, b"SDATAC\r\n" + b"wreg 05 0x60\n" + b"\r\n" + b"  \n" + b"nop\x01\x7f\n")
    assert got == [he.HackEEGCommand("sdatac"), he.HackEEGCommand("wreg", (5, 0x60)), he.HackEEGCommand("nop")]
    # a JSON command in text mode is a text command named '{"command":' -- not understood
    (bad,) = feed_bytewise(dev, jcmd("sdatac"))
    assert isinstance(bad, he.MalformedCommand)
    assert bad.reason == he.NOT_A_COMMAND and bad.command == '{"command":'
    assert bad.line == jcmd("sdatac").strip() and dev.mode == he.TEXT
    # a non-hexadecimal argument
    (bad,) = feed_bytewise(dev, b"rreg zz\n")
    assert (bad.reason, bad.command) == (he.BAD_ARGUMENT, "rreg")
    # the text parser switches modes (and 'messagepack' straight from text works)
    assert feed_bytewise(dev, b"MessagePack\n") == [he.HackEEGCommand("messagepack")]
    assert dev.mode == he.MESSAGEPACK


@pytest.mark.parametrize("mode", [he.JSONLINES, he.MESSAGEPACK])
def test_json_modes_parse_only_json_commands_bytewise(mode: str) -> None:
    dev = he.HackEEGDeviceCodec(mode=mode)
    got = feed_bytewise(dev, b"sdatac\n" + b"jsonlines\n" + b"\n" + b'{"PARAMETERS": [1]}\n' + b"[1, 2]\n"
                        + b'{"COMMAND": 5}\n')
    assert [(type(e), e.reason) for e in got] == [(he.MalformedCommand, he.BAD_JSON)] * 3 + [
        (he.MalformedCommand, he.NO_COMMAND)] * 3
    assert dev.mode == mode  # the text 'jsonlines' was not understood
    # names are matched case-sensitively (strcmp): the codec keeps them as sent
    assert feed_bytewise(dev, b'{"COMMAND": "SDATAC"}\n') == [he.HackEEGCommand("SDATAC")]
    # ArduinoJson reads the first value of the line; PARAMETERS only when it is an array
    assert feed_bytewise(dev, b'{"COMMAND":"rreg","PARAMETERS":[1]}\r\n') == [he.HackEEGCommand("rreg", (1,))]
    assert feed_bytewise(dev, b'{"COMMAND":"nop","PARAMETERS":7} tail\n') == [he.HackEEGCommand("nop")]
    # commands are JSON text in MessagePack mode too: a MessagePack-encoded command is bad JSON
    (bad,) = feed_bytewise(dev, msgpack.packb({"COMMAND": "sdatac"}) + b"\n")
    assert bad.reason == he.BAD_JSON and dev.mode == mode
    assert feed_bytewise(dev, jcmd("text")) == [he.HackEEGCommand("text")] and dev.mode == he.TEXT


def test_deeply_nested_json_is_bad_json_not_a_crash() -> None:
    dev = he.HackEEGDeviceCodec(mode=he.JSONLINES)
    dev.receive_data(b"[" * 5000 + b"\n" + jcmd("nop"))
    assert [getattr(e, "reason", e) for e in drain(dev)] == [he.BAD_JSON, he.HackEEGCommand("nop")]
    host = he.HackEEGHostCodec(he.JSONLINES)
    host.receive_data(b'{"a":' + b"[" * 4000 + b"\n" + b'{"STATUS_CODE":200,"STATUS_TEXT":"Ok"}\n')
    got = drain(host)
    assert isinstance(got[0], Garbage) and got[-1] == he.HackEEGResponse(200, "Ok")


def test_malformed_command_equality_is_the_line_only() -> None:
    a = he.MalformedCommand(b"x", he.BAD_JSON)
    assert a == he.MalformedCommand(b"x", he.NOT_A_COMMAND, "x") and a != he.MalformedCommand(b"y")


def test_host_device_pair_through_every_mode() -> None:
    host, dev = he.HackEEGHostCodec(), he.HackEEGDeviceCodec()
    # text → messagepack directly (the text parser has it); replies are JSON from then on
    assert feed_bytewise(dev, host.send(he.HackEEGCommand("messagepack"))) == [he.HackEEGCommand("messagepack")]
    assert host.mode == dev.mode == he.MESSAGEPACK
    assert feed_bytewise(host, dev.send(he.HackEEGResponse(200, "Ok"))) == [he.HackEEGResponse(200, "Ok")]
    # in MessagePack mode the host still sends JSON commands
    wire = host.send(he.HackEEGCommand("rreg", (1,)))
    assert json.loads(wire) == {"COMMAND": "rreg", "PARAMETERS": [1]}
    assert feed_bytewise(dev, wire) == [he.HackEEGCommand("rreg", (1,))]
    s = he.HackEEGSample(7, 3, 0xC00000, tuple(range(-4, 4)))
    wire = dev.send(he.HackEEGResponse(200, "Ok", 0x86)) + dev.send(s)
    assert wire[-44:-35] == bytes([0x82, 0xA1, 0x43, 0xCC, 0xC8, 0xA1, 0x44, 0xC4, 35])
    assert feed_bytewise(host, wire) == [he.HackEEGResponse(200, "Ok", 0x86), s]
    # back to text with a JSON 'text'; text commands are understood again
    assert feed_bytewise(dev, host.send(he.HackEEGCommand("text"))) == [he.HackEEGCommand("text")]
    assert host.mode == dev.mode == he.TEXT
    assert host.send(he.HackEEGCommand("rreg", (1,))) == b"rreg 01\n"
    assert feed_bytewise(host, dev.send(he.HackEEGResponse(200, "Ok"))) == [he.TextLine("200 Ok")]


def test_host_json_mode_treats_text_lines_as_garbage() -> None:
    host = he.HackEEGHostCodec(he.JSONLINES)
    got = feed_bytewise(host, TEXT_406 + JSON_400)
    assert got[-1] == he.HackEEGResponse(400, "Bad Request")
    assert sum(g.nbytes for g in got if isinstance(g, Garbage)) == host.garbage_bytes == len(TEXT_406) - 4


def test_generic_messagepack_garbage_is_counted() -> None:
    """MessagePack maps that are not the firmware's fixed sample header take the generic
    path; what it rejects is counted like every other Garbage."""
    bad_sample = msgpack.packb({"D": b"\x00" * 5, "C": 200})  # keys swapped: generic path
    bad_reply = msgpack.packb({"C": "x", "T": "Ok"})
    good = he.HackEEGDeviceCodec(mode=he.MESSAGEPACK).send(he.HackEEGSample(1, 2, 0xC00000, (0,) * 8))
    host = he.HackEEGHostCodec(he.MESSAGEPACK)
    got = feed_bytewise(host, bad_sample + bad_reply + good)
    g = [e for e in got if isinstance(e, Garbage)]
    assert [e.reason for e in g] == ["bad sample payload", "malformed reply object"]
    assert [e.nbytes for e in g] == [len(bad_sample), len(bad_reply)]
    assert host.garbage_bytes == len(bad_sample) + len(bad_reply)
    assert isinstance(got[-1], he.HackEEGSample) and got[-1].sample_number == 2


# ------------------------------------------------------------------ simulator replies
def test_simulator_answers_like_the_firmware_in_each_mode() -> None:
    dev = HackEEGInterface(seed=1)
    # text mode: a JSON line is an unknown text command; bad hex to rreg is 402
    assert dev.on_bytes(jcmd("sdatac"), 0.0) == TEXT_406
    assert dev.on_bytes(b"rreg zz\n", 0.0) == b"402 Error: expected hexidecimal digits.\r\n\r\n"
    assert dev.on_bytes(b"nop zz\n", 0.0) == b"200 Ok\r\n"  # other commands ignore arguments
    assert dev.on_bytes(b"version\n", 0.0) == b"200 v0.4.0\r\n"
    assert dev.malformed_commands == 2  # the JSON line and 'rreg zz'
    # JSON Lines: a text line is bad JSON (400), unknown / missing / wrong-case names are 406
    assert dev.on_bytes(b"jsonlines\n", 0.0) == b'{"STATUS_CODE":200,"STATUS_TEXT":"Ok"}\r\n'
    assert dev.on_bytes(b"sdatac\n", 0.0) == JSON_400
    assert dev.on_bytes(b"\n", 0.0) == JSON_400
    assert dev.on_bytes(b'{"PARAMETERS":[]}\n', 0.0) == JSON_406
    assert dev.on_bytes(jcmd("SDATAC"), 0.0) == JSON_406
    assert dev.on_bytes(jcmd("version"), 0.0) == JSON_406  # the JSON parser has no 'version'
    status = json.loads(dev.on_bytes(jcmd("status"), 0.0))
    assert status["STATUS_CODE"] == 200 and status["DATA"]["driver_version"] == "v0.4.0"
    assert dev.malformed_commands == 5  # + the text line, the blank line, no COMMAND
    # MessagePack mode runs the same JSON parser
    dev.on_bytes(jcmd("messagepack"), 0.0)
    dev.on_bytes(jcmd("rdatac"), 0.0)
    assert dev.on_bytes(b"sdatac\n", 0.1) == JSON_400 and dev.rdatac  # still streaming
    assert dev.on_bytes(jcmd("sdatac"), 0.1) == b'{"STATUS_CODE":200,"STATUS_TEXT":"Ok"}\r\n'
    assert not dev.rdatac and dev.truth()["malformed_commands"] == 6


def test_simulator_keeps_model_arguments_after_rate_change_and_rdata() -> None:
    kw = dict(heart_rate_bpm=95.0, hrv=0.0, wander_uv=0.0, noise_uv=0.0)
    scale = 2.4e6 / 6 / (2**23 - 1)

    def expected(fs: float, n: int) -> np.ndarray:
        m = EKGModel(5, fs=fs, **kw)
        return np.clip(np.round(m.generate(n, DEVICE_LEADS) / scale), -(2**23), 2**23 - 1)

    host = he.HackEEGHostCodec()
    dev = HackEEGInterface(seed=5, rate=500, **kw)
    host.receive_data(dev.on_bytes(host.send(he.HackEEGCommand("jsonlines")), 0.0))
    # rdata builds the model: one sample equal to the configured model's first sample
    host.receive_data(dev.on_bytes(host.send(he.HackEEGCommand("rdata")), 0.0))
    (s,) = [e for e in drain(host) if isinstance(e, he.HackEEGSample)]
    np.testing.assert_array_equal(s.channels, expected(500.0, 1)[:, 0])
    # a rate change rebuilds the model: the same arguments at the new rate
    host.receive_data(dev.on_bytes(host.send(he.HackEEGCommand("wreg", (1, he.config1_for_rate(1000)))), 0.0))
    host.receive_data(dev.on_bytes(host.send(he.HackEEGCommand("rdatac")), 0.0))
    host.receive_data(dev.poll(0.2 - 1e-9))
    counts = np.array([e.channels for e in drain(host) if isinstance(e, he.HackEEGSample)]).T
    assert counts.shape == (8, 200)
    np.testing.assert_array_equal(counts, expected(1000.0, 200))


# ------------------------------------------------------- driver open sequence in memory
class MemoryLink:
    """A transport whose other end is a simulator interface in memory. ``reset_input`` does
    not reach ``pending``: bytes still on their way from the board (its USB buffer)."""

    def __init__(self, dev: HackEEGInterface, pending: bytes = b"") -> None:
        self.dev, self.pending, self.sent = dev, bytearray(pending), bytearray()

    def write(self, data: bytes) -> None:
        self.sent += data
        self.pending += self.dev.on_bytes(data, 0.0)

    def read_some(self, timeout: float, max_bytes: int = 1 << 20) -> bytes:
        out = bytes(self.pending[:max_bytes])
        del self.pending[:max_bytes]
        return out

    def reset_input(self) -> None:
        pass


def test_open_sequence_survives_a_stale_json_reply_from_a_text_mode_board() -> None:
    """The first reply is a stale JSON one (an earlier session's), but the board is in text
    mode: the text 406 to our JSON lines still switches the driver to the text path."""
    dev = HackEEGInterface(seed=1)
    d = HackEEGDriver("ekg0", "memory", HackEEGSettings(timeout_s=1.0))
    d._link = link = MemoryLink(dev, b'{"STATUS_CODE":200,"STATUS_TEXT":"Ok"}\r\n')
    assert d._sync() == he.ADS1298_ID
    assert dev.codec.mode == he.JSONLINES and not link.pending
    assert b"sdatac\njsonlines\n" in link.sent  # the text path ran


@pytest.mark.parametrize("mode", [he.TEXT, he.JSONLINES, he.MESSAGEPACK])
def test_open_sequence_discards_a_stream_left_running(mode: str) -> None:
    """Samples still on their way (cut mid-record) are counted and dropped, never taken
    for replies; the board ends idle in JSON Lines mode."""
    dev = HackEEGInterface(seed=1, rate=2000)
    if mode != he.TEXT:
        dev.on_bytes(tcmd(mode), 0.0)
    dev.on_bytes((tcmd if mode == he.TEXT else jcmd)("rdatac"), 0.0)
    stream = dev.poll(0.05 - 1e-9)  # 100 samples
    assert dev.samples_sent == 100
    d = HackEEGDriver("ekg0", "memory", HackEEGSettings(timeout_s=1.0))
    d._link = MemoryLink(dev, stream[17:])  # the first record arrives cut
    assert d._sync() == he.ADS1298_ID
    assert d.counters["open_discarded_samples"] == 99
    assert dev.codec.mode == he.JSONLINES and not dev.rdatac


@pytest.mark.parametrize("mode", [he.TEXT, he.JSONLINES, he.MESSAGEPACK])
def test_open_sequence_sends_only_what_the_mode_understands(mode: str) -> None:
    dev = HackEEGInterface(seed=1)
    dev.codec.mode = mode
    d = HackEEGDriver("ekg0", "memory", HackEEGSettings(timeout_s=1.0))
    d._link = link = MemoryLink(dev)
    assert d._sync() == he.ADS1298_ID and dev.codec.mode == he.JSONLINES
    lines = bytes(link.sent).splitlines()
    if mode == he.TEXT:  # the 3 JSON probes (text 406), then text sdatac/jsonlines, JSON rreg
        assert lines == [jcmd("stop").strip(), jcmd("sdatac").strip(), jcmd("nop").strip(),
                         b"sdatac", b"jsonlines", jcmd("jsonlines").strip(), jcmd("rreg", 0).strip()]
        assert dev.malformed_commands == 3
    else:  # only JSON, nothing the JSON parser rejects
        assert lines == [jcmd(c).strip() for c in ("stop", "sdatac", "nop", "jsonlines")] + [
            jcmd("rreg", 0).strip()]
        assert dev.malformed_commands == 0


# -------------------------------------------------------------- driver over real ptys
def leave_board(address: str, mode: str, streaming: bool, settle_s: float = 0.3) -> None:
    """Another program's session: put the board in ``mode`` (from text mode, as it boots),
    maybe start it streaming, and go away without stopping it."""
    fd = os.open(address, os.O_RDWR | os.O_NOCTTY)
    try:
        if mode != he.TEXT:
            os.write(fd, tcmd(mode))
        if streaming:
            os.write(fd, (tcmd if mode == he.TEXT else jcmd)("rdatac"))
        time.sleep(settle_s)
        os.set_blocking(fd, False)
        try:
            os.read(fd, 1 << 16)  # it read a little, then quit
        except BlockingIOError:
            pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode,streaming", [
    (he.MESSAGEPACK, True), (he.MESSAGEPACK, False), (he.JSONLINES, True), (he.JSONLINES, False),
    (he.TEXT, True), (he.TEXT, False)])
def test_driver_opens_a_board_left_in_any_mode(mode: str, streaming: bool) -> None:
    with SimulatorServer(HackEEGInterface(seed=8), "pty", paced=True) as sim:
        leave_board(sim.address, mode, streaming)
        assert sim.call(lambda: (sim.interface.codec.mode, sim.interface.rdatac)) == (mode, streaming)
        d = HackEEGDriver("ekg0", sim.address, HackEEGSettings(rate=1000, mode="jsonlines", timeout_s=5.0))
        d.open()
        try:
            # idle in JSON Lines, configured, and only lines its parser understands were sent
            assert sim.call(lambda: (sim.interface.codec.mode, sim.interface.rdatac)) == (he.JSONLINES, False)
            assert sim.interface.rate == 1000
            # in text mode the three JSON probe lines are unknown text commands; else none
            assert sim.interface.malformed_commands == (3 if mode == he.TEXT else 0)
            assert d.descriptor().meta["firmware"] == "v0.4.0"
            d.start()
            items = collect(d, 600)
        finally:
            d.stop()
            d.close()
    assert not [g for g in items if isinstance(g, Gap)]
    assert d.counters.get("garbage_bytes", 0) == 0
    idx, vals = assemble(items)
    np.testing.assert_array_equal(idx, np.arange(idx.size))
    np.testing.assert_allclose(vals, hackeeg_expected(8, 1000, idx.size), rtol=1e-6, atol=1e-3)


def test_driver_reopens_a_board_it_left_streaming_in_messagepack_mode() -> None:
    """A driver that died without ``stop``/``close`` (e.g. the process was killed): the next
    open must stop the MessagePack stream with JSON commands and start clean."""
    with SimulatorServer(HackEEGInterface(seed=6), "pty", paced=False) as sim:
        d = HackEEGDriver("ekg0", sim.address, HackEEGSettings(rate=2000))
        d.open()
        d.start()
        collect(d, 500)
        d._link.close()  # gone without a word: the board keeps streaming MessagePack
        assert sim.call(lambda: (sim.interface.codec.mode, sim.interface.rdatac)) == (he.MESSAGEPACK, True)
        time.sleep(0.2)  # it streams on into the pty (what reaches the driver depends on timing)
        # the first open found a fresh board in text mode: its 3 JSON probe lines were unknown there
        assert sim.interface.malformed_commands == 3
        d2 = HackEEGDriver("ekg0", sim.address, HackEEGSettings(rate=2000))
        d2.open()
        d2.start()
        try:
            items = collect(d2, 2000)
        finally:
            d2.stop()
            d2.close()
        assert sim.interface.malformed_commands == 3  # nothing the MessagePack-mode board did not parse
    assert not [g for g in items if isinstance(g, Gap)]
    idx, vals = assemble(items)
    np.testing.assert_array_equal(idx, np.arange(idx.size))
    np.testing.assert_allclose(vals, hackeeg_expected(6, 2000, idx.size), rtol=1e-6, atol=1e-3)


def test_garbage_line_in_json_mode_gets_400_and_is_counted() -> None:
    """A text ``sdatac`` sent while the board streams JSON Lines does not stop it: the JSON
    parser answers 400 Bad Request, the stream goes on without a gap, both sides count it."""
    with SimulatorServer(HackEEGInterface(seed=2), "pty", paced=True) as sim:
        d = HackEEGDriver("ekg0", sim.address, HackEEGSettings(rate=1000, mode="jsonlines"))
        d.open()
        d.start()
        try:
            items = collect(d, 300)
            before = sim.interface.malformed_commands  # 3 JSON probe lines of the open (text mode)
            fd = os.open(sim.address, os.O_WRONLY | os.O_NOCTTY)  # a second writer on the line
            try:
                os.write(fd, b"sdatac\n")
            finally:
                os.close(fd)
            items += collect(d, 700)
            assert sim.interface.rdatac
        finally:
            d.stop()
            d.close()
        assert sim.interface.malformed_commands - before == 1
    assert d.counters.get("error_replies") == 1
    assert d.counters.get("garbage_bytes", 0) == 0
    assert not [g for g in items if isinstance(g, Gap)]
    idx, vals = assemble(items)
    np.testing.assert_array_equal(idx, np.arange(idx.size))
    np.testing.assert_allclose(vals, hackeeg_expected(2, 1000, idx.size), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("mode,paced", [("messagepack", False), ("jsonlines", False), ("messagepack", True)])
def test_driver_streams_16ksps_without_gaps(mode: str, paced: bool) -> None:
    """Rate configured through the driver (CONFIG1 = HR, DR=001), one second of samples
    read through the driver over a pty: every sample number present, values = the model."""
    with SimulatorServer(HackEEGInterface(seed=16), "pty", paced=paced) as sim:
        d = HackEEGDriver("ekg0", sim.address, HackEEGSettings(rate=16000, mode=mode))
        d.open()
        try:
            assert sim.interface.regs[he.REG_CONFIG1] == 0x81 and sim.interface.rate == 16000
            desc = d.descriptor()
            assert desc.sample_rate_hz == 16000.0 and desc.meta["frame_samples"] == 640
            d.start()
            items = collect(d, 16000)
        finally:
            d.stop()
            d.close()
    assert not [g for g in items if isinstance(g, Gap)]
    idx, vals = assemble(items)
    assert idx.size >= 16000
    np.testing.assert_array_equal(idx, np.arange(idx.size))
    np.testing.assert_allclose(vals, hackeeg_expected(16, 16000, idx.size), rtol=1e-6, atol=1e-3)
