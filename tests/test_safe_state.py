"""Safe state: X-ray source off, ultrasound transmit stopped, EIT injection stopped — fast.

Every family with an output runs against its simulator over the real transport (VISA socket,
OpenIGTLink TCP, pty) and a real daemon on real ZeroMQ sockets. The time asserted is from the
moment the ``safe_state`` request is sent to the moment the *simulator's own state* shows the
output off (polled under the simulator's lock), not the reply. Then: the ``safety/<device>``
message and the audit record, the device staying stopped until ``start``, the biosignal no-op,
and the automatic triggers of ``[device.safety]``: operator heartbeats missing on the control
socket, a device fault, the reconstruction stage silent.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import zmq

from medacq.client import ControlClient, Subscriber
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.daemon.common.config import ConfigError, parse_config
from medacq.drivers import registry
from medacq.drivers._base import NOTHING_TO_MAKE_SAFE, Driver
from medacq.drivers.registry import driver_class
from medacq.drivers.sciospec import SciospecDriver
from medacq.protocols.control import SafeStateRequest, parse_request
from medacq.protocols.stream import MessageKind, StreamHeader, decode_message, encode_header
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.eit_phantom import ThoraxPhantom
from medacq.simulators.flatpanel import make as make_flatpanel
from medacq.simulators.openeit import OpenEITSimulator
from medacq.simulators.registry import make_simulator
from medacq.simulators.sciospec import SciospecSimulator

from conftest import run_medacq, wait_for

BOUND_S = 0.2  # request sent -> the simulator's own state shows the output off
US_SIM = {"angles": 1, "samples": 256, "speckle_density_per_mm2": 2.0, "cache": False, "seed": 4, "prf_hz": 50.0}


def _phantom(n_el: int = 16) -> ThoraxPhantom:
    return ThoraxPhantom(n_el=n_el, seed=5, n_elements=400, snr_db=50.0)


def _visa(srv: SimulatorServer) -> str:
    return f"TCPIP::{srv.host}::{srv.port}::SOCKET"


def _daemon(endpoints: dict, audit: Path, devices: list[dict[str, Any]]) -> AcquisitionDaemon:
    return AcquisitionDaemon(parse_config({**endpoints, "security": {"audit_log": str(audit)}, "device": devices}))


def _streams(c: ControlClient) -> dict[str, Any]:
    return c.request("status")["streams"]


def _audit(path: Path, command: str = "safety") -> list[dict]:
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["command"] == command]


def _safety_messages(sub: Subscriber, until: Callable[[list[dict]], bool], timeout: float = 5.0) -> list[dict]:
    """``safety/...`` headers (decoded and checked by the stream protocol) until ``until`` holds."""
    out: list[dict] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end and not until(out):
        m = sub.recv(timeout=0.2)
        if m is not None and m.topic.startswith("safety/"):
            assert m.array is None and m.header["kind"] == "safety"
            out.append(m.header)
    return out


def _timed_safe(c: ControlClient, sim: SimulatorServer, on: Callable[[], bool], **fields: Any
                ) -> tuple[float, dict[str, Any]]:
    """Send ``safe_state`` on a thread; return (seconds until ``on()`` -- read under the
    simulator's lock -- turned false, the reply)."""
    reply: dict[str, Any] = {}
    t0 = time.perf_counter()
    th = threading.Thread(target=lambda: reply.update(c.request("safe_state", **fields)))
    th.start()
    while sim.call(on):
        if time.perf_counter() - t0 > 5.0:
            break
        time.sleep(0.0005)
    dt = time.perf_counter() - t0
    th.join(10)
    return dt, reply


# -- the contract, without I/O ---------------------------------------------------------------
def test_request_model_config_and_the_biosignal_no_op() -> None:
    req = parse_request(b'{"cmd": "safe_state", "device": "fp0", "reason": "door opened"}')
    assert isinstance(req, SafeStateRequest) and req.device == "fp0" and req.reason == "door opened"
    assert parse_request(b'{"cmd": "safe_state"}').device is None  # every device
    cfg = parse_config({"device": [{"name": "fp0", "kind": "flatpanel", "address": "TCPIP::h::5025::SOCKET",
                                    "safety": {"on_control_silence_s": 5, "on_fault": True,
                                               "on_recon_silence_s": 3}}]})
    s = cfg.device[0].safety
    assert (s.on_control_silence_s, s.on_fault, s.on_recon_silence_s) == (5.0, True, 3.0)
    plain = parse_config({"device": [{"name": "a", "kind": "synthetic", "address": "x"}]}).device[0].safety
    assert (plain.on_control_silence_s, plain.on_fault, plain.on_recon_silence_s) == (None, False, None)
    with pytest.raises(ConfigError, match=r"device\[0\]\.safety\.on_control_silence_s"):
        parse_config({"device": [{"name": "a", "kind": "synthetic", "address": "x",
                                  "safety": {"on_control_silence_s": 0}}]})
    with pytest.raises(ConfigError, match=r"device\[0\]\.safety\.on_fire"):
        parse_config({"device": [{"name": "a", "kind": "synthetic", "address": "x", "safety": {"on_fire": 1}}]})
    # biosignal amplifiers inject nothing: they keep Driver's no-op; the sources override it
    for kind in ("synthetic", "cyton", "hackeeg", "quspin"):
        assert driver_class(kind).enter_safe_state is Driver.enter_safe_state, kind
    for kind in ("flatpanel", "ultrasound", "sciospec", "openeit"):
        assert driver_class(kind).enter_safe_state is not Driver.enter_safe_state, kind
    assert Driver.enter_safe_state(None) == NOTHING_TO_MAKE_SAFE  # type: ignore[arg-type]


# -- each family with an output, against its simulator ------------------------------------------
def test_xray_source_off_and_exposure_aborted_within_the_bound(endpoints, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    with SimulatorServer(make_flatpanel(seed=3), "tcp", paced=True) as srv:
        fp = srv.interface
        d = _daemon(endpoints, audit, [{"name": "fp0", "kind": "flatpanel", "address": _visa(srv),
                                        "settings": {"binning": 4, "exposure_s": 0.03}}]).start()
        try:
            with ControlClient(d.config.daemon.control_endpoint, timeout=10) as c, \
                    Subscriber(d.config.daemon.data_endpoint, "safety/") as sub:
                wait_for(lambda: _streams(c)["fp0"]["frames"] >= 5, 20)
                assert srv.call(lambda: fp.exposing and fp.source_on)
                dt, reply = _timed_safe(c, srv, lambda: fp.exposing or fp.source_on, device="fp0", reason="test")
                assert dt < BOUND_S, f"source still on {dt * 1000:.0f} ms after the request"
                out = reply["devices"]["fp0"]
                assert out["state"] == "safe" and "SOUR:OUTP OFF" in out["detail"], out
                assert srv.call(lambda: (fp.running, fp.source_on)) == (False, False)
                # published: the fast path's message, then the device thread's confirmation
                msgs = _safety_messages(sub, lambda m: any(h["meta"]["verified"] for h in m))
                assert [h["state"] for h in msgs] and all(h["state"] == "safe" for h in msgs), msgs
                final = msgs[-1]
                assert final["stream"] == "fp0" and final["reason"] == "operator: test"
                assert "device reports output 0, acquisition IDLE" in final["meta"]["detail"]
                assert final["t_host_ns"] > 0
                wait_for(lambda: _streams(c)["fp0"]["state"] == "safe", 5)
                rec = [r for r in _audit(audit) if r["request"]["state"] == "safe" and r["request"]["verified"]]
                assert rec and rec[0]["request"]["device"] == "fp0" and rec[0]["ok"] is True
                assert _audit(audit, "safe_state")[0]["outcome"] == "applied"
                # it stays safe: no frames, the source stays off
                frames = _streams(c)["fp0"]["frames"]
                time.sleep(0.5)
                assert _streams(c)["fp0"]["frames"] == frames
                assert srv.call(lambda: fp.source_on) is False
                # leaving is the operator's start (and only that): source on again, published
                c.request("start", device="fp0")
                wait_for(lambda: srv.call(lambda: fp.exposing), 10)
                msgs = _safety_messages(sub, lambda m: any(h["state"] == "normal" for h in m))
                assert msgs[-1]["state"] == "normal" and msgs[-1]["meta"]["trigger"] == "start"
        finally:
            d.shutdown()


def test_xray_safe_state_does_not_wait_for_a_slow_pending_configure(endpoints, tmp_path) -> None:
    """A 1 s exposure is in flight, so the configure (which collects the frame in flight before it
    reopens the panel) is slow; the safe state sent while it is pending still turns the source off
    within the bound, the configure is still applied, and the device stays safe."""
    with SimulatorServer(make_flatpanel(seed=3), "tcp", paced=True) as srv:
        fp = srv.interface
        d = _daemon(endpoints, tmp_path / "audit.jsonl", [{"name": "fp0", "kind": "flatpanel", "address": _visa(srv),
                                                           "settings": {"binning": 4, "exposure_s": 1.0}}]).start()
        ctx = zmq.Context.instance()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            with ControlClient(d.config.daemon.control_endpoint, timeout=10) as c:
                wait_for(lambda: _streams(c)["fp0"]["frames"] >= 1, 20)
                dealer.connect(d.config.daemon.control_endpoint)
                time.sleep(0.15)  # well inside the next 1 s exposure
                assert srv.call(lambda: fp.exposing)
                dealer.send(json.dumps({"id": "cfg", "cmd": "configure", "device": "fp0",
                                        "settings": {"gain": "LOW"}}).encode())
                wait_for(lambda: d.control.in_flight == 1, 2, 0.002)  # the configure is pending
                dt, reply = _timed_safe(c, srv, lambda: fp.exposing or fp.source_on, device="fp0")
                assert dt < BOUND_S, f"source still on {dt * 1000:.0f} ms after the request"
                assert reply["devices"]["fp0"]["state"] == "safe"
                assert dealer.poll(10_000), "the configure was never answered"
                cfg = json.loads(dealer.recv())
                assert cfg["id"] == "cfg" and cfg["ok"], cfg
                assert srv.call(lambda: fp.model.config.gain_mode) == "LOW"  # applied after all
                wait_for(lambda: _streams(c)["fp0"]["state"] == "safe", 5)
                time.sleep(0.3)
                assert srv.call(lambda: (fp.running, fp.source_on)) == (False, False)  # and still safe
                assert c.request("describe", device="fp0")["settings"]["gain"] == "LOW"
        finally:
            dealer.close(0)
            d.shutdown()


def test_ultrasound_transmit_stopped_within_the_bound(endpoints, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    with SimulatorServer(make_simulator("us", **US_SIM), "tcp", paced=True) as srv:
        us = srv.interface
        d = _daemon(endpoints, audit, [{"name": "us0", "kind": "ultrasound", "address": srv.tcp_address,
                                        "settings": {"angles": 1, "samples": 256, "prf_hz": 50.0}}]).start()
        try:
            with ControlClient(d.config.daemon.control_endpoint, timeout=10) as c, \
                    Subscriber(d.config.daemon.data_endpoint, "safety/") as sub:
                wait_for(lambda: _streams(c)["us0"]["frames"] >= 5, 30)  # past the first render
                assert srv.call(lambda: us.transmitting)
                dt, reply = _timed_safe(c, srv, lambda: us.transmitting, device="us0")
                assert dt < BOUND_S, f"still transmitting {dt * 1000:.0f} ms after the request"
                out = reply["devices"]["us0"]
                assert out["state"] == "safe" and out["verified"] and "state=stopped" in out["detail"], out
                assert srv.call(lambda: us.state) == "stopped"  # STOP, not FREEZE: only START resumes
                msgs = _safety_messages(sub, lambda m: bool(m))
                assert msgs[0]["state"] == "safe" and msgs[0]["meta"]["path"] == "worker"
                assert any(r["request"]["device"] == "us0" and r["outcome"] == "safe" for r in _audit(audit))
                time.sleep(0.3)
                assert srv.call(lambda: us.transmitting) is False
                assert _streams(c)["us0"]["state"] == "safe"
        finally:
            d.shutdown()


def test_sciospec_injection_stopped_within_the_bound_and_safe_all(endpoints, tmp_path) -> None:
    """``safe_state`` for every device: the EIT stops injecting; the biosignal device beside it
    has nothing to make safe and keeps acquiring in the same series."""
    audit = tmp_path / "audit.jsonl"
    with SimulatorServer(SciospecSimulator(_phantom(), 16), "pty", paced=True) as eit, \
            SimulatorServer(make_simulator("synthetic", seed=2), "pty", paced=True) as syn:
        sc = eit.interface
        d = _daemon(endpoints, audit, [
            {"name": "eit0", "kind": "sciospec", "address": eit.address, "settings": {"n_el": 16, "fps": 10.0}},
            {"name": "syn0", "kind": "synthetic", "address": syn.address,
             "settings": {"shape": [4, 10], "rate_hz": 50.0}},
        ]).start()
        try:
            with ControlClient(d.config.daemon.control_endpoint, timeout=10) as c, \
                    Subscriber(d.config.daemon.data_endpoint, "safety/") as sub:
                wait_for(lambda: _streams(c)["eit0"]["frames"] >= 3 and _streams(c)["syn0"]["frames"] >= 3, 20)
                assert srv_state(eit, lambda: sc.injecting)
                series = _streams(c)["syn0"]["series"]
                dt, reply = _timed_safe(c, eit, lambda: sc.injecting)  # no device: all of them
                assert dt < BOUND_S, f"still injecting {dt * 1000:.0f} ms after the request"
                devs = reply["devices"]
                assert devs["eit0"]["state"] == "safe" and "acknowledged" in devs["eit0"]["detail"]
                assert devs["syn0"]["state"] == "not_applicable"
                assert devs["syn0"]["detail"].startswith(NOTHING_TO_MAKE_SAFE)
                msgs = _safety_messages(sub, lambda m: {h["stream"] for h in m} == {"eit0", "syn0"})
                assert {h["stream"]: h["state"] for h in msgs} == {"eit0": "safe", "syn0": "not_applicable"}
                outcomes = {(r["request"]["device"], r["outcome"]) for r in _audit(audit)}
                assert {("eit0", "safe"), ("syn0", "not_applicable")} <= outcomes
                # the amplifier keeps recording, in the same series; the EIT stays stopped
                n = _streams(c)["syn0"]["frames"]
                wait_for(lambda: _streams(c)["syn0"]["frames"] >= n + 10, 5)
                st = _streams(c)
                assert st["syn0"]["series"] == series and st["syn0"]["state"] == "acquiring"
                assert st["eit0"]["state"] == "safe" and not srv_state(eit, lambda: sc.injecting)
        finally:
            d.shutdown()


def srv_state(srv: SimulatorServer, fn: Callable[[], Any]) -> Any:
    return srv.call(fn)


def test_medacq_ctl_safe(endpoints, tmp_path) -> None:
    """``medacq ctl safe DEVICE|all`` sends ``safe_state`` (here to a biosignal-like device: a no-op)."""
    with SimulatorServer(make_simulator("synthetic", seed=2), "pty", paced=True) as syn:
        d = _daemon(endpoints, tmp_path / "audit.jsonl", [{"name": "syn0", "kind": "synthetic", "address": syn.address,
                                                           "settings": {"shape": [4, 10], "rate_hz": 50.0}}]).start()
        try:
            ep = d.config.daemon.control_endpoint
            r = run_medacq("ctl", "safe", "all", "reason=drill", "--endpoint", ep)
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)["devices"]["syn0"]
            assert out["state"] == "not_applicable" and out["reason"] == "operator: drill"
            r = run_medacq("ctl", "safe", "nope", "--endpoint", ep)
            assert r.returncode == 1 and "unknown_device" in r.stderr
            r = run_medacq("ctl", "safe", "--endpoint", ep)
            assert r.returncode == 2 and "medacq ctl safe DEVICE|all" in r.stderr
        finally:
            d.shutdown()


def test_openeit_cannot_stop_injecting_and_says_so(endpoints, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    sim = OpenEITSimulator(fps=20.0, seed=2, phantom_factory=lambda n: _phantom(n))
    with SimulatorServer(sim, "pty", paced=True) as srv:
        d = _daemon(endpoints, audit, [{"name": "oe0", "kind": "openeit", "address": srv.address,
                                        "settings": {"n_el": 16, "fps": 20.0}}]).start()
        try:
            with ControlClient(d.config.daemon.control_endpoint, timeout=10) as c:
                wait_for(lambda: _streams(c)["oe0"]["frames"] >= 3, 20)
                out = c.request("safe_state", device="oe0")["devices"]["oe0"]
                assert out["state"] == "failed" and "no command that stops current injection" in out["detail"]
                assert srv.call(lambda: sim.injecting)  # the truth: it still injects
                n = _streams(c)["oe0"]["frames"]
                wait_for(lambda: _streams(c)["oe0"]["frames"] > n + 3, 5)  # and is still watched
                rec = [r for r in _audit(audit) if r["request"]["device"] == "oe0"]
                assert rec and rec[-1]["ok"] is False and rec[-1]["outcome"] == "failed"
        finally:
            d.shutdown()


#: while set, every HungSciospec read blocks (the device thread is stuck, as in a hung transfer)
HANG = threading.Event()


class HungSciospec(SciospecDriver):
    """Test-only driver: the Sciospec driver whose ``read`` can be made to hang."""

    kind = "hungeit"

    def read(self, timeout: float):
        while HANG.is_set():
            time.sleep(0.01)
        return super().read(timeout)


def test_a_busy_device_thread_gets_requested_and_the_safe_state_still_follows(endpoints, tmp_path,
                                                                             monkeypatch) -> None:
    """The device thread is stuck in a driver call: the reply does not wait for it beyond
    ``safe_reply_s`` (state ``requested``), and the safe state is not withdrawn: it is entered as
    soon as the thread is free again."""
    monkeypatch.setitem(registry.DRIVERS, "hungeit", f"{__name__}:HungSciospec")
    audit = tmp_path / "audit.jsonl"
    with SimulatorServer(SciospecSimulator(_phantom(), 16), "pty", paced=True) as eit:
        sc = eit.interface
        d = _daemon(endpoints, audit, [{"name": "eit0", "kind": "hungeit", "address": eit.address,
                                        "settings": {"n_el": 16, "fps": 10.0}}])
        d.safe_reply_s = 0.5
        d.start()
        try:
            with ControlClient(d.config.daemon.control_endpoint, timeout=10) as c:
                wait_for(lambda: _streams(c)["eit0"]["frames"] >= 2, 20)
                HANG.set()
                time.sleep(0.2)
                t0 = time.monotonic()
                out = c.request("safe_state", device="eit0", reason="hung")["devices"]["eit0"]
                assert 0.5 <= time.monotonic() - t0 < 1.5
                assert out["state"] == "requested" and "busy" in out["detail"] and out["reason"] == "operator: hung"
                assert srv_state(eit, lambda: sc.injecting)  # nothing could be done yet
                HANG.clear()
                wait_for(lambda: not srv_state(eit, lambda: sc.injecting), 2, 0.01)
                wait_for(lambda: _streams(c)["eit0"]["state"] == "safe", 2)
                rec = [r for r in _audit(audit) if r["outcome"] == "safe"]
                assert rec and rec[0]["request"]["reason"] == "operator: hung"
        finally:
            HANG.clear()
            d.shutdown()


# -- automatic triggers ---------------------------------------------------------------------
def test_operator_heartbeat_silence_enters_the_safe_state(endpoints, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    with SimulatorServer(SciospecSimulator(_phantom(), 16), "pty", paced=True) as eit:
        sc = eit.interface
        d = _daemon(endpoints, audit, [{"name": "eit0", "kind": "sciospec", "address": eit.address,
                                        "settings": {"n_el": 16, "fps": 10.0},
                                        "safety": {"on_control_silence_s": 1.0}}]).start()
        try:
            with ControlClient(d.config.daemon.control_endpoint, timeout=10) as c:
                end = time.monotonic() + 2.5  # pings keep it armed, well past the limit
                while time.monotonic() < end:
                    c.request("ping")
                    time.sleep(0.3)
                assert srv_state(eit, lambda: sc.injecting)
                last_ping = time.monotonic()
                c.request("ping")
                # `status` is not a heartbeat (a monitor is not an operator): keep polling it
                wait_for(lambda: _streams(c)["eit0"]["state"] == "safe", 5)
                silent = time.monotonic() - last_ping
                assert 1.0 <= silent < 1.0 + 0.5, silent
                assert not srv_state(eit, lambda: sc.injecting)
                rec = [r for r in _audit(audit) if r["outcome"] == "safe"]
                assert rec and rec[0]["request"]["trigger"] == "control_silence"
                assert "on_control_silence_s = 1" in rec[0]["request"]["reason"]
                # not re-triggered while silent; the operator's start leaves it, a ping re-arms it
                c.request("start", device="eit0")
                wait_for(lambda: srv_state(eit, lambda: sc.injecting), 5)
                time.sleep(0.5)
                assert srv_state(eit, lambda: sc.injecting)
                wait_for(lambda: not srv_state(eit, lambda: sc.injecting), 3)  # silent again for 1 s
        finally:
            d.shutdown()


@pytest.mark.parametrize("on_fault", [False, True])
def test_device_fault_enters_the_safe_state_at_reconnect(endpoints, tmp_path, on_fault: bool) -> None:
    """The panel keeps exposing when the host's connection drops (nothing in it stops the tube):
    with ``on_fault`` the daemon reconnects, makes it safe before anything else and does not
    resume; without, it resumes acquiring."""
    audit = tmp_path / "audit.jsonl"
    with SimulatorServer(make_flatpanel(seed=3), "tcp", paced=True) as srv:
        fp = srv.interface
        d = _daemon(endpoints, audit, [{"name": "fp0", "kind": "flatpanel", "address": _visa(srv),
                                        "settings": {"binning": 4, "exposure_s": 0.03, "timeout_s": 1.0},
                                        "safety": {"on_fault": on_fault}}]).start()
        try:
            with ControlClient(d.config.daemon.control_endpoint, timeout=10) as c, \
                    Subscriber(d.config.daemon.data_endpoint, "safety/") as sub:
                wait_for(lambda: _streams(c)["fp0"]["frames"] >= 5, 20)
                srv.faults.pull_cable(refuse_s=0.5)
                wait_for(lambda: _streams(c)["fp0"]["state"] in ("reconnecting", "connecting"), 5)
                assert srv.call(lambda: fp.exposing)  # the tube does not care that the host is gone
                if on_fault:
                    pending = _safety_messages(sub, lambda m: bool(m))
                    assert pending[0]["state"] == "pending" and pending[0]["meta"]["trigger"] == "fault"
                    wait_for(lambda: _streams(c)["fp0"]["state"] == "safe", 10)
                    assert srv.call(lambda: (fp.exposing, fp.source_on)) == (False, False)
                    st = _streams(c)["fp0"]
                    assert st["reconnects"] >= 1 and st["safety"]["state"] == "safe"
                    rec = [r for r in _audit(audit) if r["outcome"] == "safe"]
                    assert rec and rec[0]["request"]["trigger"] == "fault"
                    assert "device fault while acquiring" in rec[0]["request"]["reason"]
                    time.sleep(0.5)
                    assert _streams(c)["fp0"]["state"] == "safe" and not srv.call(lambda: fp.running)
                else:
                    wait_for(lambda: _streams(c)["fp0"]["reconnects"] >= 1, 10)
                    wait_for(lambda: _streams(c)["fp0"]["state"] == "acquiring", 10)
                    assert srv.call(lambda: fp.exposing)
                    assert not _audit(audit)
        finally:
            d.shutdown()


def test_reconstruction_silence_enters_the_safe_state(endpoints, tmp_path) -> None:
    """The daemon watches ``recon/eit0`` on the stage's data endpoint (the test plays the stage):
    while it speaks nothing happens; when it falls silent for the configured time, the EIT stops."""
    audit = tmp_path / "audit.jsonl"
    ctx = zmq.Context.instance()
    stage = ctx.socket(zmq.PUB)
    stage.setsockopt(zmq.LINGER, 0)
    stage.bind(endpoints["recon"]["data_endpoint"])

    def beat(topic: str = "recon/eit0") -> None:
        h = StreamHeader(stream=topic[len("recon/"):], kind=MessageKind.HEARTBEAT, series="s", seq=0,
                         t_host_ns=time.time_ns(), t_mono_ns=time.monotonic_ns())
        parts = [topic.encode(), encode_header(h)]
        decode_message(parts, topic)  # a valid stream-protocol message
        stage.send_multipart(parts)

    with SimulatorServer(SciospecSimulator(_phantom(), 16), "pty", paced=True) as eit:
        sc = eit.interface
        d = _daemon(endpoints, audit, [{"name": "eit0", "kind": "sciospec", "address": eit.address,
                                        "settings": {"n_el": 16, "fps": 10.0},
                                        "safety": {"on_recon_silence_s": 1.0}}]).start()
        try:
            with ControlClient(d.config.daemon.control_endpoint, timeout=10) as c:
                wait_for(lambda: _streams(c)["eit0"]["state"] == "acquiring", 20)
                end = time.monotonic() + 2.5
                while time.monotonic() < end:
                    beat()
                    time.sleep(0.1)
                assert srv_state(eit, lambda: sc.injecting) and _streams(c)["eit0"]["state"] == "acquiring"
                last = time.monotonic()
                beat()  # the last word of the stage
                while _streams(c)["eit0"]["state"] != "safe":
                    beat("recon/eit0x")  # another stream's topic (same prefix) is not this stage's voice
                    time.sleep(0.05)
                    assert time.monotonic() - last < 3.0, "never entered the safe state"
                assert 1.0 <= time.monotonic() - last < 1.0 + 0.5
                assert not srv_state(eit, lambda: sc.injecting)
                rec = [r for r in _audit(audit) if r["outcome"] == "safe"]
                assert rec and rec[0]["request"]["trigger"] == "recon_silence"
                assert "recon/eit0" in rec[0]["request"]["reason"]
        finally:
            d.shutdown()
            stage.close(0)


def test_a_readers_ping_is_no_operator_heartbeat(endpoints) -> None:
    """``on_control_silence_s`` is a dead-man switch on the *operators*: a reader's ``ping`` (a remote
    clock estimator, a dashboard polling) must not keep it quiet; an operator's ping does, and so does
    any request that acts. Through the control server's real rights check, without a socket."""
    from medacq.protocols.control import encode_request

    cfg = parse_config({"daemon": endpoints["daemon"], "recon": endpoints["recon"],
                        "device": [{"name": "s0", "kind": "synthetic", "address": "synthetic://x", "autostart": False,
                                    "safety": {"on_control_silence_s": 5}}]})
    d = AcquisitionDaemon(cfg)
    ping = encode_request("ping")
    d.control.local_rights = "reader"
    d.last_control = 0.0
    assert json.loads(d.handle_raw(ping))["ok"] is True
    assert d.last_control == 0.0
    d.control.local_rights = "operator"
    assert json.loads(d.handle_raw(ping))["ok"] is True
    assert d.last_control > 0.0
    assert d.control.caller_rights is None  # only set while a handler runs
