"""Shear-wave elastography physics: a push, a shear wave through a stiffness map, and the
ultrafast tracking ensemble of beamformed IQ frames whose speckle moves with the tissue.

Knows nothing of bytes. Units: mm for geometry, kPa for moduli, m/s for speeds, µm for
displacements, s for time. Arrays are ``(frame, z, x)`` (slow time, depth, lateral).

* **Stiffness map** (:class:`StiffnessPhantom`): background Young's modulus with circular
  inclusions (a stiff one and a soft one by default); shear-wave speed ``c = sqrt(E / 3ρ)``
  (incompressible, ρ = 1000 kg/m³).
* **Shear wave** (:class:`ShearWave`): an acoustic-radiation-force push at ``(x_push,
  z_push)`` launches a wave that travels laterally along each depth row (``propagation =
  "rays"``, default: straight rays, no diffraction or reflection): arrival time ``T(x, z) =
  ∫ dx / c(x, z)`` from the push; or (``"eikonal"``) the first arrival ``|∇T| = 1/c`` from the
  push line (every depth at ``x_push``, a line source like the push's long focal zone), which
  bends rays by refraction and lets the wave reach the region behind a stiff inclusion first
  through it (a head wave) or around a soft one (:func:`first_arrival_s`: shortest paths on a
  0.1 mm grid with 16 neighbours, angular error below 2.5 %); the
  axial displacement is ``u = A(x, z) · exp(-(t - T)² / 2σ_t²)`` with ``A`` = push amplitude
  × Gaussian depth profile of the focus × ``exp(-α |x - x_push|) / sqrt(1 + |x - x_push| / 2 mm)``
  (attenuation and cylindrical spreading).
* **Tracking ensemble** (:func:`render_ensemble`): plane-wave frames at ``prf_hz`` after
  the push, as *beamformed* complex baseband (IQ) lines: each line is the coherent sum of
  its own random point scatterers, each a Gaussian-enveloped pulse at ``f0`` delayed by
  ``2 (z_s + u) / c_sound``: speckle that moves with the displacement (envelope and
  phase), plus complex white noise at ``snr_db``. The DAS step is not simulated (the
  scatterers are rendered straight into beamformed lines).

Deterministic from ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medacq.protocols.us_geometry import L11_4V, LinearArrayProbe, PlaneWaveAcquisition
from medacq.simulators.us_model import Phantom, PlaneWaveRFModel

__all__ = ["Region", "StiffnessPhantom", "ShearWave", "TrackingSetup", "Ensemble", "render_ensemble",
           "first_arrival_s", "arrival_field_s",
           "RfEnsemble", "render_rf_ensemble", "tracking_acquisition", "RHO_KG_M3", "C_SOUND_M_S"]

RHO_KG_M3 = 1000.0
C_SOUND_M_S = 1540.0


@dataclass(frozen=True, slots=True)
class Region:
    """A circular inclusion: centre ``(x_mm, z_mm)``, ``radius_mm``, Young's modulus ``e_kpa``."""

    x_mm: float
    z_mm: float
    radius_mm: float
    e_kpa: float


@dataclass(frozen=True)
class StiffnessPhantom:
    """Background modulus and inclusions (the first one is the stiff target by convention)."""

    e_background_kpa: float = 15.0
    regions: tuple[Region, ...] = (Region(3.0, 25.0, 4.0, 60.0), Region(9.0, 34.0, 3.0, 6.0))

    def modulus_kpa(self, x_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
        """E (kPa) on the grid ``z_mm[:, None]``, ``x_mm[None, :]`` → ``(z, x)``."""
        X, Z = np.meshgrid(x_mm, z_mm)
        e = np.full(X.shape, self.e_background_kpa)
        for r in self.regions:
            e[(X - r.x_mm) ** 2 + (Z - r.z_mm) ** 2 <= r.radius_mm ** 2] = r.e_kpa
        return e

    @staticmethod
    def speed_m_s(e_kpa: np.ndarray) -> np.ndarray:
        return np.sqrt(np.asarray(e_kpa) * 1e3 / (3 * RHO_KG_M3))


@dataclass(frozen=True)
class ShearWave:
    """Push and propagation parameters."""

    x_push_mm: float = -14.0
    z_push_mm: float = 25.0
    amplitude_um: float = 20.0
    depth_sigma_mm: float = 8.0
    sigma_t_s: float = 0.6e-3
    attenuation_per_mm: float = 0.03
    propagation: str = "rays"  # "rays" (straight lateral rays) or "eikonal" (first arrivals)

    def __post_init__(self) -> None:
        if self.propagation not in ("rays", "eikonal"):
            raise ValueError(f"propagation must be 'rays' or 'eikonal', got {self.propagation!r}")


@dataclass(frozen=True)
class TrackingSetup:
    """The tracking sequence and the beamformed grid.

    Attributes:
        prf_hz: plane-wave tracking rate (5..10 kHz).
        n_frames: frames per push ensemble (``n_frames / prf_hz`` = 10..20 ms).
        f0_hz: transmit centre frequency; ``fractional_bw``: −6 dB bandwidth.
        fs_iq_hz: IQ sampling rate along depth.
        x_mm: lateral extent and ``pitch_mm`` of the beamformed lines.
        z_mm: depth extent.
        snr_db: signal to white noise per IQ sample.
        scatterers_per_sample: speckle density.
    """

    prf_hz: float = 10_000.0
    n_frames: int = 150
    f0_hz: float = 5e6
    fractional_bw: float = 0.6
    fs_iq_hz: float = 10e6
    x_mm: tuple[float, float] = (-15.0, 15.0)
    pitch_mm: float = 0.3
    z_mm: tuple[float, float] = (12.0, 40.0)
    snr_db: float = 30.0
    scatterers_per_sample: float = 1.0

    def lateral_mm(self) -> np.ndarray:
        n = int(round((self.x_mm[1] - self.x_mm[0]) / self.pitch_mm)) + 1
        return self.x_mm[0] + self.pitch_mm * np.arange(n)

    def depth_mm(self) -> np.ndarray:
        dz = C_SOUND_M_S / (2 * self.fs_iq_hz) * 1e3
        n = int(np.floor((self.z_mm[1] - self.z_mm[0]) / dz)) + 1
        return self.z_mm[0] + dz * np.arange(n)


@dataclass
class Ensemble:
    """One push's tracking ensemble and its truth.

    Attributes:
        iq: ``complex64 (frame, z, x)`` beamformed baseband.
        x_mm, z_mm: grid axes; t_s: frame times after the push.
        displacement_um: true axial displacement ``(frame, z, x)`` at the pixels.
        modulus_kpa: true E ``(z, x)``; arrival_s: true arrival time ``(z, x)``.
    """

    iq: np.ndarray
    x_mm: np.ndarray
    z_mm: np.ndarray
    t_s: np.ndarray
    displacement_um: np.ndarray
    modulus_kpa: np.ndarray
    arrival_s: np.ndarray
    setup: TrackingSetup
    meta: dict = field(default_factory=dict)


def arrival_time_s(e_kpa: np.ndarray, x_mm: np.ndarray, x_push_mm: float) -> np.ndarray:
    """``T(z, x)`` = ∫ dx / c along each depth row from the push (trapezoid rule). A push
    outside the grid's lateral extent: the wave crosses the gap at the speed of the nearest
    edge column."""
    slow = 1.0 / StiffnessPhantom.speed_m_s(e_kpa)  # s/m
    dx = np.diff(x_mm) * 1e-3
    seg = 0.5 * (slow[:, 1:] + slow[:, :-1]) * dx
    cum = np.concatenate([np.zeros((slow.shape[0], 1)), np.cumsum(seg, axis=1)], axis=1)
    if x_push_mm < x_mm[0]:
        return cum + slow[:, :1] * (x_mm[0] - x_push_mm) * 1e-3
    if x_push_mm > x_mm[-1]:
        return (cum[:, -1:] - cum) + slow[:, -1:] * (x_push_mm - x_mm[-1]) * 1e-3
    i0 = int(np.argmin(np.abs(x_mm - x_push_mm)))
    return np.abs(cum - cum[:, i0:i0 + 1])


_EIKONAL_STEPS = ((0, 1), (1, 0), (1, 1), (1, -1), (1, 2), (2, 1), (1, -2), (2, -1))  # (dz, dx), 16 neighbours


def first_arrival_s(phantom: StiffnessPhantom, x_push_mm: float, x_mm: np.ndarray, z_mm: np.ndarray,
                    step_mm: float = 0.1) -> np.ndarray:
    """First-arrival time ``T (z, x)`` s on the grid ``z_mm × x_mm`` of a wave from the line
    ``x = x_push_mm`` (all depths, t = 0) through the phantom: the eikonal equation ``|∇T| = 1/c``
    solved as shortest paths (Dijkstra) on a ``step_mm`` grid with 16 neighbours (edge time =
    length × mean slowness of its ends), bilinearly interpolated to the grid. In a homogeneous
    medium this is ``|x − x_push| / c``, the straight-ray time."""
    from scipy import sparse
    from scipy.sparse.csgraph import dijkstra

    gx = np.arange(min(float(np.min(x_mm)), x_push_mm) - step_mm, max(float(np.max(x_mm)), x_push_mm) + 2 * step_mm,
                   step_mm)
    gz = np.arange(float(np.min(z_mm)) - 2 * step_mm, float(np.max(z_mm)) + 3 * step_mm, step_mm)
    nz, nx = len(gz), len(gx)
    slow = 1.0 / StiffnessPhantom.speed_m_s(phantom.modulus_kpa(gx, gz))  # s/m, (z, x)
    idx = np.arange(nz * nx).reshape(nz, nx)
    rows, cols, w = [], [], []
    for dz, dx in _EIKONAL_STEPS:
        z0, z1 = max(0, -dz), nz - max(0, dz)
        x0, x1 = max(0, -dx), nx - max(0, dx)
        a = idx[z0:z1, x0:x1]
        b = idx[z0 + dz:z1 + dz, x0 + dx:x1 + dx]
        rows.append(a.ravel())
        cols.append(b.ravel())
        w.append((0.5 * (slow.ravel()[a.ravel()] + slow.ravel()[b.ravel()])) * np.hypot(dz, dx) * step_mm * 1e-3)
    graph = sparse.csr_matrix((np.concatenate(w), (np.concatenate(rows), np.concatenate(cols))), shape=(nz * nx,) * 2)
    src = idx[:, int(np.argmin(np.abs(gx - x_push_mm)))]
    T = dijkstra(graph, directed=False, indices=src, min_only=True).reshape(nz, nx)
    Z, X = np.meshgrid((np.asarray(z_mm) - gz[0]) / step_mm, (np.asarray(x_mm) - gx[0]) / step_mm, indexing="ij")
    return ndimage.map_coordinates(T, [Z, X], order=1, mode="nearest")


def arrival_field_s(wave: ShearWave, phantom: StiffnessPhantom, x_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
    """The wave's arrival time ``(z, x)`` s on a grid, by its ``propagation`` model."""
    if wave.propagation == "eikonal":
        return first_arrival_s(phantom, wave.x_push_mm, np.asarray(x_mm), np.asarray(z_mm))
    return arrival_time_s(phantom.modulus_kpa(x_mm, z_mm), np.asarray(x_mm), wave.x_push_mm)


def displacement_um(wave: ShearWave, e_kpa: np.ndarray, x_mm: np.ndarray, z_mm: np.ndarray,
                    t_s: np.ndarray, phantom: StiffnessPhantom | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(u (frame, z, x) µm, T (z, x) s)`` of the shear wave on a grid (``phantom``: needed for
    ``propagation = "eikonal"``; straight rays use ``e_kpa`` on the grid)."""
    if wave.propagation == "eikonal":
        if phantom is None:
            raise ValueError("eikonal propagation needs the phantom")
        T = first_arrival_s(phantom, wave.x_push_mm, x_mm, z_mm)
    else:
        T = arrival_time_s(e_kpa, x_mm, wave.x_push_mm)
    dist = np.abs(x_mm - wave.x_push_mm)[None, :]
    amp = (wave.amplitude_um * np.exp(-0.5 * ((z_mm[:, None] - wave.z_push_mm) / wave.depth_sigma_mm) ** 2)
           * np.exp(-wave.attenuation_per_mm * dist) / np.sqrt(1.0 + dist / 2.0))
    u = amp[None] * np.exp(-0.5 * ((t_s[:, None, None] - T[None]) / wave.sigma_t_s) ** 2)
    return u, T


def render_ensemble(phantom: StiffnessPhantom | None = None, wave: ShearWave | None = None,
                    setup: TrackingSetup | None = None, seed: int = 0) -> Ensemble:
    """Render one push's tracking ensemble (see the module doc)."""
    phantom = phantom or StiffnessPhantom()
    wave = wave or ShearWave()
    s = setup or TrackingSetup()
    rng = np.random.default_rng(seed)
    x, z = s.lateral_mm(), s.depth_mm()
    t = np.arange(s.n_frames) / s.prf_hz
    E = phantom.modulus_kpa(x, z)
    u_pix, T = displacement_um(wave, E, x, z, t, phantom)
    nz, nx = len(z), len(x)
    # scatterers per line, over the depth range plus a margin
    dz = z[1] - z[0]
    n_sc = int(s.scatterers_per_sample * nz)
    zs = rng.uniform(z[0] - 4 * dz, z[-1] + 4 * dz, size=(nx, n_sc))  # mm
    amp = (rng.standard_normal((nx, n_sc)) + 1j * rng.standard_normal((nx, n_sc))) / np.sqrt(2)
    # displacement of each scatterer: interpolate the pixel-grid field in depth (per line)
    line = np.arange(nx)[:, None]
    fz = np.clip((zs - z[0]) / dz, 0, nz - 1.000001)
    i0 = np.floor(fz).astype(np.int64)
    w1 = fz - i0
    # envelope: Gaussian with the -6 dB fractional bandwidth → σ_t = sqrt(2 ln 2)/(π · bw · f0) (two-way pulse)
    sigma_t = np.sqrt(2 * np.log(2)) / (np.pi * s.fractional_bw * s.f0_hz)
    sigma_samp = sigma_t * s.fs_iq_hz
    half = int(np.ceil(3.5 * sigma_samp))
    taps = np.arange(-half, half + 1)
    k_phase = 4 * np.pi * s.f0_hz / (C_SOUND_M_S * 1e3)  # rad per mm of depth (two-way)
    iq = np.empty((s.n_frames, nz, nx), np.complex64)
    sig_power = 0.0
    flat_line = np.broadcast_to(line, zs.shape)
    for n in range(s.n_frames):
        un = u_pix[n]  # (z, x)
        u_sc = (un[i0, flat_line] * (1 - w1) + un[np.minimum(i0 + 1, nz - 1), flat_line] * w1) * 1e-3  # mm
        zpos = zs + u_sc
        samp = (zpos - z[0]) / dz  # fractional sample index
        base = np.floor(samp).astype(np.int64)
        frac = samp - base
        ph = amp * np.exp(-1j * k_phase * zpos)
        idx = base[..., None] + taps  # (nx, n_sc, taps)
        w = np.exp(-0.5 * ((taps - frac[..., None]) / sigma_samp) ** 2)
        vals = ph[..., None] * w
        ok = (idx >= 0) & (idx < nz)
        flat = (idx + (line * nz)[..., None])[ok]
        v = vals[ok]
        re = np.bincount(flat, weights=v.real, minlength=nx * nz)
        im = np.bincount(flat, weights=v.imag, minlength=nx * nz)
        frame = (re + 1j * im).reshape(nx, nz).T
        iq[n] = frame
        if n == 0:
            sig_power = float(np.mean(np.abs(frame) ** 2))
    noise_sigma = np.sqrt(sig_power / 10 ** (s.snr_db / 10) / 2)
    iq += (noise_sigma * (rng.standard_normal(iq.shape) + 1j * rng.standard_normal(iq.shape))).astype(np.complex64)
    return Ensemble(iq=iq, x_mm=x, z_mm=z, t_s=t, displacement_um=u_pix.astype(np.float32), modulus_kpa=E,
                    arrival_s=T, setup=s,
                    meta={"f0_hz": s.f0_hz, "fs_iq_hz": s.fs_iq_hz, "prf_hz": s.prf_hz, "c_sound_m_s": C_SOUND_M_S,
                          "x_push_mm": wave.x_push_mm, "z_push_mm": wave.z_push_mm})


def tracking_acquisition(setup: TrackingSetup, probe: LinearArrayProbe = L11_4V,
                         f_number: float = 1.5) -> PlaneWaveAcquisition:
    """The 0° plane-wave tracking acquisition whose receive window covers the setup's depth
    range (2 mm above it; the deepest pixel on the edge of an ``f_number`` aperture, plus
    2 µs of pulse), samples rounded up to a multiple of 64, at the setup's PRF."""
    c = C_SOUND_M_S
    fs = 4 * probe.center_frequency_hz  # 4 samples per period, as the B-mode scanner
    z0, z1 = setup.z_mm[0] * 1e-3, setup.z_mm[1] * 1e-3
    t0 = 2 * max(z0 - 2e-3, 0.0) / c
    t1 = (z1 + np.hypot(z1, z1 / (2 * f_number))) / c + 2e-6
    n = int(np.ceil((t1 - t0) * fs / 64) * 64)
    return PlaneWaveAcquisition(probe=probe, angles_deg=(0.0,), sampling_frequency_hz=fs, speed_of_sound_m_s=c,
                                n_samples=n, start_time_s=t0, prf_hz=setup.prf_hz)


@dataclass
class RfEnsemble:
    """One push's tracking ensemble as channel RF, and its truth.

    Attributes:
        rf: ``int16 (frame, angle, element, sample)`` counts.
        acquisition: the tracking acquisition (probe, sampling, receive window, PRF).
        x_mm, z_mm: the setup's pixel grid (where the truth is given); t_s: frame times.
        displacement_um: true axial displacement ``(frame, z, x)`` at the pixels.
        modulus_kpa: true E ``(z, x)``; arrival_s: true arrival time ``(z, x)``.
        scatterers: the speckle scatterers ``(x m, z m, amplitude)``.
    """

    rf: np.ndarray
    acquisition: PlaneWaveAcquisition
    x_mm: np.ndarray
    z_mm: np.ndarray
    t_s: np.ndarray
    displacement_um: np.ndarray
    modulus_kpa: np.ndarray
    arrival_s: np.ndarray
    setup: TrackingSetup
    scatterers: tuple[np.ndarray, np.ndarray, np.ndarray]


def _scatterer_displacement_um(wave: ShearWave, phantom: StiffnessPhantom, xs_mm: np.ndarray, zs_mm: np.ndarray,
                               t_s: np.ndarray, step_mm: float = 0.1) -> np.ndarray:
    """``u (frame, scatterer)`` µm: the straight-ray wave of :func:`displacement_um` at each
    scatterer (arrival time by bilinear interpolation on a ``step_mm`` grid; amplitude exact)."""
    gx = np.arange(min(xs_mm.min(), wave.x_push_mm) - step_mm, xs_mm.max() + 2 * step_mm, step_mm)
    gz = np.arange(zs_mm.min() - step_mm, zs_mm.max() + 2 * step_mm, step_mm)
    T = arrival_field_s(wave, phantom, gx, gz)
    Ts = ndimage.map_coordinates(T, [(zs_mm - gz[0]) / step_mm, (xs_mm - gx[0]) / step_mm], order=1, mode="nearest")
    dist = np.abs(xs_mm - wave.x_push_mm)
    amp = (wave.amplitude_um * np.exp(-0.5 * ((zs_mm - wave.z_push_mm) / wave.depth_sigma_mm) ** 2)
           * np.exp(-wave.attenuation_per_mm * dist) / np.sqrt(1.0 + dist / 2.0))
    return amp[None, :] * np.exp(-0.5 * ((t_s[:, None] - Ts[None, :]) / wave.sigma_t_s) ** 2)


def render_rf_ensemble(phantom: StiffnessPhantom | None = None, wave: ShearWave | None = None,
                       setup: TrackingSetup | None = None, seed: int = 0,
                       acquisition: PlaneWaveAcquisition | None = None, speckle_per_mm2: float = 20.0,
                       noise_counts: float = 3.0, margin_mm: float = 3.0) -> RfEnsemble:
    """Render one push's tracking ensemble as channel RF (module doc): speckle over the
    setup's region plus ``margin_mm``, moved by the shear wave, one plane wave per frame at
    the setup's PRF, white noise of ``noise_counts`` per sample and frame."""
    phantom = phantom or StiffnessPhantom()
    wave = wave or ShearWave()
    s = setup or TrackingSetup()
    acq = acquisition or tracking_acquisition(s)
    x, z = s.lateral_mm(), s.depth_mm()
    t = np.arange(s.n_frames) / s.prf_hz
    region = ((s.x_mm[0] - margin_mm) * 1e-3, (s.x_mm[1] + margin_mm) * 1e-3,
              max(s.z_mm[0] - margin_mm, 0.5) * 1e-3, (s.z_mm[1] + margin_mm) * 1e-3)
    model = PlaneWaveRFModel(acq, Phantom(speckle_density_per_mm2=speckle_per_mm2, region=region), seed=seed,
                             noise_counts=noise_counts, cache_dir=None)
    xs, zs, amp = model.scatterers
    u_sc = _scatterer_displacement_um(wave, phantom, xs * 1e3, zs * 1e3, t)
    rf = model.render_angle_moving(0.0, u_sc * 1e-6)
    rng = np.random.default_rng([seed, 2])
    rf += noise_counts * rng.standard_normal(rf.shape, dtype=np.float32)
    q = np.clip(np.rint(rf), -32767, 32767).astype(np.int16)[:, None]
    E = phantom.modulus_kpa(x, z)
    u_pix, T = displacement_um(wave, E, x, z, t, phantom)
    return RfEnsemble(rf=q, acquisition=acq, x_mm=x, z_mm=z, t_s=t, displacement_um=u_pix.astype(np.float32),
                      modulus_kpa=E, arrival_s=T, setup=s, scatterers=(xs, zs, amp))
