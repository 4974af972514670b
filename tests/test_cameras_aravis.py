"""Aravis (the reference GigE Vision host) against the camera simulator on loopback.

Aravis talks GVCP to port 3956 only, so each test serves the simulator on 127.0.0.N:3956 for a
free N. Aravis runs under the system Python (``python3-gi`` + ``gir1.2-aravis-0.8``), as a
subprocess: the project's venv cannot import ``gi``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medacq.simulators.adapters import PortInUseError
from medacq.simulators.gige_camera import GigEVisionServer, make

SYSTEM_PY = "/usr/bin/python3"


def _aravis_available() -> str | None:
    if not os.path.exists(SYSTEM_PY):
        return "no /usr/bin/python3"
    r = subprocess.run([SYSTEM_PY, "-c", "import gi; gi.require_version('Aravis', '0.8'); "
                        "from gi.repository import Aravis"], capture_output=True, text=True)
    if r.returncode:
        return "Aravis GObject bindings missing (apt-get install gir1.2-aravis-0.8 python3-gi)"
    return None


_WHY = _aravis_available()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

PROBE = r'''
import json, sys
import gi
gi.require_version("Aravis", "0.8")
from gi.repository import Aravis
ip, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cam = Aravis.Camera.new(ip)
dev = cam.get_device()
r = {"vendor": cam.get_vendor_name(), "model": cam.get_model_name(),
     "width": dev.get_integer_feature_value("Width"), "height": dev.get_integer_feature_value("Height"),
     "pixel_format": dev.get_string_feature_value("PixelFormat"), "payload": cam.get_payload()}
dev.set_float_feature_value("Gain", 6.5)
r["gain"] = dev.get_float_feature_value("Gain")
cam.set_frame_rate(20.0)
r["frame_rate"] = cam.get_frame_rate()
r["temperature"] = dev.get_float_feature_value("DeviceTemperature")
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
for k, v in extra.items():
    if isinstance(v, float):
        dev.set_float_feature_value(k, v); r[k] = dev.get_float_feature_value(k)
    else:
        dev.set_string_feature_value(k, v); r[k] = dev.get_string_feature_value(k)
stream = cam.create_stream(None, None)
for i in range(8):
    stream.push_buffer(Aravis.Buffer.new_allocate(r["payload"]))
cam.start_acquisition()
frames = []
with open(out, "wb") as f:
    while len(frames) < n:
        buf = stream.timeout_pop_buffer(3000000)
        if buf is None:
            break
        if buf.get_status() == Aravis.BufferStatus.SUCCESS:
            data = buf.get_data()
            frames.append({"frame_id": buf.get_frame_id(), "bytes": len(data),
                           "w": buf.get_image_width(), "h": buf.get_image_height(),
                           "pf": buf.get_image_pixel_format()})
            f.write(data)
        stream.push_buffer(buf)
cam.stop_acquisition()
r["frames"] = frames
print(json.dumps(r))
'''


@pytest.fixture
def arv_cam(request):
    opts = getattr(request, "param", {"model": "thermal"})
    dev = make(**opts)
    dev.keep_frames = 64
    for _ in range(20):
        ip = f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"
        try:
            srv = GigEVisionServer(dev, ip, 3956, link_MBps=0).start()
            break
        except PortInUseError:
            continue
    else:
        pytest.skip("no free 127.x.y.z:3956 for the simulator")
    yield ip, dev, srv
    srv.stop()


def _run_probe(tmp_path: Path, ip: str, n: int, extra: dict | None = None) -> tuple[dict, bytes]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    raw = tmp_path / "frames.bin"
    args = [SYSTEM_PY, str(script), ip, str(n), str(raw)] + ([json.dumps(extra)] if extra else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=40)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), raw.read_bytes()


def test_aravis_finds_reads_writes_and_streams_thermal(arv_cam, tmp_path):
    ip, dev, srv = arv_cam
    res, raw = _run_probe(tmp_path, ip, 5, {"ObjectEmissivity": 0.96, "TemperatureLinearMode": "On"})
    assert (res["vendor"], res["model"]) == ("medacq", dev.model.model_name)
    assert (res["width"], res["height"], res["pixel_format"]) == (640, 480, "Mono16")
    assert res["payload"] == 640 * 480 * 2
    assert res["gain"] == pytest.approx(6.5) and dev.model.gain_db == pytest.approx(6.5)
    assert res["frame_rate"] == pytest.approx(20.0) and dev.model.frame_rate_hz == pytest.approx(20.0)
    assert res["ObjectEmissivity"] == pytest.approx(0.96) and dev.model.emissivity == pytest.approx(0.96)
    assert res["TemperatureLinearMode"] == "On" and dev.model.temperature_linear == 1
    assert len(res["frames"]) == 5
    size = 640 * 480 * 2
    for i, fr in enumerate(res["frames"]):
        assert (fr["w"], fr["h"], fr["pf"], fr["bytes"]) == (640, 480, 0x01100007, size)
        idx = dev.sent_blocks[fr["frame_id"]]
        got = np.frombuffer(raw[i * size:(i + 1) * size], "<u2").reshape(480, 640)
        assert np.array_equal(got, dev.frames[idx]), f"Aravis frame {fr['frame_id']} differs"
    # temperature-linear mode: counts = K x 100 around the black body (35 C → 30815)
    y0, x0, y1, x1 = dev.model.rois["blackbody"]
    assert abs(float(np.median(got[y0:y1, x0:x1])) / 100 - 273.15 - 35.0) < 0.3


@pytest.mark.parametrize("arv_cam", [{"model": "endoscope", "width": 640, "height": 480, "loop_frames": 4}],
                         indirect=True)
def test_aravis_streams_bayer_frames_equal_with_packet_loss(arv_cam, tmp_path):
    ip, dev, srv = arv_cam
    srv.call(dev.drop, 6)  # the first frame loses packets; Aravis's resend requests recover them
    res, raw = _run_probe(tmp_path, ip, 4)
    assert res["pixel_format"] == "BayerRG8" and len(res["frames"]) == 4
    size = 640 * 480
    for i, fr in enumerate(res["frames"]):
        got = np.frombuffer(raw[i * size:(i + 1) * size], np.uint8).reshape(480, 640)
        assert np.array_equal(got, dev.frames[dev.sent_blocks[fr["frame_id"]]])
    assert dev.counters["dropped_packets"] == 6 and dev.counters["resent_packets"] >= 6


def test_arv_camera_test_runs_against_the_simulator(arv_cam):
    exe = shutil.which("arv-camera-test-0.8")
    if exe is None:
        pytest.skip("arv-camera-test-0.8 not installed (apt-get install aravis-tools)")
    ip, dev, srv = arv_cam
    try:
        r = subprocess.run([exe, "-n", ip, "-f", "10"], capture_output=True, text=True, timeout=4)
        out = r.stdout
    except subprocess.TimeoutExpired as exc:  # it runs until stopped
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    assert dev.counters["frames"] >= 5, out[-2000:]
    assert sys.platform.startswith("linux")
