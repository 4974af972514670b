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
           "every_kind"]

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
