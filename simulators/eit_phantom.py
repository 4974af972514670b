"""Time-varying thorax conductivity phantom with a complete-electrode-model forward solve.

The phantom is the *model* half of the EIT simulators: physics and state, no bytes.

* Geometry: the thorax outline of :mod:`medacq.protocols.models.eit_fem`, meshed finer than the
  reconstruction (default 6000 elements vs 3000) and solved with the complete electrode
  model (finite electrodes, contact impedance) while the reconstruction uses point
  electrodes: no inverse crime.
* Tissues (S/m, ~50 kHz): background 0.35, lungs 0.20 at end-expiration, heart/blood
  0.70, spine 0.02. Lungs lose ``breathing_amplitude`` of their conductivity at full
  inspiration, ``fill(t) = (1 - cos 2π f_r t) / 2``; the heart gains
  ``cardiac_amplitude`` at the heart rate. Optional inclusions (centre, radius,
  multiplicative contrast) are placed by the caller.
* Noise: white Gaussian on every electrode potential, std = rms(homogeneous frame) ×
  10^(-snr_db/20). Deterministic: one ``numpy`` Generator seeded from ``seed``.
* Units: lengths in thorax half-widths; potentials in V for ``current_a`` amperes through a
  slab ``thickness_m`` thick.

Forward solves are exact on a (lung fill × cardiac) grid of 33 × 9 states, computed lazily
and cached; frames in between are bilinear in the electrode transfer matrix, so a long run
costs at most 297 sparse solves (``warm()`` does them up front, ≈4 s; with ``cache_dir``
they are stored on disk, keyed by every parameter that changes them, so a restart loads
them in milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols.models.eit_fem import EitMesh, Forward, Pattern, adjacent_pattern, thorax_mesh

__all__ = ["Inclusion", "ThoraxPhantom", "PhantomOptions", "make_phantom", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$MEDACQ_CACHE_DIR`` or ``~/.cache/medacq``."""
    return Path(os.environ.get("MEDACQ_CACHE_DIR", os.path.expanduser("~/.cache/medacq")))

SIGMA_BACKGROUND = 0.35
SIGMA_LUNG = 0.20
SIGMA_HEART = 0.70
SIGMA_SPINE = 0.02


@dataclass(frozen=True, slots=True)
class Inclusion:
    """A disc with conductivity multiplied by ``contrast`` (centre/radius in half-widths)."""

    x: float
    y: float
    radius: float
    contrast: float


class ThoraxPhantom:
    """Breathing/beating thorax with inclusions; frames via the CEM forward model."""

    LUNGS = ((-0.52, -0.05, 0.28, 0.40), (0.52, -0.05, 0.28, 0.40))  # (cx, cy, ax, ay)
    HEART = (0.0, 0.30, 0.15)
    SPINE = (0.0, -0.52, 0.08)

    def __init__(
        self,
        n_el: int = 16,
        seed: int = 0,
        respiratory_rate_bpm: float = 15.0,
        heart_rate_bpm: float = 72.0,
        breathing_amplitude: float = 0.3,
        cardiac_amplitude: float = 0.05,
        snr_db: float = 60.0,
        n_elements: int = 6000,
        z_contact: float = 0.02,
        current_a: float = 1e-3,
        thickness_m: float = 0.1,
        mesh: EitMesh | None = None,
        cache_size: int = 4096,
    ) -> None:
        self.n_el = n_el
        self.seed = seed
        self.respiratory_rate_bpm = respiratory_rate_bpm
        self.heart_rate_bpm = heart_rate_bpm
        self.breathing_amplitude = breathing_amplitude
        self.cardiac_amplitude = cardiac_amplitude
        self.snr_db = snr_db
        self.z_contact = z_contact
        self.current_a = current_a
        self.thickness_m = thickness_m
        self.mesh = mesh or thorax_mesh(n_el, n_elements)
        self.forward = Forward(self.mesh)
        self.rng = np.random.default_rng(seed)
        self.inclusions: list[Inclusion] = []
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        c = self.mesh.centres
        self._lung = np.zeros(self.mesh.n_elements, bool)
        for cx, cy, ax, ay in self.LUNGS:
            self._lung |= ((c[:, 0] - cx) / ax) ** 2 + ((c[:, 1] - cy) / ay) ** 2 < 1.0
        hx, hy, hr = self.HEART
        self._heart = np.hypot(c[:, 0] - hx, c[:, 1] - hy) < hr
        sx, sy, sr = self.SPINE
        self._spine = np.hypot(c[:, 0] - sx, c[:, 1] - sy) < sr
        self._incl_factor = np.ones(self.mesh.n_elements)
        self._noise_std: float | None = None

    # ------------------------------------------------------------------ state

    def add_inclusion(self, x: float, y: float, radius: float, contrast: float) -> Inclusion:
        inc = Inclusion(float(x), float(y), float(radius), float(contrast))
        self.inclusions.append(inc)
        self._rebuild_inclusions()
        return inc

    def clear_inclusions(self) -> None:
        self.inclusions.clear()
        self._rebuild_inclusions()

    def _rebuild_inclusions(self) -> None:
        c = self.mesh.centres
        f = np.ones(self.mesh.n_elements)
        for inc in self.inclusions:
            f[np.hypot(c[:, 0] - inc.x, c[:, 1] - inc.y) < inc.radius] *= inc.contrast
        self._incl_factor = f
        self._cache.clear()

    def lung_fill(self, t: float) -> float:
        """Lung air fill in [0, 1] at time ``t`` (s)."""
        return 0.5 * (1.0 - np.cos(2 * np.pi * self.respiratory_rate_bpm / 60.0 * t))

    def cardiac(self, t: float) -> float:
        """Cardiac blood-volume waveform in [0, 1] at time ``t`` (s)."""
        ph = (self.heart_rate_bpm / 60.0 * t) % 1.0
        return float(np.exp(-(((ph - 0.25) / 0.12) ** 2)))

    FILL_STEPS = 32
    CARDIAC_STEPS = 8

    def _state(self, t: float) -> tuple[float, float]:
        """Continuous grid coordinates (fill × FILL_STEPS, cardiac × CARDIAC_STEPS).

        A component with zero amplitude changes nothing, so its coordinate stays 0 (one
        forward solve serves a still phantom).
        """
        f = self.lung_fill(t) * self.FILL_STEPS if self.breathing_amplitude else 0.0
        c = self.cardiac(t) * self.CARDIAC_STEPS if self.cardiac_amplitude else 0.0
        return f, c

    def conductivity_for_state(self, fill_g: float, card_g: float) -> np.ndarray:
        """Conductivities for grid coordinates (see :meth:`_state`)."""
        sigma = np.full(self.mesh.n_elements, SIGMA_BACKGROUND)
        sigma[self._lung] = SIGMA_LUNG * (1.0 - self.breathing_amplitude * fill_g / self.FILL_STEPS)
        sigma[self._heart] = SIGMA_HEART * (1.0 + self.cardiac_amplitude * card_g / self.CARDIAC_STEPS)
        sigma[self._spine] = SIGMA_SPINE
        return sigma * self._incl_factor

    def conductivity(self, t: float) -> np.ndarray:
        """Element conductivities (S/m) at time ``t``, shape ``(n_elements,)``."""
        return self.conductivity_for_state(*self._state(t))

    # ------------------------------------------------------------------ physics

    def _node(self, i: int, j: int) -> np.ndarray:
        key = (i, j)
        T = self._cache.get(key)
        if T is None:
            T = self.forward.forward_cem(self.conductivity_for_state(i, j), self.z_contact) / self.thickness_m
            self._cache[key] = T
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return T

    def transfer(self, t: float) -> np.ndarray:
        """Noise-free CEM transfer matrix (n_el, n_el), V per A, at time ``t``.

        Bilinear in (lung fill, cardiac) between exact solves on a 33 × 9 state grid,
        computed lazily and cached.
        """
        f, c = self._state(t)
        i0 = min(int(np.floor(f)), self.FILL_STEPS - 1)
        j0 = min(int(np.floor(c)), self.CARDIAC_STEPS - 1)
        wf, wc = f - i0, c - j0
        T = np.zeros((self.n_el, self.n_el))
        for di, a in ((0, 1.0 - wf), (1, wf)):
            for dj, b in ((0, 1.0 - wc), (1, wc)):
                w = a * b
                if w > 1e-12:
                    T += w * self._node(i0 + di, j0 + dj)
        return T

    def cache_key(self) -> str:
        """Hash of everything the grid of forward solves depends on (not the noise seed)."""
        parts = {
            "v": 1, "mesh": self.mesh.digest(), "grid": [self.FILL_STEPS, self.CARDIAC_STEPS],
            "tissue": [SIGMA_BACKGROUND, SIGMA_LUNG, SIGMA_HEART, SIGMA_SPINE, self.LUNGS, self.HEART, self.SPINE],
            "amp": [self.breathing_amplitude, self.cardiac_amplitude], "z": self.z_contact,
            "thickness": self.thickness_m, "inclusions": [asdict(i) for i in self.inclusions],
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def warm(self, cache_dir: str | os.PathLike | None = None) -> bool:
        """Solve every grid state now (≈300 sparse solves) so streaming never waits.

        With ``cache_dir`` the solves are loaded from (or saved to) disk. Returns True on a
        cache hit.
        """
        shape = (self.FILL_STEPS + 1, self.CARDIAC_STEPS + 1, self.n_el, self.n_el)
        path = Path(cache_dir) / f"eit-phantom-{self.cache_key()}.npy" if cache_dir is not None else None
        if path is not None and path.exists():
            try:
                grid = np.load(path, allow_pickle=False)
                if grid.shape == shape:
                    for i in range(shape[0]):
                        for j in range(shape[1]):
                            self._cache[(i, j)] = grid[i, j]
                    return True
            except (OSError, ValueError):
                pass  # corrupt entry: rebuild it
        grid = np.empty(shape)
        for i in range(shape[0]):
            for j in range(shape[1]):
                grid[i, j] = self._node(i, j)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, grid)
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only cache only costs time
        return False

    def noise_std(self) -> float:
        """Noise std (V) on each potential: rms of the homogeneous adjacent frame / SNR."""
        if self._noise_std is None:
            T = self.forward.forward_cem(np.full(self.mesh.n_elements, SIGMA_BACKGROUND), self.z_contact)
            v = self.forward.measurements(T / self.thickness_m * self.current_a, adjacent_pattern(self.n_el))
            self._noise_std = float(np.sqrt(np.mean(v**2)) * 10 ** (-self.snr_db / 20.0))
        return self._noise_std

    def electrode_potentials(self, t: float, ex_mat: np.ndarray, noise: bool = True) -> np.ndarray:
        """Potentials (V) of all electrodes for each drive, shape ``(n_exc, n_el)``.

        ``ex_mat``: ``(n_exc, 2)`` 0-based (source, sink) pairs.
        """
        T = self.transfer(t) * self.current_a
        ex = np.asarray(ex_mat, dtype=np.int64)
        U = (T[:, ex[:, 0]] - T[:, ex[:, 1]]).T
        if noise and self.snr_db < np.inf:
            U = U + self.rng.normal(0.0, self.noise_std(), U.shape)
        return U

    def frame(self, t: float, pattern: Pattern, noise: bool = True) -> np.ndarray:
        """Flattened differential frame (V), shape ``(pattern.n_total,)``."""
        U = self.electrode_potentials(t, pattern.ex_mat, noise)
        k = np.arange(pattern.n_exc)[:, None]
        return (U[k, pattern.meas_mat[:, :, 0]] - U[k, pattern.meas_mat[:, :, 1]]).reshape(-1)

    def truth(self) -> dict:
        """Ground truth for tests: rates, amplitudes, organs and inclusions (mesh units)."""
        return {
            "n_el": self.n_el,
            "seed": self.seed,
            "respiratory_rate_bpm": self.respiratory_rate_bpm,
            "heart_rate_bpm": self.heart_rate_bpm,
            "breathing_amplitude": self.breathing_amplitude,
            "cardiac_amplitude": self.cardiac_amplitude,
            "snr_db": self.snr_db,
            "domain_radius": self.mesh.domain_radius,
            "inclusions": [asdict(i) for i in self.inclusions],
            "lungs": [list(x) for x in self.LUNGS],
            "heart": list(self.HEART),
        }


class PhantomOptions(BaseModel):
    """Phantom options shared by the EIT simulator factories (``medacq sim sciospec KEY=VALUE``).

    Attributes:
        seed: noise seed (same seed, same bytes).
        respiratory_rate_bpm, heart_rate_bpm: breaths / beats per minute.
        breathing_amplitude: fractional lung conductivity drop at full inspiration.
        cardiac_amplitude: fractional heart conductivity rise at systole.
        snr_db: measurement SNR (dB) against the homogeneous frame's rms.
        n_elements: phantom mesh size (finer than the reconstruction's 3000).
        inclusions: ``[[x, y, radius, contrast], ...]`` in thorax half-widths.
        warm: solve the whole breathing/cardiac grid at start (from the disk cache when it
            is there) so the simulator never stalls while streaming.
        cache: keep those solves in ``$MEDACQ_CACHE_DIR`` (default ``~/.cache/medacq``).
    """

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    respiratory_rate_bpm: float = Field(default=15.0, gt=0, le=120)
    heart_rate_bpm: float = Field(default=72.0, gt=0, le=300)
    breathing_amplitude: float = Field(default=0.3, ge=0, lt=1)
    cardiac_amplitude: float = Field(default=0.05, ge=0, lt=1)
    snr_db: float = Field(default=60.0, gt=0)
    n_elements: int = Field(default=6000, ge=200, le=50_000)
    inclusions: list[list[float]] = Field(default_factory=list)
    warm: bool = True
    cache: bool = True


def make_phantom(n_el: int, opts: PhantomOptions) -> ThoraxPhantom:
    """Build (and warm, from the disk cache where possible) a phantom from options."""
    ph = ThoraxPhantom(
        n_el=n_el, seed=opts.seed, respiratory_rate_bpm=opts.respiratory_rate_bpm,
        heart_rate_bpm=opts.heart_rate_bpm, breathing_amplitude=opts.breathing_amplitude,
        cardiac_amplitude=opts.cardiac_amplitude, snr_db=opts.snr_db, n_elements=opts.n_elements,
    )
    for inc in opts.inclusions:
        if len(inc) != 4:
            raise ValueError("an inclusion is [x, y, radius, contrast]")
        ph.add_inclusion(*inc)
    if opts.warm:
        ph.warm(default_cache_dir() if opts.cache else None)
    return ph
