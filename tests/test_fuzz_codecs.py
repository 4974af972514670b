"""Every codec, fuzzed with hypothesis: random bytes and mutated valid streams.

Properties: never an unhandled exception, never a hang (``next_event`` reaches NEED_DATA within
a bounded number of calls), never an unbounded buffer; and after garbage, a valid stream is
decoded again (resynchronisation) where the protocol allows it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medacq.protocols import cyton, hackeeg, igtl, openeit, quspin, sciospec, scpi, synthetic
from medacq.protocols._sansio import NEED_DATA, Garbage, RemoteProtocolError

# -- valid device→host streams, one per protocol ---------------------------------------------


def _cyton() -> bytes:
    out = b""
    for k in range(6):
        out += cyton.encode_packet(cyton.CytonSample(counter=k, channels=tuple(range(k, k + 8)), stop_byte=0xC0,
                                                     aux=b"\x00" * 6, accel=(1, 2, 3), timestamp_ms=None))
    return out


def _hackeeg() -> bytes:
    dev = hackeeg.HackEEGDeviceCodec(mode="jsonlines")
    return b"".join(dev.send(hackeeg.HackEEGSample(1000 * k, k, 0xC00000, tuple(range(8)))) for k in range(6))


def _igtl() -> bytes:
    c = igtl.IgtlConnection()
    img = igtl.ImageMessage(device_name="RF", image=np.arange(64, dtype=np.int16).reshape(1, 8, 8))
    return c.send(igtl.StringMessage(device_name="ACK", text="OK")) + c.send(img) + c.send(img)


def _sciospec() -> bytes:
    v = (np.arange(16) + 1j).astype(np.complex64)
    return b"".join(sciospec.encode_data_frame(sciospec.DataFrame(1, 1, 2, 1, 1000 + k, v)) for k in range(3))


def _openeit() -> bytes:
    dev = openeit.OpenEITDeviceCodec()
    return b"".join(dev.send(openeit.Magnitudes(np.linspace(1, 9, 192))) for _ in range(2))


def _quspin() -> bytes:
    return b"".join(b"!%d\r\n" % (8388608 + k) for k in range(20))


def _scpi() -> bytes:
    dev = scpi.ScpiDevice()
    return dev.send(scpi.Reply("MEDACQ,PANEL,1,1.0")) + dev.send(scpi.Block(bytes(range(256)) * 8))


def _synthetic() -> bytes:
    dev = synthetic.SynthDeviceCodec()
    return b"".join(dev.send(synthetic.SynthFrame(k, k, np.full((2, 3), k, "<f4"))) for k in range(4))


# Length-prefixed protocols (OpenIGTLink, SCPI blocks, synthetic) cannot tell a corrupted but
# plausible length from a real one: they recover once that many bytes have passed and the CRC or
# framing fails. So they are fuzzed with a small size limit, and recovery is checked after more
# than that limit of clean data: recovery is bounded by the configured maximum.
SMALL = 4096
HOST_CODECS = {
    "cyton": (cyton.CytonHostCodec, _cyton),
    "hackeeg": (lambda: hackeeg.HackEEGHostCodec(mode="jsonlines"), _hackeeg),
    "igtl": (lambda: igtl.IgtlConnection(max_body_size=SMALL), _igtl),
    "sciospec": (sciospec.SciospecHostCodec, _sciospec),
    "openeit": (openeit.OpenEITHostCodec, _openeit),
    "quspin": (quspin.QuSpinHostCodec, _quspin),
    "scpi": (lambda: scpi.ScpiHost(max_block=SMALL), _scpi),
    "synthetic": (lambda: synthetic.SynthHostCodec(max_body=SMALL), _synthetic),
}
DEVICE_CODECS = {
    "cyton": cyton.CytonDeviceCodec,
    "hackeeg": lambda: hackeeg.HackEEGDeviceCodec(mode="jsonlines"),
    "igtl": igtl.IgtlConnection,
    "sciospec": sciospec.SciospecDeviceCodec,
    "openeit": openeit.OpenEITDeviceCodec,
    "quspin": quspin.QuSpinDeviceCodec,
    "scpi": scpi.ScpiDevice,
    "synthetic": synthetic.SynthDeviceCodec,
}
MAX_BUFFER = 8 << 20  # no codec may hold more than this after any input


def _drain(codec, limit: int) -> list:
    events = []
    for _ in range(limit):
        try:
            ev = codec.next_event()
        except RemoteProtocolError:
            continue  # a declared, catchable protocol error is allowed; the codec must go on
        if ev is NEED_DATA:
            return events
        events.append(ev)
    raise AssertionError(f"{type(codec).__name__}.next_event did not reach NEED_DATA in {limit} calls (hang)")


def _buffered(codec) -> int:
    total = 0
    for v in vars(codec).values():
        if isinstance(v, (bytes, bytearray)) or type(v).__name__ == "ReceiveBuffer":
            total += len(v)
    return total


def _feed(codec, data: bytes, chunk: int) -> list:
    events = []
    for i in range(0, len(data), chunk):
        codec.receive_data(data[i : i + chunk])
        events += _drain(codec, 10 * chunk + 1000)
        assert _buffered(codec) <= MAX_BUFFER
    return events


# MEDACQ_FUZZ_EXAMPLES raises the example count for a longer hunt (CI uses the default)
FUZZ = settings(max_examples=int(os.environ.get("MEDACQ_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(HOST_CODECS))
@FUZZ
@given(data=st.binary(max_size=4096), chunk=st.integers(1, 512))
def test_host_codecs_survive_random_bytes(name, data, chunk):
    make, _ = HOST_CODECS[name]
    _feed(make(), data, chunk)


@pytest.mark.parametrize("name", sorted(DEVICE_CODECS))
@FUZZ
@given(data=st.binary(max_size=4096), chunk=st.integers(1, 512))
def test_device_codecs_survive_random_bytes(name, data, chunk):
    _feed(DEVICE_CODECS[name](), data, chunk)


def _mutate(valid: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    b = bytearray(valid)
    for kind, pos, val in ops:
        if not b:
            break
        p = pos % len(b)
        if kind == 0:
            b[p] ^= (val % 255) + 1  # flip
        elif kind == 1:
            del b[p : p + 1 + val % 16]  # delete a run
        else:
            b[p:p] = bytes([val % 256]) * (1 + val % 8)  # insert a run
    return bytes(b)


@pytest.mark.parametrize("name", sorted(HOST_CODECS))
@FUZZ
@given(ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.integers(0, 10**6)), max_size=8),
       chunk=st.integers(1, 700))
def test_host_codecs_resynchronise_after_mutations(name, ops, chunk):
    make, valid_stream = HOST_CODECS[name]
    valid = valid_stream()
    codec = make()
    _feed(codec, _mutate(valid, ops), chunk)
    # a clean copy of the stream afterwards still decodes (resynchronisation); text-line
    # protocols may lose the line the garbage ran into, so we only require *some* real events
    clean = valid_stream()
    events = _feed(codec, clean * (3 * SMALL // len(clean) + 2), chunk)
    real = [e for e in events if not isinstance(e, Garbage)]
    assert real, f"{name}: nothing decoded after the mutated stream"


def test_hackeeg_reply_with_a_corrupted_status_code_is_garbage_not_a_crash():
    """Found by the mutation fuzzer: a JSON reply whose "C" is no number."""
    c = hackeeg.HackEEGHostCodec(mode="jsonlines")
    c.receive_data(b'{"C":"oA8A","D":5}\n' + _hackeeg())
    events = _drain(c, 1000)
    assert isinstance(events[0], Garbage) and events[0].reason == "malformed reply object"
    assert [type(e) for e in events[1:]] == [hackeeg.HackEEGSample] * 6
