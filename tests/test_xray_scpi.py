"""SCPI codec tests: both roles in memory, byte at a time, blocks of every digit count."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.protocols.scpi import (
    Block,
    Command,
    CommandTree,
    ErrorQueue,
    Garbage,
    LocalProtocolError,
    MessageEnd,
    ParseError,
    Reply,
    Response,
    ScpiDevice,
    ScpiError,
    ScpiHost,
    block_header,
    encode_block,
    match_choice,
    parse_bool,
    parse_numeric,
    parse_string,
    split_values,
)

from conftest import drain, feed_bytewise


# ---------------------------------------------------------------- blocks, host role


@pytest.mark.parametrize("ndigits", range(1, 10))
def test_block_every_digit_count_bytewise(ndigits: int) -> None:
    payload = b"\n;#3" + bytes((i * 7 + ndigits) % 256 for i in range(3 + ndigits))
    assert b"\n" in payload
    wire = ScpiDevice().send(Block(payload, ndigits))
    assert wire.startswith(b"#%d" % ndigits)
    assert wire[2 : 2 + ndigits] == str(len(payload)).zfill(ndigits).encode()
    host = ScpiHost()
    evs = feed_bytewise(host, wire + b"+1.5E-3\n")
    assert evs == [Block(bytearray(payload), ndigits), Reply("+1.5E-3")]


@pytest.mark.parametrize("ndigits", range(1, 10))
def test_block_every_digit_count_chunked(ndigits: int) -> None:
    rng = np.random.default_rng(ndigits)
    n = min(10**ndigits - 1, 50_000)
    payload = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    wire = encode_block(payload, ndigits) + b"\n"
    host = ScpiHost()
    evs = []
    pos = 0
    while pos < len(wire):
        k = int(rng.integers(1, 5000))
        host.receive_data(wire[pos : pos + k])
        pos += k
        evs += drain(host)
    assert len(evs) == 1 and evs[0].ndigits == ndigits and bytes(evs[0].data) == payload


def test_block_header_smallest_and_too_small() -> None:
    assert block_header(5_971_968) == b"#75971968"
    assert block_header(0) == b"#10"
    with pytest.raises(LocalProtocolError):
        block_header(100, 2)


def test_full_frame_block_roundtrip_as_array() -> None:
    frame = (np.arange(1536 * 1944, dtype=np.uint32) % 65521).astype("<u2").reshape(1536, 1944)
    wire = ScpiDevice().send(Block(frame.tobytes()))
    assert wire[:9] == b"#75971968"
    host = ScpiHost()
    for k in range(0, len(wire), 65536):
        host.receive_data(wire[k : k + 65536])
    (ev,) = drain(host)
    np.testing.assert_array_equal(ev.as_array("<u2", (1536, 1944)), frame)


def test_indefinite_block_ends_at_end_of_message() -> None:
    host = ScpiHost()
    wire = ScpiDevice().send_indefinite_block(b"ab\ncd")
    evs = feed_bytewise(host, wire)
    assert evs == []
    host.end_of_message()
    assert drain(host) == [Block(bytearray(b"ab\ncd"), 0)]
    host.receive_data(b"OK\n")
    assert drain(host) == [Reply("OK")]


def test_compound_response_with_block() -> None:
    dev = ScpiDevice()
    wire = dev.send(Response(("1", b"he;\nlo", '0,"No error"')))
    evs = feed_bytewise(ScpiHost(), wire)
    assert evs == [Reply("1"), Block(bytearray(b"he;\nlo"), 1), Reply('0,"No error"')]
    assert split_values(evs[2].text) == ["0", '"No error"']


def test_nondecimal_numeric_reply_is_text() -> None:
    evs = feed_bytewise(ScpiHost(), b"#H1F\n")
    assert evs == [Reply("#H1F")]


def test_host_garbage_bad_header_and_long_line() -> None:
    host = ScpiHost(max_line=100)
    evs = feed_bytewise(host, b"#3x1\nOK\n")
    assert evs == [Garbage(5, "bad block header"), Reply("OK")]
    host.receive_data(b"A" * 1000)
    assert drain(host) == []
    assert len(host._buf) < 300  # bounded while the line goes on
    host.receive_data(b"A\nOK\n")
    assert drain(host) == [Garbage(1002, "line too long"), Reply("OK")]


def test_host_oversized_block_is_skipped_and_counted() -> None:
    host = ScpiHost(max_block=10)
    wire = encode_block(b"x" * 50) + b"\n" + b"DONE\n"
    evs = feed_bytewise(host, wire)
    assert evs == [Garbage(50, "block larger than max_block"), Reply("DONE")]


# ---------------------------------------------------------------- device role


def test_device_compound_paths_case_and_queries_bytewise() -> None:
    host = ScpiHost()
    msg = host.send_many(
        [
            Command("conf:exposure", ("50 ms",)),
            Command("GAIN", ("high",)),
            Command(":TRIG:SOUR", ("SOFT",)),
            Command("*OPC", query=True),
            Command("SOUR", query=True),
        ]
    )
    evs = feed_bytewise(ScpiDevice(), msg)
    assert evs == [
        Command("CONF:EXPOSURE", ("50 ms",)),
        Command("CONF:GAIN", ("high",)),
        Command("TRIG:SOUR", ("SOFT",)),
        Command("*OPC", (), True),
        Command("TRIG:SOUR", (), True),
        MessageEnd(2),
    ]


def test_device_args_strings_blocks_crlf() -> None:
    dev = ScpiDevice()
    dev.receive_data(b'SYST:NAME "a;b,""c""",\'x\';CAL:DATA #15a\n;,b, 3\r\n')
    evs = drain(dev)
    assert evs[0] == Command("SYST:NAME", ('"a;b,""c"""', "'x'"))
    assert parse_string(evs[0].args[0]) == 'a;b,"c"'
    assert evs[1] == Command("SYST:CAL:DATA", (b"a\n;,b", "3"))
    assert evs[2] == MessageEnd(0)


def test_device_parse_errors() -> None:
    dev = ScpiDevice()
    dev.receive_data(b'CONF:EXP 1,;A$B 2;X "open\n*IDN?\n')
    evs = drain(dev)
    assert [type(e) for e in evs] == [ParseError] * 3 + [MessageEnd, Command, MessageEnd]
    assert [e.code for e in evs[:3]] == [-109, -101, -151]
    # a newline inside a block argument does not end the message
    dev2 = ScpiDevice()
    dev2.receive_data(b"CAL:DATA #15ab\n")
    assert drain(dev2) == []  # block incomplete: waits, newline inside the block
    dev2.receive_data(b"cd\n")
    assert drain(dev2) == [Command("CAL:DATA", (b"ab\ncd",)), MessageEnd(0)]


def test_device_line_too_long_resyncs() -> None:
    dev = ScpiDevice(max_line=64)
    evs = feed_bytewise(dev, b"X" * 200 + b"\n*RST\n")
    assert isinstance(evs[0], Garbage) and evs[0].nbytes == 201
    assert evs[1:] == [Command("*RST"), MessageEnd(0)]


def test_device_oversized_block_argument_dropped() -> None:
    dev = ScpiDevice(max_block=16)
    dev.receive_data(b"CAL:DATA #3100" + b"z" * 20 + b"\n*CLS\n")
    evs = drain(dev)
    assert isinstance(evs[0], Garbage) and evs[0].nbytes == 14 + 21
    assert evs[1:] == [Command("*CLS"), MessageEnd(0)]


def test_send_rejects_wrong_events() -> None:
    with pytest.raises(LocalProtocolError):
        ScpiHost().send(Reply("x"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        ScpiDevice().send(Command("X"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        ScpiHost().send(Command("A;B"))
    assert ScpiHost().send(Command("CAL:DATA", (b"\x00\x01", "2"))) == b"CAL:DATA #12\x00\x01,2\n"


# ---------------------------------------------------------------- argument helpers


@pytest.mark.parametrize(
    "arg,unit,expected",
    [
        ("50 MS", "S", 0.05),
        ("50ms", "S", 0.05),
        ("2.5E-2", "S", 0.025),
        ("100 US", "S", 1e-4),
        ("5 MA", "A", 0.005),
        ("1.5 KV", "V", 1500.0),
        ("10 MHZ", "HZ", 1e7),
        ("1.5K", "", 1500.0),
        ("#HFF", "", 255.0),
        ("#B101", "", 5.0),
        ("#Q17", "", 15.0),
        (".5", "", 0.5),
    ],
)
def test_parse_numeric_values(arg: str, unit: str, expected: float) -> None:
    assert parse_numeric(arg, unit) == pytest.approx(expected)


def test_parse_numeric_errors_and_keywords() -> None:
    assert parse_numeric("MIN", "S", minimum=0.001, maximum=10) == 0.001
    assert parse_numeric("maximum", "S", minimum=0.001, maximum=10) == 10
    assert parse_numeric("DEF", "", default=4, integer=True) == 4
    cases = {"abc": -104, "5 V": -131, "20": -222, "": -109, "2.5": -222}
    for arg, code in cases.items():
        with pytest.raises(ScpiError) as ei:
            parse_numeric(arg, "S" if arg == "5 V" else "", maximum=10, integer=(arg == "2.5"))
        assert ei.value.code == code, arg
    with pytest.raises(ScpiError) as ei:
        parse_numeric(b"\x00")
    assert ei.value.code == -104


def test_bool_and_choice() -> None:
    assert parse_bool("ON") and not parse_bool("off") and parse_bool("1") and not parse_bool("0")
    with pytest.raises(ScpiError):
        parse_bool("maybe")
    ch = ("INTernal", "EXTernal", "SOFTware")
    assert match_choice("int", ch) == "INT"
    assert match_choice("External", ch) == "EXT"
    with pytest.raises(ScpiError) as ei:
        match_choice("EXTE", ch)
    assert ei.value.code == -224
    with pytest.raises(ScpiError) as ei:
        match_choice('"INT"', ch)
    assert ei.value.code == -104


def test_command_tree_short_long_optional_suffix() -> None:
    tree = CommandTree()
    tree.add("CONFigure:EXPosure[:TIME]", "set_exp")
    tree.add("CONFigure:EXPosure[:TIME]?", "get_exp")
    tree.add("OUTPut#:STATe", "out", query="both")
    tree.add("*IDN?", "idn")
    r = tree.resolve
    assert r(Command("CONF:EXP")) == ("set_exp", ())
    assert r(Command("CONFIGURE:EXPOSURE:TIME")) == ("set_exp", ())
    assert r(Command("CONF:EXP", query=True)) == ("get_exp", ())
    assert r(Command("OUTP2:STAT")) == ("out", (2,))
    assert r(Command("OUTPUT:STAT", query=True)) == ("out", (1,))
    assert r(Command("*IDN", query=True)) == ("idn", ())
    for bad in [Command("CONFIG:EXP"), Command("CONF:EXPO"), Command("*IDN"), Command("CONF")]:
        with pytest.raises(ScpiError) as ei:
            r(bad)
        assert ei.value.code == -113


def test_error_queue_fifo_overflow_and_clear() -> None:
    q = ErrorQueue(size=4)
    assert q.pop().text == '0,"No error"'
    for code in (-113, -222, -104, -109, -101, -102):
        q.push(code)
    assert q.codes() == [-113, -222, -104, -350]
    assert q.pop().text == '-113,"Undefined header"'
    q.push(-222, "exposure 99 s")
    assert q.codes() == [-222, -104, -350, -222]
    q.clear()
    assert len(q) == 0 and q.pop().code == 0


# ---------------------------------------------------------------- flat-panel interface (in memory)

from medacq.simulators.flatpanel import FlatPanelInterface  # noqa: E402
from medacq.simulators.xray_model import XrayModel  # noqa: E402


class Link:
    """Host codec wired to a FlatPanelInterface in memory."""

    def __init__(self, seed: int = 3) -> None:
        self.dev = FlatPanelInterface(seed)
        self.host = ScpiHost()
        self.t = 0.0
        self.dev.on_connect(0.0)

    def send(self, text: str, bytewise: bool = False) -> list:
        data = text.encode() + b"\n"
        out = b""
        if bytewise:
            for i in range(len(data)):
                out += self.dev.on_bytes(data[i : i + 1], self.t)
        else:
            out = self.dev.on_bytes(data, self.t)
        self.host.receive_data(out)
        return drain(self.host)

    def run_until_idle(self) -> list:
        evs = []
        while (d := self.dev.next_deadline()) is not None:
            self.t = max(self.t, d)
            self.host.receive_data(self.dev.poll(self.t))
            evs += drain(self.host)
        return evs

    def err(self) -> str:
        return self.send("SYST:ERR?")[0].text


def test_interface_idn_and_error_queue_semantics() -> None:
    ln = Link()
    assert ln.send("*idn?", bytewise=True) == [Reply("MEDACQ,XP1512-SIM,000003,1.0")]
    assert ln.err() == '0,"No error"'
    assert ln.send("CONF:FOO 1;:CONF:BINN 3;:CONF:EXP abc;:CONF:BINN;:CONF:EXP 20 S;:CONF:GAIN MED") == []
    assert ln.send("SYST:ERR:COUN?") == [Reply("6")]
    codes = [int(ln.err().split(",")[0]) for _ in range(7)]
    assert codes == [-113, -222, -104, -109, -222, -224, 0]
    # settings survived the bad commands
    assert ln.send("CONF:BINN?;EXP?;GAIN?") == [Reply("1;3.000000E-02;HIGH")]
    # overflow: 30 slots, the last replaced by -350, later errors discarded
    for _ in range(35):
        ln.send("NOPE")
    assert ln.send("SYST:ERR:COUN?") == [Reply("30")]
    codes = [int(ln.err().split(",")[0]) for _ in range(31)]
    assert codes == [-113] * 29 + [-350, 0]
    ln.send("NOPE;NOPE")
    ln.send("*CLS")
    assert ln.err() == '0,"No error"'


def test_interface_setters_queries_and_units() -> None:
    ln = Link()
    ln.send("CONF:EXP 50 MS;BINN 4;MODE CT;GAIN LOW;:SOUR:VOLT 90 KV;CURR 5 MA;:TRIG:SOUR SOFT")
    assert ln.send("CONF:EXP?;BINN?;MODE?;GAIN?;:SOUR:VOLT?;CURR?;:TRIG:SOUR?") == [
        Reply("5.000000E-02;4;CT;LOW;9.000000E+04;5.000000E-03;SOFT")
    ]
    assert ln.send("FETC:ROWS?;COL?") == [Reply("384;486")]
    assert ln.dev.model.config.source.kvp == pytest.approx(90.0)
    ln.send("*RST")
    assert ln.send("CONF:BINN?;MODE?") == [Reply("1;RAD")]


def test_interface_acquisition_frames_and_ct_angles() -> None:
    ln = Link(seed=5)
    ln.send("CONF:BINN 4;MODE CT;CT:PROJ 8;:CONF:FCO 3")
    evs = ln.send("INIT;FETC?;FETC:ANGL?")
    assert evs == []  # FETC? waits for the first frame
    period = ln.dev.period
    assert period == pytest.approx(1 / 120 if ln.dev.model.config.exposure_s < 1 / 120 else 0.03)
    evs = ln.run_until_idle()
    assert [type(e) for e in evs] == [Block, Reply]
    assert ln.t == pytest.approx(period)
    ref = XrayModel(5)
    ref.configure(binning=4, mode="CT", n_proj=8)
    np.testing.assert_array_equal(evs[0].as_array("<u2", (384, 486)), ref.frame(0))
    assert float(evs[1].text) == 0.0
    ln.t = 10.0
    b1, a1 = ln.send("FETC?;FETC:ANGL?")
    np.testing.assert_array_equal(b1.as_array("<u2", (384, 486)), ref.frame(1))
    assert float(a1.text) == pytest.approx(45.0)
    assert ln.send("FETC?;:FETC:META?")[1].text.startswith("2,9.000000E+01,")
    assert ln.send("ACQ:STAT?;COUN?;READ?") == [Reply("IDLE;3;0")]
    # no more frames will come: empty block and -230 at once
    assert ln.send("FETC?") == [Block(bytearray(), 1)]
    assert ln.err().startswith("-230,")


def test_interface_soft_trigger_and_determinism() -> None:
    outs = []
    for _ in range(2):
        ln = Link(seed=9)
        ln.send("CONF:BINN 4;:TRIG:SOUR SOFT;:CONF:FCO 2;:INIT")
        assert ln.dev.next_deadline() is None
        ln.send("*TRG")
        evs = ln.send("FETC?")
        evs += ln.run_until_idle()
        ln.t += 1.0
        ln.send("TRIG")
        evs += ln.send("FETC?")
        evs += ln.run_until_idle()
        assert [type(e) for e in evs] == [Block, Block]
        outs.append([bytes(e.data) for e in evs])
        assert ln.send("ACQ:STAT?") == [Reply("IDLE")]
        assert ln.send("TRIG") == [] and ln.err().startswith("-211,")
    assert outs[0] == outs[1]
    assert outs[0][0] != outs[0][1]


def test_interface_settings_locked_while_running() -> None:
    ln = Link()
    ln.send("CONF:BINN 4;FCO 0;:INIT")
    ln.send("CONF:BINN 2")
    assert ln.err().startswith("-221,")
    ln.send("INIT")
    assert ln.err().startswith("-213,")
    ln.send("ABOR")
    assert ln.send("ACQ:STAT?") == [Reply("IDLE")]
