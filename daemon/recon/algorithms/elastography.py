"""Shear-wave elastography algorithms: Loupas displacement, time-of-flight speed, modulus.

Arrays are ``(frame, z, x)`` (slow time, depth, lateral) for ensembles and ``(z, x)`` for
maps. Units: µm, mm, s, m/s, kPa.

* :func:`loupas_displacement` -- the 2D autocorrelator of Loupas, Powers & Gill (1995):
  between successive frames, the slow-time lag-one autocorrelation ``R(0,1)`` summed over an
  axial window of ``M`` samples, and the fast-time lag-one autocorrelation ``R(1,0)`` summed
  over the same window and the whole ensemble (the mean RF frequency of a pixel is a tissue
  property, stationary over 10..20 ms; one arctangent per pixel instead of per frame pair),
  give the axial displacement ``u = -c/(4π) · arg R(0,1) / (f_demod + fs·arg R(1,0)/2π)``
  (the mean RF frequency corrects for the attenuation downshift). Sign: positive =
  away from the transducer (deeper), the convention of the IQ model ``exp(-j 4π f0 z / c)``.
  A numba kernel (:func:`loupas_numba`, when numba is importable) and the plain numpy one
  (:func:`loupas_numpy`) compute the same thing.
* :func:`time_of_flight_speed` -- time to peak of the displacement at each pixel (parabolic
  sub-frame interpolation), then the lateral slope of arrival time by least squares over
  ``± half_window_mm``: ``c = 1 / |dT/dx|``; confidence = the fit's R² times a factor that
  falls to 0 where the peak displacement is below ``min_peak_um``.
* :func:`modulus_kpa` -- ``E = 3 ρ c²`` (ρ = 1000 kg/m³) in kPa.
* :class:`EnsembleBeamformer` -- a channel-RF tracking ensemble ``(frame, angle, element,
  sample)`` through the B-mode DAS operator
  (:class:`~medacq.daemon.recon.algorithms.beamform.PlaneWaveBeamformer`, all frames in one
  batched sparse product), then brought to baseband on the pixel grid (``× exp(−j 4π f0 z / c)``:
  the DAS sum is the analytic RF at each pixel), so the displacement estimators see the IQ
  convention of the scanner's beamformed mode.
* :func:`segment_stiff_inclusion` -- the stiffest confident region (slowness beyond halfway
  between the background median and the 99.5th percentile of speed), its equivalent diameter and
  median modulus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from medacq.protocols.us_geometry import PixelGrid, PlaneWaveAcquisition
from medacq.daemon.recon.algorithms.beamform import PlaneWaveBeamformer

__all__ = ["loupas_numpy", "loupas_numba", "loupas_displacement", "cumulative_displacement", "time_of_flight_speed",
           "modulus_kpa", "segment_stiff_inclusion", "InclusionMap", "SweResult", "process_ensemble",
           "EnsembleBeamformer", "rf_map_grid",
           "RHO_KG_M3", "HAVE_NUMBA"]

RHO_KG_M3 = 1000.0


def _window_sum_z(a: np.ndarray, m: int) -> np.ndarray:
    """Sum over a centred window of ``m`` samples along axis 1 (edges: what exists)."""
    c = np.cumsum(a, axis=1)
    c = np.concatenate([np.zeros_like(c[:, :1]), c], axis=1)
    nz = a.shape[1]
    lo = np.clip(np.arange(nz) - m // 2, 0, nz)
    hi = np.clip(np.arange(nz) - m // 2 + m, 0, nz)
    return c[:, hi] - c[:, lo]


def loupas_numpy(iq: np.ndarray, f_demod_hz: float, fs_hz: float, c_m_s: float = 1540.0,
                 axial_window: int = 9, axial_step: int = 1) -> np.ndarray:
    """Interframe axial displacement, µm ``float32 (frame - 1, z, x)``, plain numpy; with
    ``axial_step`` > 1 only every ``axial_step``-th depth sample (``z[::axial_step]``) is estimated.
    The mean RF frequency of a pixel comes from ``R(1,0)`` summed over its axial window and
    the whole ensemble (a tissue property, stationary over the 10..20 ms of tracking)."""
    a = np.asarray(iq, dtype=np.complex64)
    r01 = np.conj(a[:-1]) * a[1:]
    # fast-time lag one, summed over every frame of the ensemble
    r10 = np.zeros(a.shape[1:], np.complex64)
    r10[:-1] = np.sum(np.conj(a[:, :-1]) * a[:, 1:], axis=0)
    s01 = _window_sum_z(r01, axial_window)[:, ::axial_step]
    s10 = _window_sum_z(r10[None], axial_window)[0, ::axial_step]
    f_mean = f_demod_hz + fs_hz * np.angle(s10) / (2 * np.pi)
    return (-c_m_s / (4 * np.pi) * np.angle(s01) / f_mean[None] * 1e6).astype(np.float32)


def _atan_coefficients(degree: int = 8) -> np.ndarray:
    """``atan(t) / t`` on ``0 <= t <= 1`` as a polynomial in ``t²`` (least squares on Chebyshev
    nodes; max error of ``t · p(t²)`` below 1e-8 rad), highest power first (Horner)."""
    t = 0.5 + 0.5 * np.cos(np.pi * (np.arange(4000) + 0.5) / 4000)
    t = t[t > 1e-4]
    return np.polyfit(t * t, np.arctan(t) / t, degree).astype(np.float32)


try:  # optional compiled kernel
    import numba as _nb

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is optional
    _nb = None
    HAVE_NUMBA = False

_numba_kernel: Callable[..., Any] | None = None
_ATAN = _atan_coefficients()


# module-level kernels: numba's on-disk cache (cache=True) only hits for functions defined at module
# level (a kernel built inside a function, closing over another jitted function, was compiled again at
# every start, 4-9 s, and added a cache file each time)
if HAVE_NUMBA:

    @_nb.njit(inline="always", fastmath=True)
    def _fast_atan2(y, x, cf):  # pragma: no cover - compiled
        # octant reduction + polynomial: branch-free selects, so the x loop vectorises
        ax, ay = abs(x), abs(y)
        mx, mn = max(ax, ay), min(ax, ay)
        t = mn / mx if mx > 0 else np.float32(0)
        s = t * t
        p = cf[0]
        for i in range(1, cf.shape[0]):
            p = p * s + cf[i]
        r = t * p
        r = np.float32(np.pi / 2) - r if ay > ax else r
        r = np.float32(np.pi) - r if x < 0 else r
        return -r if y < 0 else r

    @_nb.njit(parallel=True, fastmath=True, cache=True, nogil=True)
    def _loupas_kernel(af, f_demod, fs, c, m, step, cf, out):  # pragma: no cover - compiled
        # af: the complex64 ensemble viewed as float32 (frame, z, 2x) (real/imag interleaved:
        # real arithmetic vectorises, complex64 structs do not). One output depth row per task:
        # its window's lag-one products summed over the window along x (contiguous); the mean
        # frequency once per pixel
        nf, nz, nx2 = af.shape
        nx = nx2 // 2
        half = m // 2
        k = np.float32(-c / (4 * np.pi) * 1e6)
        for zo in _nb.prange(out.shape[1]):
            zc = zo * step
            lo = max(zc - half, 0)
            hi = min(zc - half + m, nz)
            re = np.zeros(nx, np.float32)
            im = np.zeros(nx, np.float32)
            for n in range(nf):
                for z in range(lo, min(hi, nz - 1)):
                    for x in range(nx):
                        ar0, ai0 = af[n, z, 2 * x], af[n, z, 2 * x + 1]
                        ar1, ai1 = af[n, z + 1, 2 * x], af[n, z + 1, 2 * x + 1]
                        re[x] += ar0 * ar1 + ai0 * ai1
                        im[x] += ar0 * ai1 - ai0 * ar1
            scale = np.empty(nx, np.float32)
            for x in range(nx):
                f_mean = f_demod + fs * np.arctan2(im[x], re[x]) / (2 * np.pi)
                scale[x] = k / f_mean
            for n in range(nf - 1):
                re[:] = 0
                im[:] = 0
                for z in range(lo, hi):
                    for x in range(nx):
                        ar0, ai0 = af[n, z, 2 * x], af[n, z, 2 * x + 1]
                        ar1, ai1 = af[n + 1, z, 2 * x], af[n + 1, z, 2 * x + 1]
                        re[x] += ar0 * ar1 + ai0 * ai1
                        im[x] += ar0 * ai1 - ai0 * ar1
                for x in range(nx):
                    out[n, zo, x] = scale[x] * _fast_atan2(im[x], re[x], cf)


def _build_numba() -> Callable[..., Any]:
    assert _nb is not None
    return _loupas_kernel


def loupas_numba(iq: np.ndarray, f_demod_hz: float, fs_hz: float, c_m_s: float = 1540.0,
                 axial_window: int = 9, axial_step: int = 1) -> np.ndarray:
    """Same as :func:`loupas_numpy`, compiled with numba (ImportError without numba); the
    phase of ``R(0,1)`` by an octant-reduced polynomial arctangent (error < 1e-6 rad,
    ~1e-4 nm of displacement), which vectorises where ``atan2`` does not."""
    global _numba_kernel
    if not HAVE_NUMBA:
        raise ImportError("numba is not installed")
    if _numba_kernel is None:
        _numba_kernel = _build_numba()
    a = np.ascontiguousarray(iq, dtype=np.complex64)
    nzo = (a.shape[1] + axial_step - 1) // axial_step
    out = np.empty((a.shape[0] - 1, nzo, a.shape[2]), np.float32)
    _numba_kernel(a.view(np.float32), float(f_demod_hz), float(fs_hz), float(c_m_s), int(axial_window),
                  int(axial_step), _ATAN, out)
    return out


def loupas_displacement(iq: np.ndarray, f_demod_hz: float, fs_hz: float, c_m_s: float = 1540.0,
                        axial_window: int = 9, axial_step: int = 1) -> np.ndarray:
    """The numba kernel when available, else numpy."""
    if HAVE_NUMBA:
        return loupas_numba(iq, f_demod_hz, fs_hz, c_m_s, axial_window, axial_step)
    return loupas_numpy(iq, f_demod_hz, fs_hz, c_m_s, axial_window, axial_step)


def cumulative_displacement(vel_um: np.ndarray) -> np.ndarray:
    """Cumulative displacement, µm ``(frame, z, x)`` (frame 0: zeros), from the interframe
    ``vel_um (frame - 1, z, x)``: the same sums, in the same order, as ``np.cumsum(axis=0)``,
    one frame-sized add per frame (``np.cumsum`` along the slow axis of a C-ordered ensemble
    took ~8x longer: 11-13 vs 1.5 ms for 149 × 182 × 101)."""
    v = np.asarray(vel_um)
    disp = np.empty((v.shape[0] + 1, *v.shape[1:]), v.dtype)
    disp[0] = 0
    for i in range(v.shape[0]):
        np.add(disp[i], v[i], out=disp[i + 1])
    return disp


def time_of_flight_speed(disp_um: np.ndarray, t_s: np.ndarray, x_mm: np.ndarray, half_window_mm: float = 1.5,
                         min_peak_um: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(speed m/s (z, x), confidence 0..1 (z, x), arrival s (z, x))`` from the cumulative
    displacement ``disp_um (frame, z, x)`` at frame times ``t_s``."""
    nf = disp_um.shape[0]
    i = np.argmax(disp_um, axis=0)
    ic = np.clip(i, 1, nf - 2)
    zz, xx = np.indices(i.shape)
    y0, y1, y2 = disp_um[ic - 1, zz, xx], disp_um[ic, zz, xx], disp_um[ic + 1, zz, xx]
    den = y0 - 2 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(den < 0, 0.5 * (y0 - y2) / den, 0.0)
    frac = np.clip(frac, -0.5, 0.5)
    dt = float(t_s[1] - t_s[0])
    arrival = t_s[0] + (ic + frac) * dt
    peak = y1
    edge = (i == 0) | (i == nf - 1)
    # lateral least-squares slope of arrival time over ±half_window (box sums)
    pitch = float(x_mm[1] - x_mm[0])
    k = max(1, int(round(half_window_mm / pitch)))
    size = 2 * k + 1
    xs = np.broadcast_to(x_mm[None, :], arrival.shape)
    valid = (~edge).astype(np.float64)

    def box(a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter1d(a, size=size, axis=1, mode="constant") * size

    n = box(valid)
    sx, st = box(xs * valid), box(arrival * valid)
    sxx, sxt, stt = box(xs * xs * valid), box(xs * arrival * valid), box(arrival * arrival * valid)
    with np.errstate(divide="ignore", invalid="ignore"):
        vx = sxx - sx * sx / n
        vt = stt - st * st / n
        cxt = sxt - sx * st / n
        slope = cxt / vx  # s/mm
        r2 = np.clip(cxt * cxt / (vx * vt), 0, 1)
        speed = 1e-3 / np.abs(slope)  # m/s
    ok = (n >= size - 0.5) & np.isfinite(speed)
    amp_factor = np.clip((peak - min_peak_um) / min_peak_um, 0, 1)
    conf = np.where(ok, r2 * amp_factor, 0.0)
    speed = np.where(ok, speed, np.nan)
    return speed.astype(np.float32), conf.astype(np.float32), arrival.astype(np.float32)


def modulus_kpa(speed_m_s: np.ndarray) -> np.ndarray:
    """Young's modulus ``E = 3 ρ c²`` in kPa (ρ = 1000 kg/m³)."""
    return (3 * RHO_KG_M3 * np.asarray(speed_m_s, dtype=np.float64) ** 2 / 1e3).astype(np.float32)


@dataclass(frozen=True, slots=True)
class InclusionMap:
    """The stiffest region: ``mask (z, x)``, centre (mm), equivalent ``diameter_mm``,
    median ``e_kpa`` inside it (pixels ≥ 1 mm from its edge where there are any), and the
    background median ``e_background_kpa``."""

    found: bool
    mask: np.ndarray
    x_mm: float
    z_mm: float
    diameter_mm: float
    e_kpa: float
    e_background_kpa: float


def segment_stiff_inclusion(e_kpa: np.ndarray, conf: np.ndarray, x_mm: np.ndarray, z_mm: np.ndarray,
                            min_conf: float = 0.5) -> InclusionMap:
    """Segment the stiffest confident region of a modulus map (module doc)."""
    nan = float("nan")
    good = (conf >= min_conf) & np.isfinite(e_kpa)
    if good.sum() < 20:
        return InclusionMap(False, np.zeros(e_kpa.shape, bool), nan, nan, nan, nan, nan)
    c = np.sqrt(np.where(good, e_kpa, 0.0))
    c_bg = float(np.median(c[good]))
    c_hi = float(np.percentile(c[good], 99.5))
    if c_hi < 1.3 * c_bg:
        return InclusionMap(False, np.zeros(e_kpa.shape, bool), nan, nan, nan, nan, float(c_bg ** 2))
    thr = 2.0 / (1.0 / c_bg + 1.0 / c_hi)  # halfway in slowness (the TOF fit averages slowness laterally)
    cand = good & (c >= thr)
    labels, nlab = ndimage.label(cand)
    if nlab == 0:
        return InclusionMap(False, cand, nan, nan, nan, nan, float(c_bg ** 2))
    sizes = ndimage.sum(cand, labels, index=np.arange(1, nlab + 1))
    mask = labels == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_fill_holes(mask)
    dx = float(x_mm[1] - x_mm[0])
    dz = float(z_mm[1] - z_mm[0])
    area = float(mask.sum()) * dx * dz
    zz, xx = np.nonzero(mask)
    dist = ndimage.distance_transform_edt(mask, sampling=(dz, dx))
    inner = mask & (dist >= 1.0) & good
    e_in = float(np.median(e_kpa[inner])) if inner.any() else float(np.median(e_kpa[mask & good]))
    bg = good & ~ndimage.binary_dilation(mask, iterations=int(np.ceil(2.0 / dx)))
    return InclusionMap(True, mask, float(x_mm[xx].mean()), float(z_mm[zz].mean()), float(2 * np.sqrt(area / np.pi)),
                        e_in, float(np.median(e_kpa[bg])) if bg.any() else nan)


@dataclass(frozen=True, slots=True)
class SweResult:
    """One push ensemble processed: interframe ``velocity_um`` (µm per frame), cumulative
    ``displacement_um``, ``speed_m_s``, ``modulus_kpa``, ``confidence`` (maps ``(z, x)`` on the
    depths ``z_mm``: every ``axial_step``-th input depth), and the stiff inclusion."""

    velocity_um: np.ndarray
    displacement_um: np.ndarray
    speed_m_s: np.ndarray
    modulus_kpa: np.ndarray
    confidence: np.ndarray
    inclusion: InclusionMap
    z_mm: np.ndarray


def process_ensemble(iq: np.ndarray, t_s: np.ndarray, x_mm: np.ndarray, z_mm: np.ndarray, f_demod_hz: float,
                     fs_hz: float, c_m_s: float = 1540.0, axial_window: int = 9, half_window_mm: float = 1.5,
                     min_peak_um: float = 0.5, kernel: str = "auto", axial_step: int = 2) -> SweResult:
    """Displacement (Loupas) → cumulative displacement → TOF speed → E map → inclusion, on
    every ``axial_step``-th depth sample (the axial window still spans ``axial_window`` samples)."""
    fn = {"auto": loupas_displacement, "numpy": loupas_numpy, "numba": loupas_numba}[kernel]
    vel = fn(iq, f_demod_hz, fs_hz, c_m_s, axial_window, axial_step)
    disp = cumulative_displacement(vel)
    speed, conf, _ = time_of_flight_speed(disp, t_s, x_mm, half_window_mm, min_peak_um)
    e = modulus_kpa(speed)
    z_out = np.asarray(z_mm)[::axial_step]
    inc = segment_stiff_inclusion(e, conf, x_mm, z_out)
    return SweResult(vel, disp, speed, e, conf, inc, z_out)


def rf_map_grid(z_mm: np.ndarray, axial_step: int, axial_window: int) -> tuple[np.ndarray, int]:
    """For channel RF: beamform straight onto the map's depths (every ``axial_step``-th sample
    of the scanner's grid) instead of beamforming every depth and estimating every
    ``axial_step``-th; returns ``(depths mm, Loupas window in those samples)``, the window
    spanning the same depth (``ceil(axial_window / axial_step)`` samples)."""
    step = max(1, int(axial_step))
    return np.asarray(z_mm)[::step], max(2, -(-int(axial_window) // step))


class EnsembleBeamformer:
    """Beamform a plane-wave tracking ensemble to baseband IQ on a pixel grid (module doc).

    Args:
        acquisition: the tracking acquisition (probe, sampling, receive window).
        x_mm, z_mm: pixel grid axes (lateral, depth; equally spaced), mm.
        f_number, backend, threads, cache_dir: as :class:`PlaneWaveBeamformer` (nearest-sample
            taps: the interframe phase, which is what the displacement estimators use, is
            kept exactly; only the static speckle pattern differs from linear interpolation).
    """

    def __init__(self, acquisition: PlaneWaveAcquisition, x_mm: np.ndarray, z_mm: np.ndarray, *,
                 f_number: float = 1.5, backend: str = "auto", threads: int | None = None,
                 cache_dir: str | None = None) -> None:
        x, z = np.asarray(x_mm, dtype=np.float64), np.asarray(z_mm, dtype=np.float64)
        self.grid = PixelGrid(nx=len(x), nz=len(z), x_min=float(x[0]) * 1e-3, x_max=float(x[-1]) * 1e-3,
                              z_min=float(z[0]) * 1e-3, z_max=float(z[-1]) * 1e-3)
        self.acquisition = acquisition
        self.beamformer = PlaneWaveBeamformer(acquisition, self.grid, f_number=f_number, backend=backend, taps=1,
                                              threads=threads, cache_dir=cache_dir)
        f0, c = acquisition.probe.center_frequency_hz, acquisition.speed_of_sound_m_s
        #: baseband on the grid: the analytic RF at depth z carries exp(+j 4π f0 z / c)
        self.ramp = np.exp(-4j * np.pi * f0 * self.grid.z / c).astype(np.complex64)[:, None]
        #: the IQ's axial sampling rate (Hz) and demodulation frequency for the estimators
        self.fs_hz = c / (2 * float(self.grid.z[1] - self.grid.z[0])) if len(z) > 1 else 0.0
        self.f_demod_hz = f0

    @property
    def backend(self) -> str:
        return self.beamformer.backend

    def __call__(self, rf: np.ndarray) -> np.ndarray:
        """int16 ``(frame, angle, element, sample)`` → complex64 baseband ``(frame, z, x)``."""
        if rf.ndim != 4:
            raise ValueError(f"ensemble must be (frame, angle, element, sample), got shape {rf.shape}")
        iq = self.beamformer.beamform_iq(rf)
        iq *= self.ramp
        return iq
