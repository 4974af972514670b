"""A closed driver is freed when its last reference goes, not at the next cyclic collection.

The acquisition worker builds a new driver at every reconnect. A reference cycle through a driver
(the ultrasound driver's codec held a bound method of the driver) kept each closed one -- its
8 MiB receive buffer and pooled RF bodies -- until Python's full collection ran: under repeated
cable pulls on ``us0`` the daemon's RSS rose by ~25 MB per 10 reconnects and fell back only at a
full collection. These tests run with the cyclic collector off, so only reference counting frees.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest

from medacq.drivers._base import ConnectionLost
from medacq.drivers.registry import DRIVERS, driver_class
from medacq.drivers.ultrasound import UltrasoundDriver, UltrasoundSettings
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.faults import apply_fault
from medacq.simulators.registry import make_simulator


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _alive(cls: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is cls)


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_a_constructed_driver_is_freed_by_reference_counting(kind: str, no_cyclic_gc: None) -> None:
    cls = driver_class(kind)
    before = _alive(cls)
    d = cls(f"{kind}0", "tcp://127.0.0.1:1", cls.Settings())
    assert _alive(cls) == before + 1
    del d
    assert _alive(cls) == before


def test_ultrasound_drivers_closed_after_streaming_and_after_a_pulled_cable_are_freed(no_cyclic_gc: None) -> None:
    iface = make_simulator("us", angles=1, samples=1024, prf_hz=60.0, cache=False, seed=5)
    s = UltrasoundSettings(angles=1, samples=1024, prf_hz=60.0)
    lost = 0
    with SimulatorServer(iface, "tcp", paced=True) as sim:
        for pull in (False, True, False, True):
            d = UltrasoundDriver("us0", sim.tcp_address, s)
            frames = 0
            try:
                d.open()
                d.start()
                end = time.monotonic() + 5.0
                while frames < 2 and time.monotonic() < end:
                    frames += len(d.read(0.1))
                if pull:
                    apply_fault(sim, "pull_cable", {"refuse_s": 0.3})
                    end = time.monotonic() + 5.0
                    while time.monotonic() < end:
                        d.read(0.1)
            except ConnectionLost:
                lost += 1
                time.sleep(0.6)  # the cable stays pulled 0.3 s (the worker backs off likewise)
            finally:
                d.close()
            assert frames >= 2
            del d
            assert _alive(UltrasoundDriver) == 0
    assert lost == 2  # the pulled cables were seen, and those drivers went too
