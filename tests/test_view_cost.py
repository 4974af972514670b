"""The live view's cheaper paths give what the plain numpy ones gave, bit for bit; frames that the
rate limit would hold anyway do not wake the encoder; updates reach the event loop in batches."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the live view needs aiohttp (pip install aiohttp)")

from medacq.daemon.bridges.view import (  # noqa: E402
    Bridge,
    Encoded,
    TraceBuffer,
    ViewServer,
    ViewSettings,
    _decimate,
    _image_view,
    _pcts,
    _percentiles,
    encode_image,
    pack_message,
    unpack_message,
)


def _reference_encode_image(array, window="percentile", max_px=256, dynamic_range_db=60.0):
    """The view's image encoder as it was (same block means): np.percentile, np.where over the image."""
    a = _decimate(_image_view(array), max_px)
    finite = np.isfinite(a)
    sample = a[::2, ::2] if a.size > 4096 else a
    sample = sample[np.isfinite(sample)]
    if isinstance(window, list):
        lo, hi = window
    elif window == "symmetric":
        m = float(np.percentile(np.abs(sample), 99))
        lo, hi = -m, m
    elif window == "db":
        hi = float(sample.max())
        lo = hi - dynamic_range_db
    else:
        lo, hi = (float(v) for v in np.percentile(sample, [1, 99]))
    with np.errstate(invalid="ignore"):
        idx = np.clip(np.rint((a - lo) * (254.0 / (hi - lo))) + 1.0, 1, 255)
    return np.where(finite, idx, 0).astype(np.uint8), lo, hi


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_percentiles_are_numpys_bit_for_bit(dtype):
    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 7, 100, 101, 4097, 12000):
        x = (rng.normal(size=n) * 1e3).astype(dtype)
        assert _percentiles(x, (1.0, 99.0)) == [float(v) for v in np.percentile(x, [1, 99])]
        assert _percentiles(x, (50.0, 99.0)) == [float(v) for v in np.percentile(x, [50, 99])]
        assert _percentiles(x, (99.0,), scalar=True) == [float(np.percentile(x, 99))]


def test_latency_figures_are_numpys_percentiles():
    from collections import deque

    d = deque(np.random.default_rng(2).gamma(2.0, 30.0, 700), maxlen=512)
    a = np.array(d)
    assert _pcts(d) == {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
                        "n": 512}
    assert _pcts(deque()) == {"p50": None, "p99": None, "n": 0}


@pytest.mark.parametrize("window", ["percentile", "symmetric", "db", [-50.0, 900.0]])
def test_encode_image_is_unchanged(window):
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 4000, (768, 972)).astype("<u2"),  # X-ray detector counts, 4x block means
              rng.normal(0, 300, (3, 128, 2048)).astype("<i2"),  # RF: the middle angle, 16x
              rng.normal(100, 300, (384, 486)).astype("<f4"),
              (rng.normal(size=(200, 300)) + 1j * rng.normal(size=(200, 300))).astype(np.complex64)]
    eit = rng.normal(0, 1, (32, 32)).astype("<f4")
    eit[rng.random((32, 32)) < 0.2] = np.nan  # outside the domain: index 0
    frames.append(eit)
    for a in frames:
        idx, lo, hi = encode_image(a, window, 256)
        ref, rlo, rhi = _reference_encode_image(a, window, 256)
        assert (lo, hi) == (float(rlo), float(rhi))
        np.testing.assert_array_equal(idx, ref)
    assert (encode_image(eit, window)[0] == 0).sum() == np.isnan(eit).sum()


def test_trace_buffer_wraps_across_the_end_in_one_append():
    tb = TraceBuffer(1, 10.0, 1.0, 5)  # 2 samples per column, 5 columns
    tb.append(np.arange(6, dtype=np.float32)[None])  # 3 columns
    tb.append(np.arange(6, 12, dtype=np.float32)[None])  # 3 more: the last one wraps to column 0
    np.testing.assert_array_equal(tb.snapshot()[1, 0], [3, 5, 7, 9, 11])
    np.testing.assert_array_equal(tb.snapshot()[0, 0], [2, 4, 6, 8, 10])


def test_pack_message_takes_views_and_buffers():
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    for payload, expect in ((a[:, ::2], a[:, ::2].tobytes()), (a.T, a.T.tobytes()),
                            (memoryview(b"abcd"), b"abcd"), (b"xyz", b"xyz"), (None, b"")):
        h, body = unpack_message(pack_message({"panel": "p"}, payload))
        assert h == {"panel": "p"} and body == expect


def test_a_frame_the_rate_limit_holds_does_not_wake_the_encoder():
    b = Bridge(ViewSettings("tcp://127.0.0.1:1", None, []))
    b._subscribed_raw.add("im0")
    frame = {"kind": "frame", "stream": "im0", "seq": 0, "t_mono_ns": 1, "shape": [8, 8], "axes": ["y", "x"]}
    b._enc_wake_at = time.monotonic() + 0.05  # the encoder sleeps until then
    b._on_message("raw/im0", frame, np.zeros((8, 8), np.float32))
    assert b._wake.is_set()  # a new stream is due at once
    b._wake.clear()
    st = b.streams["raw/im0"]
    st.due_s = time.monotonic() + 1.0  # its next token comes after the encoder wakes anyway
    b._on_message("raw/im0", {**frame, "seq": 1}, np.ones((8, 8), np.float32))
    assert not b._wake.is_set() and st.dirty and st.seq == 1  # kept, newest wins, encoded when due
    st.due_s = time.monotonic() + 0.01  # due before the encoder's own wake-up: wake it
    b._on_message("raw/im0", {**frame, "seq": 2}, np.ones((8, 8), np.float32))
    assert b._wake.is_set()
    b._wake.clear()
    b._enc_wake_at = math.inf  # a pass is running: any frame asks for another
    b._on_message("raw/im0", {**frame, "seq": 3}, np.ones((8, 8), np.float32))
    assert b._wake.is_set()


def test_updates_reach_the_loop_newest_per_panel_in_batches():
    view = ViewServer(ViewSettings("tcp://127.0.0.1:1", None, [], port=0))
    loop = asyncio.new_event_loop()
    view.loop = loop
    calls = []
    orig = view._take_updates

    def counted() -> None:
        calls.append(len(view._handoff))
        orig()

    view._take_updates = counted  # type: ignore[method-assign]

    def encoder() -> None:
        for v in range(1, 201):
            view._post_update(Encoded(f"p{v % 4}", v, b"", 0, 0))

    t = threading.Thread(target=encoder)
    t.start()
    t.join()
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()
    assert {p: e.version for p, e in view.latest.items()} == {"p0": 200, "p1": 197, "p2": 198, "p3": 199}
    assert sum(calls) == 200 and len(calls) < 200 and not view._handoff
