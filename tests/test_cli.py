"""CLI: errors for a person (one line, non-zero exit), and `medacq up` end to end."""

from __future__ import annotations

import socket
import subprocess
import time

import numpy as np
import pytest

from medacq.daemon.common.config import dump_config

from conftest import free_port, medacq_cmd, run_medacq


def _one_line(stderr: str) -> str:
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    assert "Traceback" not in stderr
    return lines[-1]


def test_check_config_ok_and_bad(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(dump_config({"device": [{"name": "s0", "kind": "synthetic", "address": "/dev/ttyUSB0"}]}))
    r = run_medacq("check-config", str(good))
    assert r.returncode == 0 and "OK" in r.stdout and "s0 (synthetic" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[device]]\nname = "s0"\nkind = "synthetic"\naddress = "x"\n[device.settings]\nrate_hz = 0\n')
    r = run_medacq("check-config", str(bad))
    assert r.returncode == 2
    assert "device[0].settings.rate_hz" in r.stderr and str(bad) in r.stderr and "Traceback" not in r.stderr


def test_ctl_without_daemon_is_one_clear_line():
    r = run_medacq("ctl", "status", "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert r.returncode == 3
    assert "no medacq daemon answers" in _one_line(r.stderr)


def test_sim_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_medacq("sim", "synthetic", "--tcp", f"127.0.0.1:{port}", "--for", "1")
    assert r.returncode == 1 and "already in use" in _one_line(r.stderr)


def test_sim_off_loopback_needs_allow_remote():
    r = run_medacq("sim", "synthetic", "--tcp", f"0.0.0.0:{free_port()}", "--for", "1")
    line = _one_line(r.stderr)
    assert r.returncode == 2 and "refusing to serve a simulated device on 0.0.0.0" in line and "--allow-remote" in line


def test_unknown_simulator_and_bad_option():
    r = run_medacq("sim", "toaster", "--for", "1")
    assert r.returncode == 2 and "unknown simulator" in _one_line(r.stderr)
    r = run_medacq("sim", "synthetic", "rate_hz=-3", "--for", "1")
    assert r.returncode == 2 and "rate_hz" in r.stderr and "Traceback" not in r.stderr


def test_daemon_port_in_use(tmp_path, endpoints):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "rig.toml"
        cfg.write_text(dump_config({"daemon": {"data_endpoint": f"tcp://127.0.0.1:{port}",
                                               "control_endpoint": endpoints["daemon"]["control_endpoint"]}}))
        r = run_medacq("run", "--config", str(cfg), "--for", "1")
    assert r.returncode == 1 and "already in use" in _one_line(r.stderr)


def test_missing_device_path_is_reported_and_daemon_keeps_running(tmp_path, endpoints):
    cfg = tmp_path / "rig.toml"
    cfg.write_text(dump_config({**endpoints, "device": [
        {"name": "gone", "kind": "synthetic", "address": str(tmp_path / "ttyUSB9")}]}))
    p = subprocess.Popen(medacq_cmd("run", "--config", str(cfg), "--for", "8"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        import time

        time.sleep(1.5)
        r = run_medacq("ctl", "status", "--config", str(cfg))
        assert r.returncode == 0, r.stderr
        import json

        st = json.loads(r.stdout)["streams"]["gone"]
        assert st["state"] in ("reconnecting", "connecting") and "does not exist" in st["last_error"]
        assert st["connect_failures"] >= 1 and st["reconnects"] == 0
    finally:
        p.terminate()
        p.wait(5)


def test_up_runs_the_whole_rig(tmp_path):
    """``medacq up`` starts every part at once; its final table shows every raw stream acquiring
    and every recon stream reconstructing with nothing dropped: the stage's start-up (its preload
    importing scipy.signal while the biosignal streams' first frames wait) costs no gap (with a
    64-frame queue bound each biosignal stream lost 17-48 frames at every start)."""
    base = free_port()
    r = run_medacq("up", "--for", "10", "--base-port", str(base), timeout=120, env={"CI": "true"})
    assert r.returncode == 0, r.stderr[-2000:]
    final = [l for l in r.stdout.splitlines() if l.startswith("final: ")]
    assert any("stream=raw/synth0" in l and "state=acquiring" in l for l in final), r.stdout
    assert any("recon/synth0" in l for l in final), r.stdout
    recon = {l.split("stream=")[1].split()[0].rstrip(","): l for l in final if "stream=recon/" in l
             or "stream=markers/" in l}
    for topic in ("recon/eeg0", "markers/ekg0.rpeak", "recon/meg0", "recon/ct0", "recon/us0"):
        assert topic in recon, r.stdout
    for topic in ("recon/eeg0", "markers/ekg0.rpeak", "recon/meg0"):  # the streams whose first frames waited
        fps = recon[topic].split("frames/s=")[1].split()[0]
        assert fps != "-" and float(fps) > 20, recon[topic]  # it reconstructed (41.7 and 50 frames/s)
    dropped = [l for l in recon.values() if "drops/gaps=0 " not in l]
    assert dropped == [], dropped


def test_record_to_an_existing_file_exits_2_with_one_line(tmp_path):
    """Regression: the recorder imported the CLI back, so under ``python -m`` a second copy of the
    CLI module raised a CliError that main() did not catch ("unexpected error", exit 1)."""
    out = tmp_path / "taken.h5"
    out.write_bytes(b"keep me")
    r = run_medacq("record", "--topics", "raw/", "--out", str(out), "--base-port", str(free_port()))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"medacq record: {out} exists; choose a new file"
    assert out.read_bytes() == b"keep me"


def test_no_module_imports_the_cli():
    """The CLI sits on top: loading any service module never loads ``medacq.daemon.cli``."""
    import sys as _sys

    code = ("import sys, medacq.daemon.acquisition.service, medacq.daemon.recon.stage, "
            "medacq.daemon.recording.recorder, medacq.daemon.bridges.lsl, medacq.client; "
            "print(sorted(m for m in sys.modules if m == 'medacq.daemon.cli' or m.startswith('medacq.daemon.cli.')))")
    r = subprocess.run([_sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_record_check_of_an_empty_or_foreign_file_is_one_line(tmp_path):
    """A recorder killed before its header commit leaves an empty file; --check says so, no traceback."""
    empty = tmp_path / "empty.h5"
    empty.touch()
    r = run_medacq("record", "--check", str(empty))
    assert r.returncode == 1 and "is empty" in _one_line(r.stderr) and "nothing was recorded" in r.stderr
    foreign = tmp_path / "notes.h5"
    foreign.write_text("not HDF5")
    r = run_medacq("record", "--check", str(foreign))
    assert r.returncode == 1 and "not a readable recording" in _one_line(r.stderr)


def test_tail_rate_counts_intervals_over_a_sliding_window():
    from medacq.daemon.cli.control import TailRate

    r = TailRate(window_s=2.0)
    assert r.fps is None and r.mbps is None
    r.add(10.0, 1000)
    assert r.fps is None  # one arrival: no rate yet (this used to print 1e9 frames/s)
    r.add(10.0, 1000)
    assert r.fps is None  # two at the same instant: still none
    for i in range(1, 151):  # 3 s at 50 frames/s of 1000 bytes
        r.add(10.0 + i * 0.02, 1000)
    assert r.fps == pytest.approx(50.0, rel=1e-6) and r.mbps == pytest.approx(0.05, rel=1e-6)
    t = 10.0 + 150 * 0.02
    for i in range(1, 31):  # then 3 s at 10 frames/s of 4000 bytes: the window forgets the 50/s
        r.add(t + i * 0.1, 4000)
    assert r.fps == pytest.approx(10.0, rel=1e-6) and r.mbps == pytest.approx(0.04, rel=1e-6)


def test_tail_prints_rates_from_the_second_frame_on():
    """``medacq tail`` against a publisher of 50 frames/s: the first frame of a topic shows no
    rate (``-``), the later ones about 50 frames/s and its MB/s."""
    import zmq

    from medacq.protocols.stream import HeaderTemplate

    port = free_port()
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{port}")
    tpl = HeaderTemplate("t0", "5d1d4a8e-0d3e-4c1a-9a53-6d1b8e1f0a21", "<f4", [4, 100], ["channel", "sample"], "")
    payload = np.zeros((4, 100), "<f4").tobytes()
    p = subprocess.Popen(medacq_cmd("tail", "raw/", "--endpoint", f"tcp://127.0.0.1:{port}", "--count", "40"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seq, t = 0, time.monotonic()
        while p.poll() is None and seq < 2000:
            pub.send_multipart([b"raw/t0", tpl.frame(seq, time.time_ns(), time.monotonic_ns()), payload])
            seq += 1
            t += 0.02
            time.sleep(max(0.0, t - time.monotonic()))
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
        pub.close(0)
    lines = [l for l in out.splitlines() if " frame seq=" in l]
    assert len(lines) == 40, (out, err)
    fps = [l.split(" fps")[0].split()[-1] for l in lines]
    mbps = [l.split(" MB/s")[0].split()[-1] for l in lines]
    assert fps[0] == "-" and mbps[0] == "-", lines[0]
    later = [float(v) for v in fps[20:]]  # from 0.4 s of arrivals on (a loaded machine may bunch the first few)
    assert all(30 < v < 80 for v in later), later
    assert all(float(v) == pytest.approx(float(f) * 1600 / 1e6, abs=0.006) for v, f in zip(mbps[20:], fps[20:]))


def test_status_table_counts_reconstructed_frames_over_seconds_of_polls():
    """The ``medacq up`` table's recon frames/s: over the polls of the last 5 s, per stream from
    the first poll that saw it, so a 4 frames/s stream polled every ~1 s reads 4.0 (it read 4.7
    from one poll interval with one frame more in it), and a new stream has no rate until its
    second poll."""
    from medacq.daemon.cli.status_view import StatusView, status_rows
    from medacq.daemon.common.config import parse_config

    v = StatusView(parse_config({}), interactive=False)

    def poll(t: float, **done: int) -> None:
        v._rates({"streams": {n: {"frames_done": d} for n, d in done.items()}}, now=t)

    for i in range(8):  # 4 frames/s, polls 1.1 s apart; frames land unevenly between polls
        poll(100.0 + 1.1 * i, a=int(4 * 1.1 * i + (0.9 if i % 2 else 0)))
    assert v.recon_fps["a"] == pytest.approx(4.0, abs=0.25)
    poll(108.9, a=36, b=10)
    assert v.recon_fps["a"] == pytest.approx(4.0, abs=0.25) and "b" not in v.recon_fps
    poll(109.9, a=40, b=30)
    assert v.recon_fps["b"] == pytest.approx(20.0)
    rows = status_rows(None, {"streams": {"b": {"outputs_streams": ["recon/b"], "reconstructor": "R", "dropped": 0,
                                                "latency_us_p50": None, "latency_us_p99": None, "errors": 0,
                                                "last_error": None}}}, v.recon_fps)
    assert rows[0][:3] == ["recon/b", "R", "20.0"]
