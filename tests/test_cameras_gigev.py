"""GigE Vision codecs in memory: GVCP both roles, GVSP packets, the GVSP receiver, GenICam XML."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from medacq.protocols._sansio import NEED_DATA, Garbage, LocalProtocolError
from medacq.protocols.genicam import Feature, genicam_xml, parse_genicam_xml
from medacq.protocols.gigev import (
    BlockComplete, BlockLost, Bootstrap, DiscoveryAck, DiscoveryCmd, GvcpCodec, GvcpErrorAck, GvcpStatus,
    GvspLeader, GvspPayload, GvspReceiver, GvspTrailer, PacketResendCmd, PixelFormat, ReadMemAck, ReadMemCmd,
    ReadRegAck, ReadRegCmd, ResendRequest, WriteMemAck, WriteMemCmd, WriteRegAck, WriteRegCmd, block_packets,
    decode_gvsp, encode_gvsp, make_genicam_url, next_block_id, pack_12p, packets_for, parse_genicam_url, unpack_12p,
)


def _events(codec):
    out = []
    while (ev := codec.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def test_gvcp_wire_bytes_match_the_aravis_layout():
    host = GvcpCodec("host")
    # key 0x42, flags ACK_REQUIRED, READREG 0x0080, length 4, id 1, address 0x0a00 (privilege)
    assert host.send(ReadRegCmd(1, (0xA00,))) == bytes.fromhex("42 01 0080 0004 0001 00000a00")
    assert host.send(WriteRegCmd(2, ((0xA00, 2),))) == bytes.fromhex("42 01 0082 0008 0002 00000a00 00000002")
    # READMEM rounds the count up to a multiple of 4, as arv_gvcp_packet_new_read_memory_cmd does
    assert host.send(ReadMemCmd(3, 0x200, 510)) == bytes.fromhex("42 01 0084 0008 0003 00000200 00000200")
    assert host.send(DiscoveryCmd()) == bytes.fromhex("42 01 0002 0000 ffff")
    # PACKETRESEND: no ack required; channel<<16 | block id, first, last
    assert host.send(PacketResendCmd(4, 7, 3, 9)) == bytes.fromhex("42 00 0040 000c 0004 00000007 00000003 00000009")
    dev = GvcpCodec("device")
    assert dev.send(ReadRegAck(1, (2,))) == bytes.fromhex("0000 0081 0004 0001 00000002")
    assert dev.send(GvcpErrorAck(5, 0x83, GvcpStatus.ACCESS_DENIED)) == bytes.fromhex("8006 0083 0000 0005")


@pytest.mark.parametrize("msg", [
    DiscoveryCmd(0xFFFF, True), ReadRegCmd(1, (0, 4, 0xA00)), WriteRegCmd(2, ((0xD00, 5000), (0xD04, 9000))),
    ReadMemCmd(3, 0x20000, 512), WriteMemCmd(4, 0x10040, b"\x3f\xf0" + b"\0" * 6), PacketResendCmd(5, 65535, 0, 230),
])
def test_gvcp_commands_round_trip_host_to_device(msg):
    dev = GvcpCodec("device")
    dev.receive_data(GvcpCodec("host").send(msg))
    assert _events(dev) == [msg]


@pytest.mark.parametrize("msg", [
    DiscoveryAck(0xFFFF, bytes(range(248))), ReadRegAck(1, (1, 2, 0xFFFFFFFF)), WriteRegAck(2, 2),
    ReadMemAck(3, 0x200, b"Local:x.xml;20000;1a2b\0\0"), WriteMemAck(4, 8),
    GvcpErrorAck(5, 0x83, GvcpStatus.WRITE_PROTECT),
])
def test_gvcp_acks_round_trip_device_to_host(msg):
    host = GvcpCodec("host")
    host.receive_data(GvcpCodec("device").send(msg))
    assert _events(host) == [msg]


def test_gvcp_every_truncation_is_garbage_never_a_crash():
    host, dev = GvcpCodec("host"), GvcpCodec("device")
    cmd = host.send(WriteRegCmd(9, ((0xA00, 2), (0x938, 3000))))
    ack = dev.send(ReadRegAck(9, (1, 2, 3)))
    for i in range(len(cmd)):
        dev.receive_data(cmd[:i])
        assert all(isinstance(e, Garbage) for e in _events(dev)), i
    for i in range(len(ack)):
        host.receive_data(ack[:i])
        assert all(isinstance(e, Garbage) for e in _events(host)), i
    dev.receive_data(b"\x41" + cmd[1:])  # wrong key
    (ev,) = _events(dev)
    assert isinstance(ev, Garbage) and "key" in ev.reason
    assert dev.garbage_datagrams == len(cmd) + 1


def test_gvcp_local_errors():
    host = GvcpCodec("host")
    with pytest.raises(LocalProtocolError):
        host.send(ReadRegAck(1, (0,)))  # a host does not send acks
    with pytest.raises(LocalProtocolError):
        host.send(ReadRegCmd(0, (0,)))  # request id 0 is reserved
    with pytest.raises(LocalProtocolError):
        host.send(WriteMemCmd(1, 0, b"abc"))  # not a multiple of 4
    with pytest.raises(LocalProtocolError):
        GvcpCodec("device").send(GvcpErrorAck(1, 0x81, 0))


def test_discovery_ack_decodes_the_identity():
    mem = bytearray(0xF8)
    struct.pack_into(">I", mem, 0, 2 << 16 | 0)
    mem[0x0A:0x10] = bytes.fromhex("02004d414301")
    mem[0x24:0x28] = bytes([127, 0, 0, 2])
    mem[0x48:0x48 + 6] = b"medacq"
    mem[0x68:0x68 + 5] = b"TC640"
    mem[0xD8:0xD8 + 4] = b"1234"
    info = DiscoveryAck(1, bytes(mem)).info()
    assert (info.version_major, info.ip, info.manufacturer, info.model, info.serial, info.mac) == (
        2, "127.0.0.2", "medacq", "TC640", "1234", "02:00:4d:41:43:01")


def test_genicam_url():
    url = make_genicam_url("cam.xml", 0x20000, 0x1A2B)
    assert url == "Local:cam.xml;20000;1a2b"
    assert parse_genicam_url(url + "\0\0junk") == ("cam.xml", 0x20000, 0x1A2B)
    with pytest.raises(ValueError):
        parse_genicam_url("http://example.com/cam.xml")


def test_bootstrap_addresses_are_the_specification_s():
    # the registers Aravis (arvgvcpprivate.h) and every GigE Vision host use
    assert (Bootstrap.FIRST_URL, Bootstrap.HEARTBEAT_TIMEOUT, Bootstrap.CONTROL_CHANNEL_PRIVILEGE,
            Bootstrap.STREAM_CHANNEL_0_PORT, Bootstrap.STREAM_CHANNEL_0_PACKET_SIZE,
            Bootstrap.STREAM_CHANNEL_0_IP_ADDRESS) == (0x200, 0x938, 0xA00, 0xD00, 0xD04, 0xD18)
    assert (PixelFormat.Mono8, PixelFormat.Mono16, PixelFormat.BayerRG8, PixelFormat.BayerRG12p) == (
        0x01080001, 0x01100007, 0x01080009, 0x010C0059)


# -- GVSP ---------------------------------------------------------------------------------------
def test_gvsp_packets_round_trip_and_layout():
    lead = GvspLeader(7, 123456789012, PixelFormat.Mono16, 640, 480)
    b = encode_gvsp(lead)
    assert b[:8] == bytes.fromhex("0000 0007 01000000") and len(b) == 44
    assert decode_gvsp(b) == lead
    tr = GvspTrailer(7, 70, 480)
    assert encode_gvsp(tr) == bytes.fromhex("0000 0007 02000046 00000001 000001e0")
    assert decode_gvsp(encode_gvsp(tr)) == tr
    p = decode_gvsp(encode_gvsp(GvspPayload(7, 3, b"abcd")))
    assert isinstance(p, GvspPayload) and (p.block_id, p.packet_id, bytes(p.data)) == (7, 3, b"abcd")
    assert isinstance(decode_gvsp(b[:20]), Garbage)
    assert next_block_id(65535) == 1 and next_block_id(1) == 2


def test_12p_packing_round_trip_and_bit_layout():
    v = np.array([0xABC, 0x123, 0xFFF, 0x000], np.uint16)
    packed = pack_12p(v)
    assert packed == bytes([0xBC, 0x3A, 0x12, 0xFF, 0x0F, 0x00])
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4096, 1000, dtype=np.uint16)
    assert np.array_equal(unpack_12p(pack_12p(a), a.size), a)


def _frame(seed: int, n: int = 20000) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _drain(rx):
    return [e for e in iter(rx.next_event, NEED_DATA)]


def test_receiver_reassembles_reordered_blocks():
    data = _frame(0)
    pk = block_packets(1, 1000, PixelFormat.Mono8, 200, 100, data, packet_size=1036)  # 1000 B per packet
    assert len(pk) == packets_for(len(data), 1036) + 2 == 22
    rx = GvspReceiver(len(data), 1036)
    order = [0, 3, 1, 2, *range(4, 22)][::-1]  # reversed: trailer first
    for i in order:
        rx.receive_data(pk[i], 0.0)
    evs = _drain(rx)
    done = [e for e in evs if isinstance(e, BlockComplete)]
    assert len(done) == 1 and bytes(done[0].data) == data and done[0].leader.width == 200


def test_receiver_requests_resends_and_recovers():
    data = _frame(1)
    pk = block_packets(5, 0, PixelFormat.Mono8, 200, 100, data, 1036)
    rx = GvspReceiver(len(data), 1036, resend_timeout_s=0.02)
    for i, p in enumerate(pk):
        if i not in (4, 5, 9):
            rx.receive_data(p, 0.001)
    evs = _drain(rx)  # the trailer came: ask for the holes at once
    assert [e for e in evs if isinstance(e, ResendRequest)] == [ResendRequest(5, 4, 5), ResendRequest(5, 9, 9)]
    for i in (4, 5, 9):
        rx.receive_data(b"\x01\x00" + pk[i][2:], 0.005)  # resent: status 0x0100
    (done,) = _drain(rx)
    assert isinstance(done, BlockComplete) and bytes(done.data) == data and done.resent_packets == 3
    rx.receive_data(pk[4], 0.006)  # a duplicate of a delivered block
    assert rx.late_packets == 1 and _drain(rx) == []


def test_receiver_announces_a_block_lost_never_torn():
    data = _frame(2)
    pk = block_packets(9, 0, PixelFormat.Mono8, 200, 100, data, 1036)
    rx = GvspReceiver(len(data), 1036, resend_timeout_s=0.01, max_resends=2)
    for i, p in enumerate(pk):
        if i != 7:
            rx.receive_data(p, 0.0)
    t = 0.0
    evs = _drain(rx)
    for _ in range(5):
        t += 0.011
        rx.tick(t)
        evs += _drain(rx)
    assert sum(isinstance(e, ResendRequest) for e in evs) == 2
    lost = [e for e in evs if isinstance(e, BlockLost)]
    assert lost == [BlockLost(9, 1, "packets still missing after 2 resend requests")]
    assert not any(isinstance(e, BlockComplete) for e in evs)


def test_receiver_times_out_a_block_whose_trailer_never_came():
    data = _frame(3)
    pk = block_packets(2, 0, PixelFormat.Mono8, 200, 100, data, 1036)
    rx = GvspReceiver(len(data), 1036, resend=False, block_timeout_s=0.05)
    for p in pk[:-1]:
        rx.receive_data(p, 0.0)
    rx.tick(0.01)
    assert _drain(rx) == []
    rx.tick(0.06)
    (ev,) = _drain(rx)
    assert isinstance(ev, BlockLost) and ev.missing == 1


def test_receiver_refuses_a_leader_of_another_size():
    rx = GvspReceiver(20000, 1036)
    rx.receive_data(encode_gvsp(GvspLeader(1, 0, PixelFormat.Mono16, 200, 100)), 0.0)
    (ev,) = _drain(rx)
    assert isinstance(ev, Garbage) and "40000" in ev.reason


# -- GenICam ------------------------------------------------------------------------------------
def test_genicam_xml_round_trip():
    feats = [Feature("Width", "int", 0x10000, "RO", 640, 640, 1, category="ImageFormatControl"),
             Feature("PixelFormat", "enum", 0x10008, "RW", entries={"Mono16": 0x01100007}),
             Feature("ExposureTime", "float", 0x10010, "RW", 10.0, 1e6, unit="us"),
             Feature("AcquisitionStart", "command", 0x10018, "WO"),
             Feature("DeviceSerialNumber", "string", 0x10020, "RO", length=16)]
    xml = genicam_xml(feats, model="M & co", vendor="V")
    back = parse_genicam_xml(xml)
    assert set(back) == {f.name for f in feats}
    assert back["Width"].address == 0x10000 and back["Width"].access == "RO" and back["Width"].maximum == 640
    assert back["PixelFormat"].entries == {"Mono16": 0x01100007}
    assert back["ExposureTime"].kind == "float" and back["ExposureTime"].size == 8 and back["ExposureTime"].unit == "us"
    assert back["AcquisitionStart"].command_value == 1
    assert back["DeviceSerialNumber"].size == 16
    with pytest.raises(ValueError):
        parse_genicam_xml("<RegisterDescription")
