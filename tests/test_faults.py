"""The simulators' fault side door, driven from the CLI, and the daemon surviving it."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from medacq.client import ControlClient, Subscriber
from medacq.daemon.common.config import parse_config
from medacq.simulators.faults import FaultServer
from medacq.daemon.acquisition.service import AcquisitionDaemon
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.synthetic import SynthConfig, SynthInterface, synth_frame

from conftest import free_port, run_medacq, wait_for


def test_faults_from_the_cli(endpoints):
    settings = {"shape": [4, 16], "rate_hz": 200.0, "seed": 3}
    with SimulatorServer(SynthInterface(), "pty", paced=True, name="syn0") as sim:
        door = f"tcp://127.0.0.1:{free_port()}"
        fs = FaultServer({"syn0": sim}, door).start()
        cfg = parse_config({**endpoints, "device": [{"name": "syn0", "kind": "synthetic", "address": sim.address,
                                                     "settings": settings}]})
        d = AcquisitionDaemon(cfg).start()
        try:
            with Subscriber(cfg.daemon.data_endpoint, "raw/") as sub, ControlClient(cfg.daemon.control_endpoint) as c:
                list(sub.frames(timeout=5, max_frames=10))
                # garbage burst and corrupted bytes: frames resume, the loss is counted
                for fault, kv in (("garbage", "nbytes=5000"), ("corrupt", "nbytes=300"), ("drop", "n=4")):
                    r = run_medacq("fault", "syn0", fault, kv, "--endpoint", door)
                    assert r.returncode == 0, r.stderr
                    assert json.loads(r.stdout)["applied"] == fault
                # read on (through the backlog of the CLI calls) until the announced drop shows up
                frames = []
                for h, a in sub.frames(timeout=5, max_frames=3000):
                    frames.append((h, a))
                    if any(g.announced and g.count >= 4 for g in sub.gaps) and len(frames) > 50:
                        break
                for h, a in frames:
                    np.testing.assert_array_equal(a, synth_frame(SynthConfig(**settings), h["seq"]))
                st = c.request("status")["streams"]["syn0"]
                assert st["driver"]["garbage_bytes"] >= 5000
                assert any(g.announced and g.count >= 4 for g in sub.gaps)
                # pull the cable: the daemon reconnects, a new series starts
                r = run_medacq("fault", "syn0", "pull_cable", "refuse_s=0.3", "--endpoint", door)
                assert r.returncode == 0
                wait_for(lambda: c.request("status")["streams"]["syn0"]["reconnects"] >= 1, 10)
                wait_for(lambda: c.request("status")["streams"]["syn0"]["state"] == "acquiring", 10)
                r = run_medacq("fault", "status", "--endpoint", door)
                assert json.loads(r.stdout)["syn0"]["cable_pulls"] == 1
                r = run_medacq("fault", "syn0", "explode", "--endpoint", door)
                assert r.returncode == 1 and "unknown fault" in r.stderr
                r = run_medacq("fault", "nosuch", "stall", "seconds=1", "--endpoint", door)
                assert r.returncode == 1 and "no simulator named" in r.stderr
        finally:
            d.shutdown()
            fs.stop()


def test_control_flood_and_device_errors(endpoints):
    """Thousands of requests, malformed and valid, from several clients at once: every one is
    answered, acquisition never stalls; a device error code is reported and survived."""
    import zmq

    settings = {"shape": [4, 16], "rate_hz": 200.0, "seed": 3}
    with SimulatorServer(SynthInterface(), "tcp", paced=True) as sim:
        cfg = parse_config({**endpoints, "device": [{"name": "syn0", "kind": "synthetic", "address": sim.address,
                                                     "settings": settings}]})
        d = AcquisitionDaemon(cfg).start()
        try:
            with Subscriber(cfg.daemon.data_endpoint, "raw/") as sub:
                list(sub.frames(timeout=5, max_frames=5))
                ctx = zmq.Context.instance()
                clients = [ctx.socket(zmq.DEALER) for _ in range(4)]
                bodies = [b"{", b'{"cmd":"status"}', b'{"cmd":"nope"}', b"\xff\xfe", b'{"cmd":"describe","device":1}',
                          b'{"cmd":"ping"}', b"[]", b'{"cmd":"configure","device":"syn0","settings":{"seed":"x"}}']
                n = 0
                for c in clients:
                    c.setsockopt(zmq.LINGER, 0)
                    c.connect(cfg.daemon.control_endpoint)
                for i in range(2000):  # fire without waiting
                    clients[i % 4].send_multipart([b"", bodies[i % len(bodies)]])
                    n += 1
                replies = 0
                deadline = time.monotonic() + 30
                while replies < n and time.monotonic() < deadline:
                    for c in clients:
                        while c.poll(0):
                            body = c.recv_multipart()[-1]
                            assert b'"ok"' in body
                            replies += 1
                    time.sleep(0.005)
                for c in clients:
                    c.close(0)
                assert replies == n
                frames = list(sub.frames(timeout=5, max_frames=200))
                assert len(frames) == 200 and sub.gaps == []
                # a device error code: the device refuses the next commands
                sim.call(sim.interface.inject_error, "overtemperature", 3)  # STOP, STOP (both tolerated), *IDN?
                with ControlClient(cfg.daemon.control_endpoint, timeout=15) as c:
                    try:
                        c.request("configure", device="syn0", settings={"seed": 4})
                        refused = None
                    except Exception as exc:  # noqa: BLE001
                        refused = exc
                    assert refused is not None and "overtemperature" in str(refused)
                    wait_for(lambda: c.request("status")["streams"]["syn0"]["state"] == "acquiring", 15)
                    assert c.request("status")["control"]["errors"] >= 1
        finally:
            d.shutdown()


@pytest.mark.parametrize("name, expect", [("eeg0", "overtemperature"), ("ekg0", "overtemperature"),
                                          ("eit0", "0x81"), ("us0", "overtemperature"),
                                          ("xr0", "overtemperature")])
def test_device_error_codes_from_every_family(name, expect):
    """The side door makes a device answer with its own error reply; the daemon reports it as a
    device_error, keeps the old settings and recovers once the device behaves again."""
    from medacq.client import RequestFailed
    from medacq.simulators.faults import apply_fault
    from medacq.simulators.rig import DEFAULT_RIG, SimulatedRig

    rig = SimulatedRig([e for e in DEFAULT_RIG if e.name == name]).start()
    try:
        cfg = parse_config(rig.config(free_port()))
        d = AcquisitionDaemon(cfg).start()
        try:
            with ControlClient(cfg.daemon.control_endpoint, timeout=30) as c:
                state = lambda: c.request("status")["streams"][name]["state"]  # noqa: E731
                wait_for(lambda: state() == "acquiring", 60)
                apply_fault(rig.servers[name], "device_error", {"message": "overtemperature", "n": 100})
                with pytest.raises(RequestFailed) as exc:
                    c.request("configure", device=name, settings={})
                assert exc.value.code == "device_error" and expect in str(exc.value)
                apply_fault(rig.servers[name], "device_error", {"message": "", "n": 0})
                wait_for(lambda: state() == "acquiring", 60)
                assert c.request("status")["streams"][name]["last_error"]
        finally:
            d.shutdown()
    finally:
        rig.stop()


# ------------------------------------------------------------- the one typed fault interface
def _simulator_classes() -> list[type]:
    """The device class of every registered simulator kind: its byte-stream ``DeviceInterface`` (pty,
    TCP), or, for a device on another transport (the GigE Vision camera on UDP), its ``DeviceFaults``."""
    import importlib

    from medacq.simulators._interface import DeviceFaults
    from medacq.simulators.registry import SIMULATORS

    out = []
    for target in SIMULATORS.values():
        mod = importlib.import_module(target.partition(":")[0])
        out += [c for c in vars(mod).values()
                if isinstance(c, type) and issubclass(c, DeviceFaults) and c.__module__ == mod.__name__]
    return out


def test_every_simulator_implements_the_one_fault_interface():
    import inspect

    from medacq.simulators._interface import DeviceFaults
    from medacq.simulators.registry import SIMULATORS

    classes = _simulator_classes()
    assert len(classes) == len(SIMULATORS)  # one device interface class per registered kind
    for cls in classes:
        assert issubclass(cls, DeviceFaults) and not inspect.isabstract(cls), cls
        for hook in ("drop", "inject_error"):  # one signature, the interface's, everywhere
            assert inspect.signature(getattr(cls, hook)) == inspect.signature(getattr(DeviceFaults, hook)), (cls, hook)


def test_faults_a_device_cannot_show_are_refused_with_the_reason():
    from medacq.simulators.faults import apply_fault
    from medacq.simulators.openeit import OpenEITSimulator
    from medacq.simulators.quspin import QuSpinInterface

    # servers that are never started: the side door works on the interface alone
    servers = {"openeit": SimulatorServer(OpenEITSimulator(), "tcp"), "quspin": SimulatorServer(QuSpinInterface(), "tcp"),
               "synthetic": SimulatorServer(SynthInterface(), "tcp")}
    try:
        with pytest.raises(ValueError, match="no frame counter"):
            apply_fault(servers["openeit"], "drop", {"n": 2})
        with pytest.raises(ValueError, match="no error reply"):
            apply_fault(servers["openeit"], "device_error", {"message": "x"})
        with pytest.raises(ValueError, match="no error reply"):
            apply_fault(servers["quspin"], "device_error", {})
        apply_fault(servers["quspin"], "drop", {"n": 2})  # it has one: samples never sent
        assert servers["quspin"].interface._drops == [(0, 2)]
        syn = servers["synthetic"]
        with pytest.raises(ValueError, match="takes message, n, code; not mesage"):
            apply_fault(syn, "device_error", {"mesage": "overtemperature"})
        apply_fault(syn, "device_error", {"message": "overtemperature", "n": 2, "code": "0x81"})
        assert syn.interface._injected == (2, "overtemperature", 0x81)
        apply_fault(syn, "device_error", {"n": 0})  # withdrawn
        assert syn.interface.take_injected_error() is None
    finally:
        for s in servers.values():
            s.stop()


def _drop_case(kind: str):
    """(server, driver) for the families whose frames carry a device counter."""
    from medacq.drivers.flatpanel import FlatPanelDriver, FlatPanelSettings
    from medacq.drivers.synthetic import SyntheticDriver, SyntheticSettings
    from medacq.drivers.ultrasound import UltrasoundDriver, UltrasoundSettings
    from medacq.simulators.registry import make_simulator

    if kind == "synthetic":  # paced: an unpaced one would run ~10 000 frames ahead of the reader
        srv = SimulatorServer(SynthInterface(), "pty", paced=True).start()
        return srv, SyntheticDriver("syn0", srv.address, SyntheticSettings(shape=[2, 8], rate_hz=200.0))
    if kind == "flatpanel":
        srv = SimulatorServer(make_simulator("flatpanel", seed=3), "tcp", paced=False).start()
        return srv, FlatPanelDriver("xr0", f"TCPIP::{srv.host}::{srv.port}::SOCKET",
                                    FlatPanelSettings(mode="RAD", binning=4, exposure_s=0.02))
    srv = SimulatorServer(make_simulator("us", angles=1, samples=256, speckle_density_per_mm2=2.0, cache=False),
                          "tcp", paced=False).start()
    return srv, UltrasoundDriver("us0", srv.tcp_address, UltrasoundSettings(angles=1, samples=256))


@pytest.mark.parametrize("kind", ["synthetic", "flatpanel", "us"])
def test_device_side_drop_is_announced_as_a_gap_of_exactly_that_many_frames(kind):
    from medacq.drivers._base import Frame, Gap
    from medacq.simulators.faults import apply_fault

    srv, d = _drop_case(kind)
    try:
        d.open()
        d.start()
        items: list = []
        end = time.monotonic() + 30
        while sum(type(i) is Frame for i in items) < 5 and time.monotonic() < end:
            items += d.read(0.2)
        apply_fault(srv, "drop", {"n": 3})
        seen_gap, after = False, 0  # frames read since the gap (an unpaced simulator runs ahead)
        while after < 5 and time.monotonic() < end:
            for i in d.read(0.2):
                items.append(i)
                if isinstance(i, Gap):
                    seen_gap = True
                elif seen_gap:
                    after += 1
        d.stop()
    finally:
        d.close()
        srv.stop()
    gaps = [i for i in items if isinstance(i, Gap)]
    assert after >= 5
    assert [g.lost_frames for g in gaps] == [3], gaps
    truth = srv.interface.truth()
    lost = {"synthetic": lambda: truth["dropped"], "flatpanel": lambda: truth["frames_dropped"],
            "us": lambda: srv.interface.faulted_seqs}[kind]()
    assert len(lost) == 3 and lost == list(range(lost[0], lost[0] + 3))
