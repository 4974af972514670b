"""Scene and sensor models of the three GigE Vision cameras (physics and state, no bytes).

Each model renders the sensor's raw pixels for frame ``index`` at device time ``t`` (s):
a 2-D array ``(y, x)`` of the pixel format's integer values (Mono16 counts, Bayer RGGB
8-bit, or 12-bit values for BayerRG12p), deterministically from its seed. ``truth()``
reports what the scene really holds, for tests and benchmarks.

* :class:`ThermalModel` -- FLIR-A-series-like radiometric camera, 640×480 (or 160×120,
  Lepton-class) Mono16 at up to 30 Hz. A standing person (face, neck, body under
  clothing) at physiological temperatures, the inner canthi warmest; ``fever=True`` raises
  the core-linked regions by 1.8 °C. A black-body reference at a known temperature sits in
  the field of view. Sensor: temporal noise with NETD 50 mK, fixed-pattern offsets that grow
  between flat-field (shutter) corrections, and a slow radiometric drift (counts/s) that
  NUC does not remove -- the black body is there to correct it. Output: raw Planck counts
  (R, B, F, O) or, in temperature-linear mode, ``counts = T(K) × 100``.
* :class:`EndoscopeModel` -- 1920×1080 BayerRG8 (or BayerRG12p) at 30/60 fps. Tissue
  texture (mucosa with vessels) drifting with a breathing-like motion, specular highlights,
  vignetting, barrel distortion and motion blur, rendered once for a loop of frames.
* :class:`PhotoModel` -- 4000×3000 BayerRG8/12p stills on trigger: a ColorChecker Classic
  under a warm illuminant, seen through a sensor whose RGB mixes the sRGB primaries
  (a known 3×3 cross-talk matrix).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from medacq.protocols.gigev import PixelFormat
from medacq.protocols.models.cameras import (
    KELVIN, LINEAR_COUNTS_PER_K, colorchecker_srgb, planck_counts, srgb_to_linear,
)

__all__ = ["CameraModel", "ThermalModel", "EndoscopeModel", "PhotoModel", "ModelFeature"]


@dataclass
class ModelFeature:
    """A model-specific feature: SFNC-style name, kind (``float``/``int``/``enum``/``command``),
    access, limits, unit, and the model attribute it maps to (``attr``; for a command, the
    method called)."""

    name: str
    kind: str
    attr: str
    access: str = "RW"
    minimum: float | None = None
    maximum: float | None = None
    unit: str = ""
    entries: dict[str, int] = field(default_factory=dict)
    description: str = ""


class CameraModel:
    """Common state of the three models (what the SFNC features set)."""

    vendor = "medacq"
    model_name = "camera"
    serial = "0000"
    family = "camera"
    pixel_formats: dict[str, int] = {"Mono8": PixelFormat.Mono8}
    max_frame_rate_hz = 30.0

    def __init__(self, width: int, height: int, pixel_format: str, frame_rate_hz: float, seed: int = 0) -> None:
        self.width = width
        self.height = height
        self.pixel_format = pixel_format
        self.frame_rate_hz = frame_rate_hz
        self.exposure_us = 10000.0
        self.gain_db = 0.0
        self.seed = seed
        self.device_temperature_c = 35.0

    @property
    def pfnc(self) -> int:
        return int(self.pixel_formats[self.pixel_format])

    def features(self) -> list[ModelFeature]:
        """Model-specific features beyond the common SFNC set."""
        return []

    def render(self, index: int, t: float) -> np.ndarray:
        raise NotImplementedError

    def prepare(self) -> None:
        """Do the slow one-off rendering now (before the camera serves), not at the first frame."""

    def advance(self, t: float) -> None:
        """Device state at time ``t`` (s): drift, device temperature."""

    def truth(self) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------------------------------------
class ThermalModel(CameraModel):
    """Radiometric thermal camera; see the module docstring. Temperatures in °C unless named _k."""

    vendor = "medacq"
    model_name = "TC-640 thermal (simulated)"
    family = "thermal"
    pixel_formats = {"Mono16": PixelFormat.Mono16}
    max_frame_rate_hz = 30.0

    #: Planck constants of this camera (FLIR-A-series magnitudes)
    R, B, F, O = 366545.0, 1428.0, 1.0, -342.0

    def __init__(self, *, lepton: bool = False, fever: bool = False, seed: int = 0, blackbody_c: float = 35.0,
                 ambient_c: float = 22.0, netd_k: float = 0.05, drift_k_per_min: float = 0.4,
                 fpn_k: float = 0.04, fpn_growth_k_per_min: float = 0.1, auto_nuc_s: float = 180.0,
                 linear: bool = False, drift0_k: float = 0.0) -> None:
        w, h = (160, 120) if lepton else (640, 480)
        super().__init__(w, h, "Mono16", 30.0 if not lepton else 9.0, seed)
        self.fever = fever
        self.blackbody_c = blackbody_c
        self.ambient_c = ambient_c
        self.netd_k = netd_k
        self.drift_k_per_min = drift_k_per_min
        self.drift0_k = drift0_k
        self.fpn_k = fpn_k
        self.fpn_growth_k_per_min = fpn_growth_k_per_min
        self.auto_nuc_s = auto_nuc_s
        self.temperature_linear = 1 if linear else 0
        self.emissivity = 0.98
        self.reflected_c = ambient_c
        self.distance_m = 1.0
        self.true_emissivity = 0.98
        self.nuc_count = 0
        self._t_nuc = 0.0
        self._t = 0.0
        rng = np.random.default_rng(seed)
        self._fpn = rng.standard_normal((h, w)).astype(np.float32)
        self.scene_c, self.rois = self._scene()
        self._drift_k = 0.0

    # scene ----------------------------------------------------------------------------------
    def _scene(self) -> tuple[np.ndarray, dict[str, list[int]]]:
        w, h = self.width, self.height
        sx, sy = w / 640, h / 480
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        T = np.full((h, w), self.ambient_c, np.float32)
        fev = 1.8 if self.fever else 0.0
        # body (clothing) and neck
        body = ((xx - 320 * sx) / (190 * sx)) ** 2 + ((yy - 520 * sy) / (190 * sy)) ** 2 < 1
        T[body] = 30.5
        neck = (np.abs(xx - 320 * sx) < 45 * sx) & (yy > 280 * sy) & (yy < 360 * sy)
        T[neck] = 34.6 + fev * 0.5
        face = ((xx - 320 * sx) / (95 * sx)) ** 2 + ((yy - 200 * sy) / (125 * sy)) ** 2 < 1
        T[face] = 34.2 + fev * 0.6
        forehead = face & (yy < 140 * sy) & (yy > 95 * sy)
        T[forehead] = 34.8 + fev * 0.7
        # inner canthi: small warm spots beside the nose bridge (the screening site)
        canthus = 36.8 + fev
        for cx in (300, 340):
            spot = ((xx - cx * sx) ** 2 + (yy - 180 * sy) ** 2) < (6 * sx) ** 2
            T[spot] = canthus
        T = ndimage.gaussian_filter(T, 1.2 * sx)
        # restore the canthus peak exactly (blur lowers it): a plateau at the true value
        for cx in (300, 340):
            core = ((xx - cx * sx) ** 2 + (yy - 180 * sy) ** 2) < (3 * sx) ** 2
            T[core] = canthus
        # black-body reference: a uniform 60×60 (scaled) square, top-left corner
        b = [int(40 * sy), int(40 * sx), int(100 * sy), int(100 * sx)]  # y0, x0, y1, x1
        T[b[0]:b[2], b[1]:b[3]] = self.blackbody_c
        rois = {"blackbody": b, "face": [int(60 * sy), int(210 * sx), int(330 * sy), int(430 * sx)],
                "canthus": [int(165 * sy), int(285 * sx), int(195 * sy), int(355 * sx)]}
        return T, rois

    def features(self) -> list[ModelFeature]:
        return [
            ModelFeature("TemperatureLinearMode", "enum", "temperature_linear", entries={"Off": 0, "On": 1},
                         description="On: counts = T(K) x 100; Off: raw Planck counts"),
            ModelFeature("R", "float", "R", "RO", description="Planck R (counts)"),
            ModelFeature("B", "float", "B", "RO", unit="K", description="Planck B"),
            ModelFeature("F", "float", "F", "RO", description="Planck F"),
            ModelFeature("O", "float", "O", "RO", description="Planck O (counts)"),
            ModelFeature("ObjectEmissivity", "float", "emissivity", minimum=0.1, maximum=1.0),
            ModelFeature("ReflectedTemperature", "float", "reflected_c", minimum=-40, maximum=150, unit="C"),
            ModelFeature("ObjectDistance", "float", "distance_m", minimum=0.2, maximum=100, unit="m",
                         description="used for atmospheric transmission (taken as 1 here)"),
            ModelFeature("NUCAction", "command", "nuc", "WO", description="flat-field (shutter) correction now"),
            ModelFeature("NUCCount", "int", "nuc_count", "RO"),
        ]

    def nuc(self) -> None:
        """Flat-field correction: the fixed-pattern offsets return to their base amplitude."""
        self._t_nuc = self._t
        self.nuc_count += 1

    def advance(self, t: float) -> None:
        self._t = t
        if self.auto_nuc_s > 0 and t - self._t_nuc >= self.auto_nuc_s:
            self.nuc()
        self._drift_k = self.drift0_k + self.drift_k_per_min * t / 60.0
        self.device_temperature_c = 35.0 + 0.5 * t / 60.0

    def _fpn_amp(self, t: float) -> float:
        return self.fpn_k + self.fpn_growth_k_per_min * max(0.0, t - self._t_nuc) / 60.0

    def render(self, index: int, t: float) -> np.ndarray:
        self.advance(t)
        rng = np.random.default_rng((self.seed, index))
        noise = rng.standard_normal(self.scene_c.shape, dtype=np.float32) * self.netd_k
        # apparent temperature error terms (K): temporal noise, fixed pattern, drift
        err = noise + self._fpn * self._fpn_amp(t) + self._drift_k
        t_obj = self.scene_c.astype(np.float64) + KELVIN
        s_obj = planck_counts(t_obj, self.R, self.B, self.F, self.O)
        s_refl = planck_counts(self.reflected_c + KELVIN, self.R, self.B, self.F, self.O)
        eps = self.true_emissivity
        s = eps * s_obj + (1 - eps) * s_refl  # radiance reaching the detector (no atmosphere)
        # sensor errors applied in counts through the local slope dS/dT
        slope = self.R * np.exp(self.B / t_obj) * self.B / t_obj ** 2 / (np.exp(self.B / t_obj) - self.F) ** 2
        s = s + err * slope * eps
        if self.temperature_linear:
            # in-camera conversion with the camera's own settings (emissivity, reflected T)
            s_refl_set = planck_counts(self.reflected_c + KELVIN, self.R, self.B, self.F, self.O)
            s_o = (s - (1 - self.emissivity) * s_refl_set) / self.emissivity
            tk = self.B / np.log(self.R / np.maximum(s_o - self.O, 1e-6) + self.F)
            out = tk * LINEAR_COUNTS_PER_K
        else:
            out = s
        return np.clip(np.rint(out), 0, 65535).astype(np.uint16)

    def truth(self) -> dict[str, Any]:
        y0, x0, y1, x1 = self.rois["canthus"]
        return {"blackbody_c": self.blackbody_c, "canthus_max_c": float(self.scene_c[y0:y1, x0:x1].max()),
                "fever": self.fever, "rois": self.rois, "drift_k": self._drift_k, "netd_k": self.netd_k,
                "emissivity": self.true_emissivity, "reflected_c": self.reflected_c,
                "planck": {"R": self.R, "B": self.B, "F": self.F, "O": self.O}}


# ---------------------------------------------------------------------------------------------
def _mosaic_rggb(rgb: np.ndarray) -> np.ndarray:
    """RGB ``(y, x, 3)`` → RGGB Bayer mosaic ``(y, x)`` (R at even row/even column)."""
    h, w, _ = rgb.shape
    m = np.empty((h, w), rgb.dtype)
    m[0::2, 0::2] = rgb[0::2, 0::2, 0]
    m[0::2, 1::2] = rgb[0::2, 1::2, 1]
    m[1::2, 0::2] = rgb[1::2, 0::2, 1]
    m[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return m


class EndoscopeModel(CameraModel):
    """Endoscope head camera; see the module docstring."""

    model_name = "EC-1080 endoscope camera (simulated)"
    family = "endoscope"
    pixel_formats = {"BayerRG8": PixelFormat.BayerRG8, "BayerRG12p": PixelFormat.BayerRG12p}
    max_frame_rate_hz = 60.0

    def __init__(self, *, fps: float = 30.0, pixel_format: str = "BayerRG8", seed: int = 0, loop_frames: int = 24,
                 width: int = 1920, height: int = 1080) -> None:
        super().__init__(width, height, pixel_format, fps, seed)
        self.balance_red = 1.0
        self.balance_blue = 1.0
        self.loop_frames = loop_frames
        self._cache: dict[str, list[np.ndarray]] = {}
        self._lut_key: tuple[float, float, float, float] | None = None

    def features(self) -> list[ModelFeature]:
        return [ModelFeature("BalanceRatioRed", "float", "balance_red", minimum=0.25, maximum=4.0,
                             description="white balance gain of the red pixels"),
                ModelFeature("BalanceRatioBlue", "float", "balance_blue", minimum=0.25, maximum=4.0,
                             description="white balance gain of the blue pixels")]

    def _tissue(self, h: int, w: int) -> np.ndarray:
        """Linear RGB tissue texture (float32, 0..1), larger than the sensor for motion."""
        rng = np.random.default_rng(self.seed)
        small = ndimage.gaussian_filter(rng.standard_normal((h // 8, w // 8)), 6)
        small = (small - small.min()) / (np.ptp(small) + 1e-9)
        base = ndimage.zoom(small, (h / small.shape[0], w / small.shape[1]), order=1)[:h, :w]
        vessels = ndimage.gaussian_filter(rng.standard_normal((h // 4, w // 4)), 2.5)
        vessels = ndimage.zoom(np.abs(vessels) < 0.02, (h / vessels.shape[0], w / vessels.shape[1]), order=0)[:h, :w]
        r = 0.55 + 0.3 * base
        g = 0.20 + 0.15 * base
        b = 0.16 + 0.10 * base
        rgb = np.stack([r, g, b], -1).astype(np.float32)
        rgb[vessels.astype(bool)] *= np.array([0.55, 0.35, 0.45], np.float32)
        for _ in range(40):  # specular highlights (wet mucosa)
            y, x = rng.integers(0, h), rng.integers(0, w)
            rr = int(rng.integers(3, 12))
            rgb[max(0, y - rr):y + rr, max(0, x - rr):x + rr] = 1.0
        return rgb

    def _loop(self) -> list[np.ndarray]:
        key = self.pixel_format
        if key in self._cache:
            return self._cache[key]
        h, w = self.height, self.width
        pad = 64
        tex = self._tissue(h + 2 * pad, w + 2 * pad)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = (h - 1) / 2, (w - 1) / 2
        rn2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (cx ** 2 + cy ** 2)
        vignette = (1 - 0.55 * rn2).astype(np.float32)
        k1 = -0.12  # barrel distortion: sample the texture further out towards the edges
        sy = cy + (yy - cy) * (1 + k1 * rn2)
        sx = cx + (xx - cx) * (1 + k1 * rn2)
        frames = []
        n = self.loop_frames
        maxv = 255 if key == "BayerRG8" else 4095
        for i in range(n):
            ph = 2 * np.pi * i / n
            dy, dx = pad + 24 * np.sin(ph), pad + 40 * np.sin(ph + 0.7)
            vy, vx = 24 * np.cos(ph), 40 * np.cos(ph + 0.7)  # velocity → blur along the motion
            acc = np.zeros((h, w, 3), np.float32)
            for f in (-0.5, 0.0, 0.5):
                oy = int(round(dy + f * vy * 2 * np.pi / n))
                ox = int(round(dx + f * vx * 2 * np.pi / n))
                iy = np.clip(np.rint(sy + oy), 0, tex.shape[0] - 1).astype(np.intp)
                ix = np.clip(np.rint(sx + ox), 0, tex.shape[1] - 1).astype(np.intp)
                acc += tex[iy, ix]
            rgb = acc / 3 * vignette[..., None]
            rgb *= np.array([0.9, 1.0, 0.75], np.float32)  # illuminant/sensor colour cast
            frames.append(np.clip(np.rint(_mosaic_rggb(rgb) * maxv), 0, maxv).astype(np.uint16 if maxv > 255 else
                                                                                        np.uint8))
        self._cache = {key: frames}
        return frames

    def prepare(self) -> None:
        self._loop()

    def render(self, index: int, t: float) -> np.ndarray:
        raw = self._loop()[index % self.loop_frames]
        g = 10 ** (self.gain_db / 20) * self.exposure_us / 10000.0
        if g == 1.0 and self.balance_red == 1.0 and self.balance_blue == 1.0:
            return raw
        out = raw.astype(np.float32) * g
        out[0::2, 0::2] *= self.balance_red
        out[1::2, 1::2] *= self.balance_blue
        maxv = 255 if self.pixel_format == "BayerRG8" else 4095
        return np.clip(np.rint(out), 0, maxv).astype(raw.dtype)

    def truth(self) -> dict[str, Any]:
        return {"loop_frames": self.loop_frames, "cast_rgb": [0.9, 1.0, 0.75]}


# ---------------------------------------------------------------------------------------------
class PhotoModel(CameraModel):
    """Medical photography camera; see the module docstring."""

    model_name = "PC-12M photography camera (simulated)"
    family = "photo"
    pixel_formats = {"BayerRG8": PixelFormat.BayerRG8, "BayerRG12p": PixelFormat.BayerRG12p}
    max_frame_rate_hz = 5.0

    #: camera RGB = CROSSTALK @ linear sRGB (rows: camera R, G, B)
    CROSSTALK = np.array([[0.80, 0.17, 0.03], [0.10, 0.80, 0.10], [0.03, 0.20, 0.77]])
    #: a warm illuminant's effect on the channels (white balance off)
    ILLUMINANT = np.array([1.0, 0.85, 0.55])

    def __init__(self, *, width: int = 4000, height: int = 3000, pixel_format: str = "BayerRG8", seed: int = 0,
                 noise: float = 0.004, exposure_scale: float = 0.85) -> None:
        super().__init__(width, height, pixel_format, 2.0, seed)
        self.noise = noise
        self.exposure_scale = exposure_scale
        w, h = width, height
        # chart: 6×4 patches, centred, 70 % of the width
        pw = int(w * 0.7 / 6) // 2 * 2
        gap = pw // 8 // 2 * 2
        cw, ch = 6 * pw + 5 * gap, 4 * pw + 3 * gap
        x0, y0 = (w - cw) // 2 // 2 * 2, (h - ch) // 2 // 2 * 2
        self.patches = [[y0 + r * (pw + gap), x0 + c * (pw + gap), y0 + r * (pw + gap) + pw, x0 + c * (pw + gap) + pw]
                        for r in range(4) for c in range(6)]
        self.chart = [y0, x0, y0 + ch, x0 + cw]

    def camera_rgb(self) -> np.ndarray:
        """The 24 patches' noiseless camera RGB (linear, 0..1), shape ``(24, 3)``."""
        lin = srgb_to_linear(colorchecker_srgb())
        return (lin @ self.CROSSTALK.T) * self.ILLUMINANT * self.exposure_scale

    def render(self, index: int, t: float) -> np.ndarray:
        h, w = self.height, self.width
        maxv = 255 if self.pixel_format == "BayerRG8" else 4095
        gain = 10 ** (self.gain_db / 20) * self.exposure_us / 10000.0
        rgb = np.empty((h, w, 3), np.float32)
        rgb[:] = (np.array([0.2, 0.2, 0.2]) @ self.CROSSTALK.T) * self.ILLUMINANT * self.exposure_scale  # grey card
        y0, x0, y1, x1 = self.chart
        border = 40
        rgb[y0 - border:y1 + border, x0 - border:x1 + border] = 0.02  # the chart's black frame
        for (py0, px0, py1, px1), c in zip(self.patches, self.camera_rgb()):
            rgb[py0:py1, px0:px1] = c
        m = _mosaic_rggb(rgb) * gain
        rng = np.random.default_rng((self.seed, index))
        m += rng.standard_normal(m.shape, dtype=np.float32) * self.noise
        return np.clip(np.rint(m * maxv), 0, maxv).astype(np.uint8 if maxv == 255 else np.uint16)

    def truth(self) -> dict[str, Any]:
        return {"patches": self.patches, "chart": self.chart, "crosstalk": self.CROSSTALK.tolist(),
                "illuminant": self.ILLUMINANT.tolist()}
