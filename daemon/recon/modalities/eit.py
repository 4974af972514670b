"""Reconstruction-stage binding for EIT streams (modality ``eit``).

Source frames: ``float32 (measurement,)`` with the drive/measurement pattern in the
descriptor geometry (``n_el``, ``pattern`` = ``adjacent`` or ``opposition``, ``ex_mat``,
``meas_mat``) and ``meta.quantity`` = ``real`` or ``magnitude`` (Sciospec and OpenEIT
drivers both publish this).

Outputs:

* ``recon/<stream>``: ``float32 (y, x)`` 32×32 image (``grid`` setting) of the relative
  conductivity change Δσ/σ against the reference (units ``dsigma/sigma``; positive = more
  conductive). Row 0 is anterior (+y), column 0 is -x; the grid spans [-1, 1]² thorax half-widths; pixels outside the
  thorax are 0 (``geometry.mask`` in the output descriptor).
* ``recon/<stream>/gi``: ``float32 (quantity,)`` = ``[global_impedance,
  respiratory_rate_bpm]``: global impedance change −Σ image (rises on inspiration) and the
  respiratory rate (breaths/min, NaN until ``rr_window_s``/2 of data).

Time difference against the mean of the first ``n_ref`` frames; action ``rereference``
(optional ``n_ref``) takes a new reference from the next frames. Settings
(``[recon.settings.eit]``, :class:`EitSettings`): ``n_ref`` (10), ``prior`` (kotre), ``lamb`` (1e-3), ``p``
(0.2), ``grid`` (32), ``n_elements`` (3000), ``normalize`` (true), ``rr_window_s`` (30),
``cache`` (true: reconstruction matrix cached under ``$MEDACQ_CACHE_DIR`` or
``~/.cache/medacq``), ``cache_dir``, ``subsamples`` (3).

Queue policy: ``latest`` (the image is a live view; only the newest frame counts). The
respiratory-rate window keeps its time base (``frame_rate_hz``) across frames it never saw:
frames replaced in the queue (``superseded``) are filled in by linear interpolation between
the global impedance before and after them (breathing is slow next to the frame rate), lost
frames (``gap``) hold the last value. The reconstruction matrix (FEM forward solve and
Jacobian) is built when the descriptor arrives, while the stage reports the stream ``warming``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols.qos import QosPolicy
from medacq.protocols.stream import StreamDescriptor

from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError
from medacq.daemon.recon.algorithms.eit import EitReconstructor, ReconParams, RespiratoryRateEstimator, TimeDifferenceImager, pixel_centres

__all__ = ["EitImager", "EitSettings", "default_cache_dir"]


class EitSettings(BaseModel):
    """``[recon.settings.eit]``."""

    model_config = ConfigDict(extra="forbid")

    n_ref: int = Field(default=10, ge=1, description="frames averaged into the time-difference reference, frames")
    prior: Literal["kotre", "lm", "identity", "dgn"] = Field(
        default="kotre", description="regularisation prior: kotre diag(JᵀJ)^p, lm diag(JᵀJ), identity (= dgn) I")
    lamb: float = Field(default=1e-3, gt=0, description="regularisation weight λ (dimensionless)")
    p: float = Field(default=0.2, description="kotre prior exponent (dimensionless)")
    grid: int = Field(default=32, ge=4, le=256, description="image side, px (grid x grid over [-1, 1]² thorax "
                      "half-widths)")
    subsamples: int = Field(default=3, ge=1, le=16, description="sub-samples per pixel axis of the element → "
                            "pixel interpolation")
    n_elements: int = Field(default=3000, ge=50, description="target number of FEM triangles of the thorax mesh")
    normalize: bool = Field(default=True, description="image (v - v_ref) / |v_ref| instead of v - v_ref")
    rr_window_s: float = Field(default=30.0, gt=0, description="respiratory-rate estimation window, s")
    cache: bool = Field(default=True, description="cache the reconstruction matrix on disk")
    cache_dir: str | None = Field(default=None, description="folder of that cache (default $MEDACQ_CACHE_DIR, "
                                  "else ~/.cache/medacq)")


def default_cache_dir() -> str:
    """``$MEDACQ_CACHE_DIR`` or ``~/.cache/medacq``."""
    return os.environ.get("MEDACQ_CACHE_DIR", os.path.expanduser("~/.cache/medacq"))


class EitImager(Reconstructor):
    """Time-difference one-step Gauss–Newton (JAC, Woodbury) imaging of an EIT stream."""

    modality = "eit"
    Settings = EitSettings
    qos = QosPolicy(policy="latest")

    def __init__(self, descriptor: StreamDescriptor, settings: EitSettings | dict[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        s: EitSettings = self.settings  # type: ignore[assignment]
        geo = descriptor.geometry
        n_el = int(geo.get("n_el", 0))
        pattern = str(geo.get("pattern", ""))
        if n_el not in (8, 16, 32) or pattern not in ("adjacent", "opposition"):
            raise ReconstructorError(f"{descriptor.stream}: EIT descriptor needs geometry.n_el (8/16/32) and "
                                     f"geometry.pattern (adjacent/opposition), got {n_el!r}, {pattern!r}")
        quantity = str(descriptor.meta.get("quantity", "real"))
        self.params = ReconParams(
            prior=s.prior, lamb=s.lamb, p=s.p, grid=s.grid, subsamples=s.subsamples, normalize=s.normalize,
            magnitude=quantity == "magnitude",
        )
        cache_dir = None
        if s.cache:
            cache_dir = s.cache_dir or default_cache_dir()
        self.recon = EitReconstructor.for_thorax(n_el, s.n_elements, pattern,
                                                 self.params, cache_dir)
        pat = self.recon.pattern
        if "meas_mat" in geo and "ex_mat" in geo:
            if (np.asarray(geo["ex_mat"]).tolist() != pat.ex_mat.tolist()
                    or np.asarray(geo["meas_mat"]).tolist() != pat.meas_mat.tolist()):
                raise ReconstructorError(f"{descriptor.stream}: the stream's {pattern} pattern differs from the "
                                         "model's (electrode order/orientation); not reconstructed")
        if descriptor.shape != [pat.n_total]:
            raise ReconstructorError(f"{descriptor.stream}: frames of shape {descriptor.shape}, the {pattern} "
                                     f"pattern for {n_el} electrodes has {pat.n_total} measurements")
        self.n_ref = s.n_ref
        self.imager = TimeDifferenceImager(self.recon, self.n_ref)
        fs = float(descriptor.frame_rate_hz or 20.0)
        self.fs = fs
        self.rr_window_s = s.rr_window_s
        self.rr = RespiratoryRateEstimator(fs, self.rr_window_s)
        self._last_gi: float | None = None
        self._skipped = 0  # frames superseded since the last image (filled in by interpolation)
        xs, ys = pixel_centres(self.recon.grid)
        self._image_meta = {
            "geometry": {"grid": self.recon.grid, "x": xs.tolist(), "y": ys.tolist(),
                         "length_unit": "thorax half-width", "mask": self.recon.mask.astype(int).tolist(),
                         "n_el": n_el, "pattern": pattern},
            "method": "time-difference one-step Gauss-Newton (JAC, Woodbury), GREIT-style 32x32 grid",
            "params": {"prior": self.params.prior, "lamb": self.params.lamb, "p": self.params.p,
                       "normalize": self.params.normalize, "magnitude": self.params.magnitude},
            "n_ref": self.n_ref, "setup_s": round(self.recon.setup_s, 4), "cache_hit": self.recon.cache_hit,
        }
        self._gi_meta = {"channel_names": ["global_impedance", "respiratory_rate_bpm"],
                         "units": ["dsigma/sigma (sum over pixels, sign-flipped)", "1/min"]}

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        fr = self.imager.push(frame)
        skipped, self._skipped = self._skipped, 0
        if fr is None:
            return []
        if skipped and self._last_gi is not None:
            a, b = self._last_gi, fr.global_impedance
            n = min(skipped, int(self.fs * self.rr_window_s))
            for k in range(1, n + 1):
                self.rr.add(a + (b - a) * k / (n + 1))  # one estimate per image, not per filled-in sample
        self._last_gi = fr.global_impedance
        rate = self.rr.push(fr.global_impedance)
        gi = np.array([fr.global_impedance, np.nan if rate is None else rate], dtype=np.float32)
        return [
            Output("", fr.image, ["y", "x"], "dsigma/sigma",
                   meta={"frame": fr.index, "global_impedance": fr.global_impedance},
                   descriptor_meta=dict(self._image_meta)),
            Output("gi", gi, ["quantity"], "mixed",
                   meta={"global_impedance": fr.global_impedance, "respiratory_rate_bpm": rate},
                   descriptor_meta=dict(self._gi_meta)),
        ]

    def on_gap(self, first_seq: int | None, count: int) -> None:
        """Keep the rate estimator's time base: hold the last value over lost frames."""
        self._hold(count)

    def on_superseded(self, count: int) -> None:
        """Frames the stage's ``latest`` queue replaced: interpolated into the rate window
        when the next image comes (module doc)."""
        self._skipped += count

    def _hold(self, count: int) -> None:
        if self._last_gi is not None:
            for _ in range(min(count, int(self.fs * self.rr_window_s))):
                self.rr.add(self._last_gi)

    def control(self, action: str, args: dict[str, Any]) -> Any:
        if action == "rereference":
            if "n_ref" in args:
                n = int(args["n_ref"])
                if n < 1:
                    raise ValueError("n_ref must be >= 1")
                self.imager.n_ref = self.n_ref = n
            self.imager.rereference()
            return {"rereferencing": True, "n_ref": self.n_ref, "images_so_far": self.imager.frames}
        if action == "info":
            return {"n_ref": self.n_ref, "has_reference": self.imager.reference is not None,
                    "images": self.imager.frames, "setup_s": self.recon.setup_s, "cache_hit": self.recon.cache_hit,
                    "measurements": self.recon.pattern.n_total, "grid": self.recon.grid}
        return super().control(action, args)
