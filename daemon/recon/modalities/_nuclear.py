"""What the list-mode nuclear reconstructors (:mod:`~medacq.daemon.recon.modalities.pet`,
:mod:`~medacq.daemon.recon.modalities.spect`) share: the system matrix built on a background
thread, blocks accumulated until ``frame_s`` of device time have passed, then one image.

A subclass accumulates a block in :meth:`NuclearReconstructor._accumulate` (returning the
block's device time span), reconstructs in :meth:`NuclearReconstructor.image`, builds its system
matrix in :meth:`NuclearReconstructor._make_system` and calls :meth:`NuclearReconstructor._start_build`
at the end of its ``__init__``.
"""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from medacq.protocols.models.nuclear_phantom import IecBodyPhantom
from medacq.protocols.qos import QosPolicy

from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError

__all__ = ["NuclearReconstructor", "load_mu_map", "slice_geometry"]


def load_mu_map(mu_map: str, geometry: dict[str, Any], image_size: int, fov_mm: float) -> np.ndarray | None:
    """The μ-map a ``mu_map`` setting names: ``none`` (None), ``phantom`` (the μ-map of the phantom
    the device reports in ``geometry``, 1/mm at 511 keV on the ``image_size`` grid over ``fov_mm``) or
    the path of a ``.npy`` file (as stored). :class:`ReconstructorError` when it cannot be had."""
    if mu_map == "none":
        return None
    if mu_map == "phantom":
        if "phantom" not in geometry:
            raise ReconstructorError("mu_map = 'phantom' but the device reports no phantom")
        return IecBodyPhantom.from_dict(geometry["phantom"]).mu_map(image_size, fov_mm)
    try:
        mu: np.ndarray = np.load(mu_map)
    except (OSError, ValueError) as exc:
        raise ReconstructorError(f"cannot read mu_map {mu_map!r}: {exc}") from None
    return mu


def slice_geometry(fov_mm: float, image_size: int, slice_mm: float, **extra: Any) -> dict[str, Any]:
    """The ``geometry`` of a transaxial slice in Bq/mL (``(y, x)``, row 0 at +y) decay-corrected to
    device time 0; ``extra`` keys go before ``units``."""
    px = fov_mm / image_size
    return {"pixel_mm": [px, px], "slice_mm": slice_mm, "fov_mm": fov_mm,
            "origin_mm": [-fov_mm / 2 + px / 2, fov_mm / 2 - px / 2],
            "orientation": "row 0 at +y (top), column 0 at -x", **extra, "units": "Bq/mL",
            "decay_corrected_to": "device time 0"}


class NuclearReconstructor(Reconstructor):
    """Blocks of list-mode data in, one image per ``frame_s`` of device time out (module doc).

    Queue policy ``fifo`` without age bound, batches of 32: every block counts (a block the queue
    drops is a hole in the exposure, not an error)."""

    qos = QosPolicy(policy="fifo")
    max_batch = 32
    #: seconds per unit of the device time the blocks carry (ps: 1e-12, µs: 1e-6)
    time_unit_s: ClassVar[float]
    log: ClassVar[logging.Logger]
    system: Any

    # ---- hooks ------------------------------------------------------------------------------------
    @abstractmethod
    def _make_system(self) -> dict[str, Any]:
        """Build the system matrix (on the build thread): the attributes to set once it is built,
        ``system`` last (it is what :attr:`warming` and :meth:`image` look at)."""

    @abstractmethod
    def _accumulate(self, header: dict[str, Any], frame: np.ndarray) -> tuple[int, int]:
        """Add one block; return its device time span ``(start, end)`` in :attr:`time_unit_s`."""

    @abstractmethod
    def _frame_s(self) -> float:
        """Device seconds per image."""

    @abstractmethod
    def image(self) -> list[Output]:
        """Reconstruct what has been accumulated; [] while the system matrix builds."""

    def _imaged(self) -> None:
        """After each image published by :meth:`process` (dynamic frames reset here). Default: nothing."""

    # ---- the build thread ------------------------------------------------------------------------
    def _start_build(self) -> None:
        self.system = None
        self._closed = False
        self._frame_start: int | None = None
        self.images = 0
        self.last_error: str | None = None
        self._building = threading.Thread(target=self._build, name=f"{self.modality}-build-{self.descriptor.stream}",
                                          daemon=True)
        self._building.start()

    def _build(self) -> None:
        try:
            built = self._make_system()
            if not self._closed:
                for name, value in built.items():
                    setattr(self, name, value)
        except Exception as exc:  # noqa: BLE001 - reported via last_error
            self.last_error = f"system matrix build failed: {exc}"
            self.log.warning("%s: %s", self.descriptor.stream, self.last_error)

    @property
    def warming(self) -> bool:
        return self.system is None and self._building.is_alive()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait up to ``timeout`` s for the system matrix; True once it is built."""
        self._building.join(timeout)
        return self.system is not None

    def close(self) -> None:
        self._closed = True

    # ---- frames -----------------------------------------------------------------------------------
    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        t0, t1 = self._accumulate(header, frame)
        if self._frame_start is None:
            self._frame_start = t0
        if (t1 - self._frame_start) * self.time_unit_s + 1e-9 < self._frame_s():
            return []
        out = self.image()
        self._frame_start = t1
        self._imaged()
        return out

    def process_batch(self, headers: Sequence[dict[str, Any]], frames: Sequence[np.ndarray]) -> list[list[Output]]:
        return [self.process(h, f) for h, f in zip(headers, frames)]
