"""The live status table of ``medacq up``: stream, state, frames/s, MB/s, drops, latency.

Polls the daemon's and the reconstruction stage's ``status`` once a second. On a
terminal it redraws a table in place (rich); otherwise (CI, logs) it prints one line per
stream every few seconds.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from medacq.daemon.client.api import ControlClient, DaemonUnreachable, RequestFailed
from medacq.daemon.common.config import RigConfig

__all__ = ["StatusView", "status_rows"]


def _fmt_us(v: float | None) -> str:
    return "-" if v is None else (f"{v / 1000:.1f} ms" if v >= 1000 else f"{v:.0f} µs")


def status_rows(daemon: dict[str, Any] | None, recon: dict[str, Any] | None,
                recon_fps: dict[str, float] | None = None) -> list[list[str]]:
    """Table rows: topic, state, fps, MB/s, drops, latency p50/p99, errors.

    ``recon_fps``: reconstructed frames/s per source stream (from successive polls).
    """
    rows = []
    for name, s in (daemon or {}).get("streams", {}).items():
        rows.append([s["topic"], s["state"], f"{s['fps']:.1f}", f"{s['mbps']:.2f}",
                     f"{s['drops']}/{s['gap_frames']}", f"{_fmt_us(s['latency_us_p50'])} / {_fmt_us(s['latency_us_p99'])}",
                     f"{s['reconnects']}", (s["last_error"] or "")[:60]])
    for name, s in (recon or {}).get("streams", {}).items():
        outs = ", ".join(s.get("outputs_streams") or []) or f"recon/{name}"
        fps = (recon_fps or {}).get(name)
        rows.append([outs, s["reconstructor"] or "(none)", "-" if fps is None else f"{fps:.1f}", "",
                     f"{s['dropped']}", f"{_fmt_us(s['latency_us_p50'])} / {_fmt_us(s['latency_us_p99'])}",
                     f"{s['errors']}", (s["last_error"] or "")[:60]])
    return rows


HEADERS = ["stream", "state", "frames/s", "MB/s", "drops/gaps", "latency p50 / p99", "reconn/err", "last error"]


class StatusView:
    """Poll status and render it until ``duration`` elapses or Ctrl-C."""

    def __init__(self, config: RigConfig, interactive: bool = True) -> None:
        self.config = config
        self.interactive = interactive
        self._polls: deque[tuple[float, dict[str, int]]] = deque()
        self.recon_fps: dict[str, float] = {}

    #: reconstructed frames/s are counted over the polls of the last this many seconds: over one
    #: ~1-s poll interval a 4 frames/s stream read 4.7 (one frame more or less is 25 %)
    RATE_WINDOW_S = 5.0

    def _rates(self, recon: dict | None, now: float | None = None) -> None:
        """Reconstructed frames/s from the change in ``frames_done`` since the oldest poll of
        the last :attr:`RATE_WINDOW_S` seconds (``now``: monotonic seconds, default the clock)."""
        if not recon:
            return
        now = time.monotonic() if now is None else now
        done = {n: s["frames_done"] for n, s in recon.get("streams", {}).items()}
        polls = self._polls
        while len(polls) > 1 and now - polls[1][0] >= self.RATE_WINDOW_S:
            polls.popleft()
        fps: dict[str, float] = {}
        for n, v in done.items():  # from the oldest poll that saw the stream (a new one has none yet)
            t0, v0 = next(((t, d[n]) for t, d in polls if n in d), (now, v))
            if now > t0:
                fps[n] = (v - v0) / (now - t0)
        self.recon_fps = fps
        polls.append((now, done))

    def _poll(self, c: ControlClient, r: ControlClient) -> tuple[dict | None, dict | None]:
        out: list[dict | None] = []
        for client in (c, r):
            try:
                out.append(client.request("status", timeout=1.0))
            except (DaemonUnreachable, RequestFailed):
                out.append(None)
        self._rates(out[1])
        return out[0], out[1]

    def run(self, duration: float | None = None) -> None:
        end = None if duration is None else time.monotonic() + duration
        with ControlClient(self.config.daemon.control_endpoint, timeout=1.0) as c, \
                ControlClient(self.config.recon.control_endpoint, timeout=1.0) as r:
            try:
                if self.interactive:
                    self._run_live(c, r, end)
                else:
                    self._run_plain(c, r, end)
            except KeyboardInterrupt:
                pass
            d, rc = self._poll(c, r)
            self._print_plain(d, rc, final=True)

    def _run_live(self, c: ControlClient, r: ControlClient, end: float | None) -> None:
        from rich.live import Live
        from rich.table import Table

        def table() -> Table:
            d, rc = self._poll(c, r)
            t = Table(title="medacq — live status (Ctrl-C to stop)" + ("" if d else "  [daemon not answering]"))
            for h in HEADERS:
                t.add_column(h)
            for row in status_rows(d, rc, self.recon_fps):
                t.add_row(*row)
            return t

        with Live(table(), refresh_per_second=2) as live:
            while end is None or time.monotonic() < end:
                time.sleep(1.0)
                live.update(table())

    def _run_plain(self, c: ControlClient, r: ControlClient, end: float | None) -> None:
        last = 0.0
        while end is None or time.monotonic() < end:
            if time.monotonic() - last >= 3.0:
                last = time.monotonic()
                self._print_plain(*self._poll(c, r))
            time.sleep(0.2)

    def _print_plain(self, d: dict | None, rc: dict | None, final: bool = False) -> None:
        if d is None:
            print("daemon not answering", flush=True)
        for row in status_rows(d, rc, self.recon_fps):
            print(("final: " if final else "") + "  ".join(f"{h}={v}" for h, v in zip(HEADERS, row) if v), flush=True)
