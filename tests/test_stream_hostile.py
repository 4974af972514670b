"""Hostile stream messages: every decoding problem is one typed error, and no message stops a consumer.

Two levels: the sans-I/O decoders (``decode_header`` + ``frame_payload`` + ``decode_message``)
fuzzed with hypothesis, and a real PUB socket sending hostile messages between good frames
to a :class:`medacq.client.Subscriber`.
"""

from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medacq.client import Subscriber
from medacq.protocols.stream import (
    MAX_HEADER_BYTES,
    HeaderError,
    HeaderTemplate,
    StreamDecodeError,
    decode_header,
    decode_message,
    frame_payload,
    new_series_id,
)

from conftest import free_port

# MEDACQ_FUZZ_EXAMPLES raises the example count for a longer hunt (CI uses the default)
FUZZ = settings(max_examples=int(os.environ.get("MEDACQ_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

NUMERIC_KINDS = set("biufc")

# -- strategies ------------------------------------------------------------------------------
json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False,
                                                                                     allow_infinity=False) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                            max_size=3), max_leaves=6)
DTYPES = ["<f4", "<f8", "<i2", "|u1", ">u4", "|b1", "<c8", "<c16", "<f2", "float32", "?",  # numeric
          "O", "S0", "S4", "U3", "(2,)f4", "f4,i4", "V8", "M8", "m8[s]", "<f16", "a5", "q9", "", "<f4 "]


def _maybe(valid, junk=json_values):
    """Mostly a plausible value (so that many headers get past the required fields), sometimes
    junk of any JSON type, sometimes absent."""
    return st.one_of(*[valid] * 8, junk, st.just(_ABSENT))


_ABSENT = object()


@st.composite
def headers(draw) -> dict:
    fields = {
        "v": _maybe(st.sampled_from([1, 1, 1, 2, 0, True, 1.0, "1"])),
        "stream": _maybe(st.text(max_size=6)),
        "kind": _maybe(st.sampled_from(["frame"] * 4 + ["descriptor", "heartbeat", "series_start", "series_end", "gap",
                                                         "blob"])),
        "series": _maybe(st.text(max_size=6)),
        "seq": _maybe(st.integers(-3, 2**65)),
        "t_host_ns": _maybe(st.integers(-(2**63), 2**63)),
        "t_mono_ns": _maybe(st.integers(-(2**63), 2**63)),
        "dtype": _maybe(st.sampled_from(DTYPES) | st.text(max_size=6)),
        "shape": _maybe(st.lists(st.integers(-2, 9), max_size=4) | st.lists(st.booleans() | st.floats(0, 4), max_size=3)),
        "axes": _maybe(st.lists(st.text(max_size=3), max_size=3)),
        "meta": _maybe(st.dictionaries(st.text(max_size=4), json_scalars, max_size=3)),
        "t_device": _maybe(st.integers(0, 2**40) | st.floats(allow_nan=False, allow_infinity=False)),
        "gap_frames": _maybe(st.integers(-2, 50)),
        "reason": _maybe(st.text(max_size=6)),
        "descriptor": _maybe(st.fixed_dictionaries({"stream": st.text(max_size=3), "modality": st.text(max_size=3),
                                                    "dtype": st.sampled_from(DTYPES), "shape": st.lists(st.integers(-1, 9)),
                                                    "axes": st.lists(st.text(max_size=2))})),
    }
    out = {}
    for k, strat in fields.items():
        v = draw(strat)
        if v is not _ABSENT:
            out[k] = v
    return out


def _payload_for(h: dict, draw_bytes: bytes, exact: bool) -> bytes:
    """A payload of the size the header declares (when it can), or the drawn junk."""
    if exact:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy's deprecated aliases ("a5")
                n = int(np.prod([int(d) for d in h["shape"]])) * np.dtype(h["dtype"]).itemsize
            if 0 <= n <= 1 << 16:
                return bytes(n)
        except Exception:  # noqa: BLE001 - not computable: the junk payload it is
            pass
    return draw_bytes


def _check_decoded(h: dict, arr, payload: bytes) -> None:
    """What a successful decode guarantees a consumer."""
    assert type(h["stream"]) is str and type(h["series"]) is str and h["v"] == 1
    assert type(h["seq"]) is int and 0 <= h["seq"] < 2**64
    assert type(h["t_host_ns"]) is int and type(h["t_mono_ns"]) is int
    if arr is not None:
        assert arr.dtype.kind in NUMERIC_KINDS and arr.dtype.fields is None
        assert arr.nbytes == len(payload) and list(arr.shape) == h["shape"]
        assert type(h.get("meta", {})) is dict


# -- the decoders, fuzzed ------------------------------------------------------------------
@FUZZ
@given(h=headers(), junk=st.binary(max_size=64), exact=st.booleans(), strict=st.booleans())
def test_decode_header_and_frame_payload_raise_only_stream_decode_error(h, junk, exact, strict):
    raw = json.dumps(h).encode()
    payload = _payload_for(h, junk, exact)
    try:
        d = decode_header(raw, "raw/x", strict=strict)
        arr = frame_payload(d, payload) if d["kind"] == "frame" else None
    except StreamDecodeError as exc:
        assert isinstance(exc, HeaderError) and exc.reason
        return
    _check_decoded(d, arr, payload)


@FUZZ
@given(h=headers(), junk=st.binary(max_size=64), exact=st.booleans(),
       nparts=st.sampled_from([0, 1, 2, 3, 3, 3, 4]))
def test_decode_message_raises_only_stream_decode_error(h, junk, exact, nparts):
    payload = _payload_for(h, junk, exact)
    parts = [b"raw/x", json.dumps(h).encode(), payload, b"extra"][:nparts]
    try:
        d, arr = decode_message(parts, "raw/x")
    except StreamDecodeError:
        return
    assert (arr is None) == (d["kind"] != "frame")
    assert len(parts) == (3 if arr is not None else 2)
    _check_decoded(d, arr, payload)


def _valid_header() -> bytes:
    return HeaderTemplate("eeg0", new_series_id(), "<f4", [2, 3], ["channel", "sample"], "uV").frame(
        5, 1_700_000_000_000_000_000, 123, t_device=7, meta={"k": [1, 2]})


@FUZZ
@given(ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
       junk=st.binary(max_size=32))
def test_mutated_valid_headers_raise_only_stream_decode_error(ops, junk):
    b = bytearray(_valid_header())
    for kind, pos, val in ops:
        p = pos % max(1, len(b))
        if kind == 0 and b:
            b[p] ^= val or 1
        elif kind == 1:
            del b[p: p + 1 + val % 8]
        else:
            b[p:p] = bytes([val]) * (1 + val % 4)
    for payload in (bytes(24), junk):
        try:
            d, arr = decode_message([b"raw/eeg0", bytes(b), payload])
        except StreamDecodeError:
            continue
        _check_decoded(d, arr, payload)


@FUZZ
@given(raw=st.binary(max_size=256))
def test_random_header_bytes_raise_only_stream_decode_error(raw):
    try:
        decode_message([b"raw/x", raw, b""])
    except StreamDecodeError:
        pass


# -- the decoders, by example ---------------------------------------------------------------
def _frame_header(**over) -> bytes:
    h = json.loads(_valid_header())
    h.update(over)
    return json.dumps({k: v for k, v in h.items() if v is not _ABSENT}).encode()


HOSTILE: list[tuple[str, list[bytes], str]] = [
    ("object dtype", [b"raw/eeg0", _frame_header(dtype="O"), bytes(48)], "not a numeric dtype"),
    ("empty bytes dtype", [b"raw/eeg0", _frame_header(dtype="S0"), b""], "not a numeric dtype"),
    ("sub-array dtype", [b"raw/eeg0", _frame_header(dtype="(2,)f4"), bytes(48)], "not a numeric dtype"),
    ("structured dtype", [b"raw/eeg0", _frame_header(dtype="f4,i4"), bytes(48)], "not a numeric dtype"),
    ("long double", [b"raw/eeg0", _frame_header(dtype="<f16"), bytes(96)], "not a numeric dtype"),
    ("dtype not a string", [b"raw/eeg0", _frame_header(dtype=["<f4"]), bytes(24)], "dtype"),
    ("short payload", [b"raw/eeg0", _frame_header(), bytes(23)], "needs 24"),
    ("long payload", [b"raw/eeg0", _frame_header(), bytes(25)], "needs 24"),
    ("negative axis", [b"raw/eeg0", _frame_header(shape=[-2, -3]), bytes(24)], "bad shape"),
    ("boolean axis", [b"raw/eeg0", _frame_header(shape=[True, 6]), bytes(24)], "bad shape"),
    ("too many axes", [b"raw/eeg0", _frame_header(shape=[1] * 40), bytes(4)], "at most 32"),
    ("shape not a list", [b"raw/eeg0", _frame_header(shape="2x3"), bytes(24)], "shape"),
    ("frame without payload", [b"raw/eeg0", _frame_header()], "3 parts"),
    ("frame with 4 parts", [b"raw/eeg0", _frame_header(), bytes(24), b"x"], "3 parts"),
    ("topic only", [b"raw/eeg0"], "1 part"),
    ("heartbeat with payload", [b"raw/eeg0", _frame_header(kind="heartbeat"), b"x"], "no payload"),
    ("not JSON", [b"raw/eeg0", b"{nope", bytes(24)], "not UTF-8 JSON"),
    ("not UTF-8", [b"raw/eeg0", b'{"v":1,"stream":"\xff\xfe"}', bytes(24)], "not UTF-8 JSON"),
    ("JSON list", [b"raw/eeg0", b"[1,2,3]", bytes(24)], "not a JSON object"),
    ("deep nesting", [b"raw/eeg0", b"[" * 5000 + b"]" * 5000, b""], "not UTF-8 JSON"),
    ("oversized header", [b"raw/eeg0", b'{"pad":"' + b"x" * MAX_HEADER_BYTES + b'"}', b""], "byte limit"),
    ("kind a list", [b"raw/eeg0", _frame_header(kind=["frame"]), bytes(24)], "kind"),
    ("version true", [b"raw/eeg0", _frame_header(v=True), bytes(24)], "version"),
    ("seq a float", [b"raw/eeg0", _frame_header(seq=5.0), bytes(24)], "seq"),
    ("seq beyond u64", [b"raw/eeg0", _frame_header(seq=2**64), bytes(24)], "seq"),
    ("stream a number", [b"raw/eeg0", _frame_header(stream=3), bytes(24)], "must be strings"),
    ("clock a string", [b"raw/eeg0", _frame_header(t_host_ns="now"), bytes(24)], "integers"),
    ("meta a list", [b"raw/eeg0", _frame_header(meta=[1]), bytes(24)], "meta"),
    ("t_device a string", [b"raw/eeg0", _frame_header(t_device="x"), bytes(24)], "t_device"),
    ("gap count a string", [b"raw/eeg0", _frame_header(kind="gap", gap_frames="3")], "gap_frames"),
    ("descriptor junk", [b"raw/eeg0", _frame_header(kind="descriptor", descriptor=[1])], "descriptor"),
]


@pytest.mark.parametrize("name, parts, fragment", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_each_hostile_message_is_one_typed_error(name, parts, fragment):
    with pytest.raises(StreamDecodeError) as exc:
        decode_message(parts, "raw/eeg0")
    assert fragment in str(exc.value)
    assert len(str(exc.value)) < 400  # a hostile value is quoted, not echoed whole


def test_oversized_payload_is_refused_before_it_is_wrapped():
    parts = [b"raw/eeg0", _frame_header(shape=[1000, 1000]), bytes(4_000_000)]
    assert decode_message(parts)[1].shape == (1000, 1000)
    with pytest.raises(StreamDecodeError, match="over this consumer's limit"):
        decode_message(parts, max_payload_bytes=1_000_000)


# -- a real socket: hostile messages between good frames ---------------------------------------
def _good(tpl: HeaderTemplate, seq: int) -> list[bytes]:
    return [b"raw/eeg0", tpl.frame(seq, time.time_ns(), time.monotonic_ns()), np.full(6, seq, "<f4").tobytes()]


@pytest.mark.parametrize("errors", ["skip", "raise"])
def test_subscriber_delivers_every_good_frame_and_counts_every_bad_one(errors):
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = free_port()
    pub.bind(f"tcp://127.0.0.1:{port}")
    tpl = HeaderTemplate("eeg0", new_series_id(), "<f4", [2, 3], ["channel", "sample"], "uV")
    hostile = [parts for _, parts, _ in HOSTILE] + [[b"raw/\xff\xfe", b"\x00\x01", b""]]
    got, raised = [], 0
    with Subscriber(f"tcp://127.0.0.1:{port}", "raw/", errors=errors) as sub:
        time.sleep(0.3)
        for seq, bad in enumerate(hostile):
            pub.send_multipart(_good(tpl, seq))
            pub.send_multipart(bad)
        pub.send_multipart(_good(tpl, len(hostile)))
        end = time.monotonic() + 10
        while len(got) < len(hostile) + 1 and time.monotonic() < end:
            try:
                m = sub.recv(timeout=2)
            except StreamDecodeError:
                raised += 1
                continue
            if m is None:
                break
            if m.array is not None:
                got.append(m)
    pub.close(0)
    assert [m.header["seq"] for m in got] == list(range(len(hostile) + 1))
    for m in got:
        np.testing.assert_array_equal(m.array, np.full((2, 3), m.header["seq"], "<f4"))
    assert sub.bad_messages == len(hostile) == sub.counters.bad_headers
    assert raised == (len(hostile) if errors == "raise" else 0)
    assert sub.last_error and "raw/" in sub.last_error  # the last one names its (undecodable) topic
    assert sub.gaps == []  # a bad message is not a lost frame: the good ones are all there
