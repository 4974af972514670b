"""Stream protocol v1: header encoding, decoding errors, payload wrapping, schema."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from medacq.protocols.stream import (
    HeaderError,
    HeaderTemplate,
    StreamDecodeError,
    MessageKind,
    StreamDescriptor,
    StreamHeader,
    decode_header,
    encode_header,
    frame_nbytes,
    frame_payload,
    header_json_schema,
    message_hwm,
    new_series_id,
)


def test_template_matches_model_encoding():
    series = new_series_id()
    tpl = HeaderTemplate("eeg0", series, "<f4", [16, 10], ["channel", "sample"], "µV")
    fast = tpl.frame(7, 1_700_000_000_000_000_000, 123456789, t_device=42, meta={"k": 1})
    model = StreamHeader(stream="eeg0", kind=MessageKind.FRAME, series=series, seq=7, dtype="<f4", shape=[16, 10],
                         axes=["channel", "sample"], units="µV", t_device=42, t_host_ns=1_700_000_000_000_000_000,
                         t_mono_ns=123456789, meta={"k": 1})
    assert json.loads(fast) == json.loads(encode_header(model))
    h = decode_header(fast, strict=True)
    assert h["seq"] == 7 and h["units"] == "µV" and h["meta"] == {"k": 1}


def test_template_shape_override():
    tpl = HeaderTemplate("us0", new_series_id(), "<i2", [-1, 128], ["sample", "element"], "")
    h = json.loads(tpl.frame(0, 1, 2, shape=(2048, 128)))
    assert h["shape"] == [2048, 128] and h["axes"] == ["sample", "element"]


def test_headers_validate_against_shipped_schema():
    schema = header_json_schema()
    tpl = HeaderTemplate("x", new_series_id(), "<u2", [4], ["pixel"], "counts")
    jsonschema.validate(json.loads(tpl.frame(1, 2, 3)), schema)
    desc = StreamDescriptor(stream="x", modality="synthetic", dtype="<u2", shape=[4], axes=["pixel"])
    h = StreamHeader(stream="x", kind="descriptor", series=new_series_id(), seq=0, t_host_ns=1, t_mono_ns=2,
                     descriptor=desc)
    jsonschema.validate(json.loads(encode_header(h)), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"v": 1, "stream": "x", "kind": "nope", "series": "s", "seq": 0, "t_host_ns": 0,
                             "t_mono_ns": 0}, schema)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"v":1,"stream":"eeg0","kind":"frame","series":"s","seq":1,"t_host_ns":1}', "t_mono_ns"),
        (b'{"v":2,"stream":"eeg0","kind":"frame","series":"s","seq":1,"t_host_ns":1,"t_mono_ns":1}', "version"),
        (b'{"v":1,"stream":"eeg0","kind":"blob","series":"s","seq":1,"t_host_ns":1,"t_mono_ns":1}', "kind"),
        (b'{"v":1,"stream":"eeg0","kind":"frame","series":"s","seq":-1,"t_host_ns":1,"t_mono_ns":1}', "seq"),
        (b'{"v":1,"stream":"eeg0","kind":"frame","series":"s","seq":1,"t_host_ns":1,"t_mono_ns":1}', "dtype"),
    ],
)
def test_bad_headers_name_the_stream(raw, fragment):
    with pytest.raises(StreamDecodeError) as exc:
        decode_header(raw, topic="raw/eeg0")
    assert fragment in str(exc.value)
    assert "eeg0" in str(exc.value)


def test_payload_wrap_is_zero_copy_and_checked():
    a = np.arange(12, dtype="<i2").reshape(3, 4)
    buf = a.tobytes()
    h = {"stream": "s", "dtype": "<i2", "shape": [3, 4]}
    out = frame_payload(h, buf)
    np.testing.assert_array_equal(out, a)
    assert not out.flags.writeable  # a view on the message buffer, not a copy
    with pytest.raises(HeaderError, match="needs 24"):
        frame_payload(h, buf[:-2])
    with pytest.raises(HeaderError, match="dtype"):
        frame_payload({"stream": "s", "dtype": "<q9", "shape": [3]}, buf)


@pytest.mark.parametrize("dtype", ["|b1", "?", "<i2", "|i1", ">u4", "<u8", "<f2", "<f4", ">f8", "<c8", "<c16", "float32"])
def test_numeric_dtypes_are_accepted_in_any_byte_order(dtype):
    a = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    out = frame_payload({"stream": "s", "dtype": dtype, "shape": [2, 3]}, a.tobytes())
    np.testing.assert_array_equal(out, a)
    assert out.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", ["O", "S0", "S4", "U2", "(2,)f4", "f4,i4", "V8", "M8", "<m8[s]", "<f16", "<c32"])
def test_non_numeric_dtypes_are_one_typed_error(dtype):
    with pytest.raises(StreamDecodeError, match="not a numeric dtype") as exc:
        frame_payload({"stream": "s", "dtype": dtype, "shape": [1]}, bytes(np.dtype(dtype).itemsize))
    assert isinstance(exc.value, HeaderError) and exc.value.stream == "s"


def test_message_high_water_mark_from_a_byte_budget():
    panel = frame_nbytes("<u2", [1536, 1944])  # a flat-panel frame, 5.97 MB
    assert panel == 1536 * 1944 * 2
    assert message_hwm(128_000_000, panel, cap=1000) == 21
    assert message_hwm(128_000_000, 3200, cap=1000) == 1000  # small frames: the message cap
    assert message_hwm(128_000_000, 3200, cap=0) == 40_000  # no cap: the budget alone
    assert message_hwm(1_000_000, panel, cap=1000) == 2  # larger than the budget: the floor
    assert message_hwm(None, panel, cap=1000) == 1000
    assert frame_nbytes("<i2", [-1, 128]) is None  # a variable axis: known only per frame
