"""Shared fixtures and helpers: free ports, endpoints, the CLI, codec drains, unpaced simulators."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medacq.daemon.bench.runner import free_port, free_ports  # noqa: F401 (re-exported to the tests)
from medacq.protocols._sansio import NEED_DATA

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def endpoints() -> dict[str, dict[str, str]]:
    """Four fresh loopback endpoints in the shape of a rig config."""
    p = free_ports(4)
    ep = lambda i: f"tcp://127.0.0.1:{p[i]}"  # noqa: E731
    return {"daemon": {"data_endpoint": ep(0), "control_endpoint": ep(1), "heartbeat_s": 0.2,
                       "descriptor_interval_s": 0.5, "local_operator": True},
            "recon": {"data_endpoint": ep(2), "control_endpoint": ep(3)}}


def medacq_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "medacq.daemon.cli", *args]


def run_medacq(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(medacq_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


@pytest.fixture
def artifacts() -> Iterator[Path]:
    ARTIFACTS.mkdir(exist_ok=True)
    yield ARTIFACTS


# -- sans-I/O helpers ---------------------------------------------------------------------
def drain(codec) -> list:
    """Every event the codec has ready (until NEED_DATA)."""
    out = []
    while (ev := codec.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def feed_bytewise(codec, data: bytes) -> list:
    """Feed ``data`` one byte at a time, draining after each; all events in order."""
    out = []
    for i in range(len(data)):
        codec.receive_data(data[i : i + 1])
        out += drain(codec)
    return out


def run_unpaced(dev, t_end: float) -> bytes:
    """What a simulator interface writes up to device time ``t_end`` (s), as fast as it goes."""
    out = bytearray()
    while (d := dev.next_deadline()) is not None and d <= t_end:
        out += dev.poll(d)
    return bytes(out)
