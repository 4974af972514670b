"""Camera physics shared by the camera simulators and the reconstruction stage.

* Radiometric thermal cameras (FLIR-style calibration): a pixel's raw signal ``S`` (counts)
  and the object temperature ``T`` (K) are linked by the Planck curve with the device
  constants R, B, F, O: ``S = R / (exp(B / T) - F) + O`` and ``T = B / ln(R / (S - O) + F)``.
  In *temperature-linear* mode the camera sends ``counts = T(K) × 100`` instead (0.01 K per
  count).
* The 24-patch ColorChecker Classic with its reference sRGB values (8-bit, as published by
  X-Rite and listed by Wikipedia's ColorChecker article), and the sRGB (IEC 61966-2-1) /
  CIE XYZ (D65) / CIELAB conversions used to compare colours.

Arrays: colours are ``(..., 3)`` float arrays, RGB in 0..1; Lab with L* in 0..100.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COLORCHECKER_NAMES", "COLORCHECKER_SRGB8", "colorchecker_srgb", "srgb_to_linear", "linear_to_srgb",
           "linear_srgb_to_xyz", "xyz_to_lab", "srgb_to_lab", "planck_counts", "planck_temperature",
           "KELVIN", "LINEAR_COUNTS_PER_K"]

#: 0 °C in kelvin
KELVIN = 273.15
#: temperature-linear mode: counts per kelvin (0.01 K resolution)
LINEAR_COUNTS_PER_K = 100.0

COLORCHECKER_NAMES = (
    "dark skin", "light skin", "blue sky", "foliage", "blue flower", "bluish green",
    "orange", "purplish blue", "moderate red", "purple", "yellow green", "orange yellow",
    "blue", "green", "red", "yellow", "magenta", "cyan",
    "white 9.5", "neutral 8", "neutral 6.5", "neutral 5", "neutral 3.5", "black 2")

#: reference sRGB (8-bit) of the 24 patches, row by row (4 rows × 6 columns)
COLORCHECKER_SRGB8 = np.array([
    [115, 82, 68], [194, 150, 130], [98, 122, 157], [87, 108, 67], [133, 128, 177], [103, 189, 170],
    [214, 126, 44], [80, 91, 166], [193, 90, 99], [94, 60, 108], [157, 188, 64], [224, 163, 46],
    [56, 61, 150], [70, 148, 73], [175, 54, 60], [231, 199, 31], [187, 86, 149], [8, 133, 161],
    [243, 243, 242], [200, 200, 200], [160, 160, 160], [122, 122, 121], [85, 85, 85], [52, 52, 52],
], dtype=np.uint8)

_M_RGB2XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                       [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def colorchecker_srgb() -> np.ndarray:
    """The 24 reference colours, sRGB in 0..1, shape ``(24, 3)``."""
    return COLORCHECKER_SRGB8.astype(np.float64) / 255.0


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB (gamma-encoded, 0..1) → linear light."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear light → sRGB (gamma-encoded); values are not clipped."""
    c = np.asarray(c, dtype=np.float64)
    a = np.abs(c)
    return np.asarray(np.sign(c) * np.where(a <= 0.0031308, a * 12.92, 1.055 * a ** (1 / 2.4) - 0.055))


def linear_srgb_to_xyz(c: np.ndarray) -> np.ndarray:
    """Linear sRGB → CIE XYZ (D65, Y of white = 1)."""
    return np.asarray(np.asarray(c, dtype=np.float64) @ _M_RGB2XYZ.T)


def xyz_to_lab(xyz: np.ndarray) -> np.ndarray:
    """CIE XYZ (D65) → CIELAB."""
    t = np.asarray(xyz, dtype=np.float64) / _WHITE_D65
    d = 6 / 29
    f = np.where(t > d ** 3, np.cbrt(t), t / (3 * d * d) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def srgb_to_lab(c: np.ndarray) -> np.ndarray:
    """sRGB (0..1) → CIELAB (D65)."""
    return xyz_to_lab(linear_srgb_to_xyz(srgb_to_linear(c)))


def planck_counts(t_k: np.ndarray | float, r: float, b: float, f: float, o: float) -> np.ndarray:
    """Raw radiometric signal (counts) of a black body at ``t_k`` kelvin."""
    return r / (np.exp(b / np.asarray(t_k, dtype=np.float64)) - f) + o


def planck_temperature(s: np.ndarray | float, r: float, b: float, f: float, o: float) -> np.ndarray:
    """Temperature (K) from raw signal ``s`` (counts): ``T = B / ln(R / (S - O) + F)``."""
    s = np.asarray(s, dtype=np.float64)
    return b / np.log(r / np.maximum(s - o, 1e-9) + f)
