"""Map a device sample counter onto host time with drift correction (pure math).

Arrival times are the true sample times plus a non-negative, variable delay (USB/serial
latency, OS scheduling, and *bursts*: one read returns many samples that all get the read's
time). Fitting arrival times directly lets that jitter into the timestamps. Instead
:class:`DeviceClock` keeps, per bucket of ``bucket_s`` seconds, the sample with the
smallest arrival residual (the *lower envelope*), and fits a line through the bucket minima
of the last ``window_s`` seconds (least squares, then a second pass that drops buckets lying
well above the line, e.g. after a stall). The slope is the device's true sample period
(nominal rate as prior until two buckets exist), the intercept the minimum latency.

``time_of(i)`` is therefore "when sample ``i`` would have arrived with the least delay
seen": true device time + the transport's minimum latency (subtract ``latency_ns`` if known).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DeviceClock", "CounterUnwrapper"]


class CounterUnwrapper:
    """Unwrap a ``bits``-bit wrapping counter (e.g. Cyton's 8-bit packet counter) into a
    monotonically increasing index. A jump forward of ``d`` (mod 2^bits) is ``d`` samples;
    the caller sees gaps as index jumps (``gap`` holds the last number of missing samples).

    A counter alone cannot tell ``d`` lost packets from ``d`` + whole wraps of them (an
    8-bit counter at 250 Hz wraps every 1.024 s of dropout), nor a repeated packet from a
    full wrap. Pass ``elapsed_counts`` -- the counter steps a *device* clock says have passed
    since the previous call (``Δt × rate``; e.g. the Cyton's board milliseconds) -- and the
    number of wraps is the one that best explains it, and a repeat within half a wrap is a
    duplicate (``duplicate`` True, index unchanged, not a gap). Host arrival times will not
    do: a host stall delivers buffered packets late with consecutive counters. Without it a
    repeat counts as one full wrap.
    """

    def __init__(self, bits: int = 8, step: int = 1) -> None:
        self.mod = 1 << bits
        self.step = step
        self.index: int | None = None
        self._last: int | None = None
        self.gap = 0
        self.duplicate = False
        self.duplicates = 0

    def __call__(self, counter: int, elapsed_counts: float | None = None) -> int:
        self.duplicate = False
        if self._last is None or self.index is None:
            self._last, self.index, self.gap = counter, 0, 0
            return 0
        d = (counter - self._last) % self.mod
        if elapsed_counts is not None:
            if d == 0 and elapsed_counts < self.mod / 2:
                self.duplicate, self.gap = True, 0
                self.duplicates += 1
                return self.index
            d += self.mod * max(0, int(round((elapsed_counts - d) / self.mod)))
        if d == 0:
            d = self.mod  # a full wrap of lost packets is indistinguishable; assume one wrap
        self.gap = d // self.step - 1
        self.index += d // self.step
        self._last = counter
        return self.index


class DeviceClock:
    """Fitted device clock.

    Args:
        nominal_rate_hz: the rate the device claims (prior for the slope).
        bucket_s: envelope bucket length in seconds of device time.
        window_s: how much history the fit uses (drift tracking vs noise).
        max_ppm: clamp on the fitted rate error.
        latency_ns: a known fixed transport latency to subtract from ``time_of``.

    ``update(sample_index, t_arrival_ns)``: for a burst (one read holding many samples)
    pass the *last* sample's index with the read time (the others only add delay).
    """

    def __init__(self, nominal_rate_hz: float, bucket_s: float = 1.0, window_s: float = 60.0,
                 max_ppm: float = 2000.0, latency_ns: int = 0) -> None:
        self.nominal_rate_hz = float(nominal_rate_hz)
        self._p0 = 1.0 / self.nominal_rate_hz          # nominal period, s
        self._bucket = max(1, int(round(bucket_s * nominal_rate_hz)))
        self._nb = max(2, int(round(window_s / bucket_s)))
        self._max_dp = max_ppm * 1e-6 * self._p0
        self.latency_ns = latency_ns
        self._i0: int | None = None
        self._t0 = 0
        self._buckets: dict[int, tuple[float, float]] = {}  # key -> (x, y) with min y
        self._dirty = True
        self._a = 0.0     # intercept of y(x), s
        self._b = 0.0     # period correction, s per sample
        self.updates = 0

    # x = i - i0 (samples), y = (t - t0) seconds - x * p0 (residual vs nominal)
    def update(self, sample_index: int, t_arrival_ns: int) -> None:
        if self._i0 is None:
            self._i0, self._t0 = int(sample_index), int(t_arrival_ns)
        x = float(int(sample_index) - self._i0)
        y = (int(t_arrival_ns) - self._t0) * 1e-9 - x * self._p0
        k = int(x // self._bucket)
        cur = self._buckets.get(k)
        if cur is None or y < cur[1]:
            self._buckets[k] = (x, y)
            self._dirty = True
            if cur is None and len(self._buckets) > self._nb:
                for old in sorted(self._buckets)[: len(self._buckets) - self._nb]:
                    del self._buckets[old]
        self.updates += 1

    def _fit(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        if not self._buckets:
            return
        pts = np.array(list(self._buckets.values()))
        x, y = pts[:, 0], pts[:, 1]
        if len(pts) < 2 or np.ptp(x) < self._bucket:
            self._b = 0.0
            self._a = float(y.min())
            return
        b, a = np.polyfit(x, y, 1)
        # second pass: drop buckets well above the line (stalls, slow reads), keep envelope
        r = y - (a + b * x)
        keep = r <= max(0.5e-3, 2.0 * float(np.median(np.abs(r))))
        if keep.sum() >= 2 and np.ptp(x[keep]) >= self._bucket:
            b, a = np.polyfit(x[keep], y[keep], 1)
            r = y[keep] - (a + b * x[keep])
            a += float(min(0.0, r.min()))  # never above an observed lower-envelope point
        self._b = float(np.clip(b, -self._max_dp, self._max_dp))
        self._a = float(a)

    @property
    def period_s(self) -> float:
        self._fit()
        return self._p0 + self._b

    @property
    def rate_hz(self) -> float:
        """Fitted device sample rate in host-clock Hz."""
        return 1.0 / self.period_s

    @property
    def ppm(self) -> float:
        """Fitted rate error vs nominal, parts per million (positive = device fast)."""
        return (self.rate_hz / self.nominal_rate_hz - 1.0) * 1e6

    def time_of(self, sample_index: int | np.ndarray) -> int | np.ndarray:
        """Host time (ns) of sample(s) ``sample_index`` from the fitted line."""
        if self._i0 is None:
            raise RuntimeError("DeviceClock.time_of before any update")
        self._fit()
        x = np.asarray(sample_index, dtype=np.int64) - self._i0
        sec = self._a + x * (self._p0 + self._b)
        ns = self._t0 + np.round(sec * 1e9).astype(np.int64) - self.latency_ns
        return int(ns) if np.ndim(ns) == 0 else ns
