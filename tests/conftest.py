"""Shared fixtures: free ports, in-process simulators, a running daemon."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def endpoints() -> dict[str, dict[str, str]]:
    """Four fresh loopback endpoints in the shape of a rig config."""
    p = free_ports(4)
    ep = lambda i: f"tcp://127.0.0.1:{p[i]}"  # noqa: E731
    return {"daemon": {"data_endpoint": ep(0), "control_endpoint": ep(1), "heartbeat_s": 0.2,
                       "descriptor_interval_s": 0.5},
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
