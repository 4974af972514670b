"""Two Linux network namespaces joined by a veth pair: "two hosts" on one machine.

Used by ``tests/test_multihost.py`` and ``medacq bench timeline`` (the cross-host clock figure).
:class:`VethPair` creates namespaces ``<tag>a`` and ``<tag>b`` (``ip netns add``), a veth pair
with one end in each, addresses ``10.77.<n>.1/24`` and ``10.77.<n>.2/24``, links and loopback up;
:meth:`VethPair.close` stops the processes it started inside them and deletes both namespaces
(which removes the veth pair). Needs root or CAP_NET_ADMIN (and CAP_SYS_ADMIN for
``ip netns exec``): otherwise :class:`NetnsUnavailable` says which command failed and why.

The two namespaces share the kernel's clocks (Linux has no per-network-namespace clock), so a
daemon in one and a client in the other have a true clock offset of 0: what the ping estimate
measures across the veth is its own error.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

__all__ = ["NetnsUnavailable", "VethPair"]


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (the message is the reason, for a skip or a JSON note)."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


class VethPair:
    """Namespaces ``ns_a``/``ns_b`` with addresses ``addr_a``/``addr_b`` on a veth pair.

    Args:
        tag: name prefix (at most 8 characters; default ``mq`` + this process's id, so parallel
            runs do not collide).
    """

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or f"mq{os.getpid() % 100000}"
        if len(tag) > 8:
            raise ValueError("tag: at most 8 characters (interface names are at most 15)")
        n = os.getpid() % 250 + 1
        self.ns_a, self.ns_b = f"{tag}a", f"{tag}b"
        self.if_a, self.if_b = f"{tag}va", f"{tag}vb"
        self.addr_a, self.addr_b = f"10.77.{n}.1", f"10.77.{n}.2"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._made: list[str] = []

    def __enter__(self) -> "VethPair":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> "VethPair":
        """Make both namespaces and the link; raises :class:`NetnsUnavailable` (nothing left behind)."""
        if shutil.which("ip") is None:
            raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
        steps = [("netns", "add", self.ns_a), ("netns", "add", self.ns_b),
                 ("link", "add", self.if_a, "type", "veth", "peer", "name", self.if_b),
                 ("link", "set", self.if_a, "netns", self.ns_a), ("link", "set", self.if_b, "netns", self.ns_b),
                 ("-n", self.ns_a, "addr", "add", f"{self.addr_a}/24", "dev", self.if_a),
                 ("-n", self.ns_b, "addr", "add", f"{self.addr_b}/24", "dev", self.if_b),
                 ("-n", self.ns_a, "link", "set", self.if_a, "up"), ("-n", self.ns_b, "link", "set", self.if_b, "up"),
                 ("-n", self.ns_a, "link", "set", "lo", "up"), ("-n", self.ns_b, "link", "set", "lo", "up")]
        try:
            for step in steps:
                r = _ip(*step)
                if r.returncode != 0:
                    why = r.stderr.strip() or f"exit status {r.returncode}"
                    hint = " (needs root or CAP_NET_ADMIN)" if step[:2] == ("netns", "add") or "ermission" in why else ""
                    raise NetnsUnavailable(f"`ip {' '.join(step)}` failed: {why}{hint}")
                if step[:2] == ("netns", "add"):
                    self._made.append(step[2])
                elif step[:2] == ("link", "add"):
                    self._made.append("veth")
            r = subprocess.run(self.exec_argv(self.ns_a, ["true"]), capture_output=True, text=True, timeout=10)
            if r.returncode != 0:
                raise NetnsUnavailable(f"`ip netns exec {self.ns_a} true` failed: {r.stderr.strip()} "
                                       "(needs CAP_SYS_ADMIN)")
        except (OSError, subprocess.SubprocessError) as exc:
            self.close()
            raise NetnsUnavailable(f"cannot run `ip`: {exc}") from None
        except NetnsUnavailable:
            self.close()
            raise
        return self

    def exec_argv(self, ns: str, argv: list[str]) -> list[str]:
        """``argv`` run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]

    def medacq_argv(self, ns: str, *args: str) -> list[str]:
        """``medacq ARGS`` (this interpreter's) inside namespace ``ns``."""
        return self.exec_argv(ns, [sys.executable, "-m", "medacq.daemon.cli", *args])

    def popen(self, ns: str, argv: list[str], log: Path | None = None, stdout: int | IO[bytes] | None = None
              ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in namespace ``ns`` (its own process group); stopped by :meth:`close`."""
        out: int | IO[bytes] | None = stdout
        if log is not None:
            out = open(log, "wb")  # noqa: SIM115 - the child keeps it; closed with the process
        p = subprocess.Popen(self.exec_argv(ns, argv), stdout=out, stderr=subprocess.STDOUT if log else None,
                             start_new_session=True)
        if log is not None and hasattr(out, "close"):
            out.close()  # type: ignore[union-attr]
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
        """SIGTERM ``p`` (then SIGKILL after ``timeout``); its exit status."""
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return int(p.returncode)

    def close(self) -> None:
        """Stop the processes started here (SIGTERM together, then wait), delete both namespaces."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()
        for ns in (self.ns_a, self.ns_b):
            if ns in self._made:
                _ip("netns", "del", ns)  # removes the veth end inside it, and so the pair
        if "veth" in self._made:
            _ip("link", "del", self.if_a)  # still in this namespace if moving it failed (else already gone)
        self._made.clear()
