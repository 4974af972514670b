"""``medacq view``: a live web page for bench operators (aiohttp + plain JS, no network needed).

Three parts, one process:

* **Bridge** (threads): a :class:`~medacq.client.Subscriber` on the daemon's and the
  reconstruction stage's data endpoints keeps, per stream, only what a page can show: a
  rolling min/max window for traces, the latest frame for images and profiles, a short
  history for scalars. A poller asks both control endpoints for ``status`` once a second
  (and the daemon for ``list``/``describe``). An encoder thread turns dirty streams into
  compact binary messages at most ``max_fps`` times a second per panel: traces as float32
  min/max columns, images as 8-bit indices (window/level applied server-side, decimated to
  at most ``image_max_px`` a side) plus a palette name, scalars as numbers.
* **Server** (asyncio, aiohttp) on 127.0.0.1: ``/`` (the page), ``/static/*``, ``/ws`` (the
  WebSocket), ``/api/state`` (panels, health and latency as JSON, for scripts and tests).
  Loopback only (:func:`~medacq.daemon.common.binding.check_exposure`: no TLS here), and
  every request needs the view's token, like a notebook server: ``?token=`` once (the page then
  keeps it in an HttpOnly, SameSite=Strict cookie), or ``Authorization: Bearer <token>``.
  Without it: 401, no data, no controls.
* **Page** (``view_static/``): panels are built from descriptors (axes, shape, units,
  channel names, modality), so any device family gets a panel without view code.

Flow control: each panel has at most one update in flight per browser; the page acknowledges
an update once it has been drawn (``requestAnimationFrame``), and until then newer frames
replace older ones on the server. A slow browser therefore sees fewer updates and never
slows the bridge, let alone acquisition (the bridge is one more ZeroMQ subscriber; its
receive high-water mark bounds what it buffers).

Latency: every update carries the frame's acquisition clock (header ``t_mono_ns``; for
``recon/...`` streams the source frame's) and the bridge's receive time; the page's "drawn"
acknowledgement closes the measurement. Figures: ``acq_to_pixels`` (frame clock → drawn,
upper bound: includes the acknowledgement's trip back over loopback) and
``bridge_to_pixels`` (bridge receive → drawn), p50/p99 over the last 512 draws.

Buttons go through the control plane (:class:`~medacq.client.ControlClient`) with the same
requests the CLI sends: ``start``/``stop`` a device, modality ``action`` requests to the
reconstruction stage (``rereference``, ``capture_dark``, ``capture_flat``...), and
``record`` start/stop when the daemon's status reports a recorder. Only a view started with
operator rights (``ViewSettings.operator``, ``medacq view --operator``) shows and forwards
them; otherwise the page is read-only and a ``ctl`` message is refused.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import queue
import secrets
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medacq.daemon.client.api import ControlClient, DaemonUnreachable, RequestFailed, Subscriber
from medacq.daemon.common.binding import check_exposure, host_is_loopback

__all__ = [
    "VIEW_NICE",
    "ViewSettings",
    "MODALITY_HINTS",
    "panel_kind",
    "TraceBuffer",
    "encode_image",
    "pack_message",
    "unpack_message",
    "Bridge",
    "ViewServer",
    "run_view",
    "TOKEN_ENV",
    "ViewTokenError",
    "new_token",
    "read_token_file",
]

log = logging.getLogger("medacq.view")

STATIC_DIR = Path(__file__).resolve().parent / "view_static"

#: Axis names that mean "time, one sample after another" (a trace axis).
SAMPLE_AXES = ("sample", "time", "t")
#: Arrays with at most this many elements (and no sample axis) are shown as numbers.
SCALAR_MAX = 32
#: Trace panels draw at most this many channels (the rest are listed as "+N more").
TRACE_MAX_CHANNELS = 64

#: Environment variable that may carry the view's token (``medacq up``, systemd ``Environment=``).
TOKEN_ENV = "MEDACQ_VIEW_TOKEN"
#: A token given by the operator must be at least this long (a generated one has 43 characters).
MIN_TOKEN_CHARS = 16
#: What the view says, beyond the address, when asked to listen off loopback.
REMOTE_HOWTO = ("TLS and a login in front of it: the view serves plain http on loopback only; from another "
                "machine use an SSH tunnel (ssh -L 8555:127.0.0.1:8555 RIG) or a reverse proxy with TLS "
                "(docs/view.md)")


class ViewTokenError(ValueError):
    """A token file or value the view cannot use (missing, empty, too short, readable by others)."""


def new_token() -> str:
    """A fresh random token: 32 bytes from :mod:`secrets`, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def _check_token(token: str, source: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ViewTokenError(f"the view token from {source} has {len(token)} characters; "
                             f"at least {MIN_TOKEN_CHARS} are needed")
    if not token.isascii() or any(c.isspace() or c in ";,\"" for c in token):
        raise ViewTokenError(f"the view token from {source} must be printable ASCII without spaces, ';', ',' or '\"'")
    return token


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (its first line, stripped).

    Refused (:class:`ViewTokenError`) when missing, too short, or readable or writable by users
    other than its owner and group (``chmod 600``/``640``; systemd's ``LoadCredential=`` files are).
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ViewTokenError(f"cannot read the view token file {p}: {exc.strerror or exc}") from None
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ViewTokenError(f"the view token file {p} is readable or writable by other users (chmod 600 {p})")
    lines = text.splitlines()
    return _check_token(lines[0] if lines else "", str(p))


def _same_token(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


#: Modality-specific hints. A family may add its entry (a one-line insertion) or put a
#: ``"view"`` dict in its descriptor's ``meta`` (which wins). Keys:
#:   ``raw`` / ``recon``: panel hints for raw/<stream> or recon/<stream>[/<name>] streams:
#:       ``kind`` (trace|image|scalar|profile|none), ``colormap`` (gray|rdbu|viridis|hot),
#:       ``window`` (percentile|symmetric|db|minmax or [lo, hi]), ``dynamic_range_db``,
#:       ``window_s`` (trace window in seconds), ``labels`` (value names for scalars).
#:   ``actions``: reconstruction-stage ``action`` buttons: [label, action, args].
MODALITY_HINTS: dict[str, dict[str, Any]] = {
    "synthetic": {"actions": [["Reset mean", "reset", {}]]},
    "eeg": {"raw": {"window_s": 10.0}, "recon": {"window_s": 10.0}},
    "ekg": {"raw": {"window_s": 5.0}, "recon": {"window_s": 5.0}},
    "meg": {"raw": {"window_s": 10.0}, "recon": {"window_s": 10.0}},
    "eit": {"recon": {"colormap": "rdbu", "window": "symmetric"}, "actions": [["Re-reference", "rereference", {}]]},
    "us": {"raw": {"kind": "image", "colormap": "gray", "window": "symmetric"},
           "recon": {"colormap": "gray", "window": "db", "dynamic_range_db": 60.0}},
    "xray": {"raw": {"colormap": "gray", "window": "percentile"}, "recon": {"colormap": "gray", "window": "percentile"},
             "actions": [["Capture dark", "capture_dark", {}], ["Capture flat", "capture_flat", {}],
                         ["Set DSA mask", "set_mask", {}]]},
    "ct": {"raw": {"colormap": "gray", "window": "percentile"}, "recon": {"colormap": "gray", "window": "percentile"},
           "actions": [["Preview slice", "preview", {}]]},
    "swe": {"raw": {"kind": "image", "colormap": "gray", "window": "symmetric"}, "recon": {"colormap": "viridis"},
            "overlay": {"colormap": "viridis", "alpha": 0.6, "min_confidence": 0.5}},
}

#: Recon modalities whose main map (``recon/<stream>``, a ``(z, x)`` image with ``geometry.grid``
#: in m) is also drawn over the B-mode image (modality ``us``) of the same probe, as the panel
#: ``overlay/<stream>``: transparent where ``recon/<stream>/confidence`` is below the hint's
#: ``min_confidence``. "Same probe": the B-mode stream the source's descriptor names
#: (``meta.bmode_stream``), else the only B-mode stream there is.
OVERLAY_MODALITIES = ("swe",)


VIEW_NICE = 5
"""Niceness ``medacq up`` and ``medacq bench rig`` start the view with: a page shows the newest
frame of each panel, so when the cores are short the daemon (every frame) and the reconstruction
stage (latency bars) go first; on a systemd rig give the view's unit ``Nice=5`` likewise."""


@dataclass
class ViewSettings:
    """Where the view listens and what it subscribes to.

    Attributes:
        daemon_control, recon_control: control endpoints (``status``, buttons).
        data_endpoints: PUB endpoints to subscribe to (daemon's and recon stage's).
        host, port: HTTP listen address (a loopback address only: others are refused; port 0 picks one).
        max_fps: most updates per second per panel (and per browser).
        trace_window_s: default visible trace window, seconds.
        trace_columns: min/max columns per trace window.
        image_max_px: images are block-averaged to at most this many pixels a side.
        raw_limit_mbps: a raw stream heavier than this (MB/s) is not subscribed when the
            reconstruction stage has outputs for it (its recon panels show it instead).
        status_interval_s: how often both control endpoints are asked for ``status``.
        rcvhwm: the bridge's receive high-water mark (messages): what a slow bridge buffers.
        curve: CurveZMQ client keys (:mod:`medacq.daemon.common.security`) when the rig uses them:
            the view then has exactly the rights of those keys, like the CLI.
        token: the token every request must carry (``None``: a new random one, :func:`new_token`).
        operator: the page may send control requests (start/stop, record, modality actions);
            without it the view is read-only. The daemon still checks the view's own rights.
    """

    daemon_control: str
    recon_control: str | None
    data_endpoints: list[str]
    host: str = "127.0.0.1"
    port: int = 8555
    max_fps: float = 20.0
    trace_window_s: float = 10.0
    trace_columns: int = 600
    image_max_px: int = 256
    raw_limit_mbps: float = 10.0
    status_interval_s: float = 1.0
    rcvhwm: int = 2000
    curve: Any = None
    token: str | None = None
    operator: bool = False


# -- pure helpers (no I/O) ------------------------------------------------------------------
def _hints(modality: str | None, role: str, descriptor: dict[str, Any] | None) -> dict[str, Any]:
    h: dict[str, Any] = dict(MODALITY_HINTS.get(modality or "", {}).get(role, {}))
    view = ((descriptor or {}).get("meta") or {}).get("view")
    if isinstance(view, dict):
        h.update(view.get(role, {}) if role in view else {k: v for k, v in view.items() if k not in ("raw", "recon")})
    return h


def panel_kind(shape: list[int] | tuple[int, ...], axes: list[str] | None, hints: dict[str, Any] | None = None) -> str:
    """How a stream is drawn, from its frame layout: ``trace``, ``image``, ``scalar`` or ``profile``.

    * an axis named ``sample`` (or ``time``) → ``trace`` (scrolling, one lane per channel);
    * at most :data:`SCALAR_MAX` elements → ``scalar`` (numbers with a short history);
    * one axis → ``profile`` (a line plot of the latest frame);
    * two or more axes → ``image`` (the last two axes; leading axes at their middle index).

    A ``kind`` hint overrides.
    """
    if hints and hints.get("kind"):
        return str(hints["kind"])
    axes = list(axes or [])
    shape = [int(s) for s in shape]
    if any(a in SAMPLE_AXES for a in axes):
        return "trace"
    size = int(np.prod(shape)) if shape else 1
    if size <= SCALAR_MAX:
        return "scalar"
    if len([s for s in shape if s > 1]) <= 1:
        return "profile"
    return "image"


def _trace_view(array: np.ndarray, axes: list[str]) -> np.ndarray:
    """(channel, sample) float view of a trace frame, whatever its axis order/rank."""
    a = np.asarray(array)
    if a.dtype.kind == "c":
        a = np.abs(a)
    si = next((i for i, n in enumerate(axes) if n in SAMPLE_AXES), a.ndim - 1) if len(axes) == a.ndim else a.ndim - 1
    if si != a.ndim - 1:
        a = np.moveaxis(a, si, -1)
    return a.reshape(-1, a.shape[-1]) if a.ndim != 1 else a.reshape(1, -1)


class TraceBuffer:
    """A rolling window of min/max columns per channel for one trace stream.

    Args:
        channels: number of channels (lanes).
        rate_hz: samples per second along the sample axis.
        window_s: visible window, seconds.
        columns: at most this many columns; each covers ``samples_per_column`` samples.

    :meth:`append` takes a ``(channel, sample)`` block; :meth:`snapshot` returns
    ``(2, channel, column)`` float32 -- mins then maxs, oldest column first, NaN where no
    data yet (or across a gap).
    """

    def __init__(self, channels: int, rate_hz: float, window_s: float, columns: int) -> None:
        self.channels = int(channels)
        self.rate_hz = float(rate_hz)
        total = max(1, int(round(rate_hz * window_s)))
        self.samples_per_column = max(1, math.ceil(total / max(1, columns)))
        self.columns = max(2, math.ceil(total / self.samples_per_column))
        self.window_s = self.columns * self.samples_per_column / self.rate_hz
        self.mm = np.full((2, self.channels, self.columns), np.nan, dtype=np.float32)
        self.head = 0  # next column to write
        self._partial = np.zeros((self.channels, 0), dtype=np.float32)
        self.samples = 0

    def append(self, block: np.ndarray) -> None:
        """Append a ``(channel, sample)`` block."""
        x = np.asarray(block, dtype=np.float32)
        if x.shape[0] != self.channels:
            raise ValueError(f"block has {x.shape[0]} channels, buffer has {self.channels}")
        self.samples += x.shape[1]
        if self._partial.shape[1]:
            x = np.concatenate([self._partial, x], axis=1)
        s = self.samples_per_column
        k = x.shape[1] // s
        if k:
            body = x[:, : k * s].reshape(self.channels, k, s)
            lo, hi = body.min(axis=2), body.max(axis=2)
            if k >= self.columns:
                lo, hi, k = lo[:, -self.columns:], hi[:, -self.columns:], self.columns
            if self.head + k <= self.columns:  # the usual case: a few columns, no wrap (slices)
                self.mm[0, :, self.head:self.head + k] = lo
                self.mm[1, :, self.head:self.head + k] = hi
            else:
                idx = (self.head + np.arange(k)) % self.columns
                self.mm[0][:, idx] = lo
                self.mm[1][:, idx] = hi
            self.head = int((self.head + k) % self.columns)
        self._partial = x[:, k * s:].copy() if k * s < x.shape[1] else x[:, :0]

    def gap(self, samples: int) -> None:
        """Mark ``samples`` missing samples (NaN columns) so a gap shows as a gap."""
        k = min(self.columns, max(1, samples // self.samples_per_column))
        idx = (self.head + np.arange(k)) % self.columns
        self.mm[:, :, idx] = np.nan
        self.head = int((self.head + k) % self.columns)
        self._partial = self._partial[:, :0]

    def snapshot(self) -> np.ndarray:
        """``(2, channel, column)`` float32, oldest column first."""
        out = np.empty_like(self.mm)
        tail = self.columns - self.head
        out[:, :, :tail] = self.mm[:, :, self.head:]
        out[:, :, tail:] = self.mm[:, :, :self.head]
        return out


def _image_view(array: np.ndarray) -> np.ndarray:
    """The 2-D image of a frame (its own dtype; magnitude of a complex one): last two axes,
    leading axes at their middle index."""
    a = np.asarray(array)
    while a.ndim > 2:
        a = a[a.shape[0] // 2]
    if a.ndim == 1:
        a = a[None, :]
    if a.dtype.kind == "c":
        a = np.abs(a)
    return a


def _grid_mm(descriptor: dict[str, Any] | None, frame: np.ndarray | None) -> tuple[float, float, float, float] | None:
    """``(x0, dx, z0, dz)`` mm of an image's pixel centres from ``geometry.grid`` (m: ``x_min``,
    ``x_max``, ``z_min``, ``z_max``, the image's own shape), or ``None``."""
    g = ((descriptor or {}).get("geometry") or {}).get("grid")
    if not isinstance(g, dict) or frame is None:
        return None
    try:
        nz, nx = _image_view(frame).shape
        x0, x1, z0, z1 = (float(g[k]) * 1e3 for k in ("x_min", "x_max", "z_min", "z_max"))
    except (KeyError, TypeError, ValueError):
        return None
    return x0, (x1 - x0) / max(nx - 1, 1) or 1.0, z0, (z1 - z0) / max(nz - 1, 1) or 1.0


def _decimate(a: np.ndarray, max_px: int) -> np.ndarray:
    """``a`` as float32, block-averaged by the smallest factor that brings both sides to at most
    ``max_px`` (edge rows/columns that do not fill a block are left out). Sums strided slices
    into a float32 accumulator (any input dtype, no full-size float copy): 8-13x faster than a
    mean over a 4-D reshape, which numpy reduces over two strided axes at once."""
    f = max(1, math.ceil(max(a.shape) / max_px))
    if f == 1:
        return a.astype(np.float32, copy=False)
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    if h == 0 or w == 0:
        return a[::f, ::f].astype(np.float32)
    v = a[:h, :w]
    rows = np.zeros((h // f, w), np.float32)
    for i in range(f):
        rows += v[i::f]
    out = np.zeros((h // f, w // f), np.float32)
    for j in range(f):
        out += rows[:, j::f]
    out *= np.float32(1.0 / (f * f))
    return out


def encode_image(array: np.ndarray, window: Any = "percentile", max_px: int = 256,
                 dynamic_range_db: float = 60.0) -> tuple[np.ndarray, float, float]:
    """Decimate and window an image to 8-bit palette indices.

    Args:
        array: the frame; the last two axes are (row, column).
        window: ``[lo, hi]`` in the frame's units, or ``percentile`` (1st..99th),
            ``symmetric`` (±99th percentile of |value|, for signed images such as EIT),
            ``db`` (max - ``dynamic_range_db`` .. max) or ``minmax``.
        max_px: at most this many pixels a side (block mean).

    Returns:
        ``(indices, lo, hi)``: uint8 (rows, columns) where 1..255 spans ``lo..hi`` linearly
        (clipped) and 0 marks NaN (no data, e.g. outside an EIT domain).
    """
    img = _image_view(array)
    a = _decimate(img, max_px)
    # an integer frame has no NaN: skip the masks (block means of integers are finite)
    finite = None if img.dtype.kind in "iub" else np.isfinite(a)
    if finite is not None and finite.all():
        finite = None
    sample = a[::2, ::2] if a.size > 4096 else a
    if finite is not None:
        sample = sample[np.isfinite(sample)]
    if isinstance(window, (list, tuple)) and len(window) == 2:
        lo, hi = float(window[0]), float(window[1])
    elif sample.size == 0:
        lo, hi = 0.0, 1.0
    elif window == "symmetric":
        m = _percentiles(np.abs(sample), (99.0,), scalar=True)[0]
        lo, hi = -m, m
    elif window == "db":
        hi = float(sample.max())
        lo = hi - float(dynamic_range_db)
    elif window == "minmax":
        lo, hi = float(sample.min()), float(sample.max())
    else:
        lo, hi = _percentiles(sample, (1.0, 99.0))
    if not hi > lo:
        hi = lo + (abs(lo) * 1e-6 or 1.0)
    # in float32 like ``clip(rint((a - lo) * scale) + 1, 1, 255)``, in place in one scratch array
    t = np.subtract(a, np.float32(lo), dtype=np.float32)
    t *= np.float32(254.0 / (hi - lo))
    np.rint(t, out=t)
    t += np.float32(1.0)
    with np.errstate(invalid="ignore"):
        np.clip(t, 1, 255, out=t)
    if finite is not None:
        t[~finite] = 0
    return t.astype(np.uint8), lo, hi


def _percentiles(x: np.ndarray, qs: tuple[float, ...], scalar: bool = False) -> list[float]:
    """``np.percentile(x, list(qs))`` (or ``np.percentile(x, qs[0])`` when ``scalar``), bit for bit:
    numpy's linear method and its float rounding, from one :func:`numpy.partition` (``x`` finite,
    not empty) without numpy's per-call overhead (several times faster on the few-thousand-sample
    windows here)."""
    v = x.ravel()
    n = v.size
    spots = []
    for q in qs:
        qf = q / 100.0
        vi = (n - 1) * qf  # numpy's virtual index for the linear method
        k = math.floor(vi)
        t = vi - k
        k0, k1 = (n - 1, n - 1) if vi >= n - 1 else (0, 0) if vi < 0 else (k, k + 1)
        spots.append((k0, k1, t))
    part = np.partition(v, sorted({k for s in spots for k in s[:2]}))
    out = []
    for k0, k1, t in spots:
        lo, hi = part[k0], part[k1]
        diff = hi - lo
        w: Any = t if scalar else np.float64(t)  # numpy: a python float weight, or a float64 array
        out.append(float(lo + diff * w if t < 0.5 else hi - diff * (1 - w)))
    return out


#: ``json.dumps(header, separators=(",", ":"), allow_nan=False)`` without building an encoder per call
_HEADER_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def pack_message(header: dict[str, Any], payload: bytes | memoryview | np.ndarray | None = None) -> bytes:
    """A binary WebSocket message: u32 LE header length, UTF-8 JSON header, zero padding
    to a multiple of 4 bytes, then the payload (so a Float32Array can view it in place)."""
    h = _HEADER_JSON.encode(header).encode()
    pad = (-(4 + len(h))) % 4
    parts: list[Any] = [struct.pack("<I", len(h)), h, b" " * pad]
    if payload is not None:  # joined in one copy (an array's buffer as is, C order)
        parts.append(np.ascontiguousarray(payload) if isinstance(payload, np.ndarray) else payload)
    return b"".join(parts)


def unpack_message(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Inverse of :func:`pack_message`: ``(header, payload)``."""
    (n,) = struct.unpack_from("<I", data, 0)
    header = json.loads(data[4:4 + n])
    start = 4 + n + ((-(4 + n)) % 4)
    return header, data[start:]


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _pcts(values: deque) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    a = np.fromiter(values, float)
    if not np.isfinite(a).all():
        a = a[np.isfinite(a)]
        if a.size == 0:
            return {"p50": None, "p99": None, "n": 0}
    p50, p99 = _percentiles(a, (50.0, 99.0))
    return {"p50": round(p50, 3), "p99": round(p99, 3), "n": int(a.size)}


class RateLimit:
    """Token bucket: on average at most ``rate`` per second, bursts of ``burst``.

    A burst of 2 lets a stream that arrives at about ``rate`` with jitter (two frames close
    together, then a pause) through without waiting, while a faster stream is decimated.
    """

    __slots__ = ("rate", "burst", "tokens", "t")

    def __init__(self, rate: float, burst: float = 2.0) -> None:
        self.rate, self.burst, self.tokens, self.t = float(rate), float(burst), float(burst), time.monotonic()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now

    def take(self, now: float) -> bool:
        """Spend a token if one is there."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def due(self, now: float) -> float:
        """When the next token will be there (monotonic seconds)."""
        self._refill(now)
        return now + max(0.0, (1.0 - self.tokens) / self.rate)


# -- bridge: ZeroMQ side ------------------------------------------------------------------------
@dataclass
class _Stream:
    """What the bridge keeps of one stream (one panel)."""

    topic: str
    stream: str
    role: str  # raw | recon
    source: str  # the device (raw stream) this belongs to
    sub_index: int = 0  # which data endpoint it arrives on
    lock: threading.Lock = field(default_factory=threading.Lock)
    kind: str | None = None
    spec: dict[str, Any] | None = None
    spec_key: tuple | None = None
    descriptor: dict[str, Any] | None = None
    descriptor_version: int = 0  # +1 whenever ``descriptor`` changes (the spec key's part for it)
    rx_kind: tuple[tuple, str] | None = None  # (key, kind): the panel kind the receiver files frames by
    header: dict[str, Any] | None = None
    latest: np.ndarray | None = None
    trace: TraceBuffer | None = None
    trace_pending: list = field(default_factory=list)
    rate_est: deque = field(default_factory=lambda: deque(maxlen=32))
    history: deque = field(default_factory=lambda: deque(maxlen=300))
    dirty: bool = False
    due_s: float = 0.0  # monotonic s: the rate limit's next token (a frame before then need not wake the encoder)
    t_mono_ns: int = 0
    t_bridge_ns: int = 0
    seq: int = -1
    frames: int = 0
    encoded: int = 0
    gaps: int = 0
    limit: RateLimit | None = None
    window: Any = None  # operator's window override [lo, hi] or None
    rx_times: deque = field(default_factory=lambda: deque(maxlen=64))


@dataclass
class Encoded:
    """One panel update, ready to send to every browser."""

    panel: str
    version: int
    data: bytes
    t_mono_ns: int
    t_bridge_ns: int


class Bridge:
    """ZeroMQ → encoded panel updates. Threads: receiver, encoder, status poller.

    ``on_update(encoded)`` and ``on_panels()`` are called from the encoder thread;
    ``on_status(dict)`` from the poller thread.
    """

    def __init__(self, settings: ViewSettings) -> None:
        self.s = settings
        self.streams: dict[str, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._halt = threading.Event()
        self._wake = threading.Event()
        #: when the encoder wakes by itself (monotonic s; inf during a pass, -inf while nobody
        #: watches): a frame wakes it only if its stream is due before then
        self._enc_wake_at = math.inf
        self._idle_specs_at = 0.0  # monotonic time of the next panel-spec update while nobody watches
        self._sub_cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._subscribed_raw: set[str] = set()
        self.status: dict[str, Any] = {"daemon": None, "recon": None, "devices": {}, "t": 0.0}
        self.descriptors: dict[str, dict[str, Any]] = {}  # raw stream name -> descriptor
        self._descriptors_version = 0  # +1 whenever ``descriptors`` changes
        self.device_kinds: dict[str, str] = {}
        self.panels_version = 0
        self.on_update: Callable[[Encoded], None] = lambda e: None
        self.on_panels: Callable[[], None] = lambda: None
        #: whether anyone watches: while it says no, frames are kept (newest per panel) and panel
        #: specs kept current, but nothing is encoded (``medacq up`` without a browser costs no CPU)
        self.viewers: Callable[[], bool] = lambda: True
        self.on_status: Callable[[dict[str, Any]], None] = lambda s: None
        self.counters = {"messages": 0, "frames": 0, "bad": 0, "encode_errors": 0}
        self.last_encode_error: str | None = None
        self._threads: list[threading.Thread] = []

    # lifecycle
    def start(self) -> "Bridge":
        for target, name in ((self._receive_loop, "view-rx"), (self._encode_loop, "view-enc"),
                             (self._poll_loop, "view-status")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()
        for t in self._threads:
            t.join(2.0)

    def control_client(self, target: str, timeout: float = 5.0) -> ControlClient:
        """A control client for ``daemon`` or ``recon`` (what the CLI would open)."""
        ep = self.s.daemon_control if target == "daemon" else self.s.recon_control
        if not ep:
            raise DaemonUnreachable(f"no control endpoint for {target}")
        return ControlClient(ep, timeout=timeout, curve=self.s.curve)

    # receiving
    def _receive_loop(self) -> None:
        import zmq

        # one Subscriber per endpoint: raw/<s> and recon/<s> headers share the stream name
        # <s>, and a Subscriber tracks sequence numbers per stream name
        subs = [Subscriber(ep, "recon/", errors="skip", rcvhwm=self.s.rcvhwm, curve=self.s.curve,
                           on_gap=lambda g, i=i: self._on_gap(i, g))
                for i, ep in enumerate(self.s.data_endpoints)]
        poller = zmq.Poller()
        for sub in subs:
            poller.register(sub.sock, zmq.POLLIN)
        try:
            while not self._halt.is_set():
                while True:
                    try:
                        op, topic = self._sub_cmds.get_nowait()
                    except queue.Empty:
                        break
                    for sub in subs:
                        sub.sock.setsockopt(op, topic.encode())
                ready = dict(poller.poll(100))
                for i, sub in enumerate(subs):
                    for _ in range(256 if sub.sock in ready else 0):
                        try:
                            msg = sub.recv(timeout=0)
                        except Exception as exc:  # noqa: BLE001 - a bad message never ends the bridge
                            self.counters["bad"] += 1
                            log.debug("view bridge: %s", exc)
                            continue
                        if msg is None:
                            break
                        self.counters["messages"] += 1
                        try:
                            self._on_message(msg.topic, msg.header, msg.array, i)
                        except Exception as exc:  # noqa: BLE001
                            self.counters["bad"] += 1
                            log.warning("view bridge: %s: %s", msg.topic, exc)
        finally:
            for sub in subs:
                sub.close()

    def _stream_for(self, topic: str, header: dict[str, Any], sub_index: int) -> _Stream | None:
        st = self.streams.get(topic)
        if st is not None:
            return st
        role, _, name = topic.partition("/")
        if role == "raw":
            if name not in self._subscribed_raw:  # prefix over-match (raw/eeg0 vs raw/eeg01)
                return None
            source = name
        elif role == "recon":
            src = (header.get("source") or {}).get("stream") or ((header.get("descriptor") or {}).get("meta") or {}).get("source")
            source = src or name.split("/")[0]
        else:
            return None
        st = _Stream(topic=topic, stream=name, role=role, source=source, sub_index=sub_index)
        with self._streams_lock:
            self.streams[topic] = st
        return st

    def _on_gap(self, sub_index: int, g: Any) -> None:
        for st in list(self.streams.values()):
            if st.stream == g.stream and st.sub_index == sub_index:
                st.gaps += g.count
                if st.trace is not None and g.lost_samples is None and st.header:
                    n = int(st.header["shape"][-1]) if st.header.get("shape") else 0
                    with st.lock:
                        st.trace.gap(n * g.count)
                elif st.trace is not None and g.lost_samples:
                    with st.lock:
                        st.trace.gap(int(g.lost_samples))

    def _on_message(self, topic: str, h: dict[str, Any], array: np.ndarray | None, sub_index: int = 0) -> None:
        st = self._stream_for(topic, h, sub_index)
        if st is None:
            return
        kind = h["kind"]
        if kind == "descriptor" and h.get("descriptor"):
            if h["descriptor"] != st.descriptor:
                st.descriptor = h["descriptor"]
                st.descriptor_version += 1
                if st.role == "raw":
                    self.descriptors[st.stream] = st.descriptor
                    self._descriptors_version += 1
                st.spec_key = None  # rebuild the panel spec
                st.dirty = True
                self._wake.set()
            return
        if kind == "series_start":
            with st.lock:
                st.trace, st.trace_pending = None, []
                st.rate_est.clear()
            return
        if kind != "frame" or array is None:
            return
        now = time.monotonic_ns()
        self.counters["frames"] += 1
        with st.lock:
            st.frames += 1
            st.rx_times.append(now)
            if st.header is None or st.header.get("shape") != h.get("shape") or st.header.get("axes") != h.get("axes"):
                st.trace, st.trace_pending = None, []
                st.rate_est.clear()
                st.spec_key = None
                st.rx_kind = None
            st.header = h
            st.seq = h["seq"]
            st.t_mono_ns = h["t_mono_ns"]
            st.t_bridge_ns = now
            key = (st.descriptor_version, self._descriptors_version)
            if st.rx_kind is None or st.rx_kind[0] != key:  # shape/axes changes reset it above
                st.rx_kind = (key, self._kind(st))
            kind_now = st.rx_kind[1]
            if kind_now == "trace":
                self._trace_append(st, h, array)
            elif kind_now == "scalar":
                v = np.asarray(array, dtype=np.float64).ravel()
                if v.dtype.kind == "c":
                    v = np.abs(v)
                st.latest = v.copy()
                st.history.append((h["t_mono_ns"], v[: 4].copy()))
            else:
                st.latest = array  # zero-copy: the payload buffer stays alive with it
            st.dirty = True
        if (st.role == "recon" and self._touch_overlays(st)) or st.due_s < self._enc_wake_at:
            self._wake.set()

    # overlays (a stiffness map over the B-mode): marked here, composed only when encoded
    def _main_recon(self, st: _Stream | None, modality: str) -> bool:
        return st is not None and st.role == "recon" and st.stream == st.source and self._modality(st) == modality

    def _overlay_base(self, mp: _Stream) -> _Stream | None:
        """The B-mode stream (``recon/<us>``) a map is drawn over (:data:`OVERLAY_MODALITIES`)."""
        want = (((self.descriptors.get(mp.source) or {}).get("meta") or {}).get("bmode_stream")
                or ((mp.descriptor or {}).get("meta") or {}).get("bmode_stream"))
        cands = [s for s in list(self.streams.values()) if self._main_recon(s, "us")]
        if want:
            return next((s for s in cands if s.stream == want), None)
        return cands[0] if len(cands) == 1 else None

    def _touch_overlays(self, st: _Stream) -> bool:
        """Mark the overlays ``st`` is part of dirty; whether there was any."""
        if any(self._main_recon(st, m) for m in OVERLAY_MODALITIES):
            maps = [st]
            if f"overlay/{st.stream}" not in self.streams and self._overlay_base(st) is not None:
                ov = _Stream(topic=f"overlay/{st.stream}", stream=st.stream, role="overlay", source=st.source,
                             sub_index=st.sub_index)
                with self._streams_lock:
                    self.streams[ov.topic] = ov
        elif self._main_recon(st, "us"):
            maps = [m for m in list(self.streams.values()) if m.role == "recon" and m.stream == m.source
                    and f"overlay/{m.stream}" in self.streams and self._overlay_base(m) is st]
        else:
            return False
        touched = False
        for mp in maps:
            ov = self.streams.get(f"overlay/{mp.stream}")
            if ov is None or mp.header is None:
                continue
            with ov.lock:
                ov.header = {"shape": mp.header.get("shape"), "axes": mp.header.get("axes"), "units": "kPa"}
                ov.seq, ov.t_mono_ns, ov.t_bridge_ns = mp.seq, st.t_mono_ns, st.t_bridge_ns
                ov.dirty = True
            touched = True
        return touched

    def _overlay_payload(self, ov: _Stream) -> tuple[dict[str, Any], bytes] | None:
        """The B-mode as 8-bit gray indices, then the map as 8-bit colour indices on the same
        pixels (0: transparent: outside the map, no estimate, or confidence below the bound)."""
        mp = self.streams.get(f"recon/{ov.stream}")
        base = self._overlay_base(mp) if mp is not None else None
        cf = self.streams.get(f"recon/{ov.stream}/confidence")
        if mp is None or base is None:
            return None
        with base.lock:
            b, bdesc = base.latest, base.descriptor
        with mp.lock:
            e, edesc = mp.latest, mp.descriptor
        conf = cf.latest if cf is not None else None
        bg, eg = _grid_mm(bdesc, b), _grid_mm(edesc, e)
        if b is None or e is None or bg is None or eg is None:
            return None
        e = _image_view(e).astype(np.float32, copy=False)
        bh, oh = self._hints(base), self._hints(ov)
        idx_b, blo, bhi = encode_image(b, bh.get("window", "db"), self.s.image_max_px,
                                       float(bh.get("dynamic_range_db", 60.0)))
        f = max(1, math.ceil(max(_image_view(b).shape) / self.s.image_max_px))  # encode_image's block size
        h, w = idx_b.shape
        xs = bg[0] + (f * np.arange(w) + (f - 1) / 2) * bg[1]  # block centres, mm
        zs = bg[2] + (f * np.arange(h) + (f - 1) / 2) * bg[3]
        ix, iz = np.rint((xs - eg[0]) / eg[1]).astype(np.int64), np.rint((zs - eg[2]) / eg[3]).astype(np.int64)
        inside = ((iz >= 0) & (iz < e.shape[0]))[:, None] & ((ix >= 0) & (ix < e.shape[1]))[None, :]
        rows, cols = np.clip(iz, 0, e.shape[0] - 1), np.clip(ix, 0, e.shape[1] - 1)
        val = e[rows][:, cols]
        min_conf = float(oh.get("min_confidence", 0.5))
        show = inside & np.isfinite(val)
        if conf is not None and _image_view(conf).shape == e.shape:
            show &= _image_view(conf)[rows][:, cols] >= min_conf
        if ov.window is not None:
            lo, hi = ov.window
        elif show.any():
            lo, hi = (float(v) for v in np.percentile(val[show], [1, 99]))
        else:
            lo, hi = 0.0, 1.0
        if not hi > lo:
            hi = lo + (abs(lo) * 1e-6 or 1.0)
        with np.errstate(invalid="ignore"):
            idx_e = np.where(show, np.clip(np.rint((val - lo) * (254.0 / (hi - lo))) + 1.0, 1, 255), 0).astype(np.uint8)
        hd = {"height": int(h), "width": int(w), "lo": _finite(lo), "hi": _finite(hi), "base_lo": _finite(blo),
              "base_hi": _finite(bhi), "colormap": oh.get("colormap", "viridis"),
              "base_colormap": bh.get("colormap", "gray"), "alpha": float(oh.get("alpha", 0.6)),
              "min_confidence": min_conf, "manual": ov.window is not None, "base": base.topic,
              "base_seq": base.seq, "map_seq": mp.seq,
              "extent_mm": [float(xs[0] - f * bg[1] / 2), float(xs[-1] + f * bg[1] / 2),
                            float(zs[0] - f * bg[3] / 2), float(zs[-1] + f * bg[3] / 2)],
              "map_extent_mm": [eg[0], eg[0] + (e.shape[1] - 1) * eg[1], eg[2], eg[2] + (e.shape[0] - 1) * eg[3]],
              "shown_fraction": round(float(show.sum()) / max(1, int(inside.sum())), 4)}
        return hd, idx_b.tobytes() + np.ascontiguousarray(idx_e).tobytes()

    def _modality(self, st: _Stream) -> str | None:
        d = st.descriptor or self.descriptors.get(st.source) or {}
        return d.get("modality")

    def _hints(self, st: _Stream) -> dict[str, Any]:
        if st.role == "overlay":  # the map's modality, the overlay's role
            mp = self.streams.get(f"recon/{st.stream}")
            return _hints(self._modality(mp) if mp else None, "overlay", mp.descriptor if mp else None)
        return _hints(self._modality(st), st.role, st.descriptor)

    def _kind(self, st: _Stream) -> str:
        h = st.header or {}
        return panel_kind(h.get("shape") or [], h.get("axes"), self._hints(st))

    def _rate(self, st: _Stream, h: dict[str, Any], n: int) -> float | None:
        own = st.descriptor or {}
        src = self.descriptors.get(st.source) or {} if st.role == "recon" else {}
        for d in (own, src):
            if d.get("sample_rate_hz") and (d is own or d.get("shape") == h.get("shape")):
                return float(d["sample_rate_hz"])
            if d.get("frame_rate_hz"):  # one frame of n samples per source frame
                return float(d["frame_rate_hz"]) * n
        st.rate_est.append((h["t_mono_ns"], n, h["seq"]))
        (t0, _, s0), (t1, _, s1) = st.rate_est[0], st.rate_est[-1]
        if len(st.rate_est) >= 3 and (t1 - t0 >= 0.5e9 or len(st.rate_est) == st.rate_est.maxlen):
            if t1 > t0 and s1 > s0:
                return n * (s1 - s0) / ((t1 - t0) / 1e9)
        return None

    def _trace_append(self, st: _Stream, h: dict[str, Any], array: np.ndarray) -> None:
        block = _trace_view(array, list(h.get("axes") or []))
        if st.trace is None:
            rate = self._rate(st, h, block.shape[1])
            if rate is None:
                st.trace_pending.append(block.copy())
                return
            win = float(self._hints(st).get("window_s", self.s.trace_window_s))
            st.trace = TraceBuffer(block.shape[0], rate, win, self.s.trace_columns)
            for b in st.trace_pending:
                st.trace.append(b)
            st.trace_pending = []
        st.trace.append(block)

    # panel specs
    def _spec(self, st: _Stream) -> dict[str, Any] | None:
        h = st.header
        if h is None:
            return None
        if st.role == "overlay":
            mp = self.streams.get(f"recon/{st.stream}")
            base = self._overlay_base(mp) if mp is not None else None
            return {"id": st.topic, "topic": st.topic, "stream": st.stream, "role": "overlay", "source": st.source,
                    "kind": "overlay", "modality": self._modality(mp) if mp else "", "shape": h.get("shape"),
                    "axes": list(h.get("axes") or []), "units": "kPa", "dtype": "uint8",
                    "map": f"recon/{st.stream}", "base": base.topic if base else None}
        d = st.descriptor or {}
        src = self.descriptors.get(st.source) or {}
        hints = self._hints(st)
        kind = panel_kind(h.get("shape") or [], h.get("axes"), hints)
        axes = list(h.get("axes") or [])
        labels = d.get("channel_names") or (src.get("channel_names") if st.role == "recon" else None)
        meta = d.get("meta") or {}
        spec: dict[str, Any] = {
            "id": st.topic, "topic": st.topic, "stream": st.stream, "role": st.role, "source": st.source,
            "kind": kind, "modality": self._modality(st) or "", "shape": h.get("shape"), "axes": axes,
            "units": h.get("units") or d.get("units") or "", "dtype": h.get("dtype"),
        }
        if kind == "trace":
            n_ch = int(np.prod([s for s, a in zip(h["shape"], axes) if a not in SAMPLE_AXES])) if axes else 1
            names = list(labels) if labels and len(labels) == n_ch else [f"ch{i}" for i in range(n_ch)]
            spec.update(channel_names=names[:TRACE_MAX_CHANNELS], channels=n_ch)
        elif kind == "scalar":
            size = int(np.prod(h.get("shape") or [1]))
            names = hints.get("labels") or meta.get("labels") or meta.get("value_names") or (
                labels if labels and len(labels) == size else None)
            spec.update(labels=list(names) if names else [f"{st.stream}[{i}]" if size > 1 else st.stream
                                                          for i in range(size)])
        elif kind == "image":
            spec.update(colormap=hints.get("colormap", "gray"), window=hints.get("window", "percentile"))
        return spec

    def panels(self) -> list[dict[str, Any]]:
        """Every panel spec, grouped by source device (raw first, then its recon outputs)."""
        out = [s.spec for s in self.streams.values() if s.spec is not None and s.kind != "none"]
        return sorted(out, key=lambda p: (p["source"], p["role"] != "raw", p["topic"]))

    # encoding
    def _encode_loop(self) -> None:
        period = 1.0 / self.s.max_fps
        timeout = period
        while not self._halt.is_set():
            self._wake.wait(timeout)
            self._wake.clear()
            self._enc_wake_at = math.inf  # a frame that comes during the pass wakes the next one
            now = time.monotonic()
            changed = False
            next_due = None
            if not self.viewers():  # specs only, 4 times a second (the panel list a client gets
                # first); frames wait, the newest kept, until a client connects (wake())
                self._enc_wake_at = -math.inf
                if now >= self._idle_specs_at:
                    self._idle_specs_at = now + 0.25
                    changed = self._update_specs()
                    if changed:
                        self.panels_version += 1
                        self.on_panels()
                timeout = max(0.0, self._idle_specs_at - time.monotonic())
                continue
            for st in list(self.streams.values()):
                if not st.dirty:
                    continue
                if st.limit is None:
                    st.limit = RateLimit(self.s.max_fps)
                if not st.limit.take(now):  # rate limit: encode the newest frame once it is due
                    st.due_s = due = st.limit.due(now)
                    next_due = due if next_due is None else min(next_due, due)
                    continue
                st.due_s = st.limit.due(now)
                try:
                    changed |= self._encode(st, now)
                except Exception as exc:  # noqa: BLE001 - one odd stream never stops the others
                    self.counters["encode_errors"] += 1
                    self.last_encode_error = f"{st.topic}: {type(exc).__name__}: {exc}"
                    log.warning("view encode %s", self.last_encode_error)
                    st.dirty = False
            if changed:
                self.panels_version += 1
                self.on_panels()
            now = time.monotonic()
            timeout = period if next_due is None else max(0.0, next_due - now)
            self._enc_wake_at = now + timeout

    def wake(self) -> None:
        """Run the encoder now (a client connected: what was held while nobody watched goes out)."""
        self._wake.set()

    def _update_specs(self) -> bool:
        """Recompute each panel spec whose stream's shape, descriptor or modality changed; whether any did."""
        changed = False
        for st in list(self.streams.values()):
            if st.header is None:
                continue
            try:
                with st.lock:
                    changed |= self._spec_locked(st)
            except Exception as exc:  # noqa: BLE001 - one odd stream never stops the others
                self.counters["encode_errors"] += 1
                self.last_encode_error = f"{st.topic}: {type(exc).__name__}: {exc}"
        return changed

    def _spec_locked(self, st: _Stream) -> bool:
        h = st.header
        key = (None if h is None else (tuple(h.get("shape") or []), tuple(h.get("axes") or []), h.get("units")),
               st.descriptor_version, self._modality(st))
        if key == st.spec_key:
            return False
        st.spec = self._spec(st)
        st.kind = st.spec["kind"] if st.spec else None
        st.spec_key = key
        return True

    def _encode(self, st: _Stream, now: float) -> bool:
        with st.lock:
            st.dirty = False
            h = st.header
            spec_changed = self._spec_locked(st)
            if st.spec is None or h is None:
                return spec_changed
            hd: dict[str, Any] = {"panel": st.topic, "kind": st.kind, "seq": st.seq, "t_mono_ns": st.t_mono_ns,
                                  "t_bridge_ns": st.t_bridge_ns}
            payload: Any = None
            if st.kind == "trace":
                if st.trace is None:
                    return spec_changed
                snap = st.trace.snapshot()
                if snap.shape[1] > TRACE_MAX_CHANNELS:
                    snap = np.ascontiguousarray(snap[:, :TRACE_MAX_CHANNELS])
                hd.update(channels=int(snap.shape[1]), columns=int(snap.shape[2]), window_s=st.trace.window_s,
                          rate_hz=st.trace.rate_hz)
                payload = snap
            elif st.kind == "scalar":
                v = st.latest
                if v is None:
                    return spec_changed
                hist = list(st.history)
                # the history as a float32 payload (columns = the first ≤ 4 values, oldest first;
                # NaN where not finite), not as up to 300 × 4 floats of JSON text at every update
                cols = min((len(e[1]) for e in hist), default=0)
                hx = (np.stack([e[1][:cols] for e in hist]).astype(np.float32).T if hist and cols
                      else np.zeros((0, 0), np.float32))
                hx[~np.isfinite(hx)] = np.nan
                hd.update(values=[_finite(x) for x in v.tolist()], history_cols=int(hx.shape[0]),
                          history_n=int(hx.shape[1]),
                          history_s=(hist[-1][0] - hist[0][0]) / 1e9 if len(hist) > 1 else 0.0)
                payload = np.ascontiguousarray(hx)
            elif st.kind == "profile":
                a = np.asarray(st.latest)
                if a.dtype.kind == "c":
                    a = np.abs(a)
                a = a.astype(np.float32).ravel()
                f = max(1, math.ceil(a.size / 1024))
                if f > 1:
                    a = a[: (a.size // f) * f].reshape(-1, f).mean(axis=1).astype(np.float32)
                hd.update(points=int(a.size), step=f)
                payload = np.ascontiguousarray(a)
            elif st.kind == "image":
                hints = self._hints(st)
                window = st.window if st.window is not None else hints.get("window", "percentile")
                idx, lo, hi = encode_image(st.latest, window, self.s.image_max_px,
                                           float(hints.get("dynamic_range_db", 60.0)))
                hd.update(height=int(idx.shape[0]), width=int(idx.shape[1]), lo=_finite(lo), hi=_finite(hi),
                          colormap=hints.get("colormap", "gray"), manual=st.window is not None)
                payload = idx
            elif st.kind == "overlay":
                got = self._overlay_payload(st)
                if got is None:
                    return spec_changed
                hd.update(got[0])
                payload = got[1]
            else:
                return spec_changed
            st.encoded += 1
            hd["v"] = st.encoded
            enc = Encoded(st.topic, st.encoded, pack_message(hd, payload), st.t_mono_ns, st.t_bridge_ns)
        self.on_update(enc)
        return spec_changed

    def set_window(self, panel: str, window: list[float] | None) -> None:
        st = self.streams.get(panel)
        if st is None:
            raise KeyError(panel)
        st.window = None if window is None else [float(window[0]), float(window[1])]
        st.dirty = True
        self._wake.set()

    # status polling
    def _poll_loop(self) -> None:
        d = r = None
        try:
            d = self.control_client("daemon", timeout=1.0)
            r = self.control_client("recon", timeout=1.0) if self.s.recon_control else None
            while not self._halt.is_set():
                t0 = time.monotonic()
                self._poll_once(d, r)
                self._halt.wait(max(0.05, self.s.status_interval_s - (time.monotonic() - t0)))
        finally:
            for c in (d, r):
                if c is not None:
                    c.close()

    def _poll_once(self, d: ControlClient, r: ControlClient | None) -> None:
        ds = rs = None
        try:
            ds = d.request("status", timeout=1.0)
        except (DaemonUnreachable, RequestFailed) as exc:
            log.debug("daemon status: %s", exc)
        if r is not None:
            try:
                rs = r.request("status", timeout=1.0)
            except (DaemonUnreachable, RequestFailed) as exc:
                log.debug("recon status: %s", exc)
        if ds is not None:
            for name, s in (ds.get("streams") or {}).items():
                self.device_kinds[name] = s.get("kind", "")
                if name not in self.descriptors:
                    try:
                        desc = d.request("describe", timeout=1.0, device=name).get("descriptor")
                    except (DaemonUnreachable, RequestFailed):
                        desc = None
                    if desc:
                        self.descriptors[name] = desc
                        self._descriptors_version += 1
            self._update_subscriptions(ds, rs)
        self.status = {"daemon": ds, "recon": rs, "t": time.time()}
        self.on_status(self.status)

    def _update_subscriptions(self, ds: dict[str, Any], rs: dict[str, Any] | None) -> None:
        recon_streams = (rs or {}).get("streams") or {}
        for name, s in (ds.get("streams") or {}).items():
            has_recon = bool((recon_streams.get(name) or {}).get("outputs_streams"))
            heavy = float(s.get("mbps") or 0.0) > self.s.raw_limit_mbps
            want = not (heavy and has_recon)
            if want and name not in self._subscribed_raw:
                self._subscribed_raw.add(name)
                self._sub_cmds.put((_zmq_const("SUBSCRIBE"), f"raw/{name}"))
            elif not want and name in self._subscribed_raw:
                self._subscribed_raw.discard(name)
                self._sub_cmds.put((_zmq_const("UNSUBSCRIBE"), f"raw/{name}"))
                with self._streams_lock:
                    self.streams.pop(f"raw/{name}", None)
                self.on_panels()

    def subscribed_raw(self) -> set[str]:
        return set(self._subscribed_raw)


def _zmq_const(name: str) -> int:
    import zmq

    return int(getattr(zmq, name))


# -- server: aiohttp side -----------------------------------------------------------------------
@dataclass(eq=False)
class _Client:
    ws: Any
    wake: asyncio.Event
    last_version: dict[str, int] = field(default_factory=dict)
    limits: dict[str, RateLimit] = field(default_factory=dict)
    inflight: dict[str, tuple[int, float, int, int]] = field(default_factory=dict)
    #: panels that may have something to send (a newer update, an acknowledgement, a token due):
    #: what the pump looks at, instead of every panel on every wake-up
    pending: set[str] = field(default_factory=set)
    timer_at: float = 0.0  # monotonic s of the pump's scheduled rate-limit wake-up (past: none)
    sent: int = 0
    skipped: int = 0
    panels_version: int = -1


#: Control requests a page may send (the CLI's ``medacq ctl`` equivalents).
ALLOWED_COMMANDS = {"daemon": {"start", "stop", "record"}, "recon": {"action"}}


class ViewServer:
    """The HTTP/WebSocket server and its bridge. ``start()`` runs it in a background thread;
    :meth:`serve` runs it in the calling thread until stopped.

    Raises :class:`~medacq.daemon.common.binding.BindError` for a non-loopback ``host`` and
    :class:`ViewTokenError` for an unusable ``token``, before anything is bound.
    """

    def __init__(self, settings: ViewSettings) -> None:
        check_exposure("serve http on", _host_port(settings.host, settings.port), allowed=False, needs=REMOTE_HOWTO)
        self.s = settings
        self.token = new_token() if settings.token is None else _check_token(settings.token, "the settings")
        self.refused_requests = 0
        self.bridge = Bridge(settings)
        self.clients: set[_Client] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.latest: dict[str, Encoded] = {}
        self._handoff: deque[Encoded] = deque()  # encoder thread -> event loop (_post_update)
        self._handoff_pending = False
        self.lat_acq: dict[str, deque] = {}
        self.lat_bridge: dict[str, deque] = {}
        self.draw_ms: dict[str, deque] = {}
        self.lat_all_acq: deque = deque(maxlen=2048)
        self.lat_all_bridge: deque = deque(maxlen=2048)
        self.drawn: dict[str, int] = {}
        self.drawn_times: dict[str, deque] = {}
        self.actions_log: deque = deque(maxlen=50)
        self.port: int | None = None
        self._runner: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The page's address, without the token (scripts add ``Authorization: Bearer <token>``)."""
        return f"http://{_host_port(self.s.host, self.port)}/"

    @property
    def login_url(self) -> str:
        """The address to open in a browser: :attr:`url` with ``?token=``."""
        return f"{self.url}?token={self.token}"

    @property
    def cookie_name(self) -> str:
        """Per port: cookies are not port-isolated, and two views on one host must not share one."""
        return f"medacq_view_{self.port}"

    # lifecycle
    def start(self, timeout: float = 15.0) -> "ViewServer":
        self._thread = threading.Thread(target=self.serve, name="view-http", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the view server did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stopping is not None:
            self.loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(5.0)

    def serve(self, duration_s: float | None = None) -> None:
        try:
            asyncio.run(self._main(duration_s))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            if self._thread is None:
                raise

    async def _main(self, duration_s: float | None) -> None:
        from aiohttp import web

        self.loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[_make_host_guard(), self._make_auth()])
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/api/state", self._state)
        app.router.add_static("/static/", STATIC_DIR, show_index=False)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.s.host, self.s.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        b = self.bridge
        b.on_update = self._post_update
        b.viewers = lambda: bool(self.clients)
        b.on_panels = lambda: self.loop.call_soon_threadsafe(self._wake_all)  # type: ignore[union-attr]
        b.on_status = lambda s: self.loop.call_soon_threadsafe(self._on_status)  # type: ignore[union-attr]
        b.start()
        self._ready.set()
        try:
            if duration_s is None:
                await self._stopping.wait()
            else:
                try:
                    await asyncio.wait_for(self._stopping.wait(), duration_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            b.stop()
            for c in list(self.clients):
                await c.ws.close()
            await self._runner.cleanup()

    # HTTP
    def _make_auth(self) -> Any:
        """Middleware: every request carries the token (query, bearer header or cookie), else 401."""
        from aiohttp import web

        @web.middleware
        async def auth(request: Any, handler: Any) -> Any:
            query = request.query.get("token")
            header = request.headers.get("Authorization", "")
            bearer = header[7:].strip() if header[:7].lower() == "bearer " else None
            given = query or bearer or request.cookies.get(self.cookie_name)
            if not given or not _same_token(given, self.token):
                self.refused_requests += 1
                log.debug("view: refused %s %s (%s)", request.method, request.path,
                          "wrong token" if given else "no token")
                if request.path == "/":
                    return web.Response(status=401, text=_LOGIN_PAGE.format(url=self.url), content_type="text/html",
                                        headers={"Cache-Control": "no-store"})
                return web.Response(status=401, text="medacq view: this needs the view's token "
                                    "(?token=... or Authorization: Bearer ...)\n", headers={"Cache-Control": "no-store"})
            resp = await handler(request)
            if query is not None and request.path == "/" and isinstance(resp, web.StreamResponse):
                # the page's own requests (script, WebSocket) then carry it; the page drops it from the URL
                resp.set_cookie(self.cookie_name, self.token, path="/", httponly=True, samesite="Strict")
            return resp

        return auth

    async def _index(self, request: Any) -> Any:
        from aiohttp import web

        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store",
                                                                    "Referrer-Policy": "no-referrer"})

    async def _state(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self.state())

    def state(self) -> dict[str, Any]:
        """Panels, health, latency and counters (also sent to pages once a second)."""
        return {
            "type": "status",
            "panels": self.bridge.panels(),
            "health": self.health(),
            "devices": self.devices(),
            "recorder": self.recorder(),
            "latency": self.latency(),
            "bridge": dict(self.bridge.counters, subscribed_raw=sorted(self.bridge.subscribed_raw()),
                           last_encode_error=self.bridge.last_encode_error),
            "daemon_up": self.bridge.status.get("daemon") is not None,
            "recon_up": self.bridge.status.get("recon") is not None,
            "clients": len(self.clients),
            "actions": list(self.actions_log),
            "max_fps": self.s.max_fps,
            "operator": self.s.operator,
            "refused_requests": self.refused_requests,
        }

    def latency(self) -> dict[str, Any]:
        per = {}
        now = time.monotonic()
        for p in sorted(set(self.lat_acq) | set(self.drawn)):
            times = self.drawn_times.get(p) or deque()
            recent = [t for t in times if now - t <= 5.0]
            per[p] = {"acq_to_pixels_ms": _pcts(self.lat_acq.get(p, deque())),
                      "bridge_to_pixels_ms": _pcts(self.lat_bridge.get(p, deque())),
                      "draw_ms": _pcts(self.draw_ms.get(p, deque())),
                      "drawn": self.drawn.get(p, 0),
                      "draws_per_s": round(len(recent) / 5.0, 2)}
        return {"acq_to_pixels_ms": _pcts(self.lat_all_acq), "bridge_to_pixels_ms": _pcts(self.lat_all_bridge),
                "panels": per}

    def health(self) -> list[dict[str, Any]]:
        """One row per stream: daemon streams, then reconstruction outputs, with view figures."""
        st = self.bridge.status
        ds, rs = st.get("daemon") or {}, st.get("recon") or {}
        rec = ds.get("recording")
        rows = []
        view_lat = self.latency()["panels"]
        streams = self.bridge.streams

        def view_cols(topic: str) -> dict[str, Any]:
            s = streams.get(topic)
            lat = view_lat.get(topic, {})
            return {"view_fps": _rx_fps(s) if s else None, "view_draws_per_s": lat.get("draws_per_s"),
                    "view_gaps": s.gaps if s else None,
                    "pixels_ms_p50": (lat.get("acq_to_pixels_ms") or {}).get("p50"),
                    "pixels_ms_p99": (lat.get("acq_to_pixels_ms") or {}).get("p99"),
                    "subscribed": s is not None}

        for name, s in (ds.get("streams") or {}).items():
            rows.append({"topic": s.get("topic", f"raw/{name}"), "device": name, "role": "raw", "state": s.get("state"),
                         "fps": s.get("fps"), "mbps": s.get("mbps"), "drops": s.get("drops"),
                         "gap_frames": s.get("gap_frames"), "latency_us_p50": s.get("latency_us_p50"),
                         "latency_us_p99": s.get("latency_us_p99"), "reconnects": s.get("reconnects"),
                         "last_error": s.get("last_error"), "recording": _recording_of(rec, s.get("topic", "")),
                         **view_cols(s.get("topic", f"raw/{name}"))})
        for name, s in (rs.get("streams") or {}).items():
            for topic in s.get("outputs_streams") or []:
                rows.append({"topic": topic, "device": name, "role": "recon",
                             "state": "reconstructing" if s.get("reconstructor") else "no reconstructor",
                             "fps": None, "mbps": None, "drops": s.get("dropped"), "gap_frames": None,
                             "latency_us_p50": s.get("latency_us_p50"), "latency_us_p99": s.get("latency_us_p99"),
                             "reconnects": None, "last_error": s.get("last_error"), "errors": s.get("errors"),
                             "frames_done": s.get("frames_done"), "reconstructor": s.get("reconstructor"),
                             "recording": _recording_of(rec, topic), **view_cols(topic)})
        return rows

    def devices(self) -> list[dict[str, Any]]:
        """Per device: state, modality and the buttons the page shows (none in a read-only view)."""
        st = self.bridge.status
        ds, rs = st.get("daemon") or {}, st.get("recon") or {}
        out = []
        for name, s in (ds.get("streams") or {}).items():
            desc = self.bridge.descriptors.get(name) or {}
            modality = desc.get("modality", "")
            buttons = [{"label": "Start", "target": "daemon", "cmd": "start", "fields": {"device": name}},
                       {"label": "Stop", "target": "daemon", "cmd": "stop", "fields": {"device": name}}]
            r = (rs.get("streams") or {}).get(name) or {}
            if r.get("reconstructor"):
                acts = MODALITY_HINTS.get(modality, {}).get("actions", [])
                view_meta = (desc.get("meta") or {}).get("view") or {}
                acts = view_meta.get("actions", acts)
                for label, action, args in acts:
                    buttons.append({"label": label, "target": "recon", "cmd": "action",
                                    "fields": {"target": name, "action": action, "args": args}})
            out.append({"name": name, "kind": s.get("kind"), "modality": modality, "state": s.get("state"),
                        "reconstructor": r.get("reconstructor"), "buttons": buttons if self.s.operator else []})
        return out

    def recorder(self) -> dict[str, Any] | None:
        """The recorder's state and buttons (none in a read-only view), only when the daemon's
        status reports a recorder."""
        ds = self.bridge.status.get("daemon") or {}
        if "recording" not in ds and "recorder" not in ds:
            return None
        rec = ds.get("recording", ds.get("recorder"))
        active = bool(rec.get("active", rec.get("recording", rec.get("state") == "recording"))) \
            if isinstance(rec, dict) else bool(rec)
        buttons = [{"label": "Record", "target": "daemon", "cmd": "record",
                    "fields": {"action": "start", "topics": ["raw/", "recon/"]}},
                   {"label": "Stop recording", "target": "daemon", "cmd": "record", "fields": {"action": "stop"}}]
        return {"state": rec, "active": active, "buttons": buttons if self.s.operator else []}

    # WebSocket
    async def _ws(self, request: Any) -> Any:
        from aiohttp import WSMsgType, web

        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in _allowed_origins(request.host):
            return web.Response(status=403, text="cross-origin WebSocket refused")
        # no permessage-deflate: on loopback it only costs CPU (a browser asks for it; zlib over MB/s)
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=1 << 16, compress=False)
        await ws.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:  # small frames: no Nagle (else ~40 ms waits on the peer's delayed ACK)
            import socket as _socket

            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        c = _Client(ws, asyncio.Event())
        c.pending.update(self.latest)
        self.clients.add(c)
        self.bridge.wake()  # frames held while nobody watched are encoded now
        pump = asyncio.create_task(self._pump(c))
        try:
            await ws.send_str(json.dumps({"type": "hello", "version": 1, "max_fps": self.s.max_fps}))
            await ws.send_str(json.dumps(self.state(), default=str))
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_client_message(c, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            pump.cancel()
            self.clients.discard(c)
        return ws

    async def _on_client_message(self, c: _Client, text: str) -> None:
        try:
            m = json.loads(text)
            op = m.get("op")
        except (json.JSONDecodeError, AttributeError):
            return
        if op == "drawn":
            self._drawn(c, str(m.get("panel")), int(m.get("v", -1)), m.get("draw_ms"))
        elif op == "ctl":
            asyncio.create_task(self._ctl(c, m))
        elif op == "set":
            try:
                self.bridge.set_window(str(m.get("panel")), m.get("window"))
            except (KeyError, TypeError, ValueError, IndexError):
                pass

    def _drawn(self, c: _Client, panel: str, version: int, draw_ms: Any) -> None:
        inf = c.inflight.get(panel)
        if inf is None or inf[0] != version:
            return
        del c.inflight[panel]
        now = time.monotonic_ns()
        a = (now - inf[2]) / 1e6
        b = (now - inf[3]) / 1e6
        self.lat_acq.setdefault(panel, deque(maxlen=512)).append(a)
        self.lat_bridge.setdefault(panel, deque(maxlen=512)).append(b)
        self.lat_all_acq.append(a)
        self.lat_all_bridge.append(b)
        if isinstance(draw_ms, (int, float)) and math.isfinite(draw_ms):
            self.draw_ms.setdefault(panel, deque(maxlen=512)).append(float(draw_ms))
        self.drawn[panel] = self.drawn.get(panel, 0) + 1
        self.drawn_times.setdefault(panel, deque(maxlen=256)).append(time.monotonic())
        enc = self.latest.get(panel)
        if enc is not None and enc.version != c.last_version.get(panel, 0):  # a newer one waited for this
            c.pending.add(panel)
            c.wake.set()

    async def _ctl(self, c: _Client, m: dict[str, Any]) -> None:
        target, cmd = m.get("target"), m.get("cmd")
        fields = m.get("fields") or {}
        req = m.get("req")
        if not self.s.operator:
            reply = {"type": "reply", "req": req, "ok": False,
                     "error": "read-only view: controls need a view started with operator rights (medacq view --operator)"}
        elif target not in ALLOWED_COMMANDS or cmd not in ALLOWED_COMMANDS[target] or not isinstance(fields, dict):
            reply = {"type": "reply", "req": req, "ok": False,
                     "error": f"the view does not send {cmd!r} to {target!r}"}
        else:
            reply = await asyncio.get_running_loop().run_in_executor(None, self._ctl_blocking, target, cmd, fields)
            reply.update(type="reply", req=req)
        self.actions_log.append({"t": time.time(), "target": target, "cmd": cmd, "fields": fields,
                                 "ok": reply["ok"], "error": reply.get("error")})
        log.info("view: %s %s %s -> %s", target, cmd, json.dumps(fields), "ok" if reply["ok"] else reply.get("error"))
        if not c.ws.closed:
            await c.ws.send_str(json.dumps(reply, default=str))

    def _ctl_blocking(self, target: str, cmd: str, fields: dict[str, Any]) -> dict[str, Any]:
        try:
            with self.bridge.control_client(target, timeout=5.0) as cc:
                return {"ok": True, "result": cc.request(cmd, **fields)}
        except RequestFailed as exc:
            return {"ok": False, "error": str(exc)}
        except DaemonUnreachable as exc:
            return {"ok": False, "error": f"unreachable: {exc}"}

    def _post_update(self, enc: Encoded) -> None:
        """Encoder thread: hand an update to the event loop. Updates that come while a hand-off
        is pending ride along with it (one loop wake-up, not one per update)."""
        self._handoff.append(enc)
        if not self._handoff_pending:
            self._handoff_pending = True
            self.loop.call_soon_threadsafe(self._take_updates)  # type: ignore[union-attr]

    def _take_updates(self) -> None:
        self._handoff_pending = False  # before draining: an update appended from here on schedules anew
        while self._handoff:
            self._on_update(self._handoff.popleft())

    def _on_update(self, enc: Encoded) -> None:
        self.latest[enc.panel] = enc
        for c in self.clients:
            c.pending.add(enc.panel)
            c.wake.set()

    def _wake_all(self) -> None:
        for c in self.clients:
            c.wake.set()

    def _on_status(self) -> None:
        if not self.clients:
            return
        text = json.dumps(self.state(), default=str)
        for c in list(self.clients):
            if not c.ws.closed:
                asyncio.ensure_future(_send_quietly(c.ws, text))

    async def _pump(self, c: _Client) -> None:
        """Send each panel's newest update to one browser: at most one in flight per panel,
        at most ``max_fps`` per panel; older undelivered updates are skipped."""
        try:
            while not c.ws.closed:
                try:
                    await asyncio.wait_for(c.wake.wait(), timeout=0.25)
                except asyncio.TimeoutError:
                    pass
                c.wake.clear()
                if c.panels_version != self.bridge.panels_version:
                    c.panels_version = self.bridge.panels_version
                    await c.ws.send_str(json.dumps({"type": "panels", "panels": self.bridge.panels()}, default=str))
                now = time.monotonic()
                soonest = None
                for panel in list(c.pending):
                    enc = self.latest.get(panel)
                    last = c.last_version.get(panel, 0)
                    if enc is None or enc.version == last:
                        c.pending.discard(panel)
                        continue
                    inf = c.inflight.get(panel)
                    if inf is not None and now - inf[1] < 2.0:
                        continue  # the page has not drawn the previous one: wait (newer replace it)
                    lim = c.limits.get(panel)
                    if lim is None:
                        lim = c.limits[panel] = RateLimit(self.s.max_fps)
                    if not lim.take(now):
                        due = lim.due(now)
                        soonest = due if soonest is None else min(soonest, due)
                        continue
                    if last and enc.version > last + 1:
                        c.skipped += enc.version - last - 1
                    c.last_version[panel] = enc.version
                    c.inflight[panel] = (enc.version, now, enc.t_mono_ns, enc.t_bridge_ns)
                    c.pending.discard(panel)
                    await c.ws.send_bytes(enc.data)
                    c.sent += 1
                if soonest is not None and not now < c.timer_at <= soonest:  # one timer at a time
                    c.timer_at = soonest
                    self.loop.call_later(max(0.0, soonest - time.monotonic()), c.wake.set)  # type: ignore[union-attr]
        except (ConnectionResetError, RuntimeError, asyncio.CancelledError):
            pass


def _allowed_origins(host: str) -> set[str]:
    return {f"http://{host}"}


def _host_port(host: str, port: int | None) -> str:
    """``HOST:PORT`` with brackets around an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medacq live view: token needed</title>
<style>body{{font:15px system-ui,sans-serif;background:#101418;color:#cfd8dc;margin:3em}}code{{color:#fff}}</style>
</head><body><h1 id="login">medacq live view: token needed</h1>
<p>This page needs the view's access token. Open the address that <code>medacq view</code> or
<code>medacq up</code> printed: <code>{url}?token=&hellip;</code></p>
</body></html>
"""


def _rx_fps(s: _Stream) -> float | None:
    t = list(s.rx_times)
    if len(t) < 2:
        return None
    if (time.monotonic_ns() - t[-1]) > 3e9:
        return 0.0
    return round((len(t) - 1) / ((t[-1] - t[0]) / 1e9), 2) if t[-1] > t[0] else None


def _recording_of(rec: Any, topic: str) -> Any:
    """A stream's recording state from the daemon's ``recording`` status (any reasonable shape)."""
    if rec is None:
        return None
    if isinstance(rec, dict):
        if not rec.get("active", rec.get("recording", rec.get("state") == "recording")):
            return "no"
        topics = rec.get("topics")
        if isinstance(topics, list) and topics and not any(topic.startswith(t) for t in topics):
            return "no"
        return "recording"
    return "recording" if rec else "no"


async def _send_quietly(ws: Any, text: str) -> None:
    try:
        await ws.send_str(text)
    except (ConnectionResetError, RuntimeError):
        pass


def _make_host_guard() -> Any:
    from aiohttp import web

    @web.middleware
    async def guard(request: Any, handler: Any) -> Any:
        # DNS rebinding: only answer requests addressed to a loopback name or address
        host = request.host or ""
        host = host[1:].partition("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        if not host_is_loopback(host):
            return web.Response(status=403, text="the view answers only requests to 127.0.0.1/localhost")
        return await handler(request)

    return guard


def run_view(settings: ViewSettings, duration_s: float | None = None,
             on_ready: Callable[[str], None] | None = None, exit_within_s: float | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or ``duration_s``); ``on_ready(login_url)`` once listening
    (the URL with ``?token=``). ``exit_within_s``: once stopping, the process exits by then whatever
    hangs (process mains only)."""
    import signal

    server = ViewServer(settings).start()
    if on_ready is not None:
        on_ready(server.login_url)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.wait(duration_s)
    finally:
        if exit_within_s is not None:
            from medacq.daemon.common.procs import exit_within

            exit_within(exit_within_s)
        server.stop()
        for s, h in old.items():
            signal.signal(s, h)
