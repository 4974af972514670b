"""A remote daemon's clocks on this host's: ping-based offset estimation, as Lab Streaming Layer does.

Every header's ``t_host_ns`` (CLOCK_REALTIME) and ``t_mono_ns`` (CLOCK_MONOTONIC) are the
*daemon's* clocks. A subscriber on another machine maps them to its own with an offset measured
by control ``ping`` round trips (the reply carries the daemon's ``t_host_ns``/``t_mono_ns``, read
between the request's arrival and the reply's departure)::

    from medacq.client import ClockEstimator
    with ClockEstimator("tcp://10.0.0.2:5556", curve=keys) as clk:   # measures at once
        print(clk.estimate.offset_ms, clk.estimate.uncertainty_ms)
        clk.start(refresh_s=5.0)                                     # re-measures in the background
        t_local = clk.to_local(header["t_host_ns"])                  # this host's CLOCK_REALTIME, ns
        t_local_mono = clk.to_local(header["t_mono_ns"], clock="mono")

One probe: local send time ``t0``, the daemon's time ``t_r``, local receive time ``t1`` (both
local times from this host's CLOCK_MONOTONIC; the realtime midpoint is the realtime clock read at
send plus half the round trip). ``offset = t_r - (t0 + t1) / 2`` (NTP's and LSL's estimate with a
single remote time); the daemon read its clock somewhere inside ``[t0, t1]``, so the true offset
lies within ``±RTT / 2`` of it whatever the two directions' delays are. A burst of ``n`` probes
keeps the ``best`` lowest-RTT ones (LSL's ``time_receiver`` keeps the one lowest-RTT probe of each
burst; queueing only ever adds delay): the offset is their median, the uncertainty the largest
``RTT / 2`` among them, a bound that holds for the median too. Sign: ``offset`` is *remote minus
local* (LSL's ``time_correction()`` is the opposite sign: the value to *add* to remote times).

Clock drift between two hosts (tens of ppm) makes an estimate age: :meth:`ClockEstimator.start`
re-measures every ``refresh_s`` seconds (LSL: every 2 s); :attr:`ClockEstimator.history` keeps
the estimates so drift can be seen. On one host (or two network namespaces of one kernel) the
true offset is 0 for both clocks.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import zmq

from medacq.daemon.client.api import ControlClient, DaemonUnreachable, RequestFailed
from medacq.daemon.client.keys import ClientKeys

__all__ = ["ClockError", "ClockEstimate", "ClockEstimator", "ClockSample", "estimate_offset"]

ClockName = Literal["host", "mono"]


class ClockError(RuntimeError):
    """No usable estimate: the daemon did not answer, or its ``ping`` reply lacks its clocks."""


@dataclass(frozen=True, slots=True)
class ClockSample:
    """One ping round trip (all ns).

    Attributes:
        t_send_mono, t_recv_mono: this host's CLOCK_MONOTONIC when the request left / the reply came.
        t_send_host: this host's CLOCK_REALTIME when the request left.
        remote_host, remote_mono: the daemon's ``t_host_ns`` / ``t_mono_ns`` in its reply.
    """

    t_send_mono: int
    t_recv_mono: int
    t_send_host: int
    remote_host: int
    remote_mono: int

    @property
    def rtt_ns(self) -> int:
        return self.t_recv_mono - self.t_send_mono

    @property
    def offset_host_ns(self) -> float:
        """Daemon CLOCK_REALTIME minus this host's at the probe's midpoint (ns)."""
        return (self.remote_host - self.t_send_host) - self.rtt_ns / 2  # integers first: 1e18 ns is past float's 2**53

    @property
    def offset_mono_ns(self) -> float:
        """Daemon CLOCK_MONOTONIC minus this host's at the probe's midpoint (ns)."""
        return (self.remote_mono - self.t_send_mono) - self.rtt_ns / 2


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """A daemon's clocks relative to this host's (remote minus local), from one burst of probes.

    Attributes:
        offset_host_ns: daemon CLOCK_REALTIME - local CLOCK_REALTIME (ns): the offset of ``t_host_ns``.
        offset_mono_ns: daemon CLOCK_MONOTONIC - local CLOCK_MONOTONIC (ns): the offset of ``t_mono_ns``.
        uncertainty_ns: bound on either offset's error (ns): the largest RTT/2 of the probes used.
        rtt_min_ns, rtt_median_ns: round trips of the burst (ns).
        used, probes: probes the offset was taken from / sent (answered).
        t_mono_ns: this host's CLOCK_MONOTONIC at the end of the burst (when it was measured).
    """

    offset_host_ns: float
    offset_mono_ns: float
    uncertainty_ns: float
    rtt_min_ns: int
    rtt_median_ns: float
    used: int
    probes: int
    t_mono_ns: int

    @property
    def offset_ms(self) -> float:
        """``offset_host_ns`` in ms."""
        return self.offset_host_ns / 1e6

    @property
    def offset_mono_ms(self) -> float:
        return self.offset_mono_ns / 1e6

    @property
    def uncertainty_ms(self) -> float:
        return self.uncertainty_ns / 1e6

    def offset_ns(self, clock: ClockName = "host") -> float:
        """The offset of ``t_host_ns`` (``"host"``) or ``t_mono_ns`` (``"mono"``), ns."""
        if clock == "host":
            return self.offset_host_ns
        if clock == "mono":
            return self.offset_mono_ns
        raise ValueError(f"clock must be 'host' or 'mono', not {clock!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (ms)."""
        return {"offset_ms": round(self.offset_ms, 6), "offset_mono_ms": round(self.offset_mono_ms, 6),
                "uncertainty_ms": round(self.uncertainty_ms, 6), "rtt_min_ms": round(self.rtt_min_ns / 1e6, 6),
                "rtt_median_ms": round(self.rtt_median_ns / 1e6, 6), "used": self.used, "probes": self.probes}


def estimate_offset(samples: list[ClockSample], best: int | None = None) -> ClockEstimate:
    """The estimate from a burst: median offset of the ``best`` lowest-RTT samples (default a
    quarter of them, at least 1), uncertainty = the largest RTT/2 among those.

    Raises:
        ClockError: no samples, or a sample with a negative round trip.
    """
    if not samples:
        raise ClockError("no ping round trips to estimate a clock offset from")
    if any(s.rtt_ns < 0 for s in samples):
        raise ClockError("a ping round trip is negative: the local monotonic clock went backwards")
    k = max(1, len(samples) // 4) if best is None else max(1, min(best, len(samples)))
    chosen = sorted(samples, key=lambda s: s.rtt_ns)[:k]
    rtts = [s.rtt_ns for s in samples]
    return ClockEstimate(
        offset_host_ns=float(statistics.median(s.offset_host_ns for s in chosen)),
        offset_mono_ns=float(statistics.median(s.offset_mono_ns for s in chosen)),
        uncertainty_ns=max(s.rtt_ns for s in chosen) / 2,
        rtt_min_ns=min(rtts), rtt_median_ns=float(statistics.median(rtts)),
        used=k, probes=len(samples), t_mono_ns=max(s.t_recv_mono for s in samples))


class ClockEstimator:
    """Measure a daemon's (or the reconstruction stage's) clock offset with ``ping`` bursts.

    Args:
        endpoint: the daemon's control endpoint (``None``: the local rig's).
        curve: client keys where the daemon uses CurveZMQ (a reader's key is enough: ``ping`` is read-only).
        probes: round trips per burst (default 16).
        best: lowest-RTT probes the offset is taken from (default a quarter of ``probes``).
        spacing_s: pause between the probes of a burst (s), so one network hiccup does not spoil all.
        timeout: seconds to wait for one reply.
        measure: measure one burst at once (else :attr:`estimate` is ``None`` until :meth:`measure`).

    Thread-safe: the background refresh (:meth:`start`) and direct calls share one socket under a lock.
    """

    def __init__(self, endpoint: str | None = None, *, curve: ClientKeys | None = None, probes: int = 16,
                 best: int | None = None, spacing_s: float = 0.002, timeout: float = 2.0,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None, measure: bool = True) -> None:
        if probes < 1:
            raise ValueError("probes must be >= 1")
        if spacing_s < 0 or timeout <= 0:
            raise ValueError("spacing_s must be >= 0 and timeout > 0")
        self.probes = probes
        self.best = best
        self.spacing_s = spacing_s
        self._client = ControlClient(endpoint, timeout=timeout, context=context, curve=curve)
        self.endpoint = self._client.endpoint
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.estimate: ClockEstimate | None = None
        """The latest estimate (``None`` before the first burst)."""
        self.history: list[ClockEstimate] = []
        """Every estimate, oldest first (at most 1000)."""
        self.failures = 0
        """Bursts that failed (no reply, bad reply); the last one's text is in :attr:`last_error`."""
        self.last_error: str | None = None
        if measure:
            try:
                self.measure()
            except BaseException:
                self.close()
                raise

    def __enter__(self) -> "ClockEstimator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the refresh and close the socket."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        with self._lock:
            self._client.close()

    # -- measuring -------------------------------------------------------------------------------
    def _probe(self) -> ClockSample:
        t0h = time.time_ns()
        t0 = time.monotonic_ns()
        reply = self._client.request("ping")
        t1 = time.monotonic_ns()
        try:
            return ClockSample(t0, t1, t0h, int(reply["t_host_ns"]), int(reply["t_mono_ns"]))
        except (TypeError, KeyError, ValueError):
            raise ClockError(f"the ping reply from {self.endpoint} carries no t_host_ns/t_mono_ns: {reply!r}"
                             ) from None

    def measure(self, probes: int | None = None) -> ClockEstimate:
        """One burst of ``probes`` round trips; sets and returns :attr:`estimate`.

        Raises:
            ClockError: the daemon did not answer, refused ``ping``, or replied without its clocks.
        """
        n = probes or self.probes
        samples: list[ClockSample] = []
        with self._lock:
            try:
                for i in range(n):
                    if i and self.spacing_s:
                        time.sleep(self.spacing_s)
                    samples.append(self._probe())
            except (DaemonUnreachable, RequestFailed, ClockError) as exc:
                self.failures += 1
                self.last_error = str(exc)
                raise ClockError(f"clock offset of {self.endpoint}: {exc}") from None
            est = estimate_offset(samples, self.best)
            self.estimate = est
            self.history.append(est)
            del self.history[:-1000]
        return est

    def start(self, refresh_s: float = 5.0) -> "ClockEstimator":
        """Re-measure every ``refresh_s`` seconds in a daemon thread (a failed burst is counted in
        :attr:`failures` and keeps the previous estimate)."""
        if refresh_s <= 0:
            raise ValueError("refresh_s must be > 0")
        if self._thread is not None:
            return self

        def loop() -> None:
            while not self._stop.wait(refresh_s):
                try:
                    self.measure()
                except ClockError:
                    pass  # counted in failures; the previous estimate stays
                except zmq.ZMQError as exc:  # the socket was closed under us
                    self.last_error = str(exc)
                    return

        self._thread = threading.Thread(target=loop, name=f"clock {self.endpoint}", daemon=True)
        self._thread.start()
        return self

    # -- mapping ---------------------------------------------------------------------------------
    def _current(self) -> ClockEstimate:
        est = self.estimate
        if est is None:
            raise ClockError(f"no clock estimate for {self.endpoint} yet: call measure()")
        return est

    def to_local(self, t_remote_ns: int, clock: ClockName = "host") -> int:
        """A daemon time (ns, its CLOCK_REALTIME for ``"host"``, CLOCK_MONOTONIC for ``"mono"``) on
        this host's same clock (ns), within :attr:`ClockEstimate.uncertainty_ns` (plus drift since
        the estimate)."""
        return t_remote_ns - int(round(self._current().offset_ns(clock)))

    def to_remote(self, t_local_ns: int, clock: ClockName = "host") -> int:
        """The inverse of :meth:`to_local`: a local time (ns) on the daemon's clock."""
        return t_local_ns + int(round(self._current().offset_ns(clock)))

    def header_to_local(self, header: Mapping[str, Any]) -> dict[str, int]:
        """A stream header's ``t_host_ns``/``t_mono_ns`` (the daemon's) on this host's clocks (ns)."""
        return {"t_host_ns": self.to_local(int(header["t_host_ns"]), "host"),
                "t_mono_ns": self.to_local(int(header["t_mono_ns"]), "mono")}
