"""Reconstructor for modality ``mri``: RX lines → the slice's image, updated as lines arrive.

Input: frames complex64 ``(coil, readout)`` with ``meta.line`` (phase index) and ``meta.last``
from the ``mri`` driver; descriptor ``geometry``: ``fov_m``, ``matrix``.
Output ``recon/<stream>``: float32 ``(y, x)`` magnitude of the k-space filled so far (zero
lines not yet acquired), coils combined by root-sum-of-squares or adaptively (settings); a
partial-Fourier acquisition (``geometry.phase_lines`` < matrix) is reconstructed by homodyne or
POCS (``partial_fourier``); ``meta``: ``lines_filled``, ``complete``, ``image`` (repetition),
``last_line``; a multi-slice scan (``geometry.slices``, ``slice_positions_mm``; frames with
``meta.slice``) keeps one k-space per slice and publishes each slice's image with ``slice``,
``slice_position_mm`` and ``origin_m`` (its z); descriptor geometry: pixel spacing (m), FOV, the axes' directions and
the image-to-patient origin, enough for a DICOM/NIfTI writer. Output ``recon/<stream>/kspace``:
log-magnitude of coil 0's k-space (for the live view), float32 ``(ky, kx)``.

Queue policy: ``fifo`` (every line counts: a dropped line is a hole in k-space), batches of up
to 16 lines: one FFT per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medacq.protocols.qos import QosPolicy
from medacq.protocols.stream import StreamDescriptor

from medacq.daemon.recon.algorithms.mri import CartesianKspace
from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError

__all__ = ["MriReconstructor", "MriReconSettings"]


class MriReconSettings(BaseModel):
    """``[recon.settings.mri]``: ``combine`` the coils by root-sum-of-squares (``rss``) or
    adaptively (``adaptive``: Walsh, 7×7 neighbourhoods); ``kspace_view`` publishes coil 0's
    log |k| too."""

    model_config = ConfigDict(extra="forbid")
    combine: Literal["rss", "adaptive"] = Field(
        "rss", description="coil combination: rss (root-sum-of-squares) or adaptive (Walsh, 7x7 neighbourhoods)")
    kspace_view: bool = Field(True, description="also publish coil 0's log |k| on recon/<stream>/kspace")
    partial_fourier: Literal["homodyne", "pocs"] = Field(
        "homodyne", description="partial-Fourier reconstruction: homodyne (Noll 1991) or pocs (Haacke 1991, 10 iterations)")


class MriReconstructor(Reconstructor):
    modality = "mri"
    Settings = MriReconSettings
    qos: ClassVar[QosPolicy] = QosPolicy(policy="fifo")
    max_batch: ClassVar[int] = 16

    def __init__(self, descriptor: StreamDescriptor, settings: Any = None) -> None:
        super().__init__(descriptor, settings)
        g = descriptor.geometry
        try:
            self.matrix = [int(v) for v in g["matrix"]]
            self.fov = [float(v) for v in g["fov_m"]]
        except (KeyError, TypeError, ValueError):
            raise ReconstructorError("mri descriptor needs geometry.matrix and geometry.fov_m") from None
        coils = int(descriptor.shape[0])
        self.phase_lines = int(g.get("phase_lines") or self.matrix[0])
        self.n_slices = int(g.get("slices") or 1)
        pos = g.get("slice_positions_mm")
        self.slice_pos_mm: list[float] | None = [float(v) for v in pos] if pos else None
        if self.slice_pos_mm is not None and len(self.slice_pos_mm) != self.n_slices:
            raise ReconstructorError("mri descriptor: geometry.slice_positions_mm does not match geometry.slices")
        self.kss = [CartesianKspace(coils, self.matrix[0], self.matrix[1]) for _ in range(self.n_slices)]
        self.ks = self.kss[0]
        self.image_index = 0
        ny, nx = self.matrix
        dy, dx = self.fov[0] / ny, self.fov[1] / nx
        self.origin_xy = [-nx / 2 * dx, -ny / 2 * dy]
        self.geometry = {"pixel_spacing_m": [dy, dx], "fov_m": self.fov, "matrix": self.matrix,
                         "axes": ["y", "x"], "row_direction": [0.0, 1.0, 0.0], "column_direction": [1.0, 0.0, 0.0],
                         "origin_m": [*self.origin_xy, 0.0], "slice_mm": g.get("slice_mm"),
                         "slices": self.n_slices, "slice_positions_m":
                             [z * 1e-3 for z in self.slice_pos_mm] if self.slice_pos_mm else None,
                         "slice_normal": [0.0, 0.0, 1.0]}

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        return self.process_batch([header], [frame])[0]

    def process_batch(self, headers: Sequence[dict[str, Any]], frames: Sequence[np.ndarray]) -> list[list[Output]]:
        touched: dict[int, int] = {}  # slice -> its last line in this batch, in order of arrival
        for h, f in zip(headers, frames):
            meta = h.get("meta") or {}
            try:
                line = int(meta["line"])
                sl = int(meta.get("slice", 0))
            except (KeyError, TypeError, ValueError):
                raise ReconstructorError("mri frame without meta.line (or with a bad meta.slice)") from None
            if not 0 <= sl < self.n_slices:
                raise ReconstructorError(f"mri frame of slice {sl}; the descriptor has {self.n_slices}")
            img_no = int(meta.get("image", self.image_index))
            if img_no != self.image_index:
                for ks in self.kss:
                    ks.reset()
                self.image_index = img_no
            try:
                self.kss[sl].add(line, np.asarray(f))
            except ValueError as exc:
                raise ReconstructorError(str(exc)) from None
            touched.pop(sl, None)
            touched[sl] = line
        outs: list[Output] = []
        for sl, last_line in touched.items():
            ks = self.kss[sl]
            img = ks.image(self.settings.combine,  # type: ignore[attr-defined]
                           self.phase_lines if self.phase_lines < self.matrix[0] else None,
                           self.settings.partial_fourier)  # type: ignore[attr-defined]
            meta_out: dict[str, Any] = {"lines_filled": int(ks.filled.sum()),
                                        "complete": bool(ks.filled[: self.phase_lines].all()),
                                        "image": self.image_index, "last_line": last_line}
            if self.slice_pos_mm is not None:
                z = self.slice_pos_mm[sl] * 1e-3
                meta_out.update(slice=sl, slice_position_mm=self.slice_pos_mm[sl], origin_m=[*self.origin_xy, z])
            # the source's sequence parameters (TE, TR, flip, field) go on with the image: a DICOM
            # writer's MR Image module needs them (docs/dicom.md)
            outs.append(Output("", img, ["y", "x"], "a.u.", meta_out,
                               {"geometry": self.geometry, "sequence": dict(self.descriptor.meta.get("sequence") or {})}))
            if self.settings.kspace_view:  # type: ignore[attr-defined]
                outs.append(Output("kspace", np.log1p(np.abs(ks.k[0]) * 1e3).astype(np.float32), ["ky", "kx"],
                                   "log a.u.", meta_out))
        return [[] for _ in headers[:-1]] + [outs]

    def on_gap(self, first_seq: int | None, count: int) -> None:
        """Lost lines stay zero in k-space until the next image overwrites them."""
