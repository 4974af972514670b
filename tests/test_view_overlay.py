"""The live view's overlay panel: a shear-wave Young's-modulus map (kPa) drawn over the B-mode
image of the same probe, its geometry from both streams' descriptors; transparent where the
confidence is low. Checked by value on the bridge and on the view's WebSocket."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the live view needs aiohttp (pip install aiohttp)")

from medacq.daemon.bridges.view import (  # noqa: E402
    Bridge,
    Encoded,
    ViewServer,
    ViewSettings,
    encode_image,
    unpack_message,
)
from medacq.protocols.us_geometry import PixelGrid  # noqa: E402

from conftest import free_ports, wait_for  # noqa: E402

# B-mode: 128 x 128 pixels over x -19..19 mm, z 5..45 mm; the map: 1 mm pixels over x -8..8, z 15..35
BMODE_GRID = PixelGrid(nx=128, nz=128, x_min=-19e-3, x_max=19e-3, z_min=5e-3, z_max=45e-3)
MAP_X = np.arange(-8.0, 8.01, 1.0)
MAP_Z = np.arange(15.0, 35.01, 1.0)


def _descriptor(stream: str, modality: str, shape, geometry, meta=None) -> dict:
    return {"stream": stream, "modality": modality, "device": "test", "dtype": "<f4", "shape": list(shape),
            "axes": ["z", "x"], "units": "", "geometry": geometry, "meta": {"source": stream.split("/")[0],
                                                                           **(meta or {})}}


def _map_grid() -> dict:
    return {"x_mm": MAP_X.tolist(), "z_mm": MAP_Z.tolist(), "axes": ["z", "x"],
            "grid": {"nx": len(MAP_X), "nz": len(MAP_Z), "x_min": MAP_X[0] * 1e-3, "x_max": MAP_X[-1] * 1e-3,
                     "z_min": MAP_Z[0] * 1e-3, "z_max": MAP_Z[-1] * 1e-3}}


def _frames():
    rng = np.random.default_rng(3)
    bmode = (-60 * rng.random((BMODE_GRID.nz, BMODE_GRID.nx))).astype(np.float32)
    X, Z = np.meshgrid(MAP_X, MAP_Z)
    e = np.full(X.shape, 15.0, np.float32)
    e[(X - 3) ** 2 + (Z - 25) ** 2 <= 16] = 60.0  # the stiff inclusion
    e[0, :] = np.nan  # no estimate on the first row
    conf = np.ones(X.shape, np.float32)
    conf[:, :4] = 0.2  # low confidence on the 4 leftmost columns (x -8..-5 mm)
    return bmode, e, conf


def _feed(bridge: Bridge, bmode: np.ndarray, e: np.ndarray, conf: np.ndarray, seq: int = 0) -> None:
    """The recon stage's messages for recon/us0 (B-mode) and recon/swe0 (+ /confidence)."""
    for topic, arr, desc, units in (
            ("recon/us0", bmode, _descriptor("us0", "us", bmode.shape, {"grid": BMODE_GRID.to_descriptor()}), "dB"),
            ("recon/swe0", e, _descriptor("swe0", "swe", e.shape, _map_grid()), "kPa"),
            ("recon/swe0/confidence", conf, _descriptor("swe0/confidence", "swe", conf.shape, _map_grid()), "1")):
        stream = topic.split("/", 1)[1]
        src = {"stream": stream.split("/")[0], "seq": seq}
        bridge._on_message(topic, {"kind": "descriptor", "descriptor": desc, "source": src}, None)
        bridge._on_message(topic, {"kind": "frame", "stream": stream, "seq": seq, "t_mono_ns": time.monotonic_ns(),
                                   "shape": list(arr.shape), "axes": ["z", "x"], "units": units, "dtype": "<f4",
                                   "source": src}, arr)


def _expected(bmode: np.ndarray, e: np.ndarray, conf: np.ndarray, max_px: int = 256):
    """The overlay worked out independently: nearest map pixel of each B-mode pixel centre."""
    idx_b, _, _ = encode_image(bmode, "db", max_px, 60.0)
    xs = np.linspace(-19, 19, BMODE_GRID.nx)
    zs = np.linspace(5, 45, BMODE_GRID.nz)
    ix, iz = np.rint(xs - MAP_X[0]).astype(int), np.rint(zs - MAP_Z[0]).astype(int)
    inside = ((iz >= 0) & (iz < len(MAP_Z)))[:, None] & ((ix >= 0) & (ix < len(MAP_X)))[None, :]
    val = e[np.clip(iz, 0, len(MAP_Z) - 1)][:, np.clip(ix, 0, len(MAP_X) - 1)]
    c = conf[np.clip(iz, 0, len(MAP_Z) - 1)][:, np.clip(ix, 0, len(MAP_X) - 1)]
    return idx_b, inside & np.isfinite(val) & (c >= 0.5), val, xs, zs


def test_overlay_composes_the_map_over_the_bmode_by_geometry():
    bridge = Bridge(ViewSettings("tcp://127.0.0.1:1", None, []))
    got: list[Encoded] = []
    bridge.on_update = got.append
    bmode, e, conf = _frames()
    _feed(bridge, bmode, e, conf)
    ov = bridge.streams["overlay/swe0"]
    assert ov.dirty
    assert bridge._encode(ov, time.monotonic())  # the panel spec appeared
    spec = next(p for p in bridge.panels() if p["id"] == "overlay/swe0")
    assert (spec["kind"], spec["map"], spec["base"], spec["units"], spec["modality"]) == \
        ("overlay", "recon/swe0", "recon/us0", "kPa", "swe")
    h, payload = unpack_message(got[-1].data)
    idx_b, show, val, xs, zs = _expected(bmode, e, conf)
    n = h["width"] * h["height"]
    assert (h["height"], h["width"]) == (128, 128) and len(payload) == 2 * n
    np.testing.assert_array_equal(np.frombuffer(payload[:n], np.uint8).reshape(128, 128), idx_b)
    ie = np.frombuffer(payload[n:], np.uint8).reshape(128, 128)
    np.testing.assert_array_equal(ie > 0, show)  # transparent outside, on NaN and at low confidence
    assert show.sum() > 1000 and not show[:, xs < -4.6].any()
    # colour index = the map value in the window (auto: 1st..99th percentile of what is shown)
    lo, hi = h["lo"], h["hi"]
    assert (lo, hi) == pytest.approx((15.0, 60.0))
    np.testing.assert_array_equal(ie[show], np.clip(np.rint((val[show] - lo) * 254 / (hi - lo)) + 1, 1, 255))
    # the stiff inclusion lands where it is, at the top of the scale; the background at the bottom
    zi, xi = int(np.argmin(np.abs(zs - 25))), int(np.argmin(np.abs(xs - 3)))
    assert ie[zi, xi] == 255 and ie[int(np.argmin(np.abs(zs - 32))), int(np.argmin(np.abs(xs + 2)))] == 1
    assert h["extent_mm"] == pytest.approx([-19 - 38 / 127 / 2, 19 + 38 / 127 / 2, 5 - 40 / 127 / 2, 45 + 40 / 127 / 2])
    assert h["map_extent_mm"] == pytest.approx([-8, 8, 15, 35])
    assert (h["colormap"], h["base_colormap"], h["min_confidence"]) == ("viridis", "gray", 0.5)
    # an operator window (kPa) replaces the automatic one
    bridge.set_window("overlay/swe0", [0.0, 100.0])
    bridge._encode(ov, time.monotonic())
    h, payload = unpack_message(got[-1].data)
    ie = np.frombuffer(payload[n:], np.uint8).reshape(128, 128)
    assert (h["lo"], h["hi"], h["manual"]) == (0.0, 100.0, True) and ie[zi, xi] == round(60 * 2.54) + 1


def test_no_overlay_without_a_bmode_stream_and_the_named_one_wins():
    bridge = Bridge(ViewSettings("tcp://127.0.0.1:1", None, []))
    bmode, e, conf = _frames()
    bridge._on_message("recon/swe0", {"kind": "descriptor", "descriptor": _descriptor("swe0", "swe", e.shape,
                                                                                     _map_grid())}, None)
    bridge._on_message("recon/swe0", {"kind": "frame", "stream": "swe0", "seq": 0, "t_mono_ns": 1,
                                      "shape": list(e.shape), "axes": ["z", "x"]}, e)
    assert "overlay/swe0" not in bridge.streams
    # two B-mode streams: the SWE device names its probe's (descriptor meta bmode_stream)
    bridge.descriptors["swe0"] = {"modality": "swe", "meta": {"bmode_stream": "us1"}}
    for name in ("us0", "us1"):
        d = _descriptor(name, "us", bmode.shape, {"grid": BMODE_GRID.to_descriptor()})
        bridge._on_message(f"recon/{name}", {"kind": "descriptor", "descriptor": d}, None)
        bridge._on_message(f"recon/{name}", {"kind": "frame", "stream": name, "seq": 0, "t_mono_ns": 1,
                                             "shape": list(bmode.shape), "axes": ["z", "x"]}, bmode)
    bridge._on_message("recon/swe0", {"kind": "frame", "stream": "swe0", "seq": 1, "t_mono_ns": 2,
                                      "shape": list(e.shape), "axes": ["z", "x"]}, e)
    assert bridge._overlay_base(bridge.streams["recon/swe0"]).stream == "us1"
    assert "overlay/swe0" in bridge.streams


def test_overlay_on_the_websocket_and_nothing_encoded_without_a_viewer():
    port = free_ports(1)[0]
    view = ViewServer(ViewSettings(f"tcp://127.0.0.1:{port}", None, [], port=0, max_fps=10)).start()
    try:
        bmode, e, conf = _frames()
        _feed(view.bridge, bmode, e, conf)
        wait_for(lambda: any(p["id"] == "overlay/swe0" for p in view.bridge.panels()), timeout=10)
        time.sleep(0.3)
        assert view.bridge.streams["overlay/swe0"].encoded == 0  # nobody watching: nothing composed

        async def session():
            frames, panels = [], []
            async with aiohttp.ClientSession() as s:
                async with s.ws_connect(view.url + "ws", headers={"Authorization": f"Bearer {view.token}"}) as ws:
                    end = time.monotonic() + 3.0
                    k = 0
                    while time.monotonic() < end and len(frames) < 3:
                        try:
                            msg = await ws.receive(timeout=0.2)
                        except asyncio.TimeoutError:
                            _feed(view.bridge, bmode, e, conf, seq=k)
                            k += 1
                            continue
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            m = json.loads(msg.data)
                            panels += m.get("panels") or []
                        elif msg.type == aiohttp.WSMsgType.BINARY:
                            h, payload = unpack_message(msg.data)
                            if h["panel"] == "overlay/swe0":
                                frames.append((h, payload))
                            await ws.send_str(json.dumps({"op": "drawn", "panel": h["panel"], "v": h["v"]}))
            return frames, panels

        frames, panels = asyncio.run(session())
    finally:
        view.stop()
    assert any(p["id"] == "overlay/swe0" and p["kind"] == "overlay" for p in panels)
    assert frames
    h, payload = frames[-1]
    idx_b, show, _, _, _ = _expected(bmode, e, conf)
    n = h["width"] * h["height"]
    assert h["kind"] == "overlay" and h["base"] == "recon/us0"
    np.testing.assert_array_equal(np.frombuffer(payload[:n], np.uint8).reshape(idx_b.shape), idx_b)
    np.testing.assert_array_equal(np.frombuffer(payload[n:], np.uint8).reshape(idx_b.shape) > 0, show)


def test_overlay_drawn_in_a_real_browser():
    """Headless Chromium (skipped without it): the overlay panel draws, with map colours over gray."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="browser tests need playwright (pip install playwright)")
    from medacq.daemon.bench.view import browser_args, chromium_path

    if chromium_path() is None:
        pytest.skip("browser tests need Debian's chromium (apt-get install chromium)")
    port = free_ports(1)[0]
    view = ViewServer(ViewSettings(f"tcp://127.0.0.1:{port}", None, [], port=0, max_fps=10)).start()
    try:
        bmode, e, conf = _frames()
        _feed(view.bridge, bmode, e, conf)
        wait_for(lambda: any(p["id"] == "overlay/swe0" for p in view.bridge.panels()), timeout=10)
        with sync_api.sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=chromium_path(), args=browser_args(), headless=True)
            try:
                page = b.new_page(viewport={"width": 1200, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda err: errors.append(str(err)))
                page.goto(view.login_url)
                for k in range(40):  # frames keep coming, as from a live rig
                    _feed(view.bridge, bmode, e, conf, seq=k + 1)
                    if page.evaluate("(() => { const p = document.querySelector('.panel[data-topic=\"overlay/swe0\"]');"
                                     " return p ? +p.dataset.updates : 0; })()") > 0:
                        break
                    page.wait_for_timeout(100)
                shown = page.evaluate("+document.querySelector('.panel[data-topic=\"overlay/swe0\"]').dataset.shown")
                info = page.inner_text('.panel[data-topic="overlay/swe0"] .info')
                # coloured pixels on the canvas: the map over the gray B-mode (gray has r = g = b)
                coloured = page.evaluate("""() => {
                    const c = document.querySelector('.panel[data-topic="overlay/swe0"] canvas');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                    for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i+2]) > 30) n++; return n; }""")
            finally:
                b.close()
    finally:
        view.stop()
    _, show, _, _, _ = _expected(bmode, e, conf)
    assert not errors and "draw error" not in info
    assert shown == int(show.sum()) and coloured > 1000
    assert "recon/swe0 over recon/us0" in info
