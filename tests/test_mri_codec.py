"""MaRCoS codec (both roles, byte at a time, host/device pairs), the exact reply lists of
marcos_client's test_server.py conformance cases, and the marga machine code."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from medacq.protocols._sansio import NEED_DATA, Garbage, LocalProtocolError
from medacq.protocols import marga
from medacq.protocols.marcos import (
    EMERGENCY_STOP, BadPacket, MarcosConnection, Reply, Request, pack_version, version_messages,
)
from medacq.simulators.mri import make

V = pack_version(1, 0, 5)


def _drain(codec):
    out = []
    while (ev := codec.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def _ask(console, commands, version=(1, 0, 5), kind=0, index=0):
    """Send one request to the console in memory; return the reply as the plain wire list."""
    data = msgpack.packb([kind, index, 0, pack_version(*version), commands], use_bin_type=True)
    raw = console.on_bytes(data, 0.0)
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def test_request_byte_at_a_time_both_roles():
    client, server = MarcosConnection("client"), MarcosConnection("server")
    wire = client.send(Request({"are_you_real": 0, "regrd": 5}, index=7))
    got = []
    for b in wire:
        server.receive_data(bytes([b]))
        got += _drain(server)
    assert got == [Request(commands={"are_you_real": 0, "regrd": 5}, index=7, kind=0, version=V)]
    reply = Reply(index=8, results={"are_you_real": "simulation"}, messages={"infos": ["x"]})
    rw = server.send(reply)
    assert msgpack.unpackb(rw, raw=False) == [128, 8, 0, V, {"are_you_real": "simulation"}, {"infos": ["x"]}]
    for i in range(0, len(rw), 2):  # pairs of bytes
        client.receive_data(rw[i:i + 2])
    (ev,) = _drain(client)
    assert ev == reply and ev.infos == ["x"] and ev.errors == []


def test_wrong_role_and_garbage_and_size_limit():
    with pytest.raises(LocalProtocolError):
        MarcosConnection("client").send(Reply(index=1, results={}))
    s = MarcosConnection("server")
    s.receive_data(b"\xc1" )  # never-used msgpack byte
    (g,) = _drain(s)
    assert isinstance(g, Garbage) and g.nbytes >= 1
    s.receive_data(msgpack.packb({"a": 1}) + msgpack.packb([0, 1, 0, V, {"x": 1}]))
    bad, req = _drain(s)
    assert isinstance(bad, BadPacket) and isinstance(req, Request) and req.index == 1
    small = MarcosConnection("server", max_message_bytes=1024)
    small.receive_data(msgpack.packb([0, 1, 0, V, {"mar_mem": b"\0" * 4000}], use_bin_type=True))
    (g,) = _drain(small)
    assert isinstance(g, Garbage) and "limit" in g.reason


def test_version_messages_as_the_server_words_them():
    assert version_messages(pack_version(1, 0, 5)) == {}
    assert version_messages(pack_version(1, 0, 1)) == {
        "infos": ["Client version 1.0.1 differs slightly from server version 1.0.5"]}
    assert version_messages(pack_version(1, 3, 255)) == {
        "warnings": ["Client version 1.3.255 different from server version 1.0.5"]}
    assert version_messages(pack_version(2, 5, 7)) == {
        "errors": ["Client version 2.5.7 significantly different from server version 1.0.5"]}


# -- the conformance cases of marcos_client test_server.py, as exact reply lists -------------

@pytest.mark.parametrize("version,extra", [
    ((1, 0, 1), {"infos": ["Client version 1.0.1 differs slightly from server version 1.0.5"]}),
    ((1, 0, 5), {}),
    ((1, 3, 100), {"warnings": ["Client version 1.3.100 different from server version 1.0.5"]}),
    ((2, 5, 7), {"errors": ["Client version 2.5.7 significantly different from server version 1.0.5"]}),
    ((255, 255, 255), {"errors": ["Client version 255.255.255 significantly different from server version 1.0.5"]}),
])
def test_conformance_version_and_unknown_command(version, extra):
    reply = _ask(make(), {"asdfasdf": 1}, version)
    errors = extra.pop("errors", []) + ["not all client commands were understood"]
    assert reply == [128, 1, 0, V, {"UNKNOWN1": -1}, {**extra, "errors": errors}]


def test_conformance_bad_packet_fpga_clk_mar_mem_leds_idle():
    c = make()
    assert _ask(c, [1, 2, 3]) == [128, 1, 0, V, {}, {"errors": ["no commands present or incorrectly formatted request"]}]
    assert _ask(c, {"fpga_clk": [0xdf0d, 0x03f03f30, 0x00100700]}) == [128, 1, 0, V, {"fpga_clk": 0}, {}]
    assert _ask(c, {"fpga_clk": [0xdf0d, 0x03f03f30]}) == [
        128, 1, 0, V, {"fpga_clk": -1},
        {"errors": ["you only provided some FPGA clock control words; check you're providing all 3"]}]
    full = 4 * 65536
    assert _ask(c, {"mar_mem": bytes(full)}) == [
        128, 1, 0, V, {"mar_mem": 0}, {"infos": [f"mar mem data bytes copied: {full}"]}]
    assert _ask(c, {"mar_mem": bytes(full + 1)}) == [
        128, 1, 0, V, {"mar_mem": -1},
        {"errors": [f"too much mar mem data: {full + 1} bytes > {full} -- streaming not yet implemented"]}]
    assert _ask(c, {"direct": 0x0f00a500}) == [128, 1, 0, V, {"direct": 0}, {}]
    assert _ask(c, {"are_you_real": 0}) == [128, 1, 0, V, {"are_you_real": "simulation"}, {}]
    assert _ask(c, {"regstatus": 0}) == [128, 1, 0, V, {"regstatus": [0, 0, 0, 0, 0, 0xffffff, 0]}, {}]
    assert _ask(c, {"acq_rlim": 10}) == [128, 1, 0, V, {"acq_rlim": -1}, {"errors": [
        "acquisition retry limit outside the range [1000, 10,000,000]; check your settings"]}]
    assert _ask(c, {}, kind=2) == [128, 1, 0, V, {}, {"infos": ["Shutting down server."]}]
    # several commands: results in the server's order, unknown ones counted from the top
    r = _ask(c, {"zzz": 1, "are_you_real": 0, "ctrl": 0}, index=41)
    assert r[1] == 42 and list(r[4]) == ["ctrl", "are_you_real", "UNKNOWN3"]
    assert r[5] == {"errors": ["not all client commands were understood"]}


def test_emergency_stop_reply_is_129():
    r = _ask(make(), {}, kind=EMERGENCY_STOP, index=9)
    assert r[:5] == [129, 10, 0, V, {}] and r[5]["warnings"] == ["Tried to carry out emergency stop!"]


# -- machine code ------------------------------------------------------------------------------

def test_instruction_words_and_fsm_timing():
    assert marga.insta(marga.IWAIT, 5) == 0x02000005
    assert marga.instb(marga.TX0_I, 3, 0x1234) == 0x85031234
    with pytest.raises(marga.MachineCodeError):
        marga.instb(5, 256, 0)
    with pytest.raises(marga.MachineCodeError):
        marga.execute([0x7F000000])
    # wait d = d + 3 cycles, type B lands at issue + delay + 1
    outs, end = marga.execute([marga.insta(marga.IWAIT, 7), marga.instb(5, 4, 9), marga.insta(marga.IFINISH, 0)])
    assert outs == [marga.Output(10 + 4 + 1, 5, 9)] and end == 15
    # a buffer is a FIFO: the second word waits for the first
    outs, _ = marga.execute([marga.instb(5, 10, 1), marga.instb(5, 0, 2)])
    assert [(o.cycle, o.value) for o in outs] == [(11, 1), (12, 2)]


def test_compiler_round_trip_lands_every_change_on_its_cycle():
    p = marga.Program()
    p.add(100, marga.TX0_I, 0x4000)
    p.add(100, marga.TX0_Q, 0x0100)
    p.add(105, marga.GATES_LEDS, 1)
    p.add_grad(5000, marga.fhdo_word(1, 0.5))
    p.add(5000, marga.RX_CTRL, 1 << 8)
    p.add(20_000_000, marga.RX_CTRL, 0)  # beyond one IWAIT's range
    words = marga.compile_changes(p, end_cycle=20_000_100)
    outs, end = marga.execute(words)
    got = {(o.cycle, o.buffer): o.value for o in outs}
    for c, slot in p.changes.items():
        for b, v in slot.items():
            assert got[(c, b)] == v
    assert end == 20_000_101
    with pytest.raises(marga.MachineCodeError):
        bad = marga.Program()
        bad.add(10, 5, 1)
        bad.add(11, 6, 1)
        bad.add(11, 7, 1)
        marga.compile_changes(bad)


def test_decode_timelines_tx_grad_lo_rx():
    p = marga.Program()
    p.add(8, marga.GRAD_CTRL, marga.GRAD_BOARD_FHDO)
    step = marga.lo_phase_step(8.5e6)
    p.add(16, marga.DDS0_PHASE_LSB, step & 0xFFFF)
    p.add(16, marga.DDS0_PHASE_MSB, step >> 16)
    p.add(24, marga.RX0_RATE, 384)
    p.add(1000, marga.TX0_I, 32767)
    p.add(1200, marga.TX0_I, 0)
    p.add_grad(2000, marga.fhdo_word(0, -0.25))
    p.add(3000, marga.RX_CTRL, 1 << 8)
    p.add(3000 + 10 * 384 + 1, marga.RX_CTRL, 0)
    tl = marga.decode(marga.compile_changes(p))
    t, a = tl.tx[0]
    assert list(t[-2:]) == [1000, 1200] and a[-2] == 1 and a[-1] == 0
    gt, gv = tl.grad[0]
    assert gt[-1] == 2000 + marga.GRAD_LATENCY[marga.GRAD_BOARD_FHDO] and abs(gv[-1] + 0.25) < 1e-4
    assert abs(tl.lo_hz[0][1][-1] - 8.5e6) < 0.1
    (w,) = tl.rx
    assert (w.channel, w.start, w.rate, w.n) == (0, 3000, 384, 10)
