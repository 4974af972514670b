"""DeviceClock: jitter and bursts do not reach timestamps; drift is tracked."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.drivers._clockfit import CounterUnwrapper, DeviceClock


def _simulate(rate_true: float, nominal: float, seconds: float, seed: int, burst: int,
              jitter_ms: float = 10.0, latency_ms: float = 3.0):
    """Arrivals of bursts of ``burst`` samples; delay = latency + U(0, jitter) (±5 ms
    around its mean for jitter 10 ms). Returns (clock, true time ns of each sample incl.
    minimum latency)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate_true)
    t_true = 1_000_000_000 + np.arange(n) / rate_true * 1e9  # ns
    clk = DeviceClock(nominal)
    for end in range(burst - 1, n, burst):
        delay = (latency_ms + rng.uniform(0, jitter_ms)) * 1e6
        clk.update(end, int(t_true[end] + delay))
    return clk, t_true + latency_ms * 1e6


@pytest.mark.parametrize("burst", [1, 8, 25])
def test_jitter_does_not_reach_timestamps(burst: int) -> None:
    clk, truth = _simulate(250.0, 250.0, 60.0, seed=burst, burst=burst)
    idx = np.arange(250 * 10, 250 * 60)  # after 10 s of warm-up
    err_ms = (clk.time_of(idx) - truth[idx]) / 1e6
    assert np.max(np.abs(err_ms)) < 1.0
    # arrival times themselves are off by up to 10 ms (+ burst spread): the fit matters
    assert abs(clk.rate_hz - 250.0) < 250.0 * 5e-6


@pytest.mark.parametrize("ppm", [100.0, -100.0])
def test_100ppm_drift_tracked(ppm: float) -> None:
    rate = 500.0 * (1 + ppm * 1e-6)
    clk, truth = _simulate(rate, 500.0, 120.0, seed=3, burst=10)
    assert clk.ppm == pytest.approx(ppm, abs=5.0)
    idx = np.arange(500 * 20, len(truth))
    err_ms = (clk.time_of(idx) - truth[idx]) / 1e6
    assert np.max(np.abs(err_ms)) < 1.0
    # without drift correction the nominal rate would be 12 ms off after 120 s
    naive = truth[idx[0]] + (idx - idx[0]) / 500.0 * 1e9
    assert np.max(np.abs(naive - truth[idx])) / 1e6 > 5.0


def test_stall_outlier_rejected() -> None:
    rng = np.random.default_rng(0)
    clk = DeviceClock(250.0)
    truth = lambda i: 5e9 + i / 250.0 * 1e9  # noqa: E731
    for i in range(0, 250 * 40, 5):
        d = rng.uniform(0, 8e6)
        if 250 * 20 <= i < 250 * 22:
            d += 150e6  # a 2 s stall: everything arrives 150 ms late
        clk.update(i + 4, int(truth(i + 4) + d))
    idx = np.arange(250 * 5, 250 * 40)
    assert np.max(np.abs(clk.time_of(idx) - truth(idx))) / 1e6 < 1.0


def test_counter_unwrapper_reports_gaps() -> None:
    u = CounterUnwrapper(bits=8)
    seq = [250, 251, 252, 255, 0, 1, 5]
    out = [u(c) for c in seq]
    assert out == [0, 1, 2, 5, 6, 7, 11]
    assert u.gap == 3


def test_counter_unwrapper_uses_arrival_time_for_wraps_and_repeats() -> None:
    u = CounterUnwrapper(bits=8)
    assert u(10) == 0
    assert u(11, elapsed_counts=1.2) == 1 and u.gap == 0
    # 600 packets lost (2 wraps + 88): the counter says 89 steps, the clock says ~601
    assert u((11 + 601) % 256, elapsed_counts=598.0) == 602 and u.gap == 600
    # the same packet again, 3 ms later: a duplicate, not 255 lost packets
    last = (11 + 601) % 256
    assert u(last, elapsed_counts=0.8) == 602 and u.duplicate and u.gap == 0 and u.duplicates == 1
    assert u((last + 1) % 256, elapsed_counts=1.0) == 603 and not u.duplicate
    # a repeat after a whole wrap of silence is a wrap
    assert u((last + 1) % 256, elapsed_counts=255.0) == 603 + 256 and u.gap == 255
    # without a clock, the old rule: a repeat is one full wrap
    v = CounterUnwrapper(bits=8)
    v(5)
    assert v(5) == 256 and v.gap == 255
