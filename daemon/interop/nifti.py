"""NIfTI-1 export of reconstructed images (nibabel): CT slices, MRI slices, PET and SPECT images.

The geometry is the one the DICOM writer puts in Image Position/Orientation (Patient) and Pixel
Spacing (:func:`image_plane`, the same rules as :class:`~medacq.daemon.interop.dicom.DicomWriter`;
a test checks the two agree): DICOM's patient frame is **LPS** (+x to the patient's left,
+y posterior, +z head), NIfTI's world frame is **RAS+** (+x right, +y anterior, +z head), so
``affine = diag(-1, -1, 1, 1) @ affine_LPS``.

Voxel axes: NIfTI ``(i, j, k[, t])`` = (image column, image row, slice[, frame]): the published
``(y, x)`` array is transposed so ``i`` runs along a row. Frames of one series with different
slice positions (multi-slice MRI with ``meta.origin_m``) become a 3D volume sorted along the
slice normal; frames that repeat one plane (a single-slice CT rotation after rotation, PET/SPECT
images over time, an old recording without per-frame meta) become a 4D time series
``(x, y, 1, t)`` with ``pixdim[4]`` = the median time between frames (s).

Units: ``xyzt_units`` = mm and s; values are the published float32 values, unscaled
(``scl_slope`` 1), in the stream's units, named in ``descrip`` (``units=Bq/mL``); ``cal_min`` /
``cal_max`` = the data range. CT is written in Hounsfield units (as the DICOM), with ``mu_water``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medacq.daemon.interop.dicom import _PATIENT_POSITIONS, DicomExportError, ReconFrame, iod_of, slice_geometry

__all__ = ["ImagePlane", "NiftiReport", "export_nifti", "image_plane", "nifti_image", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_VOLUME_IODS = ("CT", "MR", "PT", "NM")


@dataclass(frozen=True)
class ImagePlane:
    """One slice's geometry in patient LPS (mm), as DICOM writes it.

    Attributes:
        position: centre of pixel (row 0, column 0) (Image Position (Patient)).
        row_dir: unit vector along a row, i.e. as the column index grows (first half of Image Orientation).
        col_dir: unit vector down a column, as the row index grows.
        spacing: (between rows, between columns) mm (Pixel Spacing).
        thickness: slice thickness mm.
    """

    position: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: tuple[float, float]
    thickness: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    def affine_lps(self, slice_step_mm: float | None = None) -> np.ndarray:
        """4×4 voxel ``(i = column, j = row, k = slice)`` → LPS mm."""
        a = np.eye(4)
        a[:3, 0] = self.row_dir * self.spacing[1]
        a[:3, 1] = self.col_dir * self.spacing[0]
        a[:3, 2] = self.normal * (slice_step_mm if slice_step_mm else self.thickness)
        a[:3, 3] = self.position
        return a


def image_plane(frame: ReconFrame, patient_position: str = "HFS") -> ImagePlane:
    """The plane of a CT, MR, PET or SPECT frame, by the DICOM writer's rules (docs/dicom.md).

    Raises :class:`DicomExportError` for a frame without the geometry, or of another kind.
    """
    desc = frame.descriptor
    geo = dict(desc.get("geometry") or {})
    meta = dict(frame.header.get("meta") or {})
    iod = iod_of(str(desc.get("modality", "")), frame.output)
    rows, cols = frame.data.shape[:2]
    if iod == "CT":  # the writer's convention: isocentre at the image centre, axial, HFS
        px = float(meta.get("pixel_mm") or geo.get("pixel_mm") or 0)
        if px <= 0:
            raise DicomExportError(f"{frame.topic}: no pixel_mm for a CT slice")
        thick = float(geo.get("slice_thickness_mm") or px)
        return ImagePlane(np.array([-(cols - 1) / 2 * px, -(rows - 1) / 2 * px, 0.0]), np.array([1.0, 0, 0]),
                          np.array([0, 1.0, 0]), (px, px), thick)
    sx, sy, sz = _PATIENT_POSITIONS[patient_position]
    flip = np.array([sx, sy, sz], float)
    if iod == "MR":
        try:
            dy, dx = (float(v) * 1e3 for v in geo["pixel_spacing_m"])
            first = np.array([float(v) * 1e3 for v in (meta.get("origin_m") or geo["origin_m"])])
        except (KeyError, TypeError, ValueError):
            raise DicomExportError(f"{frame.topic}: MR needs geometry.pixel_spacing_m and origin_m") from None
        thick = float(geo.get("slice_mm") or 0.0) or min(dy, dx)
        spacing = (dy, dx)
    elif iod in ("PT", "NM"):
        spacing, xyz, thick = slice_geometry(frame)
        first = np.array(xyz)
    else:
        raise DicomExportError(f"{frame.topic}: {iod} is not a volume image (NIfTI takes CT, MR, PET, SPECT)")
    return ImagePlane(first * flip, np.array([sx, 0.0, 0.0]), np.array([0.0, sy, 0.0]), spacing, thick)


def _values(frame: ReconFrame, mu_water: float) -> tuple[np.ndarray, str]:
    data = np.asarray(frame.data, dtype=np.float32)
    units = str(frame.header.get("units") or frame.descriptor.get("units") or "")
    if str(frame.descriptor.get("modality")) == "ct":
        return (1000.0 * (data - mu_water) / mu_water).astype(np.float32), "HU"
    return data, units


def nifti_image(frames: Sequence[ReconFrame], patient_position: str = "HFS", mu_water_per_mm: float = 0.0195) -> Any:
    """One ``nibabel.Nifti1Image`` from the frames of one series (same shape), see the module doc."""
    import nibabel as nib

    if not frames:
        raise ValueError("no frames")
    planes = [image_plane(f, patient_position) for f in frames]
    shape = frames[0].data.shape
    if any(f.data.shape != shape or f.data.ndim != 2 for f in frames):
        raise DicomExportError(f"{frames[0].topic}: frames of one NIfTI image must share one 2D shape")
    p0 = planes[0]
    offsets = np.array([float(np.dot(p.position - p0.position, p0.normal)) for p in planes])
    vals = [_values(f, mu_water_per_mm) for f in frames]
    units = vals[0][1]
    if len(frames) > 1 and np.ptp(offsets) > 1e-6:  # a volume: sort along the normal
        order = np.argsort(offsets, kind="stable")
        offsets, planes = offsets[order], [planes[i] for i in order]
        vols = [vals[i][0] for i in order]
        steps = np.diff(offsets)
        step = float(np.median(steps))
        if np.any(np.abs(steps - step) > 1e-3 * max(abs(step), 1e-9)):
            raise DicomExportError(f"{frames[0].topic}: slices are not evenly spaced: {np.round(steps, 4)}")
        data = np.stack([v.T for v in vols], axis=2)  # (i = column, j = row, k = slice)
        affine = LPS_TO_RAS @ planes[0].affine_lps(step)
        dt = 0.0
    else:  # the same plane again and again: a time series
        data = np.stack([v.T for v, _ in vals], axis=2)[:, :, None, :] if len(frames) > 1 else vals[0][0].T[:, :, None]
        affine = LPS_TO_RAS @ p0.affine_lps()
        t = np.array([int(f.header.get("t_host_ns") or 0) for f in frames], dtype=np.float64) / 1e9
        dt = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    img = nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine)
    hdr = img.header
    hdr.set_xyzt_units("mm", "sec")
    if data.ndim == 4:
        zooms = list(hdr.get_zooms())
        zooms[3] = dt if dt > 0 else 1.0
        hdr.set_zooms(zooms)
    finite = data[np.isfinite(data)]
    hdr["cal_min"], hdr["cal_max"] = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    hdr["descrip"] = f"units={units}; medacq {frames[0].topic}"[:79].encode("ascii", "replace")
    img.set_sform(affine, code="scanner")
    img.set_qform(affine, code="scanner")
    return img


@dataclass
class NiftiReport:
    """``files`` written (``<out>/<stream>_<series>.nii.gz``), ``skipped`` topics → reason."""

    files: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"nifti_files": len(self.files), "skipped": self.skipped}


def export_nifti(frames: Iterable[ReconFrame], out_dir: str | os.PathLike[str], patient_position: str = "HFS",
                 mu_water_per_mm: float = 0.0195) -> NiftiReport:
    """One ``.nii.gz`` per stream series of CT slices, MRI, PET and SPECT images (other topics skipped)."""
    import nibabel as nib

    rep = NiftiReport()
    out = Path(out_dir)
    groups: dict[tuple[str, str, tuple[int, ...]], list[ReconFrame]] = {}
    for f in frames:
        try:
            iod = iod_of(str(f.descriptor.get("modality", "")), f.output)
        except DicomExportError as exc:
            rep.skipped.setdefault(f.topic, str(exc))
            continue
        if iod not in _VOLUME_IODS:
            rep.skipped.setdefault(f.topic, f"{iod}: not a volume image")
            continue
        groups.setdefault((f.topic, str(f.header.get("series", "")), tuple(f.data.shape)), []).append(f)
    out.mkdir(parents=True, exist_ok=True)
    for n, ((topic, series, _), fr) in enumerate(sorted(groups.items(), key=lambda kv: kv[0][:2])):
        try:
            img = nifti_image(fr, patient_position, mu_water_per_mm)
        except DicomExportError as exc:
            rep.skipped[topic] = str(exc)
            continue
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", topic.removeprefix("recon/"))
        path = out / f"{name}_{series[:8] or n}.nii.gz"
        nib.save(img, path)
        rep.files.append(str(path))
    return rep
