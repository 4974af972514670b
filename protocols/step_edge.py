"""Sub-sample times of TTL steps seen through a delta-sigma ADC's sinc^3 decimation filter.

A TTL line fed (through a divider) into an analog channel of an ADS1299/ADS1298 does not jump
between two samples: the converter's digital filter, a third-order sinc decimator
(``H(z) = ((1 - z^-N) / (N (1 - z^-1)))^3``, N = f_MOD / data rate, 4096 at 250 SPS), spreads a
step over 3 output periods (the datasheet's "a step change at the input takes 3 t_DR to settle").
Its impulse response is three boxcars of one output period convolved: a quadratic B-spline over
3 periods; the step response is its integral (:func:`sinc3_step`). Where in the period the edge
fell changes the 3 transitional samples' values, so fitting the known response places the edge to
a small fraction of a sample.

Sample grid: output sample ``k`` is the filter window ending at ``k`` (in sample periods), so a
step of amplitude ``A`` at fractional position ``tau`` reads ``A * sinc3_step(k - tau)``: the
first sample after ``tau`` holds ``A (k - tau)^3 / 6``, the fourth one the full ``A``. A device's
fixed conversion latency (the filter's group delay is 1.5 periods on this grid, plus whatever
the chip adds) is a constant offset, removed by the trigger-bus alignment like any latency.

:func:`locate_steps` finds steps in one channel's samples and fits them (edges closer than a few
samples, e.g. both edges of a 5-ms pulse at 250 Hz, are fitted together); :class:`StepTracker`
does it on a stream delivered in blocks, returning each edge once the samples after it are in.
Pure numpy, no clocks or I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["StepEdge", "StepLocatorError", "StepTracker", "locate_steps", "sinc3_impulse", "sinc3_step"]

_PRE = 3        # samples before a cluster's first edge in its fit (baseline)
_POST = 3       # samples after the last edge has settled (3 periods) in its fit (top level)
_CLUSTER = 6.0  # edges closer than this (samples) are fitted together
_MAX_ITER = 12


class StepLocatorError(ValueError):
    """Bad input to the step locator (not 1-D, non-finite, a non-positive threshold)."""


@dataclass(frozen=True)
class StepEdge:
    """One step found in a channel.

    Attributes:
        position: the edge's time in fractional samples on the channel's sample grid (sample
            ``k`` at ``k``; the step reaches sample ``k`` as ``sinc3_step(k - position)``).
        edge: ``rising`` (the channel's value went up) or ``falling``.
        amplitude: the step's size in the channel's units (positive; the fitted level change).
        residual_rms: rms of the fit's residual over its window, the channel's units.
    """

    position: float
    edge: Literal["rising", "falling"]
    amplitude: float
    residual_rms: float

    @property
    def first_sample(self) -> int:
        """The first sample the step reaches (``floor(position) + 1``)."""
        return int(np.floor(self.position)) + 1


def sinc3_impulse(x: np.ndarray | float) -> np.ndarray:
    """Impulse response of the continuous sinc^3 decimator (quadratic B-spline, support [0, 3]
    output periods, unit area) at ``x`` periods after the impulse."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= 0, 0.0, np.where(x < 1, 0.5 * x * x, np.where(
        x < 2, 0.5 * (-2 * x * x + 6 * x - 3), np.where(x < 3, 0.5 * (3 - x) ** 2, 0.0))))


def sinc3_step(x: np.ndarray | float) -> np.ndarray:
    """Step response of the sinc^3 decimator (0 before the step, 1 from 3 periods after) at ``x``
    output periods after the step: the integral of :func:`sinc3_impulse`."""
    x = np.asarray(x, dtype=np.float64)
    a = x * x * x / 6.0
    b = (-2 * x * x * x + 9 * x * x - 9 * x + 3) / 6.0
    c = 1.0 - (3 - x) ** 3 / 6.0
    return np.where(x <= 0, 0.0, np.where(x < 1, a, np.where(x < 2, b, np.where(x < 3, c, 1.0))))


def _candidates(x: np.ndarray, thr: float) -> list[tuple[float, int]]:
    """Initial ``(position, sign)`` of every step: each local peak of the first difference above
    ``thr`` (one per edge), placed by the centroid of the differences around it (exact for an
    isolated step: the differences are a sampled cubic B-spline, whose centroid is ``tau + 2``)."""
    d = np.diff(x)
    a = np.abs(d)
    n = len(d)
    if n == 0:
        return []
    big = np.flatnonzero(a >= thr)
    out: list[tuple[float, int, float]] = []
    for i in big.tolist():
        left = a[i - 1] if i > 0 and np.sign(d[i - 1]) == np.sign(d[i]) else 0.0
        right = a[i + 1] if i + 1 < n and np.sign(d[i + 1]) == np.sign(d[i]) else 0.0
        if a[i] < left or a[i] <= right:
            continue
        s = 1 if d[i] > 0 else -1
        if out and out[-1][1] == s and i - out[-1][0] <= 3:  # the same edge (a flat top of two diffs)
            if a[i] > out[-1][2]:
                out[-1] = (i, s, float(a[i]))
            continue
        out.append((i, s, float(a[i])))
    cands = []
    for peak, sign, _size in out:
        lo, hi = max(0, peak - 2), min(n, peak + 3)
        w = sign * d[lo:hi]
        w = np.where(w > 0, w, 0.0)
        tot = float(w.sum())
        pos = (float(np.dot(np.arange(lo, hi) + 1, w)) / tot - 2.0) if tot > 0 else float(peak) - 1.0
        cands.append((pos, sign))
    return cands


def _fit(x: np.ndarray, k: np.ndarray, taus: np.ndarray, signs: np.ndarray
         ) -> tuple[np.ndarray, float, float] | None:
    """Fit ``x[k] = b + c (k - k_mid) + A sum_e sign_e S(k - tau_e)`` (one TTL level ``A``, a baseline
    with a slope); Gauss-Newton on the ``tau_e``, the linear parameters solved at every step.
    Returns ``(taus, A, residual rms)`` or ``None`` where it does not converge."""
    km = float(k.mean())
    taus = taus.astype(np.float64).copy()
    amp, rms = 0.0, 0.0
    for _ in range(_MAX_ITER):
        u = k[:, None] - taus[None, :]
        g = (sinc3_step(u) * signs[None, :]).sum(axis=1)
        m = np.column_stack([np.ones_like(g), k - km, g])
        coef, *_ = np.linalg.lstsq(m, x, rcond=None)
        amp = float(coef[2])
        r = x - m @ coef
        rms = float(np.sqrt(np.mean(r * r)))
        if amp <= 0:
            return None
        jac = -amp * sinc3_impulse(u) * signs[None, :]  # d model / d tau_e
        # project out the linear parameters' directions (variable projection, Kaufman's form)
        q, _ = np.linalg.qr(m)
        jp = jac - q @ (q.T @ jac)
        step, *_ = np.linalg.lstsq(jp, r, rcond=None)
        step = np.clip(step, -0.5, 0.5)
        taus += step
        if float(np.max(np.abs(step))) < 1e-7:
            break
    else:
        return None
    return taus, amp, rms


def _clusters(cands: list[tuple[float, int]]) -> list[list[tuple[float, int]]]:
    out: list[list[tuple[float, int]]] = []
    for c in cands:
        if out and c[0] - out[-1][-1][0] < _CLUSTER:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def _fit_cluster(x: np.ndarray, cl: list[tuple[float, int]], min_step: float) -> list[StepEdge]:
    k0 = int(np.floor(cl[0][0])) - _PRE + 1
    k1 = int(np.floor(cl[-1][0])) + 3 + _POST + 1  # exclusive
    k0, k1 = max(0, k0), min(len(x), k1)
    k = np.arange(k0, k1, dtype=np.float64)
    taus = np.array([c[0] for c in cl])
    signs = np.array([float(c[1]) for c in cl])
    if len(k) < len(cl) + 4:
        return []
    res = _fit(x[k0:k1], k, taus, signs)
    if res is None:
        return []
    t, amp, rms = res
    if amp < min_step or np.any(np.abs(t - taus) > 1.5) or np.any(np.diff(t) <= 0):
        return []
    return [StepEdge(float(p), "rising" if s > 0 else "falling", amp, rms) for p, s in zip(t.tolist(), signs)]


def _check(x: np.ndarray, min_step: float) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise StepLocatorError(f"one channel's samples expected (1-D), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise StepLocatorError("non-finite samples")
    if not min_step > 0:
        raise StepLocatorError(f"min_step must be > 0, got {min_step!r}")
    return x


def locate_steps(x: np.ndarray, min_step: float, first_index: int = 0) -> list[StepEdge]:
    """Every step of at least ``min_step`` (the channel's units) in ``x`` (one channel, samples in
    time order, ``x[i]`` being sample ``first_index + i``), fitted to the sinc^3 step response.

    Robust to a baseline and its slope (fitted per edge) and to noise well below ``min_step``
    (a difference peak must exceed ``min_step / 4`` to count). Edges whose fit window (3 samples
    before, 6 after) runs off ``x`` are fitted on what there is; :class:`StepTracker` waits for
    the samples instead. Returns edges in time order, ``position`` in ``first_index`` units."""
    x = _check(x, min_step)
    out: list[StepEdge] = []
    for cl in _clusters(_candidates(x, 0.25 * min_step)):
        for e in _fit_cluster(x, cl, min_step):
            out.append(StepEdge(e.position + first_index, e.edge, e.amplitude, e.residual_rms))
    return out


class StepTracker:
    """:func:`locate_steps` on a stream of sample blocks: each edge is returned once, as soon as
    the samples its fit needs (3 periods of settling plus 3 more) have arrived.

    Args:
        min_step: the smallest step to report (the channel's units, e.g. µV).
        history: samples kept before an unresolved edge (bounded memory).

    A block that does not continue the previous one (lost samples, a restart) starts afresh:
    an edge whose samples straddle the break (or the stream's start) is not reported
    (:attr:`dropped_at_gaps` counts those cut before and after a break, so one edge may count
    twice); :attr:`rejected` counts edges whose fit failed.
    """

    def __init__(self, min_step: float, history: int = 32) -> None:
        if not min_step > 0:
            raise StepLocatorError(f"min_step must be > 0, got {min_step!r}")
        self.min_step = float(min_step)
        self.history = max(16, int(history))
        self._buf = np.zeros(0)
        self._first = 0            # sample index of _buf[0]
        self._done = -np.inf       # edges at or before this position were reported already
        self.rejected = 0
        self.dropped_at_gaps = 0

    def reset(self) -> None:
        self._buf = np.zeros(0)
        self._done = -np.inf

    def push(self, first_index: int, values: np.ndarray) -> list[StepEdge]:
        """Samples ``first_index ...`` of the channel; returns the edges completed by them."""
        v = _check(np.ravel(values), self.min_step)
        if len(v) == 0:
            return []
        if len(self._buf) and first_index != self._first + len(self._buf):
            tail = self._buf[-8:]
            if len(tail) > 1 and float(np.max(np.abs(np.diff(tail)))) >= 0.25 * self.min_step:
                self.dropped_at_gaps += 1
            self.reset()
        if not len(self._buf):
            self._first = int(first_index)
        buf = np.concatenate([self._buf, v]) if len(self._buf) else v
        thr = 0.25 * self.min_step
        out: list[StepEdge] = []
        keep_from = len(buf) - self.history
        # only the samples after the edges already reported can hold a new one (fast path: none)
        lo = 0 if self._done == -np.inf else max(0, int(np.floor(self._done - self._first)))
        d = np.abs(np.diff(buf[lo:]))
        if len(d) and float(d.max()) >= thr:
            last = len(buf) - 1
            clusters = _clusters([c for c in _candidates(buf, thr) if c[0] + self._first > self._done])
            for cl in clusters:
                # its fit needs 3 + _POST samples after the last edge, and a later edge closer than
                # _CLUSTER would join it: wait until that one's difference peak would be in too
                if int(np.floor(cl[-1][0])) + int(_CLUSTER) + 3 > last:
                    keep_from = min(keep_from, int(np.floor(cl[0][0])) - self.history // 2)
                    break
                if int(np.floor(cl[0][0])) - _PRE + 1 < 0:  # began before the stream (re)started: cut
                    self.dropped_at_gaps += 1
                    edges = []
                else:
                    edges = _fit_cluster(buf, cl, self.min_step)
                    if not edges:
                        self.rejected += len(cl)
                for e in edges:
                    out.append(StepEdge(e.position + self._first, e.edge, e.amplitude, e.residual_rms))
                # a new edge lies >= _CLUSTER after this cluster's last (else it would have joined it)
                self._done = cl[-1][0] + self._first + 4.0
        keep_from = max(0, keep_from)
        self._buf = buf[keep_from:].copy()
        self._first += keep_from
        return out
