"""protocols/step_edge.py: TTL steps through the ADS1299's sinc^3 decimation filter, placed to a
fraction of a sample (synthetic data, known sub-sample edges; errors asserted in samples)."""

from __future__ import annotations

import numpy as np
import pytest

from medacq.protocols.step_edge import StepLocatorError, StepTracker, locate_steps, sinc3_impulse, sinc3_step
from medacq.simulators.cyton import _SINC3_N, _sinc3_cumulative

FS = 250.0


def _discrete(k: np.ndarray, tau: float) -> np.ndarray:
    """The step as the ADS1299 makes it: the discrete sinc^3 (N = 4096) on the modulator's grid
    (the simulator's table, computed independently of the locator's continuous formula)."""
    c = _sinc3_cumulative()
    m = np.floor((k - tau) * _SINC3_N + 1e-9).astype(np.int64) + 1
    return np.where(k >= tau, c[np.clip(m, 0, len(c) - 1)], 0.0)


def _channel(n: int, edges: list[tuple[float, float]], amp: float, rng: np.random.Generator,
             noise_uv: float = 5.0) -> np.ndarray:
    """``edges`` = (rise, fall) positions in samples; the channel's own signal underneath: white
    noise, a 10 Hz alpha of 30 µV, 50 Hz mains of 10 µV, a slow baseline drift."""
    k = np.arange(n, dtype=np.float64)
    x = sum(amp * (_discrete(k, r) - _discrete(k, f)) for r, f in edges)
    return (x + rng.normal(0, noise_uv, n) + 30 * np.sin(2 * np.pi * 10 * k / FS)
            + 10 * np.sin(2 * np.pi * 50 * k / FS + 1) + 0.5 * k)


def test_the_continuous_step_response_is_the_datasheet_filter():
    """H(z) = ((1 - z^-N) / (N (1 - z^-1)))^3: settles in 3 output periods, the same curve as the
    locator's closed form to 1/N; the impulse response integrates to 1, centred at 1.5 periods."""
    x = np.linspace(-1, 4, 5001)
    assert np.max(np.abs(_discrete(x, 0.0) - sinc3_step(x))) < 2.0 / _SINC3_N
    assert sinc3_step(0.0) == 0 and sinc3_step(3.0) == 1 and sinc3_step(1.0) == pytest.approx(1 / 6)
    assert sinc3_step(1.5) == pytest.approx(0.5) and sinc3_step(2.0) == pytest.approx(5 / 6)  # symmetric about 1.5
    dx = x[1] - x[0]
    h = sinc3_impulse(x)
    assert h.sum() * dx == pytest.approx(1.0, abs=1e-3) and (x * h).sum() * dx == pytest.approx(1.5, abs=1e-3)


@pytest.mark.parametrize("width", [1.25, 3.0, 25.0])  # a 5-ms pulse at 250 Hz (edges overlap), 12 ms, 100 ms
def test_sub_sample_edges_of_pulses_are_recovered(width):
    rng = np.random.default_rng(int(width * 4))
    rises = [20 + 40 * i + f for i, f in enumerate(rng.uniform(0, 1, 12))]
    x = _channel(520, [(r, r + width) for r in rises], 50_000.0, rng)
    found = locate_steps(x, 10_000.0)
    assert [e.edge for e in found] == ["rising", "falling"] * 12
    err = np.array([e.position for e in found]) - np.ravel([(r, r + width) for r in rises])
    assert np.max(np.abs(err)) < 0.01  # samples: 40 µs at 250 Hz (a digital input: +-0.5 samples)
    assert all(e.amplitude == pytest.approx(50_000.0, rel=0.01) for e in found)
    assert all(e.first_sample == int(np.floor(e.position)) + 1 for e in found)


def test_noisier_channel_and_first_index():
    """Noise of 1 % of the step (500 µV rms): still a few hundredths of a sample; positions are in
    the caller's sample indices."""
    rng = np.random.default_rng(7)
    rises = [15.3, 60.71, 101.02, 150.98]
    x = _channel(200, [(r, r + 10) for r in rises], 50_000.0, rng, noise_uv=500.0)
    found = [e for e in locate_steps(x, 10_000.0, first_index=1000) if e.edge == "rising"]
    err = np.array([e.position - 1000 for e in found]) - rises
    assert len(found) == 4 and np.max(np.abs(err)) < 0.08


def test_no_edges_in_eeg_without_a_step_and_small_steps_ignored():
    rng = np.random.default_rng(3)
    assert locate_steps(_channel(2000, [], 0.0, rng, noise_uv=50.0), 10_000.0) == []
    x = _channel(200, [(50.5, 80.5)], 2_000.0, rng)  # a 2 mV step: below min_step
    assert locate_steps(x, 10_000.0) == []
    assert len(locate_steps(x, 1_000.0)) == 2


def test_tracker_matches_the_batch_locator_in_any_blocks_and_restarts_at_a_gap():
    rng = np.random.default_rng(11)
    rises = [30 + 37.3 * i + f for i, f in enumerate(rng.uniform(0, 1, 20))]
    x = _channel(800, [(r, r + 1.25) for r in rises], 50_000.0, rng)
    batch = locate_steps(x, 10_000.0)
    tr, got, i = StepTracker(10_000.0), [], 0
    while i < len(x):
        b = int(rng.integers(1, 13))
        got += tr.push(i, x[i:i + b])
        i += b
    assert [e.position for e in got] == pytest.approx([e.position for e in batch], abs=1e-9)
    assert len(got) == 40 and tr.rejected == 0
    # samples 107..111 lost: the pulse at ~104.7 straddles the gap and is not reported; the rest are
    assert 104 < rises[2] < 105.5
    tr, got = StepTracker(10_000.0), []
    for lo, hi in ((0, 107), (112, 800)):
        for j in range(lo, hi, 10):
            got += tr.push(j, x[j:min(j + 10, hi)])
    want = [e.position for e in batch if not 95 < e.position < 115]
    assert [e.position for e in got] == pytest.approx(want, abs=1e-9)
    assert tr.dropped_at_gaps == 1


def test_bad_input_is_a_typed_error():
    with pytest.raises(StepLocatorError):
        locate_steps(np.zeros((2, 10)), 1.0)
    with pytest.raises(StepLocatorError):
        locate_steps(np.array([0.0, np.nan, 1.0]), 1.0)
    with pytest.raises(StepLocatorError):
        locate_steps(np.zeros(10), 0.0)
    with pytest.raises(StepLocatorError):
        StepTracker(-1.0)
    assert issubclass(StepLocatorError, ValueError)
