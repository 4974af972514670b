"""Reconstruction-stage bindings of the GigE Vision camera modalities.

:class:`ThermalReconstructor` (modality ``thermal``; queue ``fifo`` with 1 s maximum age)
    * ``recon/<stream>``: object temperature, float32 ``(y, x)`` °C -- radiometric counts
      through the device's calibration (descriptor ``geometry.radiometry``: Planck R, B, F, O,
      emissivity, reflected temperature, or the temperature-linear mode), minus the drift the
      black-body reference measures (:class:`BlackbodyDriftCorrector`).
    * ``recon/<stream>/screening``: float32 ``(value,)`` = [canthus max, face max, black body
      measured after correction, drift offset K] °C, meta ``fever`` (canthus max ≥
      ``fever_threshold_c``) -- the IEC 80601-2-59 screening figures.
    * ``recon/<stream>/view``: uint8 ``(y, x, c)`` iron palette, every ``view_every`` frames.
:class:`EndoscopeReconstructor` (modality ``endoscope``; ``latest``)
    * ``recon/<stream>``: uint8 sRGB ``(y, x, c)``: demosaic (half-resolution superpixel by
      default, or bilinear at full resolution), white balance (grey-world, smoothed, or fixed
      gains), colour matrix, distortion correction, gamma.
:class:`PhotoReconstructor` (modality ``photo``; ``fifo``)
    * ``recon/<stream>``: uint8 sRGB ``(y, x, c)`` after the chart calibration (half size).
    * ``recon/<stream>/chart``: float32 ``(patch,)`` ΔE2000 of the 24 patches after the fitted
      3×3 colour matrix; meta ``deltaE_mean``, ``deltaE_max``, ``matrix``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols.models.cameras import colorchecker_srgb, linear_to_srgb, linear_srgb_to_xyz, srgb_to_lab, \
    srgb_to_linear, xyz_to_lab
from medacq.protocols.qos import QosPolicy
from medacq.protocols.stream import StreamDescriptor

from medacq.daemon.recon.algorithms.cameras import (
    BlackbodyDriftCorrector, chart_patch_means, counts_to_celsius, delta_e2000, demosaic_rggb, fit_color_matrix,
    gather_rggb_luts, gray_world_gains, iron_colormap, roi_stats, superpixel_rggb, undistort_maps, warm_gather_kernel,
)
from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError

__all__ = ["ThermalReconstructor", "ThermalSettings", "EndoscopeReconstructor", "EndoscopeSettings",
           "PhotoReconstructor", "PhotoSettings"]

Roi = list[float]


class ThermalSettings(BaseModel):
    """``[recon.settings.thermal]``; regions are ``[y0, x0, y1, x1]`` fractions of the frame
    (defaults: the simulated camera's scene)."""

    model_config = ConfigDict(extra="forbid")

    blackbody_c: float | None = Field(35.0, description="the reference black body's temperature, °C (None: no "
                                      "drift correction)")
    blackbody_roi: Roi = Field(default_factory=lambda: [40 / 480, 40 / 640, 100 / 480, 100 / 640],
                               description="the black body's region, [y0, x0, y1, x1] fractions of the frame")
    canthus_roi: Roi = Field(default_factory=lambda: [165 / 480, 285 / 640, 195 / 480, 355 / 640],
                             description="the inner eye corners' region (screening maximum), fractions")
    face_roi: Roi = Field(default_factory=lambda: [60 / 480, 210 / 640, 330 / 480, 430 / 640],
                          description="the face's region (statistics), fractions")
    drift_tau_frames: float = Field(30.0, ge=1, description="running mean of the black-body error, frames")
    fever_threshold_c: float = Field(37.5, description="canthus maximum at or above this: fever")
    emissivity: float | None = Field(None, gt=0, le=1, description="override the device's emissivity")
    view_every: int = Field(1, ge=1, description="publish the colour view every N frames")
    view_range_c: list[float] = Field(default_factory=lambda: [20.0, 40.0],
                                      description="colour view range [low, high], °C")


class ThermalReconstructor(Reconstructor):
    """Counts → °C, black-body drift correction, screening statistics; see the module docstring."""

    modality = "thermal"
    Settings = ThermalSettings
    qos = QosPolicy(policy="fifo", max_age_ms=1000.0)

    def __init__(self, descriptor: StreamDescriptor, settings: BaseModel | Mapping[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        s: ThermalSettings = self.settings  # type: ignore[assignment]
        self.radiometry = dict(descriptor.geometry.get("radiometry") or {})
        if not self.radiometry:
            raise ReconstructorError(f"{descriptor.stream}: no radiometric calibration in the descriptor")
        self.drift = BlackbodyDriftCorrector(s.blackbody_c, s.blackbody_roi, s.drift_tau_frames) \
            if s.blackbody_c is not None else None
        self._n = 0

    def on_gap(self, first_seq: int | None, count: int) -> None:
        pass  # drift is slow: the running estimate stays valid across a lost frame

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        s: ThermalSettings = self.settings  # type: ignore[assignment]
        t = counts_to_celsius(frame, self.radiometry, emissivity=s.emissivity)
        offset = 0.0
        if self.drift is not None:
            offset = self.drift.update(t)
            t -= np.float32(offset)
        canthus = roi_stats(t, s.canthus_roi)["max"]
        face = roi_stats(t, s.face_roi)["max"]
        bb = self.drift.measure(t) if self.drift is not None else float("nan")
        fever = canthus >= s.fever_threshold_c
        meta = {"canthus_max_c": canthus, "face_max_c": face, "blackbody_c": bb, "drift_offset_k": offset,
                "fever": bool(fever)}
        out = [Output("", t, ["y", "x"], "degC", meta=meta),
               Output("screening", np.array([canthus, face, bb, offset], np.float32), ["value"], "degC", meta=meta,
                      descriptor_meta={"labels": ["canthus_max", "face_max", "blackbody", "drift_offset"]})]
        self._n += 1
        if self._n % s.view_every == 0:
            lo, hi = s.view_range_c
            out.append(Output("view", iron_colormap(t, lo, hi), ["y", "x", "c"], "", meta={"range_c": [lo, hi]}))
        return out


class EndoscopeSettings(BaseModel):
    """``[recon.settings.endoscope]``."""

    model_config = ConfigDict(extra="forbid")

    white_balance: str = Field("gray_world", description="gray_world (auto, smoothed) or fixed")
    wb_gains: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0], description="fixed R, G, B gains")
    color_matrix: list[list[float]] = Field(default_factory=lambda: np.eye(3).tolist(),
                                            description="3x3 colour correction matrix applied to linear RGB")
    distortion_k1: float = Field(-0.12, description="radial distortion of the optics (0: none)")
    demosaic: str = Field("superpixel", description="superpixel (half resolution, fast: the live view) or "
                          "bilinear (full resolution)")
    downsample: int = Field(1, ge=1, le=8, description="then publish every Nth pixel in each direction")


class EndoscopeReconstructor(Reconstructor):
    """Demosaic, white balance, colour correction, distortion correction; latest-only."""

    modality = "endoscope"
    Settings = EndoscopeSettings
    qos = QosPolicy(policy="latest")

    def __init__(self, descriptor: StreamDescriptor, settings: BaseModel | Mapping[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        s: EndoscopeSettings = self.settings  # type: ignore[assignment]
        h, w = descriptor.shape[:2]
        if s.demosaic not in ("superpixel", "bilinear"):
            raise ReconstructorError(f"demosaic must be superpixel or bilinear, not {s.demosaic!r}")
        if s.demosaic == "superpixel":
            h, w = h // 2, w // 2
        bits = int(descriptor.geometry.get("bits", 8))
        self.scale = 1.0 / ((1 << bits) - 1)
        self.top = (1 << bits) - 1  # the largest raw value
        self.maps = undistort_maps(h, w, s.distortion_k1) if s.distortion_k1 else None
        self.gains = np.array(s.wb_gains, np.float32)
        self.ccm = np.array(s.color_matrix, np.float32)
        self._lut = (np.clip(linear_to_srgb(np.linspace(0, 1, 4096)), 0, 1) * 255).astype(np.uint8)
        self._raw_w = int(descriptor.shape[1])
        self._fast = self._fast_indices(s) if s.demosaic == "superpixel" and np.allclose(self.ccm, np.eye(3)) else None

    @classmethod
    def preload(cls) -> None:
        warm_gather_kernel()  # the fast path's compiled gather (numba's on-disk cache after the first run)

    def _fast_indices(self, s: "EndoscopeSettings") -> np.ndarray:
        """The raw pixel (flat index into the Bayer frame, int32) of each output pixel's RGGB cell
        (its R, top left): the superpixel demosaic, the distortion map and the downsampling folded
        into one gather (the fast path of :meth:`process`)."""
        d = s.downsample
        h2, w2 = self.scale_shape
        if self.maps is not None:
            oy, ox = (m[::d, ::d] for m in self.maps)
        else:
            oy, ox = np.mgrid[0:h2:d, 0:w2:d]
        base = (2 * oy.astype(np.int64)) * self._raw_w + 2 * ox.astype(np.int64)
        return np.ascontiguousarray(base, np.int32 if base.size == 0 or base.max() < 2 ** 31 else np.int64)

    @property
    def scale_shape(self) -> tuple[int, int]:
        """The superpixel image's ``(y, x)`` size."""
        return int(self.descriptor.shape[0]) // 2, int(self.descriptor.shape[1]) // 2

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        s: EndoscopeSettings = self.settings  # type: ignore[assignment]
        # the fast path's indices were made for the descriptor's shape (the compiled gather checks no
        # bounds): a frame of any other shape or type takes the float pipeline, which fails safely
        if self._fast is not None and frame.shape == tuple(self.descriptor.shape[:2]) \
                and np.issubdtype(frame.dtype, np.unsignedinteger) and frame.dtype.itemsize <= 2:
            return self._process_fast(s, frame)
        return self._process_float(s, frame)

    def _process_fast(self, s: "EndoscopeSettings", frame: np.ndarray) -> list[Output]:
        """Superpixel demosaic, white balance, distortion correction and the sRGB curve as gathers of
        the raw values through per-channel look-up tables (built per frame: the gains move), with the
        arithmetic of :meth:`_process_float` in the same float32 order, so the output is the same to
        the bit (tests). No float image is made; the gathers and table look-ups run as one compiled
        pass that releases the GIL (:func:`gather_rggb_luts`; numpy ``take`` without numba)."""
        if s.white_balance == "gray_world":
            # the float path's gray_world_gains(rgb) reads every 8th superpixel: the 2x2 Bayer cells at
            # every 16th row and column, demosaiced the same way (same values, same float32 sums)
            h, w = frame.shape
            rows = (np.arange(0, h - 1, 16)[:, None] + np.arange(2)).ravel()
            cols = (np.arange(0, w - 1, 16)[:, None] + np.arange(2)).ravel()
            g = gray_world_gains(superpixel_rggb(frame[rows][:, cols], self.scale), step=1)
            self.gains = 0.8 * self.gains + 0.2 * g
        # the look-up tables span the descriptor's bit depth; a value beyond it (a corrupt 12-bit
        # pixel) is clamped to the top first (the float path saturates it one step higher at most)
        top = 255 if frame.dtype.itemsize == 1 else self.top
        sc = np.float32(self.scale)
        v = np.arange(top + 1, dtype=np.float32)
        v2 = np.arange(2 * top + 1, dtype=np.float32)

        def lut(vals: np.ndarray, gain: np.floating) -> np.ndarray:
            return self._lut[np.clip(vals * sc * gain * 4095, 0, 4095).astype(np.uint16)]

        luts = (lut(v, self.gains[0]), lut(v2 * np.float32(0.5), self.gains[1]), lut(v, self.gains[2]))
        out = gather_rggb_luts(np.ascontiguousarray(frame), self._fast, top, luts)
        return [Output("", out, ["y", "x", "c"], "", meta={"wb_gains": [float(x) for x in self.gains]})]

    def _process_float(self, s: "EndoscopeSettings", frame: np.ndarray) -> list[Output]:
        d = s.downsample
        rgb = superpixel_rggb(frame, self.scale) if s.demosaic == "superpixel" else demosaic_rggb(frame, self.scale)
        if s.white_balance == "gray_world":
            g = gray_world_gains(rgb)
            self.gains = 0.8 * self.gains + 0.2 * g
        rgb *= self.gains
        if not np.allclose(self.ccm, np.eye(3)):
            rgb = rgb @ self.ccm.T
        if self.maps is not None:
            iy, ix = self.maps
            rgb = rgb[iy[::d, ::d], ix[::d, ::d]]
        elif d > 1:
            rgb = rgb[::d, ::d]
        idx = np.clip(rgb * 4095, 0, 4095).astype(np.uint16)
        out = self._lut[idx]
        return [Output("", out, ["y", "x", "c"], "", meta={"wb_gains": [float(x) for x in self.gains]})]


class PhotoSettings(BaseModel):
    """``[recon.settings.photo]``: where the ColorChecker is (fractions of the frame; default:
    the simulated scene), how its patches are spaced."""

    model_config = ConfigDict(extra="forbid")

    chart_roi: Roi | None = Field(None, description="[y0, x0, y1, x1] fractions; None: the simulator's layout")
    gap_ratio: float = Field(0.125, ge=0, le=1, description="gap between patches as a fraction of a patch's side")
    publish_image: bool = Field(True, description="also publish the colour-corrected image (else the figures only)")


def _default_chart(h: int, w: int) -> list[float]:
    """The simulated photography scene's chart box (see simulators/camera_models.PhotoModel)."""
    pw = int(w * 0.7 / 6) // 2 * 2
    gap = pw // 8 // 2 * 2
    cw, ch = 6 * pw + 5 * gap, 4 * pw + 3 * gap
    x0, y0 = (w - cw) // 2 // 2 * 2, (h - ch) // 2 // 2 * 2
    return [y0 / h, x0 / w, (y0 + ch) / h, (x0 + cw) / w]


class PhotoReconstructor(Reconstructor):
    """Demosaic, fit a 3×3 colour matrix on the 24 chart patches, report ΔE2000."""

    modality = "photo"
    Settings = PhotoSettings
    qos = QosPolicy(policy="fifo", max_frames=4)

    def __init__(self, descriptor: StreamDescriptor, settings: BaseModel | Mapping[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        h, w = descriptor.shape[:2]
        s: PhotoSettings = self.settings  # type: ignore[assignment]
        self.chart = s.chart_roi or _default_chart(h, w)
        self.scale = 1.0 / ((1 << int(descriptor.geometry.get("bits", 8))) - 1)
        self.ref_srgb = colorchecker_srgb()
        self.ref_lin = srgb_to_linear(self.ref_srgb)
        self.ref_lab = srgb_to_lab(self.ref_srgb)

    def calibrate(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(matrix, ΔE per patch, linear RGB image)`` of one raw still."""
        s: PhotoSettings = self.settings  # type: ignore[assignment]
        rgb = demosaic_rggb(frame, self.scale)
        cam = chart_patch_means(rgb, self.chart, gap_ratio=s.gap_ratio)
        m = fit_color_matrix(cam, self.ref_lin)
        corrected = np.clip(cam @ m.T, 0, None)
        de = delta_e2000(xyz_to_lab(linear_srgb_to_xyz(corrected)), self.ref_lab)
        return m, de, rgb

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        s: PhotoSettings = self.settings  # type: ignore[assignment]
        m, de, rgb = self.calibrate(frame)
        meta = {"deltaE_mean": float(de.mean()), "deltaE_max": float(de.max()), "matrix": m.tolist()}
        out = [Output("chart", de.astype(np.float32), ["patch"], "deltaE2000", meta=meta)]
        if s.publish_image:
            half = rgb[::2, ::2] @ m.T.astype(np.float32)
            img = (np.clip(linear_to_srgb(np.clip(half, 0, 1)), 0, 1) * 255).astype(np.uint8)
            out.insert(0, Output("", img, ["y", "x", "c"], "", meta=meta))
        return out
