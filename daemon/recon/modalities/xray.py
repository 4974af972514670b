"""Reconstruction-stage adapters for flat-panel X-ray streams (modalities ``xray`` and ``ct``).

:class:`XrayReconstructor` (radiography / fluoroscopy, modality ``xray``)
    * ``recon/<stream>``: flat-field corrected frame, float32 ``(row, col)`` transmission
      ``I / I0`` (1 = open beam; ``log = true`` → line integral ``-ln(I / I0)``), defect pixels
      interpolated. Uncalibrated: the raw frame divided by its median (meta ``calibrated: false``).
    * ``recon/<stream>/dsa``: once a mask is set, ``ln(mask) - ln(live)`` float32 ``(row, col)``
      (the line integral added since the mask: positive where contrast arrived).

:class:`CTReconstructor` (modality ``ct``)
    * ``recon/<stream>``: the corrected projection of each frame, float32 ``(col,)`` line integral
      (mean of the descriptor's ``slice_rows`` band, dead columns interpolated).
    * ``recon/<stream>/slice``: at the end of each rotation, the FBP slice float32
      ``(y, x)`` of ``output_size``² pixels, attenuation in 1/mm; meta ``rotation``,
      ``n_projections``, ``pixel_mm``.
    * ``recon/<stream>/preview``: the partial slice (scaled as if complete) after the ``preview``
      action, and every ``preview_every`` projections when that setting is > 0.

Queue policy (the stage's, per stream; ``[recon.qos.<stream>]`` overrides it): ``xray``
``latest`` (fluoroscopy and DSA are live images: only the newest frame counts; replaced frames
are counted ``superseded``); ``ct`` ``fifo`` with ``max_age_ms`` 2000 (the streaming FBP needs
every projection of a rotation, in order; a projection that waited longer is dropped and
announced, which costs that rotation).

Calibration (both): actions ``capture_dark n=N`` and ``capture_flat n=N`` average the next N
frames whose ``frame_type`` meta matches (switch the detector to ``frame_type = "dark"`` /
``"flat"`` with ``medacq ctl configure``); when a dark and a flat exist the corrector is built
and written to ``<cache_dir>/xray/<stream>-<rows>x<cols>.npz`` (``cache_dir`` setting, else
``$MEDACQ_CACHE_DIR``, else ``~/.cache/medacq``), and reloaded when a reconstructor for the same
stream and shape starts. Other actions: ``calibration`` (state), ``clear_calibration``,
``set_mask n=N`` (DSA mask = mean of the next N frames), ``clear_mask``, ``preview`` (CT).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols.qos import QosPolicy
from medacq.protocols.stream import StreamDescriptor

from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError
from medacq.daemon.recon.algorithms.xray import DSA, FlatFieldCorrector, StreamingFBP

__all__ = ["XrayReconstructor", "XraySettings", "CTReconstructor", "CTSettings", "calibration_path"]

log = logging.getLogger("medacq.recon.xray")


class _CalibratedSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cache_dir: str | None = Field(default=None, description="folder of the calibration files (<cache_dir>/xray/); "
                                  "default $MEDACQ_CACHE_DIR, else ~/.cache/medacq")


class XraySettings(_CalibratedSettings):
    """``[recon.settings.xray]``."""

    log: bool = Field(default=False, description="publish the line integral -ln(I/I0) (unit 1) instead of the "
                      "transmission I/I0")
    publish_every: int = Field(default=1, ge=1, description="publish one corrected (and DSA) frame in N, frames")


class CTSettings(_CalibratedSettings):
    """``[recon.settings.ct]``."""

    output_size: int = Field(default=512, ge=8, le=8192, description="side of the reconstructed slice, px")
    filter: Literal["ramp", "shepp-logan", "cosine", "hamming", "hann"] = Field(
        default="ramp", description="FBP filter window")
    preview_every: int = Field(default=0, ge=0, description="publish a partial slice every N projections "
                               "(0 = only on the preview action)")
    batch: int = Field(default=32, ge=1, description="projections per back-projection call")
    threads: int = Field(default=1, ge=1, le=1024, description="CPU threads of the back-projection kernel (numba; "
                         "1: one core per stream, the stage runs streams side by side; measured on the shared 2-core "
                         "rig, 2 threads took longer and more CPU per batch; more on a machine with idle cores)")


def _cache_dir(settings: BaseModel | Mapping[str, Any]) -> Path:
    given = settings.get("cache_dir") if isinstance(settings, Mapping) else getattr(settings, "cache_dir", None)
    base = given or os.environ.get("MEDACQ_CACHE_DIR") or os.path.expanduser("~/.cache/medacq")
    return Path(base) / "xray"


def calibration_path(settings: BaseModel | Mapping[str, Any], stream: str, shape: tuple[int, int]) -> Path:
    """Where the calibration of ``stream`` at frame ``shape`` ``(rows, cols)`` is kept
    (``settings``: the reconstructor's settings, or a mapping with ``cache_dir``)."""
    return _cache_dir(settings) / f"{stream}-{shape[0]}x{shape[1]}.npz"


def _n(args: dict[str, Any], default: int = 10) -> int:
    n = int(args.get("n", args.get("frames", default)))
    if not 1 <= n <= 10_000:
        raise ReconstructorError("n must be in 1..10000")
    return n


class _Calibrated(Reconstructor):
    """Shared calibration capture, persistence and actions."""

    Settings = _CalibratedSettings

    def __init__(self, descriptor: StreamDescriptor, settings: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        if len(descriptor.shape) != 2:
            raise ReconstructorError(f"{descriptor.stream}: expected (row, col) frames, got shape {descriptor.shape}")
        self.shape: tuple[int, int] = (int(descriptor.shape[0]), int(descriptor.shape[1]))
        self.path = calibration_path(self.settings, descriptor.stream, self.shape)
        self._lock = threading.Lock()
        self.corrector: FlatFieldCorrector | None = None
        self._capture: dict[str, dict[str, Any]] = {}  # kind -> {"left": n, "sum": arr, "n": k}
        self._new: dict[str, np.ndarray] = {}
        if self.path.exists():
            try:
                c = FlatFieldCorrector.load(self.path)
                if c.shape == self.shape:
                    self.corrector = c
                    log.info("%s: calibration loaded from %s", descriptor.stream, self.path)
            except Exception as exc:  # noqa: BLE001 - a bad file must not stop the stream
                log.warning("%s: cannot load calibration %s: %s", descriptor.stream, self.path, exc)

    # -- capture ---------------------------------------------------------------------
    def _capture_frame(self, header: dict[str, Any], frame: np.ndarray) -> bool:
        """Feed an armed capture; True if the frame was consumed as a calibration frame."""
        if not self._capture:
            return False
        ftype = (header.get("meta") or {}).get("frame_type")
        for kind, cap in list(self._capture.items()):
            if ftype is not None and ftype != kind:
                continue
            cap["sum"] = frame.astype(np.float64) if cap["sum"] is None else cap["sum"] + frame
            if cap["n"] == 0:
                cap["min"], cap["max"] = frame.copy(), frame.copy()
            else:
                np.minimum(cap["min"], frame, out=cap["min"])
                np.maximum(cap["max"], frame, out=cap["max"])
            cap["n"] += 1
            if cap["n"] >= cap["want"]:
                del self._capture[kind]
                self._new[kind] = cap["sum"] / cap["n"]
                if kind == "flat" and cap["n"] >= 2:
                    self._new["stuck"] = cap["min"] == cap["max"]
                self._maybe_build()
            return True
        return False

    def _maybe_build(self) -> None:
        old = self.corrector
        dark = self._new.get("dark", old.dark if old is not None else None)
        flat = self._new.get("flat", old.flat if old is not None else None)
        if dark is None or flat is None or not ({"dark", "flat"} & self._new.keys()):
            return
        defects = FlatFieldCorrector.detect_defects(dark, flat)
        if "stuck" in self._new:
            defects |= self._new["stuck"]
        self.corrector = FlatFieldCorrector(dark, flat, defects, meta={"stream": self.descriptor.stream,
                                                                       "settings": self.descriptor.meta})
        self._new.pop("dark", None)
        self._new.pop("flat", None)
        self._new.pop("stuck", None)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            self.corrector.save(tmp)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("%s: cannot save calibration to %s: %s", self.descriptor.stream, self.path, exc)
        self.on_calibrated()

    def on_calibrated(self) -> None:
        """Hook: the corrector changed."""

    def calibration_state(self) -> dict[str, Any]:
        c = self.corrector
        return {
            "calibrated": c is not None,
            "path": str(self.path),
            "defects": int(c.defects.sum()) if c is not None else None,
            "capturing": {k: {"have": v["n"], "want": v["want"]} for k, v in self._capture.items()},
        }

    def control(self, action: str, args: dict[str, Any]) -> Any:
        with self._lock:
            if action in ("capture_dark", "capture_flat"):
                kind = action.removeprefix("capture_")
                self._capture[kind] = {"want": _n(args), "n": 0, "sum": None}
                return {"armed": kind, "frames": self._capture[kind]["want"]}
            if action == "calibration":
                return self.calibration_state()
            if action == "clear_calibration":
                self.corrector = None
                self._capture.clear()
                self._new.clear()
                if self.path.exists():
                    self.path.unlink()
                self.on_calibrated()
                return {"calibrated": False}
        return super().control(action, args)


class XrayReconstructor(_Calibrated):
    """Flat-field correction with defect interpolation, and DSA (see the module doc).

    Settings (``[recon.settings.xray]``, :class:`XraySettings`): ``log`` (bool, publish ``-ln``
    instead of transmission), ``cache_dir`` (calibration folder), ``publish_every`` (publish one
    corrected frame in N; DSA likewise; default 1).
    """

    modality = "xray"
    Settings = XraySettings
    qos = QosPolicy(policy="latest")

    def __init__(self, descriptor: StreamDescriptor, settings: XraySettings | dict[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        s: XraySettings = self.settings  # type: ignore[assignment]
        self.log = s.log
        self.every = s.publish_every
        self.dsa: DSA | None = None
        self._mask_want = 0
        self._mask_frames: list[np.ndarray] = []
        self._mask_idx: list[int] = []
        self.mask_indices: list[int] = []
        self._count = 0
        geo = dict(descriptor.geometry)
        self._geo = {k: geo[k] for k in ("pixel_pitch_mm", "binning") if k in geo}

    def on_calibrated(self) -> None:
        self.dsa = None  # a mask taken with the old calibration is stale
        self.mask_indices = []

    def control(self, action: str, args: dict[str, Any]) -> Any:
        with self._lock:
            if action == "set_mask":
                self._mask_want = _n(args, 1)
                self._mask_frames, self._mask_idx = [], []
                return {"armed": "mask", "frames": self._mask_want}
            if action == "clear_mask":
                self.dsa, self._mask_want, self.mask_indices = None, 0, []
                return {"mask": False}
        if action == "calibration":
            with self._lock:
                return {**self.calibration_state(), "mask_frames": self.mask_indices}
        return super().control(action, args)

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        with self._lock:
            if self._capture_frame(header, frame):
                return []
            meta = header.get("meta") or {}
            if meta.get("frame_type", "image") != "image":
                return []
            c = self.corrector
            self._count += 1
            out: list[Output] = []
            if self._mask_want:
                self._mask_frames.append(frame.copy())
                self._mask_idx.append(int(meta.get("frame_index", header["seq"])))
                if len(self._mask_frames) >= self._mask_want:
                    self.dsa = DSA(c)
                    self.dsa.set_mask(*self._mask_frames)
                    self.mask_indices = self._mask_idx
                    self._mask_want, self._mask_frames, self._mask_idx = 0, [], []
            if (self._count - 1) % self.every:
                return out
            fmeta = {"calibrated": c is not None, **{k: meta[k] for k in ("frame_index", "angle_deg") if k in meta}}
            if c is not None:
                img = c.correct(frame, log=self.log)
                units = "1" if self.log else "I/I0"
            else:
                img = frame.astype(np.float32)
                img /= max(float(np.median(img[::8, ::8])), 1.0)
                units = "a.u."
            out.append(Output("", img, ["row", "col"], units, meta=fmeta,
                              descriptor_meta={"geometry": dict(self._geo), "log": self.log}))
            if self.dsa is not None:
                d = self.dsa.process(frame)
                if d is not None:
                    out.append(Output("dsa", d, ["row", "col"], "1", meta={**fmeta, "mask_frames": self.mask_indices},
                                      descriptor_meta={"geometry": dict(self._geo)}))
            return out


class CTReconstructor(_Calibrated):
    """Streaming FBP of the central detector rows (see the module doc).

    Settings (``[recon.settings.ct]``, :class:`CTSettings`): ``output_size`` (slice side, px, default 512),
    ``filter`` (``ramp``, ``shepp-logan``, ``cosine``, ``hamming``, ``hann``), ``preview_every``
    (projections, 0 = only on request), ``cache_dir``, ``batch`` (projections per
    back-projection call), ``threads`` (of the back-projection kernel, default 1).
    """

    modality = "ct"
    Settings = CTSettings
    qos = QosPolicy(policy="fifo", max_age_ms=2000.0)

    def __init__(self, descriptor: StreamDescriptor, settings: CTSettings | dict[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        s: CTSettings = self.settings  # type: ignore[assignment]
        g = descriptor.geometry
        rows, cols = self.shape
        try:
            self.n_proj = int(g["n_proj"])
            self.geometry = str(g.get("ct_geometry", "parallel")).lower()
            span = math.radians(float(g.get("angular_range_deg", 360.0)))
            pitch = float(g["pixel_pitch_mm"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReconstructorError(f"{descriptor.stream}: CT descriptor geometry lacks {exc}") from None
        lo, hi = g.get("slice_rows", [int(rows * 0.45), int(rows * 0.55)])
        self.band = slice(int(lo), max(int(hi), int(lo) + 1))
        self.n = s.output_size
        self.preview_every = s.preview_every
        if self.geometry == "fan":
            sid, sdd = float(g["sid_mm"]), float(g["sdd_mm"])
            iso_pitch = pitch * sid / sdd
            self.pixel_mm = cols * iso_pitch / self.n
            self.fbp = StreamingFBP(cols, self.n_proj, output_size=self.n, geometry="fan", angular_range=span,
                                    det_spacing=iso_pitch / self.pixel_mm, sid=sid / self.pixel_mm,
                                    filter_name=s.filter, batch=s.batch, threads=s.threads)
        else:
            self.pixel_mm = cols * pitch / self.n
            self.fbp = StreamingFBP(cols, self.n_proj, output_size=self.n, geometry="parallel", angular_range=span,
                                    det_spacing=pitch / self.pixel_mm, filter_name=s.filter,
                                    batch=s.batch, threads=s.threads)
        self._warm_up(s)
        self._want_preview = False
        self._last_proj: int | None = None
        self.rotations = 0
        self.incomplete = 0
        self._band_cache: tuple | None = None

    @classmethod
    def preload(cls) -> None:
        """Compile (or load from numba's cache) both back-projection kernels, parallel and fan
        beam, on one-projection 8 × 8 rotations (the same kernel specialisations as any slice)."""
        for geometry, sid in (("parallel", None), ("fan", 64.0)):
            tiny = StreamingFBP(8, 1, output_size=8, geometry=geometry, sid=sid, batch=1)  # type: ignore[arg-type]
            tiny.push(np.ones(8, np.float32))

    def _warm_up(self, s: CTSettings) -> None:
        """Compile (or load from numba's cache) the back-projection kernel now, while the
        stage reports this stream ``warming``, not at the first batch of live projections:
        a one-projection rotation on an 8 × 8 slice takes the same kernel specialisation."""
        sid = self.fbp.sid
        tiny = StreamingFBP(8, 1, output_size=8, geometry=self.fbp.geometry, sid=sid if sid else None,
                            filter_name=s.filter, batch=1, backend=self.fbp.backend)  # type: ignore[arg-type]
        tiny.push(np.ones(8, np.float32))

    def control(self, action: str, args: dict[str, Any]) -> Any:
        if action == "preview":
            with self._lock:
                self._want_preview = True
                return {"preview": "next frame", "projections": self.fbp.n_seen, "of": self.n_proj}
        if action == "reset":
            with self._lock:
                self.fbp.reset()
                self._last_proj = None
                return {"reset": True}
        return super().control(action, args)

    def on_gap(self, first_seq: int | None, count: int) -> None:
        with self._lock:
            if count:
                self.incomplete += 1
                self.fbp.reset()  # a rotation with missing projections is not published
                self._last_proj = None

    def on_calibrated(self) -> None:
        self._band_cache = None

    def projection(self, frame: np.ndarray) -> np.ndarray:
        """Line integral ``(col,)`` of the slice band: calibrated ``-ln(I / I0)``, mean over the
        band's good pixels, dead columns interpolated. Uncalibrated: I0 from the open-beam rows
        at the top and bottom of the panel, dark assumed 0 (approximate)."""
        raw = frame[self.band].astype(np.float32)
        c = self.corrector
        if self._band_cache is None:
            if c is not None:
                inv = c._inv[self.band]  # noqa: SLF001 - same module family
                good = ~c.defects[self.band]
                self._band_cache = (c.dark[self.band], inv, good)
            else:
                self._band_cache = (None, None, None)
        dark, inv, good = self._band_cache
        if c is not None:
            t = (raw - dark) * inv
        else:
            rows = frame.shape[0]
            edge = max(1, rows // 20)
            i0 = np.median(np.concatenate([frame[:edge], frame[-edge:]]).astype(np.float32), axis=0)
            t = raw / np.maximum(i0, 1.0)
            good = raw > 0
        np.maximum(t, 1e-6, out=t)
        p = -np.log(t)
        w = good.sum(axis=0)
        prj = np.where(w > 0, (p * good).sum(axis=0) / np.maximum(w, 1), 0.0)
        bad = w == 0
        if bad.any() and not bad.all():
            idx = np.arange(prj.size)
            prj[bad] = np.interp(idx[bad], idx[~bad], prj[~bad])
        return prj.astype(np.float32)

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        with self._lock:
            if self._capture_frame(header, frame):
                return []
            meta = header.get("meta") or {}
            if meta.get("frame_type", "image") != "image":
                return []
            k = int(meta.get("projection", meta.get("frame_index", header["seq"]) % self.n_proj))
            if self._last_proj is not None and k != (self._last_proj + 1) % self.n_proj and self.fbp.n_seen:
                self.incomplete += 1  # projections went missing: drop the partial rotation
                self.fbp.reset()
            self._last_proj = k
            angle = math.radians(float(meta["angle_deg"])) if "angle_deg" in meta else None
            prj = self.projection(frame)
            fmeta = {"projection": k, "angle_deg": meta.get("angle_deg"), "calibrated": self.corrector is not None}
            out = [Output("", prj, ["col"], "1", meta=fmeta)]
            geo = {"pixel_mm": self.pixel_mm, "n": self.n, "geometry": self.geometry}
            done = self.fbp.push(prj, angle)
            if done is not None:
                self.rotations += 1
                out.append(Output("slice", (done / self.pixel_mm).astype(np.float32), ["y", "x"], "1/mm",
                                  meta={"rotation": int(meta.get("rotation", self.rotations - 1)),
                                        "n_projections": self.n_proj, "pixel_mm": self.pixel_mm},
                                  descriptor_meta={"geometry": geo}))
            elif self._want_preview or (self.preview_every and self.fbp.n_seen % self.preview_every == 0):
                self._want_preview = False
                out.append(Output("preview", (self.fbp.preview() / self.pixel_mm).astype(np.float32), ["y", "x"],
                                  "1/mm", meta={"projections": self.fbp.n_seen, "of": self.n_proj,
                                                "pixel_mm": self.pixel_mm},
                                  descriptor_meta={"geometry": geo}))
            return out
