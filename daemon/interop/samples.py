"""Synthetic reconstructed frames of every kind the DICOM writer maps (tests and ``bench dicom``).

Each function returns :class:`~medacq.daemon.interop.dicom.ReconFrame` s shaped exactly as the
reconstruction stage publishes them (topic, header fields, descriptor with ``geometry`` and
``meta``), deterministic from ``seed``.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from medacq.daemon.interop.dicom import ECG_LEADS, ReconFrame

__all__ = ["xray_frames", "dsa_frames", "ct_slices", "bmode_frames", "ekg_chunks", "eeg_chunks", "eit_frames",
           "every_kind", "mri_images", "pet_images", "spect_images", "endoscope_frames", "photo_frames",
           "thermal_frames", "swe_maps", "tactile_maps", "family_kinds"]

T0_NS = 1_780_000_000_000_000_000  # 2026-05-28T20:26:40Z


def _hdr(stream: str, series: str, seq: int, arr: np.ndarray, axes: list[str], units: str, t_ns: int,
         meta: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"v": 1, "stream": stream, "kind": "frame", "series": series, "seq": seq, "dtype": arr.dtype.str,
            "shape": list(arr.shape), "axes": axes, "units": units, "t_host_ns": t_ns, "t_mono_ns": t_ns // 7,
            "t_device": None, "meta": meta or {}}


def _desc(stream: str, modality: str, arr: np.ndarray, axes: list[str], units: str, geometry: dict[str, Any],
          meta: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"stream": stream, "modality": modality, "device": f"recon:{modality}", "dtype": arr.dtype.str,
            "shape": list(arr.shape), "axes": axes, "units": units, "geometry": geometry, "meta": meta or {}, **kw}


def _series(seed: int, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"medacq.samples/{seed}/{name}"))


def xray_frames(n: int = 4, rows: int = 96, cols: int = 128, seed: int = 0, log: bool = False) -> list[ReconFrame]:
    """``recon/xr0``: float32 ``(row, col)`` I/I0 (or −ln with ``log``), 0.0748 mm pitch × 2 binning."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    base = 0.2 + 0.7 * np.exp(-(((yy - rows / 2) / (rows / 3)) ** 2 + ((xx - cols / 2) / (cols / 3)) ** 2))
    series = _series(seed, "xr0")
    out = []
    for i in range(n):
        img = (base + 0.01 * rng.standard_normal((rows, cols))).astype(np.float32)
        if log:
            img = -np.log(np.clip(img, 1e-3, None)).astype(np.float32)
        units = "1" if log else "I/I0"
        out.append(ReconFrame("recon/xr0", _hdr("xr0", series, i, img, ["row", "col"], units, T0_NS + i * 38_461_538,
                                                 {"calibrated": True, "frame_index": i}),
                              img, _desc("xr0", "xray", img, ["row", "col"], units,
                                         {"pixel_pitch_mm": 0.0748, "binning": 2}, {"log": log})))
    return out


def dsa_frames(n: int = 4, rows: int = 96, cols: int = 128, seed: int = 1) -> list[ReconFrame]:
    """``recon/xr0/dsa``: float32 ``(row, col)`` ln(mask) − ln(live), a vessel filling in."""
    rng = np.random.default_rng(seed)
    series = _series(seed, "xr0/dsa")
    out = []
    for i in range(n):
        img = (0.002 * rng.standard_normal((rows, cols))).astype(np.float32)
        img[rows // 2 - 3: rows // 2 + 3, : int(cols * (i + 1) / n)] += 0.4
        out.append(ReconFrame("recon/xr0/dsa", _hdr("xr0/dsa", series, i, img, ["row", "col"], "1",
                                                     T0_NS + i * 100_000_000,
                                                     {"calibrated": True, "frame_index": 10 + i, "mask_frames": [0, 1]}),
                              img, _desc("xr0/dsa", "xray", img, ["row", "col"], "1",
                                         {"pixel_pitch_mm": 0.0748, "binning": 2})))
    return out


def ct_slices(n: int = 3, size: int = 128, pixel_mm: float = 0.5, seed: int = 2) -> list[ReconFrame]:
    """``recon/ct0/slice``: float32 ``(y, x)`` µ in 1/mm: a water disc (0.0195/mm) with a bone insert."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size] - (size - 1) / 2) * pixel_mm
    r = size * pixel_mm / 2
    series = _series(seed, "ct0/slice")
    out = []
    for i in range(n):
        mu = np.where(xx ** 2 + yy ** 2 < (0.8 * r) ** 2, 0.0195, 0.0).astype(np.float32)
        mu[(xx - 0.3 * r) ** 2 + yy ** 2 < (0.15 * r) ** 2] = 0.04
        mu += (0.0002 * rng.standard_normal(mu.shape)).astype(np.float32)
        geo = {"pixel_mm": pixel_mm, "n": size, "geometry": "parallel"}
        out.append(ReconFrame("recon/ct0/slice", _hdr("ct0/slice", series, i, mu, ["y", "x"], "1/mm",
                                                       T0_NS + i * 2_000_000_000,
                                                       {"rotation": i, "n_projections": 360, "pixel_mm": pixel_mm}),
                              mu, _desc("ct0/slice", "ct", mu, ["y", "x"], "1/mm", geo)))
    return out


def bmode_frames(n: int = 8, nz: int = 96, nx: int = 64, seed: int = 3) -> list[ReconFrame]:
    """``recon/us0``: float32 ``(z, x)`` B-mode in dB (0 = brightest, −60 floor), 0.2 mm × 0.3 mm."""
    rng = np.random.default_rng(seed)
    series = _series(seed, "us0")
    geo = {"grid": {"nx": nx, "nz": nz}, "pixel_spacing_mm": [0.2, 0.3], "origin_mm": [5.0, -9.45], "axes": ["z", "x"]}
    out = []
    for i in range(n):
        img = np.clip(-30 + 8 * rng.standard_normal((nz, nx)), -60, 0).astype(np.float32)
        img[nz // 2 - 2: nz // 2 + 2, (i * 5) % nx] = 0.0
        out.append(ReconFrame("recon/us0", _hdr("us0", series, i, img, ["z", "x"], "dB", T0_NS + i * 50_000_000,
                                                 {"dynamic_range_db": 60.0}),
                              img, _desc("us0", "us", img, ["z", "x"], "dB", geo, frame_rate_hz=20.0)))
    return out


def _chunks(stream: str, modality: str, names: list[str], fs: float, seconds: float, chunk: int, seed: int,
            amp_uv: float) -> list[ReconFrame]:
    rng = np.random.default_rng(seed)
    n = int(seconds * fs)
    t = np.arange(n) / fs
    x = np.stack([amp_uv * np.sin(2 * np.pi * (1.0 + k) * t) + 0.05 * amp_uv * rng.standard_normal(n)
                  for k in range(len(names))]).astype(np.float32)
    series = _series(seed, stream)
    meta = {"channel_names": names, "sample_rate_hz": fs,
            "filter": {"band_hz": [0.5, 40.0], "order": 2, "notch_hz": 50.0, "notch_q": 30.0}}
    out = []
    for i, s in enumerate(range(0, n, chunk)):
        c = np.ascontiguousarray(x[:, s:s + chunk])
        out.append(ReconFrame(f"recon/{stream}", _hdr(stream, series, i, c, ["channel", "sample"], "µV",
                                                       T0_NS + int(s / fs * 1e9), {"first_sample": s}),
                              c, _desc(stream, modality, c, ["channel", "sample"], "µV", {}, meta)))
    return out


def ekg_chunks(seconds: float = 4.0, fs: float = 500.0, chunk: int = 50, seed: int = 4) -> list[ReconFrame]:
    """``recon/ekg0``: float32 ``(channel, sample)`` µV, the 12 standard leads."""
    return _chunks("ekg0", "ekg", list(ECG_LEADS), fs, seconds, chunk, seed, 800.0)


def eeg_chunks(seconds: float = 4.0, fs: float = 125.0, chunk: int = 25, seed: int = 5) -> list[ReconFrame]:
    """``recon/eeg0``: float32 ``(channel, sample)`` µV, Cyton+Daisy's 16 10–20 electrodes."""
    names = "Fp1 Fp2 C3 C4 P7 P8 O1 O2 F7 F8 F3 F4 T7 T8 P3 P4".split()
    return _chunks("eeg0", "eeg", names, fs, seconds, chunk, seed, 40.0)


def eit_frames(n: int = 6, seed: int = 6) -> list[ReconFrame]:
    """``recon/eit0``: float32 ``(y, x)`` 32 × 32 dσ/σ, NaN outside the thorax mask."""
    rng = np.random.default_rng(seed)
    series = _series(seed, "eit0")
    yy, xx = np.mgrid[-1:1:32j, -1:1:32j]
    out = []
    for i in range(n):
        img = (0.1 * np.sin(i / 3) * np.exp(-((xx - 0.4) ** 2 + yy ** 2) / 0.1)
               + 0.001 * rng.standard_normal((32, 32))).astype(np.float32)
        img[xx ** 2 + yy ** 2 > 1] = np.nan
        out.append(ReconFrame("recon/eit0", _hdr("eit0", series, i, img, ["y", "x"], "dsigma/sigma",
                                                  T0_NS + i * 20_000_000, {"frame": i}),
                              img, _desc("eit0", "eit", img, ["y", "x"], "dsigma/sigma",
                                         {"grid": 32, "length_unit": "thorax half-width"})))
    return out


def every_kind(seed: int = 0) -> list[ReconFrame]:
    """One short run of each kind, in publication order per stream."""
    return (xray_frames(seed=seed) + dsa_frames(seed=seed + 1) + ct_slices(seed=seed + 2) + bmode_frames(seed=seed + 3)
            + ekg_chunks(seed=seed + 4) + eeg_chunks(seed=seed + 5) + eit_frames(seed=seed + 6))


# ---- the families built after the first writer: MRI, PET, SPECT, cameras ------------------------------
def _recon_desc(stream: str, modality: str, cls: str, arr: np.ndarray, axes: list[str], units: str,
                geometry: dict[str, Any], **meta: Any) -> dict[str, Any]:
    """A recon output descriptor as the stage builds it: geometry from the output, meta ``source`` + extras."""
    return {"stream": stream, "modality": modality, "device": f"recon:{cls}", "dtype": arr.dtype.str,
            "shape": list(arr.shape), "axes": axes, "units": units, "geometry": geometry,
            "meta": {"source": stream, **meta}}


def mri_images(n: int = 2, matrix: int = 64, fov_m: float = 0.2, seed: int = 7) -> list[ReconFrame]:
    """``recon/mr0``: float32 ``(y, x)`` magnitude (a.u.), row 0 = most negative y, column 0 = most negative x;
    descriptor geometry as ``MriReconstructor`` publishes it, meta ``sequence`` (TE/TR ... of the source)."""
    rng = np.random.default_rng(seed)
    d = fov_m / matrix
    yy, xx = (np.mgrid[0:matrix, 0:matrix] - matrix / 2) * d
    geo = {"pixel_spacing_m": [d, d], "fov_m": [fov_m, fov_m], "matrix": [matrix, matrix], "axes": ["y", "x"],
           "row_direction": [0.0, 1.0, 0.0], "column_direction": [1.0, 0.0, 0.0],
           "origin_m": [-matrix / 2 * d, -matrix / 2 * d, 0.0], "slice_mm": 5.0}
    sequence = {"sequence": "se", "te_ms": 15.0, "tr_ms": 500.0, "fov_mm": fov_m * 1e3, "matrix": matrix,
                "bandwidth_hz": 50000.0, "flip_deg": 90.0, "slice_mm": 5.0, "etl": 8, "echo_spacing_ms": 12.0,
                "partial_fourier": 1.0, "larmor_hz": 8_515_500.0, "b0_t": 0.2}
    series = _series(seed, "mr0")
    out = []
    for i in range(n):
        img = np.where((xx / 0.07) ** 2 + (yy / 0.09) ** 2 < 1, 1.0, 0.0)
        img[(xx - 0.02) ** 2 + yy ** 2 < 0.015 ** 2] = 0.4  # an off-centre insert (orientation)
        img = np.abs(img * 3e-4 + 1e-5 * rng.standard_normal(img.shape)).astype(np.float32)
        meta = {"lines_filled": matrix, "complete": True, "image": i, "last_line": matrix - 1}
        out.append(ReconFrame("recon/mr0", _hdr("mr0", series, i, img, ["y", "x"], "a.u.", T0_NS + i * 32_000_000_000,
                                                 meta),
                              img, _recon_desc("mr0", "mri", "MriReconstructor", img, ["y", "x"], "a.u.", geo,
                                               sequence=sequence)))
    return out


def _hot_disc(size: int, fov_mm: float, bg: float, rng: np.random.Generator) -> np.ndarray:
    px = fov_mm / size
    c = (np.arange(size) + 0.5) * px - fov_mm / 2
    x, y = np.meshgrid(c, -c)  # row 0 at +y, column 0 at -x
    img = np.where(x ** 2 / 120 ** 2 + y ** 2 / 85 ** 2 < 1, bg, 0.0)
    img[(x - 50) ** 2 + (y - 30) ** 2 < 18 ** 2] = 4 * bg  # hot sphere right (+x) and up (+y)
    return np.clip(img * (1 + 0.05 * rng.standard_normal(img.shape)), 0, None).astype(np.float32)


def pet_images(n: int = 2, size: int = 64, fov_mm: float = 320.0, frame_s: float = 2.0, seed: int = 8,
               dynamic: bool = False) -> list[ReconFrame]:
    """``recon/pet0``: float32 ``(y, x)`` Bq/mL decay-corrected to device time 0 (``PetReconstructor``)."""
    rng = np.random.default_rng(seed)
    px = fov_mm / size
    geo = {"pixel_mm": [px, px], "slice_mm": 4.0, "fov_mm": fov_mm, "origin_mm": [-fov_mm / 2 + px / 2, fov_mm / 2 - px / 2],
           "orientation": "row 0 at +y (top), column 0 at -x", "isotope": "F-18", "units": "Bq/mL",
           "decay_corrected_to": "device time 0"}
    lam = np.log(2) / (109.77 * 60.0)
    series = _series(seed, "pet0")
    out = []
    for i in range(n):
        img = _hot_disc(size, fov_mm, 5300.0, rng)
        t0 = i * frame_s if dynamic else 0.0
        t1 = (i + 1) * frame_s
        exposure = float((np.exp(-lam * t0) - np.exp(-lam * t1)) / lam)
        meta = {"prompts": 200_000 * (i + 1), "delayed": 20_000 * (i + 1), "scatter_fraction": 0.3, "live_fraction": 0.9,
                "singles": 4_000_000 * (i + 1), "t_start_s": t0, "t_end_s": t1, "exposure_s": exposure,
                "iterations": 3, "subsets": 10, "decay_corrected_to_s": 0.0, "dynamic": dynamic}
        out.append(ReconFrame("recon/pet0", _hdr("pet0", series, i, img, ["y", "x"], "Bq/mL",
                                                  T0_NS + int(t1 * 1e9), meta),
                              img, _recon_desc("pet0", "pet", "PetReconstructor", img, ["y", "x"], "Bq/mL", geo)))
    return out


def spect_images(n: int = 1, size: int = 64, fov_mm: float = 320.0, seed: int = 9) -> list[ReconFrame]:
    """``recon/spect0``: float32 ``(y, x)`` Bq/mL, one per rotation (``SpectReconstructor``)."""
    rng = np.random.default_rng(seed)
    px = fov_mm / size
    geo = {"pixel_mm": [px, px], "slice_mm": 20.0, "fov_mm": fov_mm,
           "origin_mm": [-fov_mm / 2 + px / 2, fov_mm / 2 - px / 2],
           "orientation": "row 0 at +y (top), column 0 at -x", "units": "Bq/mL", "decay_corrected_to": "device time 0"}
    series = _series(seed, "spect0")
    out = []
    for i in range(n):
        img = _hot_disc(size, fov_mm, 20000.0, rng)
        meta = {"events": 900_000, "photopeak_counts": 400_000.0, "scatter_fraction": 0.25, "stops_seen": 30,
                "iterations": 4, "subsets": 6, "decay_corrected_to_s": 0.0}
        out.append(ReconFrame("recon/spect0", _hdr("spect0", series, i, img, ["y", "x"], "Bq/mL",
                                                    T0_NS + (i + 1) * 6_000_000_000, meta),
                              img, _recon_desc("spect0", "spect", "SpectReconstructor", img, ["y", "x"], "Bq/mL", geo)))
    return out


def _rgb(h: int, w: int, i: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), np.full((h, w), (40 * i) % 256)], -1)
    return np.clip(img + rng.integers(0, 3, img.shape), 0, 255).astype(np.uint8)


def endoscope_frames(n: int = 2, h: int = 60, w: int = 80, seed: int = 10) -> list[ReconFrame]:
    """``recon/endo0``: uint8 sRGB ``(y, x, c)`` (``EndoscopeReconstructor``), no geometry."""
    rng = np.random.default_rng(seed)
    series = _series(seed, "endo0")
    out = []
    for i in range(n):
        img = _rgb(h, w, i, rng)
        out.append(ReconFrame("recon/endo0", _hdr("endo0", series, i, img, ["y", "x", "c"], "", T0_NS + i * 33_333_333,
                                                   {"wb_gains": [1.1, 1.0, 0.9]}),
                              img, _recon_desc("endo0", "endoscope", "EndoscopeReconstructor", img, ["y", "x", "c"], "",
                                               {})))
    return out


def photo_frames(n: int = 1, h: int = 64, w: int = 96, seed: int = 11) -> list[ReconFrame]:
    """``recon/photo0``: uint8 sRGB ``(y, x, c)`` after the chart calibration (``PhotoReconstructor``)."""
    rng = np.random.default_rng(seed)
    series = _series(seed, "photo0")
    out = []
    for i in range(n):
        img = _rgb(h, w, i + 3, rng)
        meta = {"deltaE_mean": 1.2, "deltaE_max": 3.4, "matrix": np.eye(3).tolist()}
        out.append(ReconFrame("recon/photo0", _hdr("photo0", series, i, img, ["y", "x", "c"], "", T0_NS + i * 10**9, meta),
                              img, _recon_desc("photo0", "photo", "PhotoReconstructor", img, ["y", "x", "c"], "", {})))
    return out


def thermal_frames(n: int = 8, h: int = 48, w: int = 64, seed: int = 12) -> list[ReconFrame]:
    """``recon/ir0``: float32 ``(y, x)`` object temperature in °C (``ThermalReconstructor``), no geometry."""
    rng = np.random.default_rng(seed)
    series = _series(seed, "ir0")
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        t = (22.0 + 14.0 * np.exp(-(((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2))
             + 0.05 * rng.standard_normal((h, w))).astype(np.float32)
        meta = {"canthus_max_c": float(t.max()), "face_max_c": float(t.max()), "blackbody_c": 35.0,
                "drift_offset_k": 0.01, "fever": False}
        out.append(ReconFrame("recon/ir0", _hdr("ir0", series, i, t, ["y", "x"], "degC", T0_NS + i * 33_333_333, meta),
                              t, _recon_desc("ir0", "thermal", "ThermalReconstructor", t, ["y", "x"], "degC", {})))
    return out


def swe_maps(n: int = 2, nz: int = 40, nx: int = 32, seed: int = 13) -> list[ReconFrame]:
    """``recon/swe0``: float32 ``(z, x)`` Young's modulus kPa (``ShearWaveReconstructor``), NaN where no estimate."""
    rng = np.random.default_rng(seed)
    series = _series(seed, "swe0")
    grid = {"x_min": -0.01, "x_max": 0.01, "z_min": 0.01, "z_max": 0.035}
    zz, xx = np.mgrid[0:nz, 0:nx]
    out = []
    for i in range(n):
        e = (15.0 + 45.0 * (((zz - nz / 2) / (nz / 6)) ** 2 + ((xx - nx / 2) / (nx / 6)) ** 2 < 1)
             + 0.5 * rng.standard_normal((nz, nx))).astype(np.float32)
        e[:, :2] = np.nan  # no estimate at the push's side
        out.append(ReconFrame("recon/swe0", _hdr("swe0", series, i, e, ["z", "x"], "kPa", T0_NS + i * 500_000_000,
                                                 {"push": i}),
                              e, _recon_desc("swe0", "swe", "ShearWaveReconstructor", e, ["z", "x"], "kPa", {"grid": grid})))
    return out


def tactile_maps(n: int = 3, rows: int = 16, cols: int = 16, seed: int = 14) -> list[ReconFrame]:
    """``recon/tac0``: float32 ``(row, col)`` contact pressure kPa (``TactileImager``)."""
    rng = np.random.default_rng(seed)
    series = _series(seed, "tac0")
    rr, cc = np.mgrid[0:rows, 0:cols]
    out = []
    for i in range(n):
        p = (2.0 * (i + 1) + 6.0 * np.exp(-(((rr - 7) / 2.5) ** 2 + ((cc - 9) / 2.5) ** 2))
             + 0.05 * rng.standard_normal((rows, cols))).astype(np.float32)
        out.append(ReconFrame("recon/tac0", _hdr("tac0", series, i, p, ["row", "col"], "kPa", T0_NS + i * 20_000_000),
                              p, _recon_desc("tac0", "tactile", "TactileImager", p, ["row", "col"], "kPa", {})))
    return out


def family_kinds(seed: int = 0) -> list[ReconFrame]:
    """One short run of each newer family's imaging output (MR, PET, NM, endoscope, photo, thermal, shear-wave
    and tactile maps)."""
    return (mri_images(seed=seed + 7) + pet_images(seed=seed + 8) + spect_images(seed=seed + 9)
            + endoscope_frames(seed=seed + 10) + photo_frames(seed=seed + 11) + thermal_frames(seed=seed + 12)
            + swe_maps(seed=seed + 13) + tactile_maps(seed=seed + 14))
