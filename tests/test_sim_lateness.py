"""A paced simulator records how late its due output left (``SimulatorServer.late_s``), which
``bench rig`` reports as ``simulator_late_ms``: the part of a frame's age a real device would not add."""

from __future__ import annotations

import socket
import time

from medacq.simulators._interface import DeviceInterface, FaultNotSupported
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.rig import SimulatedRig


class _Ticker(DeviceInterface):
    """Output due every ``period_s``; each poll works ``work_s`` and owes the next period's output
    whether or not it is already past (a simulator slower than its device falls behind)."""

    def __init__(self, period_s: float, work_s: float) -> None:
        self.period_s, self.work_s = period_s, work_s
        self.due: float | None = None
        self.polls = 0

    def on_connect(self, t: float) -> bytes:
        self.due = t + self.period_s
        return b""

    def on_bytes(self, data: bytes, t: float) -> bytes:
        return b""

    def poll(self, t: float) -> bytes:
        time.sleep(self.work_s)
        assert self.due is not None
        self.due += self.period_s
        self.polls += 1
        return b"x"

    def next_deadline(self) -> float | None:
        return self.due

    def drop(self, n: int) -> None:
        raise FaultNotSupported("no frames")

    def inject_error(self, message: str = "device fault", n: int = 1, code: int | None = None) -> None:
        raise FaultNotSupported("no commands")


def _run(iface: _Ticker, polls: int) -> list[float]:
    srv = SimulatorServer(iface, "tcp", paced=True).start()
    try:
        with socket.create_connection((srv.host, srv.port), timeout=5) as c:
            deadline = time.monotonic() + 20
            while iface.polls < polls and time.monotonic() < deadline:
                c.settimeout(0.5)
                try:
                    c.recv(4096)
                except socket.timeout:
                    pass
        return list(srv.late_s)
    finally:
        srv.stop()


def test_a_simulator_slower_than_its_device_is_seen_late_by_as_much():
    late = _run(_Ticker(period_s=0.005, work_s=0.020), polls=20)
    assert len(late) >= 20
    # each poll adds at least work - period = 15 ms to the backlog: the 20th is >= 19 x 15 ms late
    assert all(b >= a for a, b in zip(late, late[1:])), late
    assert late[19] >= 19 * 0.015


def test_an_idle_simulator_is_on_time():
    late = _run(_Ticker(period_s=0.010, work_s=0.0), polls=30)
    assert len(late) >= 30
    assert all(v >= 0 for v in late)
    late.sort()
    assert late[len(late) // 2] < 0.05  # the thread's wake-up only


def test_rig_lateness_summary_and_reset():
    rig = SimulatedRig([], paced=True)
    srv = SimulatorServer(_Ticker(0.01, 0.0), "tcp", paced=True)
    rig.servers["t0"] = srv
    try:
        srv.late_s.extend([0.001 * i for i in range(1, 101)])  # 1..100 ms
        got = rig.lateness_ms(reset=True)
        assert got == {"t0": {"n": 100, "p50": 51.0, "p99": 100.0, "max": 100.0}}
        assert rig.lateness_ms() == {}  # nothing since the reset
    finally:
        rig.stop()
