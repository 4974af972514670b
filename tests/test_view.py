"""The live view: encoders (pure), the bridge + server over real ZeroMQ and a WebSocket client.

Browser tests (headless Chromium) are in test_view_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the live view needs aiohttp (pip install aiohttp)")

from medacq.client import ControlClient  # noqa: E402
from medacq.daemon.common.config import parse_config  # noqa: E402
from medacq.daemon.recon.stage import ReconStage  # noqa: E402
from medacq.daemon.acquisition.service import AcquisitionDaemon  # noqa: E402
from medacq.daemon.bridges.view import (  # noqa: E402
    TraceBuffer,
    ViewServer,
    ViewSettings,
    encode_image,
    pack_message,
    panel_kind,
    unpack_message,
)
from medacq.simulators.adapters import SimulatorServer  # noqa: E402
from medacq.simulators.synthetic import SynthConfig, SynthInterface, synth_frame  # noqa: E402

from conftest import wait_for  # noqa: E402


# -- pure parts --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axes,kind", [
    ([8, 64], ["channel", "sample"], "trace"),
    ([64, 16], ["sample", "channel"], "trace"),
    ([1000], ["sample"], "trace"),
    ([1], ["value"], "scalar"),
    ([16, 2], ["channel", "band"], "scalar"),
    ([256, 256], ["z", "x"], "image"),
    ([32, 32], ["y", "x"], "image"),
    ([4, 64, 64], ["slice", "y", "x"], "image"),
    ([2048], ["bin"], "profile"),
    ([1, 2048], ["row", "bin"], "profile"),
])
def test_panel_kind_from_axes_and_shape(shape, axes, kind):
    assert panel_kind(shape, axes) == kind


def test_panel_kind_hint_wins():
    assert panel_kind([128, 2048], ["element", "sample"], {"kind": "image"}) == "image"


def test_trace_buffer_min_max_columns_and_gap():
    tb = TraceBuffer(channels=2, rate_hz=100.0, window_s=1.0, columns=10)  # 10 samples per column
    assert (tb.samples_per_column, tb.columns) == (10, 10)
    x = np.vstack([np.arange(35, dtype=np.float32), -np.arange(35, dtype=np.float32)])
    tb.append(x[:, :7])  # partial column held back
    tb.append(x[:, 7:35])
    snap = tb.snapshot()
    assert snap.shape == (2, 2, 10)
    # 3 complete columns (samples 0..29) are the newest three, oldest first
    np.testing.assert_array_equal(snap[0, 0, -3:], [0, 10, 20])
    np.testing.assert_array_equal(snap[1, 0, -3:], [9, 19, 29])
    np.testing.assert_array_equal(snap[0, 1, -3:], [-9, -19, -29])
    assert np.isnan(snap[:, :, :-3]).all()
    tb.gap(20)  # two columns of nothing
    tb.append(np.full((2, 10), 5.0, np.float32))  # the 5 held-back samples were dropped with the gap
    snap = tb.snapshot()
    assert np.isnan(snap[:, :, -3:-1]).all() and (snap[:, :, -1] == 5).all()


def test_trace_buffer_wraps_and_keeps_newest():
    tb = TraceBuffer(1, 10.0, 1.0, 5)  # 2 samples per column, 5 columns
    tb.append(np.arange(100, dtype=np.float32)[None])
    np.testing.assert_array_equal(tb.snapshot()[1, 0], [91, 93, 95, 97, 99])


def test_encode_image_windows_decimation_and_nan():
    a = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
    idx, lo, hi = encode_image(a, [0.0, float(a.max())], max_px=256)
    assert idx.shape == (256, 256) and idx.dtype == np.uint8
    assert idx[0, 0] == 1 and idx[-1, -1] == 255  # block means at the ends of the window
    b = np.linspace(-2, 2, 64 * 64, dtype=np.float32).reshape(64, 64)
    b[0, 0] = np.nan
    idx, lo, hi = encode_image(b, "symmetric")
    assert lo == -hi and 1.9 < hi <= 2.0
    assert idx[0, 0] == 0 and idx[-1, -1] == 255 and idx[32, 0] in (127, 128, 129)
    db = np.full((32, 32), -80.0, np.float32)
    db[0, 0] = 0.0
    idx, lo, hi = encode_image(db, "db", dynamic_range_db=60.0)
    assert (lo, hi) == (-60.0, 0.0) and idx[0, 0] == 255 and idx[5, 5] == 1  # below the range: clipped


def test_pack_message_roundtrip_and_alignment():
    arr = np.arange(10, dtype=np.float32)
    for name in ("a", "ab", "abc", "abcd"):
        msg = pack_message({"panel": name}, arr)
        h, payload = unpack_message(msg)
        assert h == {"panel": name}
        assert (len(msg) - len(payload)) % 4 == 0
        np.testing.assert_array_equal(np.frombuffer(payload, np.float32), arr)


# -- bridge + server over real sockets ---------------------------------------------------------
DEVICES = {
    "tr0": {"shape": [4, 32], "rate_hz": 40.0, "seed": 5, "units": "uV"},
    "im0": {"shape": [48, 64], "rate_hz": 20.0, "seed": 6, "axes": ["y", "x"], "units": "counts"},
    "sc0": {"shape": [3], "rate_hz": 10.0, "seed": 7, "axes": ["value"]},
}


@pytest.fixture
def live(endpoints):
    """Three synthetic devices (trace, image, scalar), the daemon, the recon stage and the view."""
    sims = {n: SimulatorServer(SynthInterface(), "tcp", paced=True).start() for n in DEVICES}
    cfg = parse_config({**endpoints, "device": [
        {"name": n, "kind": "synthetic", "address": sims[n].address, "settings": s} for n, s in DEVICES.items()]})
    daemon = AcquisitionDaemon(cfg).start()
    stage = ReconStage(cfg).start()
    view = ViewServer(ViewSettings(cfg.daemon.control_endpoint, cfg.recon.control_endpoint,
                                   [cfg.daemon.data_endpoint, cfg.recon.data_endpoint], port=0,
                                   status_interval_s=0.3, operator=True)).start()
    try:
        yield cfg, view
    finally:
        view.stop()
        stage.shutdown()
        daemon.shutdown()
        for s in sims.values():
            s.stop()


def _auth(view: ViewServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {view.token}"}


async def _session(url: str, seconds: float, actions=(), ack: bool = True, origin: str | None = None,
                   token: str | None = None):
    """Connect like a page: collect JSON and binary messages, acknowledge draws, send actions."""
    out: dict = {"json": [], "frames": {}, "replies": []}
    headers = {"Origin": origin} if origin else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url + "ws", headers=headers) as ws:
            end = time.monotonic() + seconds
            pending = list(actions)
            while time.monotonic() < end:
                try:
                    msg = await ws.receive(timeout=0.2)
                except asyncio.TimeoutError:
                    msg = None
                if pending and any(m.get("type") == "status" for m in out["json"]):
                    await ws.send_str(json.dumps(pending.pop(0)))
                if msg is None:
                    continue
                if msg.type == aiohttp.WSMsgType.TEXT:
                    m = json.loads(msg.data)
                    out["json"].append(m)
                    if m.get("type") == "reply":
                        out["replies"].append(m)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    h, payload = unpack_message(msg.data)
                    out["frames"].setdefault(h["panel"], []).append((h, payload))
                    if ack:
                        await ws.send_str(json.dumps({"op": "drawn", "panel": h["panel"], "v": h["v"]}))
                else:
                    break
    return out


def test_panels_values_rate_limit_and_latency(live):
    cfg, view = live
    wait_for(lambda: len(view.bridge.panels()) >= 6, timeout=20)
    out = asyncio.run(_session(view.url, 3.0, token=view.token))
    kinds = {p["topic"]: p["kind"] for p in out["json"][-1]["panels"]} if out["json"][-1].get("panels") else {}
    kinds = kinds or {p["topic"]: p["kind"] for m in out["json"] if m.get("panels") for p in m["panels"]}
    assert kinds == {"raw/tr0": "trace", "recon/tr0": "trace", "raw/im0": "image", "recon/im0": "image",
                     "raw/sc0": "scalar", "recon/sc0": "scalar"}
    f = out["frames"]
    assert set(f) == set(kinds)
    # scalars: exactly the values the simulator sent for that seq
    sc = SynthConfig(shape=[3], rate_hz=10.0, seed=7)
    for h, payload in f["raw/sc0"]:
        np.testing.assert_allclose(h["values"], synth_frame(sc, h["seq"]), rtol=1e-6)
        # the history: float32 (values, samples), its newest column the values above
        hx = np.frombuffer(payload, np.float32).reshape(h["history_cols"], h["history_n"])
        assert h["history_cols"] == 3 and h["history_n"] >= 1
        np.testing.assert_allclose(hx[:, -1], h["values"], rtol=1e-6)
    # images: the 8-bit indices are the server-side window of that very frame
    ic = SynthConfig(shape=[48, 64], rate_hz=20.0, seed=6)
    for h, payload in f["raw/im0"][-3:]:
        idx, lo, hi = encode_image(synth_frame(ic, h["seq"]))
        assert (h["height"], h["width"]) == (48, 64) and (h["lo"], h["hi"]) == pytest.approx((lo, hi))
        np.testing.assert_array_equal(np.frombuffer(payload, np.uint8).reshape(48, 64), idx)
    # traces: min/max columns per channel; channel 0 is a 1 Hz unit sine (plus noise)
    h, payload = f["raw/tr0"][-1]
    mm = np.frombuffer(payload, np.float32).reshape(2, h["channels"], h["columns"])
    assert h["channels"] == 4 and h["rate_hz"] == pytest.approx(40 * 32)
    filled = ~np.isnan(mm[0, 0])
    assert filled.sum() > 0.2 * h["columns"]
    assert (mm[0][:, filled] <= mm[1][:, filled]).all()
    assert np.nanmax(mm[1, 0]) - np.nanmin(mm[0, 0]) > 1.5 and np.nanmax(np.abs(mm)) < 2.0
    # at most max_fps (20/s) per panel: the 40 fps trace is decimated, the 10 fps scalar is not
    assert len(f["raw/tr0"]) <= 20 * 3.0 + 3
    assert len(f["raw/sc0"]) >= 20
    # latency closed by the "drawn" acknowledgements
    lat = view.latency()
    assert lat["acq_to_pixels_ms"]["n"] > 50 and 0 < lat["acq_to_pixels_ms"]["p50"] < 1000
    assert lat["bridge_to_pixels_ms"]["p50"] <= lat["acq_to_pixels_ms"]["p50"]


def test_a_page_that_never_acknowledges_gets_one_update_per_panel(live):
    cfg, view = live
    wait_for(lambda: len(view.bridge.panels()) >= 6, timeout=20)
    out = asyncio.run(_session(view.url, 1.5, ack=False, token=view.token))
    assert all(len(v) == 1 for v in out["frames"].values()), {k: len(v) for k, v in out["frames"].items()}
    # ... and acquisition did not notice
    with ControlClient(cfg.daemon.control_endpoint) as c:
        st = c.request("status")["streams"]
    assert all(s["drops"] == 0 and s["state"] == "acquiring" for s in st.values())


def test_buttons_go_through_the_control_plane(live):
    cfg, view = live
    wait_for(lambda: view.bridge.status.get("recon") and view.devices(), timeout=20)
    wait_for(lambda: any(b["cmd"] == "action" for d in view.devices() for b in d["buttons"]), timeout=20)
    actions = [
        {"op": "ctl", "req": 1, "target": "daemon", "cmd": "stop", "fields": {"device": "tr0"}},
        {"op": "ctl", "req": 2, "target": "recon", "cmd": "action",
         "fields": {"target": "im0", "action": "reset", "args": {}}},
        {"op": "ctl", "req": 3, "target": "daemon", "cmd": "configure", "fields": {"device": "tr0", "settings": {}}},
        {"op": "ctl", "req": 4, "target": "daemon", "cmd": "stop", "fields": {"device": "nope"}},
    ]
    out = asyncio.run(_session(view.url, 3.0, actions, token=view.token))
    replies = {r["req"]: r for r in out["replies"]}
    assert replies[1]["ok"] and replies[1]["result"] == {"devices": ["tr0"]}
    assert replies[2]["ok"] and replies[2]["result"] == {"reset": True}
    assert not replies[3]["ok"] and "does not send" in replies[3]["error"]  # not a view button
    assert not replies[4]["ok"] and "unknown_device" in replies[4]["error"]
    with ControlClient(cfg.daemon.control_endpoint) as c:
        wait_for(lambda: c.request("status")["streams"]["tr0"]["state"] in ("idle", "stopped"), timeout=10)
    assert sorted(a["cmd"] for a in view.state()["actions"]) == ["action", "configure", "stop", "stop"]


def test_cross_origin_and_foreign_host_are_refused(live):
    cfg, view = live

    async def probe():
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await s.ws_connect(view.url + "ws", headers={"Origin": "http://evil.example", **_auth(view)})
            assert exc.value.status == 403
            async with s.get(view.url, headers={"Host": "evil.example", **_auth(view)}) as r:
                assert r.status == 403
            async with s.get(view.url, headers=_auth(view)) as r:
                assert r.status == 200 and "medacq" in await r.text()
            async with s.get(view.url + "static/view.js", headers=_auth(view)) as r:
                assert r.status == 200

    asyncio.run(probe())


# -- login token, read-only mode, loopback only -------------------------------------------------
def test_without_the_token_nothing_is_served(live):
    """HTTP and WebSocket without (or with a wrong) token: 401, no data, no controls."""
    cfg, view = live
    wait_for(lambda: len(view.bridge.panels()) >= 6, timeout=20)
    refused0 = view.refused_requests

    async def probe():
        async with aiohttp.ClientSession() as s:
            for bad in ({}, {"Authorization": "Bearer " + "x" * 43}, {"Cookie": f"{view.cookie_name}=nope"}):
                async with s.get(view.url, headers=bad) as r:
                    page = await r.text()
                    assert r.status == 401 and "token needed" in page
                    assert "view.js" not in page and "<button" not in page and "raw/" not in page
                async with s.get(view.url + "api/state", headers=bad) as r:
                    body = await r.text()
                    assert r.status == 401 and "panels" not in body and "tr0" not in body
                async with s.get(view.url + "static/view.js", headers=bad) as r:
                    assert r.status == 401
                with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                    await s.ws_connect(view.url + "ws", headers=bad)
                assert exc.value.status == 401
            wrong = view.token[:-1] + ("B" if view.token.endswith("A") else "A")  # one character off, never the token
            async with s.get(view.url + "api/state?token=" + wrong) as r:
                assert r.status == 401
        # a session with no cookie jar: nothing from the requests above is remembered
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
            async with s.get(view.url + "api/state", headers=_auth(view)) as r:
                st = await r.json()
                assert r.status == 200 and {p["topic"] for p in st["panels"]} >= {"raw/tr0", "raw/im0", "raw/sc0"}
                assert st["operator"] is True
            async with s.get(view.url + "api/state?token=" + view.token) as r:
                assert r.status == 200 and "health" in await r.json()

    asyncio.run(probe())
    assert view.refused_requests - refused0 == 3 * 4 + 1
    # a WebSocket with the token (as a header, or as the query parameter) gets data
    out = asyncio.run(_session(view.url, 1.5, token=view.token))
    assert out["frames"] and any(m.get("type") == "status" for m in out["json"])


def test_the_token_in_the_address_once_then_a_cookie(live):
    """Like a notebook server: ``/?token=...`` serves the page and sets an HttpOnly, SameSite=Strict
    cookie, which then carries every request (page, script, WebSocket) of that browser."""
    cfg, view = live
    wait_for(lambda: len(view.bridge.panels()) >= 6, timeout=20)

    async def probe():
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # unsafe: an IP host
            async with s.get(view.login_url) as r:
                assert r.status == 200 and "view.js" in await r.text()
                morsel = r.cookies[view.cookie_name]
                assert morsel.value == view.token and morsel["httponly"] and morsel["samesite"] == "Strict"
                assert morsel["path"] == "/"
            async with s.get(view.url + "static/view.js") as r:  # the cookie alone now
                assert r.status == 200
            async with s.get(view.url + "api/state") as r:
                assert r.status == 200 and (await r.json())["panels"]
            async with s.ws_connect(view.url + "ws") as ws:
                hello = await ws.receive_json(timeout=5)
                assert hello["type"] == "hello"

    asyncio.run(probe())


def test_token_is_random_per_view_and_a_given_one_is_checked(endpoints, tmp_path):
    from medacq.daemon.bridges.view import ViewTokenError, read_token_file

    mk = lambda **kw: ViewServer(ViewSettings(endpoints["daemon"]["control_endpoint"], None, [], port=0, **kw))  # noqa: E731
    a, b = mk(), mk()
    assert a.token != b.token and len(a.token) >= 43
    assert mk(token="  " + "k" * 20 + "\n").token == "k" * 20
    with pytest.raises(ViewTokenError, match="at least 16"):
        mk(token="short")
    f = tmp_path / "view.token"
    f.write_text("s3cr3t-token-for-the-view\n")
    f.chmod(0o600)
    assert read_token_file(f) == "s3cr3t-token-for-the-view"
    f.chmod(0o644)
    with pytest.raises(ViewTokenError, match="readable or writable by other users"):
        read_token_file(f)
    with pytest.raises(ViewTokenError, match="cannot read"):
        read_token_file(tmp_path / "missing")


def test_a_read_only_view_shows_and_forwards_no_controls(live):
    cfg, view = live
    ro = ViewServer(ViewSettings(cfg.daemon.control_endpoint, cfg.recon.control_endpoint,
                                 [cfg.daemon.data_endpoint, cfg.recon.data_endpoint], port=0,
                                 status_interval_s=0.3)).start()
    try:
        wait_for(lambda: len(ro.devices()) == 3 and len(ro.bridge.panels()) >= 6, timeout=20)
        assert all(d["buttons"] == [] for d in ro.devices())
        assert all(d["buttons"] for d in view.devices())  # the operator view, same rig
        actions = [{"op": "ctl", "req": 1, "target": "daemon", "cmd": "stop", "fields": {"device": "tr0"}},
                   {"op": "ctl", "req": 2, "target": "daemon", "cmd": "record", "fields": {"action": "start"}},
                   {"op": "ctl", "req": 3, "target": "recon", "cmd": "action",
                    "fields": {"target": "im0", "action": "reset", "args": {}}}]
        out = asyncio.run(_session(ro.url, 2.5, actions, token=ro.token))
        replies = {r["req"]: r for r in out["replies"]}
        assert sorted(replies) == [1, 2, 3]
        assert all(not r["ok"] and "read-only view" in r["error"] and "--operator" in r["error"]
                   for r in replies.values())
        status = [m for m in out["json"] if m.get("type") == "status"]
        assert status and all(m["operator"] is False and all(d["buttons"] == [] for d in m["devices"])
                              for m in status)
        assert out["frames"]  # it still shows the data
        with ControlClient(cfg.daemon.control_endpoint) as c:
            st = c.request("status")["streams"]
        assert st["tr0"]["state"] == "acquiring"
        assert [a["ok"] for a in ro.state()["actions"]] == [False, False, False]
    finally:
        ro.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "example.org"])
def test_the_view_refuses_to_listen_off_loopback(endpoints, host):
    import socket

    from medacq.daemon.common.binding import BindError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BindError) as exc:
        ViewServer(ViewSettings(endpoints["daemon"]["control_endpoint"], None, [], host=host, port=port))
    msg = str(exc.value)
    assert msg.startswith("refusing to serve http on ") and f":{port} without TLS" in msg
    assert "SSH tunnel" in msg and "\n" not in msg
    with socket.socket() as s:  # nothing was bound
        s.bind(("127.0.0.1", port))


def test_medacq_view_refuses_off_loopback_in_one_line():
    from conftest import run_medacq

    r = run_medacq("view", "--host", "0.0.0.0", "--port", "8555", "--for", "1")
    assert r.returncode == 2
    assert r.stderr.startswith("medacq view: refusing to serve http on 0.0.0.0:8555 without ")
    assert r.stderr.count("\n") == 1 and r.stdout == ""
