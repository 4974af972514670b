"""Reconstructor for modality ``us``: plane-wave RF → B-mode, also served on OpenIGTLink.

Input: RF frames int16 ``(angles, elements, samples)`` whose descriptor carries
``geometry["acquisition"]`` (:meth:`PlaneWaveAcquisition.to_descriptor`).
Output ``recon/<stream>``: B-mode float32 ``(z, x)`` in dB, ``[−dynamic_range_db, 0]``
(0 dB = frame maximum), descriptor ``geometry`` = the pixel grid (m) and spacing (mm).

Settings (``[recon.settings.us]``, :class:`BModeSettings`): ``nx`` (256), ``nz`` (256), ``x_min_mm``/``x_max_mm``
(±19.05), ``z_min_mm`` (5), ``z_max_mm`` (45), ``f_number`` (1.5), ``dynamic_range_db``
(60), ``threads`` (of the numba demodulation kernel, 1), ``backend`` (``auto``: CuPy when usable,
else the sparse CPU operator), ``igtl_port``
(18944; 0 = off), ``igtl_host`` (``127.0.0.1``; another address, e.g. ``0.0.0.0``, to serve
other machines, only with ``igtl_allow_remote = true``: OpenIGTLink has no encryption or
authentication, so the config is refused without it), ``igtl_device_name`` (``BMODE``),
``igtl_dtype`` (``uint8``: 0..255 over the dynamic range, or ``float32`` dB).

The operator is built in a background thread (cached on disk under
``$MEDACQ_CACHE_DIR``/``~/.cache/medacq``), and the numba demodulation kernel compiled (or
loaded from numba's cache) there with one zero frame; meanwhile the reconstructor reports
``warming`` and the stage leaves frames in its queue, where the ``latest`` policy keeps only
the newest. A frame handed over before the operator is ready anyway is counted
(``frames_skipped_warmup``) and not reconstructed. Action ``set_grid`` (same keys as the
settings) rebuilds it in the background while frames keep using the old one.

Queue policy: ``latest`` (a live image: only the newest frame counts). ``max_batch`` 4: when
a stream is configured ``fifo``/``lossless`` (``[recon.qos.<stream>]``), up to 4 queued frames
go through the beamformer as one batch (the sparse operator is read once per batch; for 3
angles on the 2-core machine that was no faster per frame, 0.88×: scipy's product is bound by
its arithmetic there, not by reading the operator). Isolation: ``thread`` (the default);
``[recon.isolation] <stream> = "process"`` runs it in a worker process of its own
(:mod:`medacq.daemon.recon.worker_process`; the OpenIGTLink server then lives there too). On the
saturated 2-core rig that did not pay: the child's start-up pushed the first B-mode frame past
10 s, and the beamformer, no longer serialised with the stage's other threads, took the cores
the other streams needed (``bench rig``: 39 and 45 of 50 bars against 47 in threads, B-mode p99
184 and 141 ms against 161).

Actions (``medacq ctl --recon action STREAM ACTION key=value``): ``status``,
``set_grid``, ``set_dynamic_range db=50``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from medacq.protocols.igtl import IgtlConnection, ImageMessage
from medacq.protocols.qos import QosPolicy
from medacq.protocols.stream import StreamDescriptor
from medacq.protocols.us_geometry import PixelGrid, PlaneWaveAcquisition

from medacq.daemon.common.binding import BindError, check_exposure
from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError
from medacq.daemon.recon.algorithms.beamform import PlaneWaveBeamformer, envelope_db, warm_kernels

__all__ = ["BModeReconstructor", "BModeSettings", "IgtlImageServer", "DEFAULT_IGTL_PORT"]

log = logging.getLogger("medacq.recon.us")
DEFAULT_IGTL_PORT = 18944
_GRID_KEYS = ("nx", "nz", "x_min_mm", "x_max_mm", "z_min_mm", "z_max_mm")


def _cache_dir() -> str:
    return os.environ.get("MEDACQ_CACHE_DIR", os.path.expanduser("~/.cache/medacq"))


def grid_from_settings(s: dict[str, Any], base: PixelGrid | None = None) -> PixelGrid:
    """A :class:`PixelGrid` from settings keys (mm for extents)."""
    b = base or PixelGrid()
    return PixelGrid(nx=int(s.get("nx", b.nx)), nz=int(s.get("nz", b.nz)),
                     x_min=float(s.get("x_min_mm", b.x_min * 1e3)) * 1e-3,
                     x_max=float(s.get("x_max_mm", b.x_max * 1e3)) * 1e-3,
                     z_min=float(s.get("z_min_mm", b.z_min * 1e3)) * 1e-3,
                     z_max=float(s.get("z_max_mm", b.z_max * 1e3)) * 1e-3)


class BModeSettings(BaseModel):
    """``[recon.settings.us]``: pixel grid, beamforming and the OpenIGTLink output."""

    model_config = ConfigDict(extra="forbid")

    nx: int = Field(default=256, ge=1, le=4096, description="image columns (lateral pixels)")
    nz: int = Field(default=256, ge=1, le=4096, description="image rows (depth pixels)")
    x_min_mm: float = Field(default=-19.05, description="lateral extent, left pixel centre, mm")
    x_max_mm: float = Field(default=19.05, description="lateral extent, right pixel centre, mm")
    z_min_mm: float = Field(default=5.0, ge=0, description="depth of the first row, mm")
    z_max_mm: float = Field(default=45.0, ge=0, description="depth of the last row, mm")
    f_number: float = Field(default=1.5, gt=0, description="receive aperture F-number (depth / aperture width)")
    dynamic_range_db: float = Field(default=60.0, ge=1, le=200, description="B-mode dynamic range, dB")
    threads: int = Field(default=1, ge=1, le=1024, description="CPU threads of the demodulation kernel (numba; 1: "
                         "one core per stream, the stage runs streams side by side; measured on the shared 2-core rig, "
                         "2 threads took longer and more CPU per frame; more on a machine with idle cores)")
    product_threads: int = Field(default=1, ge=1, le=64, description="threads the sparse beamforming product is "
                                 "split over, by pixel rows (1: the stream's worker alone; 2 on the shared 2-core rig "
                                 "gave B-mode 14.3 vs 12.6 frames/s and p99 age 239 vs 255 ms, within the run-to-run "
                                 "spread, and cost the other streams: for a machine with idle cores)")
    backend: Literal["auto", "sparse", "cupy", "numpy"] = Field(
        default="auto", description="beamforming operator: auto (CuPy when usable, else sparse CPU), sparse, cupy, "
        "numpy (no precomputed operator)")
    igtl_port: int = Field(default=DEFAULT_IGTL_PORT, ge=0, le=65535,
                           description="OpenIGTLink IMAGE server TCP port; 0 = off")
    igtl_host: str = Field(default="127.0.0.1", description="address the OpenIGTLink server binds (loopback; "
                           "another one, e.g. 0.0.0.0, needs igtl_allow_remote)")
    igtl_allow_remote: bool = Field(default=False, description="allow igtl_host off loopback: OpenIGTLink is "
                                    "unencrypted and unauthenticated, anyone on that network gets the images")
    igtl_device_name: str = Field(default="BMODE", min_length=1, max_length=20,
                                  description="OpenIGTLink device name of the IMAGE messages")
    igtl_dtype: Literal["uint8", "float32"] = Field(
        default="uint8", description="OpenIGTLink pixels: uint8 (0..255 over the dynamic range) or float32 dB")

    @model_validator(mode="after")
    def _grid(self) -> "BModeSettings":
        if self.x_max_mm < self.x_min_mm or self.z_max_mm < self.z_min_mm:
            raise ValueError("bad grid extent: need x_min_mm <= x_max_mm and z_min_mm <= z_max_mm")
        if self.igtl_port:
            _check_igtl_exposure(self.igtl_host, self.igtl_port, self.igtl_allow_remote, ValueError)
        return self


def _check_igtl_exposure(host: str, port: int, allow_remote: bool, error: type[Exception] | None = None) -> None:
    """The bind rule (:func:`~medacq.daemon.common.binding.check_exposure`) for the OpenIGTLink server;
    ``error``: raise that type with the same one-line message instead of ``BindError``."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        check_exposure("serve OpenIGTLink on", address, allowed=allow_remote,
                       needs="igtl_allow_remote = true in [recon.settings.us] (OpenIGTLink has no encryption or "
                             "authentication: anyone on that network gets the images)")
    except BindError as exc:
        if error is None:
            raise
        raise error(str(exc)) from None


class IgtlImageServer:
    """Serve the latest image as OpenIGTLink IMAGE messages to any number of TCP clients.

    :meth:`publish` never blocks: a sender thread takes the newest image; a client that
    cannot keep up loses older images (counted in :attr:`dropped`), a client that fails
    is closed. Pixels ``(j, i) = (z, x)``; ``ijk_to_world`` maps voxel (i, j) to world
    (x, z) mm on the first two world axes. A ``host`` off loopback needs ``allow_remote``
    (else :class:`~medacq.daemon.common.binding.BindError`, before anything is bound).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_IGTL_PORT,
                 device_name: str = "BMODE", allow_remote: bool = False) -> None:
        _check_igtl_exposure(host, port, allow_remote)  # BindError before anything is bound
        self.device_name = device_name
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind((host, port))
        self._listen.listen(8)
        self._listen.settimeout(0.2)
        self.host, self.port = self._listen.getsockname()[:2]
        self._codec = IgtlConnection()
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._latest: ImageMessage | None = None
        self._stop = threading.Event()
        self.sent = 0
        self.dropped = 0
        self._threads = [threading.Thread(target=self._accept_loop, name="igtl-accept", daemon=True),
                         threading.Thread(target=self._send_loop, name="igtl-send", daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def publish(self, image: np.ndarray, ijk_to_world: np.ndarray, timestamp: float,
                message_id: int = 0) -> None:
        """Queue ``image`` ``(j, i)`` for every connected client (replaces an unsent one)."""
        msg = ImageMessage(image=image, device_name=self.device_name, timestamp=timestamp,
                           ijk_to_world=ijk_to_world, header_version=1, message_id=0)
        with self._cv:
            if not self._clients:
                return
            if self._latest is not None:
                self.dropped += 1
            self._latest = msg
            self._cv.notify()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._listen.accept()
            except (socket.timeout, OSError):
                continue
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.settimeout(2.0)
            with self._lock:
                self._clients.append(c)

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while self._latest is None and not self._stop.is_set():
                    self._cv.wait(0.2)
                msg, self._latest = self._latest, None
                clients = list(self._clients)
            if msg is None:
                continue
            wire = self._codec.send(msg)
            for c in clients:
                try:
                    c.sendall(wire)
                    self.sent += 1
                except OSError:
                    with self._lock:
                        if c in self._clients:
                            self._clients.remove(c)
                    c.close()

    def close(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        for t in self._threads:
            t.join(1.0)
        self._listen.close()
        with self._lock:
            for c in self._clients:
                c.close()
            self._clients.clear()


class BModeReconstructor(Reconstructor):
    """Plane-wave DAS + compounding + envelope + log compression (see module doc)."""

    modality = "us"
    Settings = BModeSettings
    qos = QosPolicy(policy="latest")
    max_batch = 4

    def __init__(self, descriptor: StreamDescriptor, settings: BModeSettings | dict[str, Any] | None = None) -> None:
        super().__init__(descriptor, settings)
        s: BModeSettings = self.settings  # type: ignore[assignment]
        acq_doc = (descriptor.geometry or {}).get("acquisition")
        if not acq_doc:
            raise ReconstructorError("us stream descriptor has no geometry.acquisition")
        self.acquisition = PlaneWaveAcquisition.from_descriptor(acq_doc)
        self.grid = grid_from_settings(s.model_dump(include=set(_GRID_KEYS)))
        self.f_number = s.f_number
        self.dynamic_range_db = s.dynamic_range_db
        self.backend_request = s.backend
        self.threads = s.threads
        self.product_threads = s.product_threads
        self._closed = False
        self.beamformer: PlaneWaveBeamformer | None = None
        self.frames_skipped_warmup = 0
        self.rebuilds = 0
        self.last_error: str | None = None
        self._building: threading.Thread | None = None
        self._build(self.grid)
        self.igtl: IgtlImageServer | None = None
        port = s.igtl_port
        self.igtl_dtype = s.igtl_dtype
        if port:
            try:
                self.igtl = _shared_server(s.igtl_host, port, s.igtl_device_name, s.igtl_allow_remote)
            except OSError as exc:
                log.warning("%s: OpenIGTLink B-mode server not started on port %s: %s",
                            descriptor.stream, port, exc)
                self.last_error = f"igtl server: {exc}"

    @classmethod
    def preload(cls) -> None:
        """Compile (or load from numba's cache) the demodulation kernel (the operator depends
        on the stream's geometry: it is built, or loaded from its disk cache, per stream)."""
        warm_kernels()

    # ---- operator (background) ----------------------------------------------------------
    def _build(self, grid: PixelGrid) -> None:
        def work() -> None:
            try:
                if self.beamformer is None:
                    bf = PlaneWaveBeamformer(self.acquisition, grid, f_number=self.f_number,
                                             dynamic_range_db=self.dynamic_range_db,
                                             backend=self.backend_request, cache_dir=_cache_dir(),
                                             threads=self.threads, product_threads=self.product_threads)
                    # compile (or load from numba's cache) the demodulation kernel and touch the
                    # operator now, not on the first live frame
                    bf.beamform_iq(np.zeros(self.acquisition.rf_shape, np.int16))
                    if self._closed:  # replaced or dropped while building: do not keep the operator
                        return
                    self.beamformer = bf
                else:
                    self.beamformer.set_geometry(grid=grid)  # swaps atomically when done
                self.grid = grid
                self.rebuilds += 1
            except Exception as exc:  # noqa: BLE001 - reported in status
                self.last_error = f"operator build failed: {exc}"
                log.warning("%s: %s", self.descriptor.stream, self.last_error)

        t = threading.Thread(target=work, name=f"us-build-{self.descriptor.stream}", daemon=True)
        self._building = t
        t.start()

    @property
    def warming(self) -> bool:
        """True while the first operator is being built (a failed build ends warming: frames
        are then counted in ``frames_skipped_warmup`` and ``last_error`` says why)."""
        t = self._building
        return self.beamformer is None and t is not None and t.is_alive()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Block until the current operator build finished (tests, benchmarks)."""
        if self._building is not None:
            self._building.join(timeout)
        return self.beamformer is not None

    # ---- frames -------------------------------------------------------------------------
    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        bf = self.beamformer
        if bf is None:
            self.frames_skipped_warmup += 1
            return []
        return self._outputs(header, bf.beamform_iq(frame), bf, publish_igtl=True)

    def process_batch(self, headers: Sequence[dict[str, Any]], frames: Sequence[np.ndarray]) -> list[list[Output]]:
        """RF frames ``(angles, elements, samples)`` each → one batched beamformer call
        ``(frames, angles, elements, samples)``; OpenIGTLink gets the newest image only."""
        bf = self.beamformer
        if bf is None:
            self.frames_skipped_warmup += len(frames)
            return [[] for _ in frames]
        iq = bf.beamform_iq(np.stack(frames))
        n = len(frames)
        return [self._outputs(h, iq[i], bf, publish_igtl=i == n - 1) for i, h in enumerate(headers)]

    def _outputs(self, header: dict[str, Any], iq: np.ndarray, bf: PlaneWaveBeamformer,
                 publish_igtl: bool) -> list[Output]:
        bmode = envelope_db(iq, self.dynamic_range_db)
        grid = bf.grid
        if self.igtl is not None and publish_igtl:
            img = bmode if self.igtl_dtype == "float32" else \
                np.rint((bmode + self.dynamic_range_db) * (255 / self.dynamic_range_db)).astype(np.uint8)
            self.igtl.publish(img, self._ijk_to_world(grid), header.get("t_host_ns", 0) / 1e9,
                              int(header.get("seq", 0)))
        return [Output("", bmode, ["z", "x"], "dB",
                       meta={"dynamic_range_db": self.dynamic_range_db},
                       descriptor_meta={"geometry": self._geometry(grid),
                                        "backend": bf.backend, "f_number": self.f_number,
                                        "angles_deg": list(self.acquisition.angles_deg)})]

    @staticmethod
    def _ijk_to_world(grid: PixelGrid) -> np.ndarray:
        m = np.eye(4)
        dx = (grid.x_max - grid.x_min) / max(grid.nx - 1, 1) * 1e3
        dz = (grid.z_max - grid.z_min) / max(grid.nz - 1, 1) * 1e3
        m[0, 0], m[1, 1] = dx, dz  # i → x (mm), j → z (mm)
        m[0, 3], m[1, 3] = grid.x_min * 1e3, grid.z_min * 1e3
        return m

    @staticmethod
    def _geometry(grid: PixelGrid) -> dict[str, Any]:
        return {"grid": grid.to_descriptor(),
                "pixel_spacing_mm": [(grid.z_max - grid.z_min) / max(grid.nz - 1, 1) * 1e3,
                                     (grid.x_max - grid.x_min) / max(grid.nx - 1, 1) * 1e3],
                "origin_mm": [grid.z_min * 1e3, grid.x_min * 1e3], "axes": ["z", "x"]}

    # ---- control ------------------------------------------------------------------------
    def control(self, action: str, args: dict[str, Any]) -> Any:
        if action == "status":
            bf = self.beamformer
            return {"ready": bf is not None, "backend": bf.backend if bf else None,
                    "build_seconds": bf.build_seconds if bf else None,
                    "operator_bytes": bf.operator_bytes if bf else None,
                    "grid": (bf.grid if bf else self.grid).to_descriptor(),
                    "rebuilding": bool(self._building and self._building.is_alive()),
                    "rebuilds": self.rebuilds, "frames_skipped_warmup": self.frames_skipped_warmup,
                    "igtl_port": self.igtl.port if self.igtl else None,
                    "igtl_clients": self.igtl.clients if self.igtl else 0,
                    "igtl_sent": self.igtl.sent if self.igtl else 0, "last_error": self.last_error}
        if action == "set_grid":
            unknown = set(args) - set(_GRID_KEYS)
            if unknown:
                raise ReconstructorError(f"set_grid takes {', '.join(_GRID_KEYS)}; not {', '.join(sorted(unknown))}")
            if self._building is not None and self._building.is_alive():
                raise ReconstructorError("an operator rebuild is already running")
            grid = grid_from_settings(args, self.beamformer.grid if self.beamformer else self.grid)
            self._build(grid)
            return {"rebuilding": True, "grid": grid.to_descriptor()}
        if action == "set_dynamic_range":
            db = float(args.get("db", args.get("dynamic_range_db", self.dynamic_range_db)))
            if not 1 <= db <= 200:
                raise ReconstructorError("dynamic range must be 1..200 dB")
            self.dynamic_range_db = db
            return {"dynamic_range_db": db}
        return super().control(action, args)

    def close(self) -> None:
        """Release the beamforming operator (GPU memory with CuPy) and this reconstructor's
        hold on the OpenIGTLink server; the server stops when no reconstructor holds it any
        more (a replacement built for a new descriptor takes its hold first, so the port and
        its connected clients survive the swap). An operator build still running is not
        waited for; its result is discarded. Idempotent."""
        self._closed = True
        self.beamformer = None
        if self.igtl is not None:
            _release_server(self.igtl)
            self.igtl = None


_SERVERS: dict[tuple[str, int, str], IgtlImageServer] = {}
_SERVER_HOLDS: dict[int, int] = {}  # id(server) -> reconstructors holding it
_SERVERS_LOCK = threading.Lock()


def _shared_server(host: str, port: int, device_name: str, allow_remote: bool = False) -> IgtlImageServer:
    """One server per (host, port, name) in this process: a reconstructor rebuilt for a
    new descriptor keeps the port (and its connected clients). Each call takes a hold;
    :func:`_release_server` gives it back."""
    with _SERVERS_LOCK:
        key = (host, port, device_name)
        srv = _SERVERS.get(key)
        if srv is None or srv._stop.is_set():
            srv = IgtlImageServer(host, port, device_name, allow_remote)
            _SERVERS[key] = srv
        _SERVER_HOLDS[id(srv)] = _SERVER_HOLDS.get(id(srv), 0) + 1
        return srv


def _release_server(srv: IgtlImageServer) -> None:
    """Give back one hold on ``srv``; the last one closes it."""
    with _SERVERS_LOCK:
        left = _SERVER_HOLDS.get(id(srv), 1) - 1
        if left > 0:
            _SERVER_HOLDS[id(srv)] = left
            return
        _SERVER_HOLDS.pop(id(srv), None)
        for k, v in list(_SERVERS.items()):
            if v is srv:
                del _SERVERS[k]
    srv.close()
