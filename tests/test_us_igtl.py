"""OpenIGTLink codec: framing, CRC64, error events, resync, and interop with pyigtl."""

from __future__ import annotations

import os
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medacq.protocols import igtl
from medacq.protocols._sansio import NEED_DATA, Garbage, LocalProtocolError
from medacq.protocols.igtl import (
    BadMessage,
    ConnectionClosed,
    IgtlConnection,
    ImageMessage,
    NdArrayMessage,
    RawMessage,
    StringMessage,
)

pyigtl = pytest.importorskip("pyigtl")


def drain(codec: IgtlConnection) -> list:
    out = []
    while (ev := codec.next_event()) is not NEED_DATA:
        out.append(ev)
        if isinstance(ev, ConnectionClosed):
            break
    return out


def feed_bytewise(codec: IgtlConnection, data: bytes) -> list:
    out = []
    for i in range(len(data)):
        codec.receive_data(data[i : i + 1])
        out += drain(codec)
    return out


def messages(events: list) -> list:
    return [e for e in events if not isinstance(e, (Garbage, BadMessage, ConnectionClosed))]


def rf(k: int = 2, j: int = 3, i: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-3000, 3000, (k, j, i)).astype(np.int16)


# ---- CRC64 ---------------------------------------------------------------------------------


def test_crc64_check_value() -> None:
    # CRC-64/ECMA-182 catalogue check value (poly 42F0E1EBA9EA3693, init 0, no reflection).
    assert igtl.crc64(b"123456789") == 0x6C40DF5F0B497347
    assert igtl.crc64_python(b"123456789") == 0x6C40DF5F0B497347
    assert igtl.crc64(b"") == 0


@pytest.mark.parametrize("n", [1023, 1024, 4097, 70_001, (256 << 10) + 13, 1 << 20])
def test_crc64_vectorised_equals_bytewise(n: int) -> None:
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    ref = igtl.crc64_python(data)
    assert igtl.crc64(data) == ref
    cut = n // 3
    assert igtl.crc64(data[cut:], igtl.crc64(data[:cut])) == ref


def test_crc64_matches_pyigtl_crcmod() -> None:
    data = os.urandom(300_007)
    assert igtl.crc64(data) == pyigtl.messages.CRC64(data)


def test_crc64_is_fast_enough_for_1mib_at_100hz() -> None:
    data = os.urandom(1 << 20)
    igtl.crc64(data)
    t0 = time.perf_counter()
    for _ in range(5):
        igtl.crc64(data)
    per_mib = (time.perf_counter() - t0) / 5
    assert per_mib < 0.010  # measured ≈2.4 ms; 10 ms = 100 MiB/s on a busy machine


# ---- round trips ----------------------------------------------------------------------------


def test_image_roundtrip_bytewise_with_geometry() -> None:
    img = rf(4, 16, 64)
    m = np.eye(4)
    m[:3, :3] = np.diag([0.3, 0.05, 1.0])
    m[:3, 3] = [-19.05, 0.0, 2.5]
    ev = ImageMessage(image=img, ijk_to_world=m, device_name="RF", timestamp=1.7e9 + 0.25)
    wire = IgtlConnection().send(ev)
    assert len(wire) == 58 + 72 + img.nbytes
    assert wire[:2] == b"\x00\x01" and wire[2:7] == b"IMAGE"
    (out,) = feed_bytewise(IgtlConnection(), wire)
    assert isinstance(out, ImageMessage)
    np.testing.assert_array_equal(out.image, img)
    np.testing.assert_allclose(out.ijk_to_world, m, atol=1e-5)
    assert out.device_name == "RF"
    assert out.timestamp == pytest.approx(1.7e9 + 0.25, abs=1e-6)
    assert out.coordinate_system == "LPS"


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_image_dtypes_and_big_endian(dtype: type) -> None:
    img = (np.arange(60).reshape(3, 4, 5) % 50).astype(dtype)
    for arr in (img, img.astype(img.dtype.newbyteorder(">"))):
        out = drain_one(IgtlConnection().send(ImageMessage(image=arr)))
        assert out.image.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out.image, img)


def drain_one(wire: bytes):
    c = IgtlConnection()
    c.receive_data(wire)
    evs = drain(c)
    assert len(evs) == 1, evs
    return evs[0]


def test_string_ndarray_raw_and_v2_metadata_roundtrip() -> None:
    host, dev = IgtlConnection(), IgtlConnection()
    arr = rf(3, 4, 5).astype(np.int16)
    sent = [
        StringMessage(text="SET ANGLES 11 -16 16", device_name="CMD", message_id=5,
                      header_version=2, metadata={"seq": "5"}),
        NdArrayMessage(array=arr, device_name="RF"),
        NdArrayMessage(array=np.linspace(0, 1, 7, dtype=np.float32)),
        NdArrayMessage(array=np.array([1 + 2j, -3j], dtype=np.complex128)),
        RawMessage(type_name="GET_STATUS", device_name="X"),
        StringMessage(text="Grüße", encoding=106),
    ]
    wire = b"".join(host.send(e) for e in sent)
    got = feed_bytewise(dev, wire)
    assert len(got) == len(sent)
    assert got[0].text == "SET ANGLES 11 -16 16"
    assert got[0].message_id == 5 and dict(got[0].metadata) == {"seq": "5"}
    np.testing.assert_array_equal(got[1].array, arr)
    assert got[1].array.dtype == np.int16
    np.testing.assert_array_equal(got[2].array, sent[2].array)
    np.testing.assert_array_equal(got[3].array, sent[3].array)
    assert isinstance(got[4], RawMessage) and got[4].type_name == "GET_STATUS"
    assert got[5].text == "Grüße"
    # NDARRAY data travels in network byte order
    nd = host.send(NdArrayMessage(array=np.array([1], dtype=np.int16)))
    assert nd[58:] == b"\x04\x01\x00\x01\x00\x01"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=8))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    c = IgtlConnection()
    wire = b"".join(c.send(StringMessage(text=f"reply {i}")) for i in range(3))
    wire += c.send(ImageMessage(image=rf(1, 8, 8)))
    d = IgtlConnection()
    got, pos = [], 0
    for n in cuts + [len(wire)]:
        if pos < len(wire):  # receive_data(b"") would mean end of stream
            d.receive_data(wire[pos : pos + n])
        pos += n
        got += drain(d)
    assert [type(e).__name__ for e in got] == ["StringMessage"] * 3 + ["ImageMessage"]
    assert [e.text for e in got[:3]] == ["reply 0", "reply 1", "reply 2"]


# ---- errors ---------------------------------------------------------------------------------


def three_images() -> tuple[list[bytes], list[np.ndarray]]:
    c = IgtlConnection()
    imgs = [rf(2, 8, 32, seed=s) for s in range(3)]
    return [c.send(ImageMessage(image=im, device_name=f"F{s}")) for s, im in enumerate(imgs)], imgs


def test_crc_mismatch_costs_one_frame_and_keeps_sync() -> None:
    wires, imgs = three_images()
    bad = bytearray(wires[1])
    bad[58 + 100] ^= 0x40
    evs = feed_bytewise(IgtlConnection(), wires[0] + bytes(bad) + wires[2])
    msgs = messages(evs)
    assert [m.device_name for m in msgs] == ["F0", "F2"]
    np.testing.assert_array_equal(msgs[1].image, imgs[2])
    bads = [e for e in evs if isinstance(e, BadMessage)]
    assert len(bads) == 1 and bads[0].reason == "crc mismatch" and bads[0].device_name == "F1"
    assert sum(e.nbytes for e in evs if isinstance(e, Garbage)) == len(bad)


def test_bad_crc_detected_in_header_crc_field_too() -> None:
    wires, _ = three_images()
    bad = bytearray(wires[0])
    bad[50] ^= 1
    evs = drain_all(bytes(bad) + wires[1])
    assert isinstance(evs[0], BadMessage)
    assert [m.device_name for m in messages(evs)] == ["F1"]


def drain_all(data: bytes, **kw) -> list:
    c = IgtlConnection(**kw)
    c.receive_data(data)
    return drain(c)


def test_truncated_body_recovers_the_following_messages() -> None:
    wires, imgs = three_images()
    c = IgtlConnection()
    more = [c.send(StringMessage(text=f"s{i}")) for i in range(2)]
    cut = wires[1][: 58 + 200]  # the sender died mid-body and restarted
    evs = feed_bytewise(IgtlConnection(), wires[0] + cut + wires[2] + more[0] + more[1])
    msgs = messages(evs)
    assert [getattr(m, "device_name") for m in msgs[:2]] == ["F0", "F2"]
    np.testing.assert_array_equal(msgs[1].image, imgs[2])
    assert [m.text for m in msgs[2:]] == ["s0", "s1"]
    assert sum(isinstance(e, BadMessage) for e in evs) == 1
    assert sum(e.nbytes for e in evs if isinstance(e, Garbage)) == len(cut)


def test_absurd_body_size_is_an_event_and_memory_stays_bounded() -> None:
    c = IgtlConnection(max_body_size=1 << 16)
    hdr = struct.pack(">H12s20sQQQ", 1, b"IMAGE", b"EVIL", 0, 1 << 40, 0)
    follow = c.send(StringMessage(text="still alive"))
    c.receive_data(hdr)
    ev = c.next_event()
    assert isinstance(ev, BadMessage) and "too large" in ev.reason
    junk = np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    evs = []
    for k in range(0, len(junk), 4096):
        c.receive_data(junk[k : k + 4096])
        evs += drain(c)
        assert c.buffered <= (1 << 16) + 58 + (1 << 16)
    c.receive_data(follow)
    evs += drain(c)
    assert [m.text for m in messages(evs)] == ["still alive"]
    assert sum(e.nbytes for e in evs if isinstance(e, Garbage)) == len(hdr) + len(junk)


def test_garbage_before_a_message_is_counted() -> None:
    c = IgtlConnection()
    wire = c.send(StringMessage(text="hello"))
    noise = b"\x00\x01IMAGE\xff" + bytes(range(200))  # includes a false header start
    evs = feed_bytewise(IgtlConnection(), noise + wire)
    assert [m.text for m in messages(evs)] == ["hello"]
    assert sum(e.nbytes for e in evs if isinstance(e, Garbage)) == len(noise)


def test_body_that_does_not_parse_is_a_bad_message() -> None:
    c = IgtlConnection()
    good = c.send(ImageMessage(image=rf(1, 4, 4)))
    body = bytearray(good[58:])
    body[3] = 99  # unknown scalar type, CRC recomputed so framing is intact
    hdr = bytearray(good[:58])
    hdr[50:58] = struct.pack(">Q", igtl.crc64(bytes(body)))
    evs = drain_all(bytes(hdr) + bytes(body) + good)
    assert isinstance(evs[0], BadMessage) and evs[0].reason.startswith("bad IMAGE body")
    assert isinstance(evs[1], ImageMessage) and len(evs) == 2


def test_zero_crc_accepted_only_when_configured() -> None:
    tx = IgtlConnection(compute_crc=False)
    wire = tx.send(StringMessage(text="no crc"))
    assert wire[50:58] == bytes(8)
    assert isinstance(drain_all(wire)[0], BadMessage)
    assert drain_all(wire, accept_zero_crc=True)[0].text == "no crc"
    assert drain_all(wire, check_crc=False)[0].text == "no crc"


def test_end_of_stream_mid_message() -> None:
    wires, _ = three_images()
    c = IgtlConnection()
    c.receive_data(wires[0] + wires[1][:500])
    c.receive_data(b"")
    evs = drain(c)
    assert isinstance(evs[0], ImageMessage)
    assert isinstance(evs[1], BadMessage) and "truncated" in evs[1].reason
    assert evs[2] == Garbage(500, "truncated at end of stream")
    assert isinstance(evs[3], ConnectionClosed)
    with pytest.raises(LocalProtocolError):
        c.receive_data(b"x")


def test_local_protocol_errors() -> None:
    c = IgtlConnection()
    with pytest.raises(LocalProtocolError):
        c.send(StringMessage(text="x", device_name="d" * 21))
    with pytest.raises(LocalProtocolError):
        c.send(StringMessage(text="x" * 70000))
    with pytest.raises(LocalProtocolError):
        c.send(ImageMessage(image=np.zeros((2, 2), dtype=np.int64)))
    with pytest.raises(LocalProtocolError):
        c.send(ImageMessage(image=np.zeros((1, 1, 70000), dtype=np.int16)))
    with pytest.raises(LocalProtocolError):
        c.send(StringMessage(text="x", metadata={"a": "b"}))  # metadata needs v2


# ---- interop with pyigtl ---------------------------------------------------------------------


def pyigtl_decode(wire: bytes):
    fields = pyigtl.MessageBase.parse_header(wire[:58])
    assert fields["body_size"] == len(wire) - 58
    msg = pyigtl.MessageBase.create_message(fields["message_type"])
    msg.unpack(fields, wire[58:])
    return msg


def test_our_image_and_string_decode_in_pyigtl() -> None:
    img = rf(3, 20, 40)
    m = np.diag([0.3, 0.2, 1.0, 1.0])
    m[:3, 3] = [-5.0, 1.0, 2.0]
    c = IgtlConnection()
    wire = c.send(ImageMessage(image=img, ijk_to_world=m, device_name="Bmode", timestamp=1234.5))
    # pyigtl does not check the CRC itself: check it with its crcmod function
    assert struct.unpack(">Q", wire[50:58])[0] == pyigtl.messages.CRC64(wire[58:])
    p = pyigtl_decode(wire)
    np.testing.assert_array_equal(p.image, img)
    np.testing.assert_allclose(p.ijk_to_world_matrix, m, atol=1e-5)
    assert p.device_name == "Bmode" and p.timestamp == pytest.approx(1234.5, abs=1e-6)
    s = pyigtl_decode(c.send(StringMessage(text="OK FREEZE", device_name="Reply",
                                           header_version=2, metadata={"seq": "9"},
                                           message_id=9)))
    assert s.string == "OK FREEZE" and s.metadata == {"seq": "9"} and s.message_id == 9


def test_pyigtl_messages_decode_in_ours() -> None:
    img = rf(2, 10, 12)
    m = np.diag([0.5, 0.25, 2.0, 1.0])
    m[:3, 3] = [10.0, -3.0, 0.0]
    pm = pyigtl.ImageMessage(img, ijk_to_world_matrix=m, device_name="Img", timestamp=99.25)
    ps = pyigtl.StringMessage("START", device_name="Cmd", timestamp=5.0)
    ps.header_version = 2
    ps.metadata = {"k": "v"}
    wire = pm.pack() + ps.pack()
    evs = feed_bytewise(IgtlConnection(), wire)
    assert len(evs) == 2
    np.testing.assert_array_equal(evs[0].image, img)
    np.testing.assert_allclose(evs[0].ijk_to_world, m, atol=1e-5)
    assert evs[0].device_name == "Img" and evs[0].timestamp == pytest.approx(99.25, abs=1e-6)
    assert evs[1].text == "START" and dict(evs[1].metadata) == {"k": "v"}
