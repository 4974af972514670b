"""``medacq bench chaos [--minutes N] [--seed S] [--json]``: the default rig under random faults.

Not a timed test: a run of N minutes (default 10) of the whole default rig while a seeded random
schedule (``--seed``, default 1: the same seed makes the same draws; which simulator is free to
be hit still depends on timing) breaks whatever it can reach, then the accounting of what survived.

What runs: the rig of ``bench rig`` (:class:`~medacq.daemon.bench.rig.RigUnderTest`: every
simulator of the default rig in its own lower-priority process with its fault side door,
``medacq run`` and ``medacq recon``; no live view), ``medacq record`` of every ``raw/`` topic
(restarted to a new file after each kill), and here a counting subscriber on ``raw/``, a second,
stalling subscriber, a control client and a hostile publisher. Devices start over the control
plane once every subscriber is connected; faults start after a short warm-up (10 % of the run, at
most 10 s) and stop before the end (20 % of the run, at most 10 s) so every series can settle.

Faults (``faults.by_kind``), one every 0.5–2.5 s, drawn by weight:

* through the simulators' side door (:mod:`medacq.simulators.faults`), to a random simulator:
  ``cable_pull`` (reconnection refused 0.3–2 s), ``stall`` (0.2–1.5 s), ``garbage`` (100–5000
  bytes), ``corrupt`` (10–300 bytes of the stream flipped), ``drop`` (1–5 packets lost in the
  device; a device that cannot drop gets a cable pull);
* ``hostile_control``: one request from :data:`HOSTILE_CONTROL` to the daemon's or the stage's
  control socket (malformed JSON, not an object, deep nesting, an extra field, two message parts,
  an unknown command or device, over the request size limit, over the socket's message size limit,
  a configure of a config-only field, limited values beyond their limits); each must get its
  error code (or, over the socket's limit, a dropped connection) and the daemon must keep serving.
  A reader-rights client cannot be set up on this rig: it gives every local client operator rights
  (``[daemon] local_operator = true``, no CurveZMQ), and so does the stage;
* ``hostile_data``: a burst of 1–20 messages from :data:`HOSTILE_DATA`, every one a message the
  stream decoder refuses (checked at start), published on a PUB socket of this process (the
  daemon's PUB cannot be shared). Each consumer gets them on the *same* SUB socket as its real
  data: the counting subscriber and ``medacq record`` connect to it as a second endpoint; the
  stage subscribes to one endpoint only (``[recon] subscribe``), so it is pointed at a forwarder
  here (ZeroMQ XSUB → XPUB, in C) that merges the daemon's stream and the hostile one. Consumers
  must count and skip them (``hostile_data.counted_by``) without losing a frame;
* ``subscriber_stall``: the stalling subscriber (``raw/synth0``, ``raw/xr0``, receive mark 8
  messages) stops reading for 2–6 s; the daemon must not wait for it, the others must not notice,
  and every frame it missed must be reported to it as a gap;

and on their own timers: ``kill_stage`` / ``kill_recorder`` (SIGKILL to the process group, then a
new process at once; the recorder writes a NEW file; once per 3 minutes each, at least once),
``safe_state`` (every 15–30 s, ``xr0``, ``us0``, ``eit0`` in turn: a ``safe_state`` request on the
control socket while the side door's ``status`` is polled until the simulator's own output is off,
then ``start``), and the control probes (``status`` every second, ``stop`` then ``start`` of
``synth0`` every 5 s, timed at the client).

Figures and bars (``bars``; the table marks each ok / FAIL):

* ``frames``: per raw topic and in total, from the counting subscriber: ``generated`` (numbered by
  the daemon in each series), ``delivered``, ``announced_lost`` (inside ``gap`` messages),
  ``unaccounted`` = generated − delivered − announced_lost (every series counted from seq 0: the
  subscriber is connected before the devices start). Bars: 0 unaccounted in every stream; every
  raw topic of the rig delivers frames in the last 3 s of the run (a driver that never
  reconnected generates nothing, and so nothing unaccounted).
* ``recorder_spans``: every span the recorder was up (ended by ``kill -9`` or, the last one, by
  SIGTERM once the daemon ended its series). Its file must hold exactly the frames the counting
  subscriber received, per (topic, series), inside the seq range the file holds and inside the
  span's window (:func:`span_accounting`, by this process's clock): from its process's start + 10 s
  (or its file's first frame, if earlier) + 0.5 s to its end. ``missing``: received here, not in
  the file, each for one reason (``missing_why``, :func:`span_missing`; the recorder gets the
  daemon's messages in the order this process does and commits a prefix of them): ``uncommitted``
  (received after the last frame the file holds: a ``kill -9`` loses what was not committed, by
  design; ``uncommitted_s``: how long before the kill the oldest of them arrived here),
  ``recorder_gaps`` (in a gap row of the file: the recorder fell behind and dropped them, by
  reason) or ``silent`` (inside what it committed, in no gap row: a defect). ``acknowledged``: its
  last ``--progress`` checkpoint line against the file (``lost``: acknowledged, not in the file).
  ``last_commit_age_s``: the kill's time minus the file's last checkpoint. ``extra``: in the file,
  not received here (the counting subscriber lost them: see ``frames.unannounced_holes``). Bar
  (:func:`span_ok`): every span ``extra`` = ``silent`` = ``recorder_gaps`` = acknowledged ``lost``
  = 0, frames to compare in a window of 3 s or more, ``check_recording`` without problems; a
  killed span lacks only ``uncommitted`` frames and committed within 2 × flush + 1 s of its kill
  (the recorder's own ``behind`` rule: an empty file or a wedged writer fails); the last span lacks
  nothing. (Before, a fixed allowance of flush + 1 s before a kill stood for "uncommitted"; on the
  saturated rig a recorder's uncommitted interval can be longer: a checkpoint in progress and its
  receive queue's backlog count too.)
* ``rss``: the daemon's resident memory (``/proc/PID/statm``) once a minute (every 10 s for runs
  under 5 minutes) from the end of the warm-up, and once more at the end; its growth over the
  second half (last sample against the middle one, as ``bench soak``). Bar: < 2 %. Frames of up to
  a few MB in the daemon's queues move single samples by several MB, so ``trend_second_half_pct``
  (a least-squares line through the second half's samples, its rise over that half against the
  middle sample) is given beside it.
* ``control``: reply time p50/p99/max of ``status`` and ``stop`` (and ``start``) sent while faults
  run, at the client; a timeout counts as its 2 s, an error reply is counted apart (``errors``).
  Bar: p99 ≤ 100 ms, no timeout and no error, for ``status`` and ``stop``.
* ``safe_state``: per entry, ms from sending the request to the simulator's output off
  (``exposing``/``source_on``, ``transmitting``, ``injecting``), the reply's state, and whether
  the output came back after ``start``. Bars: every entry ≤ 200 ms (and at least one measured);
  every entry's output came back (``resumed_after_s`` set).
* ``hostile_control``: bar: every request (at least one: the second drawn fault of a run is one)
  answered with its expected code, and the daemon (and, for a stage target, the stage) answering
  after it; requests to the stage are not drawn while a killed stage is not answering yet;
  settings unchanged (and read both before and after).
* ``subscriber_stall``: bar: at least one stall (the first drawn fault of a run is one), and every
  frame the stalled subscriber missed (the whole series, as the counting subscriber got it), was
  reported to it as a gap (:func:`stall_accounting`), also of a series it got no message of (the
  daemon's control messages list the last 8 ended series: ``unseen_series``, ``unseen_series_frames``).
  ``unreported_ranges``: the first runs no gap covered, and the kind of the first message the stalled
  subscriber got of the series after it.
* ``processes``: bar: the daemon, the stage, the recorder and the simulators (processes, and
  each simulator's thread: the side door's ``status`` ``error``) never exited but when killed here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medacq.daemon.bench.rig import RigUnderTest
from medacq.daemon.bench.runner import (StreamLedger, end_series_and_drain, free_ports, half_growth,
                                        recorded_seqs, recorder_checkpoint, recorder_summary, rss_mb, spawn_cli,
                                        stop_recorder, terminate_as_interrupt)
from medacq.daemon.common.procs import signal_group

__all__ = ["bench_chaos", "print_result", "RESULT_KEYS", "HOSTILE_CONTROL", "HOSTILE_DATA", "hostile_data",
           "span_accounting", "span_missing", "span_ok", "recorded_gaps", "stall_accounting", "silent_topics",
           "settings_unchanged", "control_ok"]

RESULT_KEYS = ("benchmark", "minutes", "seed", "cpus", "loadavg_1min", "faults", "frames", "streams",
               "recorder_spans", "rss", "control", "safe_state", "hostile_control", "hostile_data",
               "subscriber_stall", "restarts", "processes", "bars", "passed")
"""The top-level keys of ``--json``, in order."""

CONTROL_BAR_MS = 100.0
SAFE_BAR_MS = 200.0
RSS_BAR_PCT = 2.0

_FAULT_WEIGHTS = {"cable_pull": 2, "stall": 2, "garbage": 2, "corrupt": 2, "drop": 1, "hostile_control": 3,
                  "hostile_data": 3, "subscriber_stall": 1}
_SAFE_TARGETS = ("xr0", "us0", "eit0")
_STALL_TOPICS = ["raw/synth0", "raw/xr0"]
_PROBE_DEVICE = "synth0"
_CTL_TIMEOUT_S = 2.0
_RECORDER_FLUSH_S = 1.0  # medacq record --flush of every span
_JOIN_S = 10.0  # a recorder must record within this long of its start
_SPAN_EDGE_S = 0.5  # frames in flight at a span's first recorded frame
_MIN_SPAN_S = 3.0  # a span window this long must have frames to compare
_ALIVE_S = 3.0  # every raw topic delivers frames in the last seconds of the tail
_XR_KVP_LIMIT = (40.0, 120.0)  # set in the chaos rig's config file for xr0


def _log(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


# -- hostile input ------------------------------------------------------------------------------
def _request(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


_MAX_REQUEST = 256 * 1024  # protocols.control.MAX_REQUEST_BYTES (checked in bench_chaos)

HOSTILE_CONTROL: list[tuple[str, str, list[bytes], str | None]] = [
    # (name, target "daemon" | "recon", message parts, expected error code; None: no reply, dropped)
    ("not_json", "daemon", [b"{not json"], "bad_json"),
    ("not_utf8", "daemon", [b"\xff\xfe\x00\x01garbage"], "bad_json"),
    ("not_an_object", "daemon", [b"[1, 2, 3]"], "bad_request"),
    ("cmd_not_a_string", "daemon", [_request(cmd=42)], "bad_request"),
    ("deep_nesting", "daemon", [b"[" * 100_000], "bad_json"),
    ("extra_field", "daemon", [_request(cmd="status", evil=True)], "bad_request"),
    ("two_parts", "daemon", [_request(cmd="status"), b"second part"], "bad_request"),
    ("unknown_command", "daemon", [_request(cmd="format_disk")], "unknown_command"),
    ("unknown_device", "daemon", [_request(cmd="start", device="nope0")], "unknown_device"),
    ("over_request_limit", "daemon", [_request(cmd="status", pad="x" * (_MAX_REQUEST + 100))], "too_large"),
    ("over_socket_limit", "daemon", [b"x" * (2 * _MAX_REQUEST)], None),
    ("config_only_field", "daemon", [_request(cmd="configure", device="xr0",
                                              settings={"visa_library": "/tmp/evil.so"})], "forbidden"),
    ("beyond_config_limit", "daemon", [_request(cmd="configure", device="xr0",
                                                settings={"kvp": _XR_KVP_LIMIT[1] + 10})], "invalid_settings"),
    ("beyond_model_limit", "daemon", [_request(cmd="configure", device="eit0", settings={"amplitude_a": 0.05})],
     "invalid_settings"),
    ("recon_not_json", "recon", [b"{not json"], "bad_json"),
    ("recon_unknown_target", "recon", [_request(cmd="action", target="nope0", action="reset")], "unknown_stream"),
    ("recon_unhandled_command", "recon", [_request(cmd="configure", device="xr0", settings={})],
     "unknown_command"),
]
"""Hostile control requests: what is sent, where, and the error code it must get."""


def hostile_data() -> list[tuple[str, list[bytes]]]:
    """Hostile stream messages (topic first): every one is refused by
    :func:`~medacq.protocols.stream.decode_message` (a consumer must count and skip it)."""
    def hdr(**over: Any) -> bytes:
        h = {"v": 1, "kind": "frame", "stream": "chaos", "series": "00000000-0000-4000-8000-000000000000",
             "seq": 0, "t_host_ns": 1, "t_mono_ns": 1, "dtype": "<f4", "shape": [2, 2], "axes": ["a", "b"]}
        h.update(over)
        return json.dumps(h).encode()

    t = b"raw/chaos"
    return [
        ("topic_only", [t]),
        ("header_not_utf8", [t, b"\xff\xfe\x00garbage"]),
        ("header_not_object", [t, b"[1,2,3]"]),
        ("header_missing_fields", [t, b'{"v": 1}']),
        ("unknown_kind", [t, hdr(kind="explode")]),
        ("wrong_version", [t, hdr(v=99), b"\0" * 16]),
        ("negative_seq", [t, hdr(seq=-5), b"\0" * 16]),
        ("nan_seq", [t, b'{"v":1,"kind":"frame","stream":"chaos","series":"s","seq":NaN,"t_host_ns":1,'
                        b'"t_mono_ns":1,"dtype":"<f4","shape":[2,2]}', b"\0" * 16]),
        ("object_dtype", [t, hdr(dtype="|O"), b"\0" * 32]),
        ("payload_size_mismatch", [t, hdr(shape=[1000, 1000]), b"\0" * 10]),
        ("huge_shape", [t, hdr(shape=[1 << 40, 1 << 40]), b"\0" * 16]),
        ("frame_without_payload", [t, hdr()]),
        ("heartbeat_with_payload", [t, hdr(kind="heartbeat"), b"\0" * 16]),
        ("oversized_header", [t, b'{"v":1,"pad":"' + b"x" * (1 << 20) + b'"}']),
        ("garbage_on_a_real_topic", [b"raw/synth0", b"{not json"]),
        ("bad_frame_on_a_real_topic", [b"raw/xr0", hdr(stream="xr0", dtype="nonsense"), b"\0" * 16]),
    ]


HOSTILE_DATA = [name for name, _ in hostile_data()]
"""Names of the hostile stream messages (:func:`hostile_data`)."""


def _check_hostile_data(msgs: list[tuple[str, list[bytes]]]) -> None:
    """Every hostile message must be one the decoder refuses: a decodable one would be recorded and
    counted as data, and the accounting would measure the bench, not the rig."""
    from medacq.protocols.stream import StreamDecodeError, decode_message

    for name, parts in msgs:
        try:
            decode_message(parts, parts[0].decode())
        except StreamDecodeError:
            continue
        raise AssertionError(f"hostile message {name!r} decodes: the benchmark must only send undecodable ones")


# -- helpers -----------------------------------------------------------------------------------------
class _SeqLedger(StreamLedger):
    """A :class:`StreamLedger` that also keeps every frame's ``seq`` and receive time
    (CLOCK_MONOTONIC, s) per (topic, series)."""

    def __init__(self, count_from_zero: bool = False) -> None:
        super().__init__(count_from_zero)
        self.seqs: dict[tuple[str, str], array[int]] = {}
        self.times: dict[tuple[str, str], array[float]] = {}

    def see(self, topic: str, h: dict[str, Any]) -> None:
        super().see(topic, h)
        if h["kind"] == "frame":
            key = (topic, h["series"])
            if key not in self.seqs:
                self.seqs[key], self.times[key] = array("Q"), array("d")
            self.seqs[key].append(h["seq"])
            self.times[key].append(time.monotonic())

    def arrays(self, key: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        if key not in self.seqs:
            return np.zeros(0, np.uint64), np.zeros(0)
        return np.frombuffer(self.seqs[key], np.uint64), np.frombuffer(self.times[key], np.float64)


class _StageFeed:
    """What the stage subscribes to: the daemon's stream and the hostile publisher, merged by a
    ZeroMQ XSUB → XPUB forwarder (``zmq.proxy_steerable``, in C) on its own thread. The sockets
    are made here and then used by that thread only; :meth:`stop` ends it over an inproc pair."""

    def __init__(self, ctx: Any, sources: list[str], endpoint: str) -> None:
        import zmq

        self.endpoint = endpoint
        self._xsub = ctx.socket(zmq.XSUB)
        for s in sources:
            self._xsub.connect(s)
        self._xpub = ctx.socket(zmq.XPUB)
        self._xpub.setsockopt(zmq.LINGER, 0)
        self._xpub.bind(endpoint)
        ctl = f"inproc://chaos-feed-{id(self)}"
        self._stop = ctx.socket(zmq.PAIR)
        self._stop.bind(ctl)
        self._ctl = ctx.socket(zmq.PAIR)
        self._ctl.connect(ctl)
        self._thread = threading.Thread(target=self._run, name="chaos-stage-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import zmq

        try:
            zmq.proxy_steerable(self._xsub, self._xpub, None, self._ctl)
        except zmq.ZMQError:
            pass
        finally:
            for s in (self._xsub, self._xpub, self._ctl):
                s.close(0)

    def stop(self) -> None:
        import zmq

        try:  # never blocks: the proxy thread may have exited already
            self._stop.send(b"TERMINATE", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self._thread.join(5)
        self._stop.close(0)


@dataclass
class _Span:
    """One recorder process and its file."""

    path: Path
    log: Path
    proc: Any
    t_start: float
    t_end: float | None = None
    ended_by: str = ""
    result: dict[str, Any] | None = None
    t_end_wall_ns: int | None = None  # CLOCK_REALTIME at its end (the file's checkpoint times are on it)


@dataclass
class _StageRestart:
    """A stage started after a kill: when (CLOCK_MONOTONIC, s), and how long until it answered
    and until it processed frames again (s)."""

    t: float
    ping_after_s: float | None = None
    processing_after_s: float | None = None


@dataclass
class _SafeEntry:
    """One safe state: the device, when (s from the start), ms to the simulator's output off and
    to the reply, and how long after ``start`` the output was back (s)."""

    device: str
    t: float
    ms: float | None = None
    reply_state: str | None = None
    reply_ms: float | None = None
    resumed_after_s: float | None = None
    note: str = ""
    _t_start: float = field(default=0.0, repr=False)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


# -- accounting (pure functions of what was measured) -------------------------------------------------
def span_accounting(frames: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
                    rec: dict[tuple[str, str], np.ndarray], t_start: float, t_end: float, end_margin_s: float,
                    join_s: float = _JOIN_S, edge_s: float = _SPAN_EDGE_S,
                    min_window_s: float = _MIN_SPAN_S) -> dict[str, Any]:
    """One recorder span against the counting subscriber.

    ``frames``: ``(topic, series) -> (seq, receive time here)`` of every frame the counting
    subscriber received; ``rec``: ``(topic, series) -> seq`` of the frames in the span's file;
    times on one clock (s). Every frame received inside the span's window must be in the file:
    from its start (``t_start`` + ``join_s``, or the receive time of the file's first frame if
    that is earlier) + ``edge_s`` to ``t_end`` − ``end_margin_s`` (a kill loses what was not yet
    committed: the flush interval + 1 s; the last span, stopped after the run: 0). The window
    comes from the span's process, not from the file: an empty file, or a writer that wedged
    while its process stayed up, leaves frames of the window missing. So must every frame inside
    the file's seq range of a series. Returns ``frames_expected``, ``frames_recorded``,
    ``missing`` (expected, not in the file), ``extra`` (in the file, never received here),
    ``window_s``, ``ok``: ``missing`` = ``extra`` = 0 and, for a window of ``min_window_s``
    or longer, ``frames_expected`` > 0, and ``missing_seqs`` (``(topic, series)`` -> the missing
    seqs, for :func:`span_missing`).
    """
    empty = (np.zeros(0, np.uint64), np.zeros(0))
    first = math.inf
    for key, r in rec.items():
        seqs, times = frames.get(key, empty)
        t = times[np.isin(seqs, r)]
        if t.size:
            first = min(first, float(t.min()))
    t_from = min(t_start + join_s, first) + edge_s
    t_to = t_end - end_margin_s
    expected = missing = extra = recorded = 0
    missing_seqs: dict[tuple[str, str], np.ndarray] = {}
    for key in set(frames) | set(rec):
        seqs, times = frames.get(key, empty)
        r = rec.get(key, np.zeros(0, np.uint64))
        keep = (times > t_from) & (times < t_to)
        if r.size:
            keep |= (seqs >= r[0]) & (seqs <= r[-1])
        exp = seqs[keep]
        expected += int(exp.size)
        recorded += int(r.size)
        miss = np.setdiff1d(exp, r)
        if miss.size:
            missing_seqs[key] = miss
        missing += int(miss.size)
        extra += int(np.setdiff1d(r, seqs).size)
    window = max(0.0, t_to - t_from)
    return {"frames_recorded": recorded, "frames_expected": expected, "missing": missing, "extra": extra,
            "window_s": round(window, 2),
            "ok": missing == 0 and extra == 0 and (expected > 0 or window < min_window_s),
            "missing_seqs": missing_seqs}


def span_missing(missing: dict[tuple[str, str], np.ndarray],
                 frames: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], rec: dict[tuple[str, str], np.ndarray],
                 file_gaps: dict[tuple[str, str], list[tuple[int, int, str]]], t_end: float, t0: float,
                 max_ranges: int = 12) -> dict[str, Any]:
    """Why the ``missing`` frames of a span (:func:`span_accounting`'s ``missing_seqs``) are not in its file.

    The recorder takes the daemon's messages in the order this benchmark's counting subscriber
    receives them (one PUB, one pipe each) and commits a prefix of them, so by the receive time here
    (``frames``: ``(seq, time)``): a frame received after the last one the file holds
    (``last_commit``) was not committed when the recorder stopped (``uncommitted``: a ``kill -9``
    loses its uncommitted interval by design); one inside a gap row of the file (``file_gaps``:
    ``(topic, series) -> [(first_seq, count, reason)]``) the recorder saw missing and recorded as such
    (``recorder_gaps``, by reason: it fell behind); any other is lost without a trace (``silent``: a
    defect). Returns those counts, ``uncommitted_s`` (how long before ``t_end`` the oldest uncommitted
    frame arrived here) and the first ``max_ranges`` missing runs (receive time ``t`` in s from ``t0``).
    """
    empty = (np.zeros(0, np.uint64), np.zeros(0))
    last_commit = -math.inf
    for key, r in rec.items():
        seqs, times = frames.get(key, empty)
        t = times[np.isin(seqs, r)]
        if t.size:
            last_commit = max(last_commit, float(t.max()))
    out: dict[str, Any] = {"uncommitted": 0, "recorder_gaps": 0, "silent": 0, "uncommitted_s": None,
                           "by_reason": {}, "ranges": []}
    reasons: Counter[str] = Counter()
    runs = []
    oldest = math.inf
    for key in sorted(missing):
        miss = missing[key]
        seqs, times = frames.get(key, empty)
        t_of = times[np.searchsorted(seqs, miss)] if seqs.size else np.full(miss.size, math.nan)
        why = np.full(miss.size, "silent", dtype=object)
        for first, count, reason in file_gaps.get(key, ()):
            hit = (miss >= first) & (miss < first + count) & (why == "silent")
            if hit.any():
                why[hit] = "recorder_gaps"
                reasons[reason] += int(hit.sum())
        late = (why == "silent") & (t_of > last_commit)
        why[late] = "uncommitted"
        if late.any():
            oldest = min(oldest, float(t_of[late].min()))
        for w in ("uncommitted", "recorder_gaps", "silent"):
            out[w] += int(np.count_nonzero(why == w))
        # runs of consecutive seqs with one cause
        start = 0
        for i in range(1, miss.size + 1):
            if i == miss.size or miss[i] != miss[i - 1] + 1 or why[i] != why[start]:
                runs.append({"topic": key[0], "series": key[1][:8], "first_seq": int(miss[start]),
                             "count": i - start, "t": round(float(t_of[start]) - t0, 2), "why": str(why[start])})
                start = i
    out["by_reason"] = dict(reasons)
    out["uncommitted_s"] = None if oldest == math.inf else round(t_end - oldest, 2)
    out["ranges"] = sorted(runs, key=lambda r: r["t"])[:max_ranges]
    return out


def recorded_gaps(path: Path) -> dict[tuple[str, str], list[tuple[int, int, str]]]:
    """The gap rows of an HDF5 recording with a first seq, as ``(topic, series id) -> [(first_seq, count,
    reason)]`` (rows of a series the file does not know are keyed by series ``""``)."""
    from medacq.daemon.recording.hdf5 import open_recording

    out: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    with open_recording(path) as f:
        for prefix in f:
            for g in f[prefix].values():
                topic = str(g.attrs["topic"])
                ids = {int(k): str(v.attrs["series"]) for k, v in g["series"].items()}
                for row in g["gaps"][()]:
                    if int(row["first_seq"]) < 0:
                        continue
                    reason = row["reason"]
                    reason = reason.decode() if isinstance(reason, bytes) else str(reason)
                    out.setdefault((topic, ids.get(int(row["series_index"]), "")), []).append(
                        (int(row["first_seq"]), int(row["count"]), reason))
    return out


def span_ok(acc: dict[str, Any], why: dict[str, Any], killed: bool, acknowledged_lost: int, live: bool) -> bool:
    """The recorded = delivered bar of one span, from :func:`span_accounting` (window 0 s before its
    end) and :func:`span_missing`: no frame in the file that was not delivered (``extra``), none lost
    inside what it committed (``silent``), none it dropped itself (``recorder_gaps``), none its last
    checkpoint line acknowledged and the file lacks, frames to compare in a long window; a killed
    span may lack only what it had not committed (``uncommitted``, reported), and its writer must
    have been committing up to the kill (``live``: an empty file or a wedged writer fails); the last
    span, stopped with SIGTERM after the daemon ended its series, must lack nothing."""
    window_ok = acc["frames_expected"] > 0 or acc["window_s"] < _MIN_SPAN_S
    lacks_only_tail = why["silent"] == 0 and why["recorder_gaps"] == 0 and (killed or why["uncommitted"] == 0)
    return acc["extra"] == 0 and lacks_only_tail and acknowledged_lost == 0 and live and window_ok


def _last_commit_ns(path: Path) -> int | None:
    """CLOCK_REALTIME (ns) of a recording's last committed checkpoint (its root ``last_checkpoint_t_host_ns``)."""
    from medacq.daemon.recording.hdf5 import open_recording

    with open_recording(path) as f:
        v = f.attrs.get("last_checkpoint_t_host_ns")
    return None if v is None else int(v)


def stall_accounting(frames: dict[tuple[str, str], np.ndarray], got: dict[tuple[str, str], set[int]],
                     seen: set[tuple[str, str]], gaps: list[tuple[tuple[str, str], int, int]],
                     max_ranges: int = 12) -> dict[str, Any]:
    """The stalled subscriber against the counting one, per (topic, series) of its topics.

    ``frames``: every seq the counting subscriber received (the whole series, not just the
    range the stalled one saw); ``got``: the seqs the stalled subscriber received; ``seen``: the
    series it received any message of; ``gaps``: ``((topic, series), first_seq, count)`` it was
    told of. ``frames_missed``: frames it did not receive, of every series, also those it got no
    message of (the daemon's control messages list the last 8 ended series: a subscriber reports a
    whole series it never saw); ``unreported``: those no gap covers, the first ``max_ranges`` runs
    of them in ``unreported_ranges``. ``unseen_series``, ``unseen_series_frames``: the series it got
    no message of, and their frames (reported or not).
    """
    missed = unreported = received = unseen = unseen_frames = 0
    ranges: list[dict[str, Any]] = []
    for key in sorted(set(frames) | set(got)):
        mine = got.get(key, set())
        received += len(mine)
        seqs = np.asarray(frames.get(key, ()), np.uint64)
        if key not in seen and not mine:
            unseen += 1
            unseen_frames += int(seqs.size)
        lost = np.setdiff1d(seqs, np.fromiter(mine, np.uint64, len(mine)))
        covered = np.zeros(lost.size, bool)
        for k, first, count in gaps:
            if k == key:
                covered |= (lost >= first) & (lost < first + count)
        missed += int(lost.size)
        unreported += int(lost.size - covered.sum())
        bare = lost[~covered]
        start = 0
        for i in range(1, bare.size + 1):
            if i == bare.size or bare[i] != bare[i - 1] + 1:
                if len(ranges) < max_ranges:
                    ranges.append({"topic": key[0], "series": key[1], "first_seq": int(bare[start]),
                                   "count": i - start, "series_seen": key in seen or bool(mine)})
                start = i
    return {"frames_received": received, "frames_missed": missed, "reported_as_gaps": missed - unreported,
            "unreported": unreported, "unseen_series": unseen, "unseen_series_frames": unseen_frames,
            "unreported_ranges": ranges}


def silent_topics(last_frame_t: dict[str, float], topics: list[str], t_end: float,
                  window_s: float = _ALIVE_S) -> list[str]:
    """The topics of ``topics`` whose last frame (receive time, s) came before ``t_end`` − ``window_s``
    (or never): a driver that never reconnected, a device that never restarted."""
    return [t for t in topics if last_frame_t.get(t, -math.inf) < t_end - window_s]


def settings_unchanged(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """The settings bar: equal, and read on both sides (two identical errors are not "unchanged")."""
    read = all("error" not in v for side in (before, after) for v in side.values())
    return bool(before) and read and before == after


def control_ok(timing: dict[str, Any], bar_ms: float = CONTROL_BAR_MS) -> bool:
    """A control bar: p99 within ``bar_ms`` with no timeout and no error reply (neither is a fast sample)."""
    p99 = timing.get("p99_ms")
    return p99 is not None and p99 <= bar_ms and timing.get("timeouts", 0) == 0 and timing.get("errors", 0) == 0


# -- the run ----------------------------------------------------------------------------------------------
class _Chaos:
    """One chaos run on a started rig: its state, the loop (:meth:`run`) and each fault."""

    def __init__(self, args: argparse.Namespace, rig: RigUnderTest, hostile_endpoint: str, hostile_sock: Any,
                 ctx: Any) -> None:
        from medacq.daemon.client.api import ControlClient, Subscriber

        self.args, self.rig, self.ctx = args, rig, ctx
        self.minutes = float(args.minutes)
        self.duration = max(5.0, self.minutes * 60.0)
        self.seed = int(getattr(args, "seed", 1))
        self.rng = random.Random(self.seed)
        self.cfg = rig.cfg
        self.hostile_endpoint, self.hostile = hostile_endpoint, hostile_sock
        self.hostile_msgs = hostile_data()
        self.ledger = _SeqLedger(count_from_zero=True)  # connected before the devices start: every series from 0
        self.sub = Subscriber([self.cfg.daemon.data_endpoint, hostile_endpoint], "raw/", rcvhwm=1_000_000,
                              errors="skip", context=ctx)
        self.stall_sub = Subscriber(self.cfg.daemon.data_endpoint, _STALL_TOPICS, rcvhwm=8, errors="skip",
                                    context=ctx)
        self.stall_seqs: dict[tuple[str, str], set[int]] = {}
        self.stall_seen: set[tuple[str, str]] = set()  # (topic, series) of any message the stalled one got
        self.stall_order: list[tuple[tuple[str, str], str]] = []  # those, in order, with their first message's kind
        self.stall_until = 0.0
        self.stalls: list[float] = []
        self.ctl = ControlClient(self.cfg.daemon.control_endpoint, timeout=_CTL_TIMEOUT_S, context=ctx)
        self.side = self._socket_to(rig.fault_endpoint or "")
        self.faults: Counter[str] = Counter()
        self.events: list[dict[str, Any]] = []
        self.busy_until: dict[str, float] = {}
        self.timings: dict[str, list[float]] = {"status": [], "stop": [], "start": []}
        self.ctl_timeouts: Counter[str] = Counter()
        self.ctl_errors: list[str] = []
        self.ctl_error_count: Counter[str] = Counter()
        self.hostile_ctl: list[dict[str, Any]] = []
        self.hostile_sent: Counter[str] = Counter()
        self.safe: list[_SafeEntry] = []
        self.spans: list[_Span] = []
        self.stage_restarts: list[_StageRestart] = []
        self.stage_bad: list[int] = [0]  # bad_messages of each stage process, the last one polled
        self.rss: list[float] = []
        self.rss_t: list[float] = []  # when each rss sample was taken (s from t0), beside the fault log
        self.problem: str | None = None
        self.sim_errors: dict[str, str] = {}  # simulator -> its thread's error (the side door's status)
        self.simulators = list(rig.simulators)
        self.t0 = 0.0
        self.t_run_end = 0.0  # when the loop ended (CLOCK_MONOTONIC, s)
        self.forced = ["subscriber_stall", "hostile_control"]  # the first draws: every run exercises both

    # sockets -------------------------------------------------------------------------------
    def _socket_to(self, endpoint: str) -> Any:
        import zmq

        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        return s

    def _side_door(self, body: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
        """One request to the simulators' fault side door; its reply (``ok``, ``result``/``error``)."""
        self.side.send_multipart([b"", json.dumps(body).encode()])
        if not self.side.poll(int(timeout * 1000)):
            self.side.close(0)  # a late reply must not answer the next request
            self.side = self._socket_to(self.rig.fault_endpoint or "")
            return {"ok": False, "error": "the side door did not answer"}
        return dict(json.loads(self.side.recv_multipart()[-1]))

    def _sim_status(self) -> dict[str, Any] | None:
        """The side door's ``status`` of every simulator; ``None`` when it did not answer."""
        r = self._side_door({"fault": "status"})
        return dict(r.get("result") or {}) if r.get("ok") else None

    def _output(self, sim: str) -> dict[str, bool] | None:
        """The simulator's output flags; ``None`` when unknown (the side door failed: not "off")."""
        st = self._sim_status()
        return None if st is None else dict((st.get(sim) or {}).get("output") or {})

    def _sim_errors(self) -> None:
        """A simulator thread that died inside the simulators' process (its ``error``) is a problem."""
        st = self._sim_status()
        for n, v in (st or {}).items():
            if isinstance(v, dict) and v.get("error") and n not in self.sim_errors:
                self.sim_errors[n] = str(v["error"])
                _log(f"chaos: simulator {n} failed: {v['error']}")

    # receiving -------------------------------------------------------------------------------
    def _pump(self, budget_s: float = 0.02) -> None:
        end = time.monotonic() + budget_s
        while True:
            msg = self.sub.recv(timeout=0.005)
            if msg is not None:
                self.ledger.see(msg.topic, msg.header)
            if time.monotonic() >= end:
                break
        if time.monotonic() >= self.stall_until:
            self._pump_stall()

    def _pump_stall(self, n: int = 200, timeout: float = 0) -> int:
        """Up to ``n`` messages of the stalling subscriber; returns how many came."""
        for i in range(n):
            msg = self.stall_sub.recv(timeout=timeout)
            if msg is None:
                return i
            key = (msg.topic, msg.header["series"])
            if key not in self.stall_seen:
                self.stall_seen.add(key)
                self.stall_order.append((key, msg.kind))  # the kind of its first message here
            if msg.kind == "frame":
                self.stall_seqs.setdefault(key, set()).add(msg.header["seq"])
        return n

    # faults -----------------------------------------------------------------------------------
    def _event(self, kind: str, **detail: Any) -> None:
        self.faults[kind] += 1
        self.events.append({"t": round(time.monotonic() - self.t0, 2), "fault": kind, **detail})

    def _sim_fault(self, kind: str) -> None:
        now = time.monotonic()
        free = [s for s in self.simulators if self.busy_until.get(s, 0.0) <= now]
        if not free:
            return
        sim = self.rng.choice(free)
        r = self.rng
        fault, fargs = {
            "cable_pull": ("pull_cable", {"refuse_s": round(r.uniform(0.3, 2.0), 2)}),
            "stall": ("stall", {"seconds": round(r.uniform(0.2, 1.5), 2)}),
            "garbage": ("garbage", {"nbytes": r.randint(100, 5000)}),
            "corrupt": ("corrupt", {"nbytes": r.randint(10, 300)}),
            "drop": ("drop", {"n": r.randint(1, 5)}),
        }[kind]
        reply = self._side_door({"sim": sim, "fault": fault, "args": fargs})
        if not reply.get("ok") and fault == "drop":  # this device cannot drop packets: pull its cable
            kind, fault, fargs = "cable_pull", "pull_cable", {"refuse_s": 0.5}
            reply = self._side_door({"sim": sim, "fault": fault, "args": fargs})
        if reply.get("ok"):
            self._event(kind, sim=sim, args=fargs)
            self.busy_until[sim] = now + 5.0 + float(fargs.get("refuse_s", 0) or fargs.get("seconds", 0))
        else:
            self.events.append({"t": round(now - self.t0, 2), "fault": kind, "sim": sim,
                                "error": reply.get("error")})

    def _hostile_control(self) -> None:
        import zmq

        from medacq.protocols.control import decode_reply

        restarting = bool(self.stage_restarts) and self.stage_restarts[-1].ping_after_s is None
        name, target, parts, expect = self.rng.choice(  # a stage being restarted answers no one yet
            [h for h in HOSTILE_CONTROL if h[1] == "daemon" or not restarting])
        ep = self.cfg.daemon.control_endpoint if target == "daemon" else self.cfg.recon.control_endpoint
        s = self._socket_to(ep)
        got: str | None = None  # the reply's error code ("ok" if none); None: no reply
        try:
            s.send_multipart([b"", *parts])
            if s.poll(int((1.0 if expect is None else _CTL_TIMEOUT_S) * 1000)):
                reply = decode_reply(s.recv_multipart()[-1])
                got = "ok" if reply.ok else (reply.error or {}).get("code", "?")
        except zmq.ZMQError as exc:
            got = f"socket error: {exc}"
        finally:
            s.close(0)
        alive = self._daemon_answers() and (target != "recon" or self._poll_stage(_CTL_TIMEOUT_S) is not None)
        self.hostile_ctl.append({"t": round(time.monotonic() - self.t0, 2), "name": name, "target": target,
                                 "expected": expect or "no reply (connection dropped)",
                                 "got": got or "no reply", "ok": got == expect and alive,
                                 "daemon_answers_after": alive})  # (and the stage, for a recon target)
        self._event("hostile_control", request=name, target=target, got=got)

    def _daemon_answers(self) -> bool:
        from medacq.daemon.client.api import DaemonUnreachable, RequestFailed

        try:
            self.ctl.request("ping")
            return True
        except (DaemonUnreachable, RequestFailed):
            return False

    def _hostile_data(self) -> None:
        n = self.rng.randint(1, 20)
        for _ in range(n):
            name, parts = self.rng.choice(self.hostile_msgs)
            self.hostile.send_multipart(parts)
            self.hostile_sent[name] += 1
        self._event("hostile_data", messages=n)

    def _subscriber_stall(self) -> None:
        now = time.monotonic()
        if now < self.stall_until:
            return
        s = round(self.rng.uniform(2.0, 6.0), 2)
        self.stall_until = now + s
        self.stalls.append(s)
        self._event("subscriber_stall", seconds=s)

    # kills and restarts ---------------------------------------------------------------------------
    def _start_recorder(self) -> _Span:
        k = len(self.spans)
        path, log = self.rig.workdir / f"chaos-{k}.h5", self.rig.workdir / f"recorder-{k}.log"
        proc = spawn_cli(["record", "--topics", "raw/", "--out", str(path), "--endpoint",
                          self.cfg.daemon.data_endpoint, "--endpoint", self.hostile_endpoint, "--no-fsync",
                          "--flush", str(_RECORDER_FLUSH_S), "--progress"], log)
        self.rig.procs["recorder"] = proc
        span = _Span(path, log, proc, time.monotonic())
        self.spans.append(span)
        return span

    def _kill(self, name: str) -> Any:
        p = self.rig.procs[name]
        signal_group(p, signal.SIGKILL)
        p.wait(10)
        return p

    def _kill_recorder(self) -> None:
        span = self.spans[-1]
        self._kill("recorder")
        span.t_end, span.t_end_wall_ns, span.ended_by = time.monotonic(), time.time_ns(), "kill -9"
        self._start_recorder()
        self._event("kill_recorder", file=span.path.name)

    def _kill_stage(self) -> None:
        self._poll_stage()
        self._kill("recon")
        self.stage_bad.append(0)
        k = len(self.stage_restarts) + 1
        proc = spawn_cli(["recon", "--config", str(self.rig.cfg_path)], self.rig.workdir / f"recon-{k}.log")
        self.rig.procs["recon"] = proc
        self.stage_restarts.append(_StageRestart(time.monotonic()))
        self._event("kill_stage")

    def _poll_stage(self, timeout: float = 0.5) -> dict[str, Any] | None:
        from medacq.daemon.client.api import ControlClient, DaemonUnreachable, RequestFailed

        try:
            with ControlClient(self.cfg.recon.control_endpoint, timeout=timeout, context=self.ctx) as c:
                st = dict(c.request("status"))
        except (DaemonUnreachable, RequestFailed):
            return None
        self.stage_bad[-1] = int(st.get("bad_messages") or 0)
        return st

    def _follow_restarts(self) -> None:
        """The newest stage: when it answered, when it processed frames again."""
        if self.stage_restarts and self.stage_restarts[-1].processing_after_s is None:
            r = self.stage_restarts[-1]
            st = self._poll_stage(0.3)
            if st is not None:
                now = time.monotonic()
                if r.ping_after_s is None:
                    r.ping_after_s = round(now - r.t, 2)
                if any((s.get("frames_done") or 0) > 0 for s in (st.get("streams") or {}).values()):
                    r.processing_after_s = round(now - r.t, 2)

    def _check_span(self, span: _Span) -> None:
        """Recorded = delivered for one recorder span (module doc); then the file is removed."""
        from medacq.daemon.recording.hdf5 import check_recording

        out: dict[str, Any] = {"file": span.path.name, "ended_by": span.ended_by,
                               "started_s": round(span.t_start - self.t0, 2),
                               "ended_s": None if span.t_end is None else round(span.t_end - self.t0, 2)}
        try:
            summary = check_recording(span.path)
            rec = recorded_seqs(span.path)
            file_gaps = recorded_gaps(span.path)
            last_commit_ns = _last_commit_ns(span.path)
        except (OSError, ValueError) as exc:
            out.update(frames_recorded=0, frames_expected=None, missing=None, extra=None, equal=False,
                       problems=[f"{type(exc).__name__}: {exc}"])
            span.result = out
            return
        killed = span.ended_by.startswith("kill")  # it loses what it had not committed; the last one nothing
        frames = {k: self.ledger.arrays(k) for k in self.ledger.seqs}
        t_end = span.t_end if span.t_end is not None else time.monotonic()
        acc = span_accounting(frames, rec, span.t_start, t_end, 0.0)
        summ = recorder_summary(span.log) or recorder_checkpoint(span.log) or {}
        why = span_missing(acc["missing_seqs"], frames, rec, file_gaps, t_end, self.t0)
        # what the recorder acknowledged (its last checkpoint line) against what its file holds, per topic
        ack = recorder_checkpoint(span.log) or {}
        in_file: Counter[str] = Counter()
        for (topic, _), r in rec.items():
            in_file[topic] += int(r.size)
        acked = {t: int((v or {}).get("frames", 0)) for t, v in (ack.get("streams") or {}).items()}
        acked_lost = sum(max(0, n - in_file[t]) for t, n in acked.items())
        # a killed writer must have been committing up to the kill (the recorder's own "behind" rule)
        commit_age = None if last_commit_ns is None or span.t_end_wall_ns is None else \
            round((span.t_end_wall_ns - last_commit_ns) / 1e9, 2)
        live = not killed or (commit_age is not None and commit_age <= 2 * _RECORDER_FLUSH_S + 1.0)
        out.update(frames_recorded=acc["frames_recorded"], frames_expected=acc["frames_expected"],
                   missing=acc["missing"], extra=acc["extra"], window_s=acc["window_s"],
                   equal=span_ok(acc, why, killed, acked_lost, live) and not summary["problems"],
                   problems=summary["problems"], recovery=summary.get("recovery"),
                   bad_messages=summ.get("bad_messages"), missing_why=why, last_commit_age_s=commit_age,
                   acknowledged={"checkpoint": ack.get("checkpoint"), "frames": ack.get("frames"),
                                 "missed_frames": ack.get("missed_frames"), "lost": acked_lost})
        span.result = out
        for p in (span.path, Path(str(span.path) + ".wal")):  # gigabytes: never kept
            p.unlink(missing_ok=True)

    # safe state ---------------------------------------------------------------------------------------
    def _safe_state(self, device: str) -> None:
        from medacq.protocols.control import decode_reply, encode_request

        e = _SafeEntry(device, round(time.monotonic() - self.t0, 2))
        before = self._output(device)
        if not before or not all(before.values()):
            e.note = f"skipped: output not on before the request ({before})"
            self.safe.append(e)
            return
        s = self._socket_to(self.cfg.daemon.control_endpoint)
        try:
            t0 = time.perf_counter()
            s.send_multipart([b"", encode_request("safe_state", id="chaos-safe", device=device,
                                                  reason="bench chaos")])
            t_off = t_reply = None
            while (t_off is None or t_reply is None) and time.perf_counter() - t0 < 3.0:
                out = self._output(device) if t_off is None else None
                if out and not any(out.values()):  # None or {}: unknown, not off
                    t_off = time.perf_counter()
                if t_reply is None and s.poll(0 if t_off is None else 50):
                    reply = decode_reply(s.recv_multipart()[-1])
                    t_reply = time.perf_counter()
                    dev = ((reply.result or {}).get("devices") or {}).get(device) or {}
                    e.reply_state = dev.get("state") if reply.ok else f"error: {(reply.error or {}).get('code')}"
        finally:
            s.close(0)
        e.ms = None if t_off is None else round((t_off - t0) * 1000, 1)
        e.reply_ms = None if t_reply is None else round((t_reply - t0) * 1000, 1)
        if t_off is None:
            e.note = "the output was still on 3 s after the request"
        self._timed("start", device=device, record=False)
        e._t_start = time.monotonic()
        self.safe.append(e)
        self.busy_until[device] = math.inf  # no faults on it until its output is back
        self._event("safe_state", device=device, ms=e.ms)

    def _follow_safe(self) -> None:
        """Devices put in their safe state and started again: when their output came back."""
        for e in self.safe:
            if e._t_start and e.resumed_after_s is None and self.busy_until.get(e.device) == math.inf:
                out = self._output(e.device)
                if out and all(out.values()):
                    e.resumed_after_s = round(time.monotonic() - e._t_start, 2)
                    self.busy_until[e.device] = time.monotonic() + 2.0
                elif time.monotonic() - e._t_start > 30.0:
                    e.note = "the output did not come back within 30 s of start"
                    self.busy_until[e.device] = 0.0

    # control probes ----------------------------------------------------------------------------------
    def _timed(self, cmd: str, record: bool = True, **fields: Any) -> None:
        from medacq.daemon.client.api import DaemonUnreachable, RequestFailed

        t = time.perf_counter()
        try:
            self.ctl.request(cmd, **fields)
        except DaemonUnreachable:
            self.ctl_timeouts[cmd] += 1
        except RequestFailed as exc:  # counted apart: an error reply is not a fast sample
            self.ctl_errors.append(f"{cmd}: {exc}")
            self.ctl_error_count[cmd] += 1
            return
        if record:
            self.timings[cmd].append((time.perf_counter() - t) * 1000)

    # the loop ---------------------------------------------------------------------------------------
    def run(self) -> None:
        warmup = min(10.0, 0.1 * self.duration)
        tail = min(10.0, 0.2 * self.duration)
        rss_every = 60.0 if self.minutes >= 5 else 10.0
        self.t0 = t0 = time.monotonic()
        end, fault_from, fault_end = t0 + self.duration, t0 + warmup, t0 + self.duration - tail
        window = fault_end - fault_from
        n_kills = max(1, int(self.minutes // 3))
        kills = sorted([(fault_from + window * (i + self.rng.uniform(0.2, 0.6)) / n_kills, "kill_recorder")
                        for i in range(n_kills)]
                       + [(fault_from + window * (i + self.rng.uniform(0.4, 0.8)) / n_kills, "kill_stage")
                          for i in range(n_kills)])
        next_fault = fault_from + self.rng.uniform(0.5, 2.5)
        next_safe = fault_from + min(0.2 * window, self.rng.uniform(15.0, 30.0))
        safe_k = 0
        next_status, next_stop, start_at = fault_from, fault_from + 2.5, math.inf
        next_rss, next_poll, next_alive = fault_from, t0 + 5.0, t0 + 1.0
        to_check: list[tuple[float, _Span]] = []
        kinds, weights = list(_FAULT_WEIGHTS), list(_FAULT_WEIGHTS.values())
        while (now := time.monotonic()) < end:
            self._pump()
            faulting = fault_from <= now < fault_end
            if now >= next_alive:
                next_alive = now + 1.0
                try:
                    self.rig.check_alive()
                except RuntimeError as exc:
                    self.problem = str(exc)
                    _log(f"chaos: {exc}")
                    break
                self._follow_restarts()
                self._follow_safe()
            if now >= next_rss:
                self.rss.append(rss_mb(self.rig.procs["daemon"].pid))
                self.rss_t.append(round(now - self.t0, 1))
                next_rss += rss_every
            if now >= next_poll:
                self._poll_stage(0.3)
                self._sim_errors()
                next_poll = now + 5.0
            if faulting and now >= next_status:
                self._timed("status")
                next_status = now + 1.0
            if faulting and now >= next_stop:
                self._timed("stop", device=_PROBE_DEVICE)
                start_at, next_stop = now + 1.0, now + 5.0
            if now >= start_at:
                self._timed("start", device=_PROBE_DEVICE, record=faulting)
                start_at = math.inf
            while to_check and to_check[0][0] <= now:
                self._check_span(to_check.pop(0)[1])
            if kills and faulting and now >= kills[0][0]:
                _, what = kills.pop(0)
                if what == "kill_recorder":
                    self._kill_recorder()
                    to_check.append((time.monotonic() + 5.0, self.spans[-2]))
                else:
                    self._kill_stage()
                continue
            if faulting and now >= next_safe:
                free = [d for d in _SAFE_TARGETS[safe_k:] + _SAFE_TARGETS[:safe_k]
                        if d in self.simulators and self.busy_until.get(d, 0.0) <= now]
                if free:
                    self._safe_state(free[0])
                    safe_k = (_SAFE_TARGETS.index(free[0]) + 1) % len(_SAFE_TARGETS)
                    next_safe = time.monotonic() + self.rng.uniform(15.0, 30.0)
                else:
                    next_safe = now + 1.0
                continue
            if faulting and now >= next_fault:
                kind = self.forced.pop(0) if self.forced else self.rng.choices(kinds, weights)[0]
                if kind == "hostile_control":
                    self._hostile_control()
                elif kind == "hostile_data":
                    self._hostile_data()
                elif kind == "subscriber_stall":
                    self._subscriber_stall()
                else:
                    self._sim_fault(kind)
                next_fault = time.monotonic() + self.rng.uniform(0.5, 2.5)
        self.t_run_end = time.monotonic()
        if start_at < math.inf:
            self._timed("start", device=_PROBE_DEVICE, record=False)
        if self.problem is None:
            self._follow_safe()
            self._sim_errors()
        for _, span in to_check:
            self._check_span(span)
        self._poll_stage(1.0)
        if self.problem is None:
            self.rss.append(rss_mb(self.rig.procs["daemon"].pid))
            self.rss_t.append(round(time.monotonic() - self.t0, 1))


def _settings(ctl: Any) -> dict[str, Any]:
    out = {}
    for dev, keys in (("xr0", ("kvp", "visa_library")), ("eit0", ("amplitude_a",))):
        try:
            s = ctl.request("describe", device=dev)["settings"]
            out[dev] = {k: s.get(k) for k in keys}
        except Exception as exc:  # noqa: BLE001 - reported
            out[dev] = {"error": str(exc)}
    return out


def bench_chaos(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chaos benchmark; returns the JSON object described in the module doc."""
    import zmq

    from medacq.protocols.control import MAX_REQUEST_BYTES

    assert MAX_REQUEST_BYTES == _MAX_REQUEST, "HOSTILE_CONTROL's sizes follow protocols.control.MAX_REQUEST_BYTES"
    msgs = hostile_data()
    _check_hostile_data(msgs)
    ctx = zmq.Context()
    hostile = ctx.socket(zmq.PUB)
    hostile.setsockopt(zmq.LINGER, 0)
    feed_port, hostile_port = free_ports(2)
    hostile_endpoint = f"tcp://127.0.0.1:{hostile_port}"
    hostile.bind(hostile_endpoint)
    feeds: list[_StageFeed] = []

    def edit(doc: dict[str, Any]) -> None:
        # the stage reads the daemon's stream and the hostile one through the forwarder
        feeds.append(_StageFeed(ctx, [doc["daemon"]["data_endpoint"], hostile_endpoint],
                                f"tcp://127.0.0.1:{feed_port}"))
        doc["recon"]["subscribe"] = feeds[0].endpoint
        for dev in doc["device"]:
            if dev["name"] == "xr0":
                dev["limits"] = {"kvp": list(_XR_KVP_LIMIT)}

    chaos: _Chaos | None = None
    load0 = os.getloadavg()[0]
    try:
        with terminate_as_interrupt(), RigUnderTest(record=False, view=False, faults=True, edit_config=edit,
                                                    keep=bool(getattr(args, "keep", False))) as rig:
            _log(f"rig up in {time.monotonic() - rig.t_up:.1f} s ({len(rig.simulators)} simulators); "
                 f"chaos for {float(args.minutes):g} min, seed {getattr(args, 'seed', 1)}")
            chaos = _Chaos(args, rig, hostile_endpoint, hostile, ctx)
            try:
                chaos._start_recorder()
                deadline = time.monotonic() + 30
                while not chaos.spans[0].path.exists() and time.monotonic() < deadline:
                    rig.check_alive()
                    time.sleep(0.05)
                settings_before = _settings(chaos.ctl)
                rig.start_devices()
                chaos.run()
                settings_after = _settings(chaos.ctl)
                daemon_status = rig.status("daemon")
                def on_message(m: Any) -> None:
                    chaos.ledger.see(m.topic, m.header)
                    chaos._pump_stall()  # read on: its last messages (series_end) must reach it

                end_series_and_drain(rig.procs["daemon"], chaos.sub, on_message)
                while chaos._pump_stall(timeout=0.3):  # what it still holds
                    pass
                last = chaos.spans[-1]
                t_stop = time.monotonic()
                try:
                    stop_recorder(last.proc, last.path, progress_log=last.log,
                                  expect_frames=sum(int(np.count_nonzero(chaos.ledger.arrays(k)[1] >= last.t_start))
                                                    for k in chaos.ledger.seqs), timeout_s=30.0)
                except Exception as exc:  # noqa: BLE001 - judged below from the file itself
                    _log(f"chaos: stopping the last recorder: {exc}")
                last.t_end, last.ended_by = t_stop, "SIGTERM (after the daemon ended its series)"
                chaos._check_span(last)
            finally:
                chaos.sub.close()
                chaos.stall_sub.close()
                chaos.ctl.close()
                chaos.side.close(0)
                for span in chaos.spans:
                    for p in (span.path, Path(str(span.path) + ".wal")):
                        p.unlink(missing_ok=True)
    finally:
        for f in feeds:
            f.stop()
        hostile.close(0)
        ctx.destroy(linger=0)  # and any socket an error left open
    assert chaos is not None
    return _result(chaos, settings_before, settings_after, daemon_status, (load0, os.getloadavg()[0]))


# -- the result ------------------------------------------------------------------------------------
def _result(c: _Chaos, settings_before: dict[str, Any], settings_after: dict[str, Any],
            daemon_status: dict[str, Any], load: tuple[float, float]) -> dict[str, Any]:
    led = c.ledger
    streams = {}
    for t in led.topics():
        gen, dlv, ann = led.generated(t), led.delivered.get(t, 0), led.announced.get(t, 0)
        st = (daemon_status.get("streams") or {}).get(t.split("/", 1)[1], {})
        streams[t] = {"generated": gen, "delivered": dlv, "announced_lost": ann, "unaccounted": gen - dlv - ann,
                      "reconnects": st.get("reconnects")}
    frames: dict[str, Any] = {k: sum(v[k] for v in streams.values())
                              for k in ("generated", "delivered", "announced_lost", "unaccounted")}
    # the counting subscriber's holes in seq: announced (a gap message covers them) or not (it fell
    # behind, or a loss no one announced), and when (s from the start, at the frame after the hole)
    announced = [(g.topic, g.series, g.first_seq, g.count) for g in c.sub.gaps
                 if g.announced and g.first_seq is not None]
    holes = []
    for key in led.seqs:
        seqs, times = led.arrays(key)
        for j in np.flatnonzero(np.diff(seqs.astype(np.int64)) > 1):
            first = int(seqs[j]) + 1
            holes.append({"topic": key[0], "first_seq": first, "count": int(seqs[j + 1] - seqs[j]) - 1,
                          "t": round(float(times[j + 1]) - c.t0, 2),
                          "announced": any((t, s) == key and f <= first < f + n for t, s, f, n in announced)})
    frames["seen_as_holes"] = sum(g.count for g in c.sub.gaps if not g.announced and g.first_seq is not None)
    frames["unannounced_holes"] = sorted((h for h in holes if not h["announced"]), key=lambda h: h["t"])[:20]
    spans = [s.result for s in c.spans if s.result is not None]
    growth = half_growth(c.rss)
    half = np.asarray(c.rss[len(c.rss) // 2:], float)
    trend = None
    if half.size >= 3 and np.all(np.isfinite(half)) and half[0] > 0:
        slope = np.polyfit(np.arange(half.size), half, 1)[0]
        trend = round(100 * float(slope) * (half.size - 1) / float(half[0]), 2)

    def timing(kind: str) -> dict[str, Any]:
        v = c.timings[kind]
        return {"n": len(v), "p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99),
                "max_ms": round(max(v), 2) if v else None, "timeouts": c.ctl_timeouts[kind],
                "errors": c.ctl_error_count[kind]}

    control = {k: timing(k) for k in ("status", "stop", "start")}
    control["errors"] = c.ctl_errors[-10:]
    control["daemon_counters"] = daemon_status.get("control")
    # the stalled subscriber: the frames it missed (of those the counting subscriber got, the whole of
    # each series it saw), and those of them no gap reported to it names
    acc = stall_accounting({k: led.arrays(k)[0] for k in led.seqs if k[0] in _STALL_TOPICS}, c.stall_seqs,
                           c.stall_seen, [((g.topic, g.series), g.first_seq, g.count) for g in c.stall_sub.gaps
                                          if g.first_seq is not None])
    first_kind: dict[str, list[tuple[str, str]]] = {}
    for (topic, series), kind in getattr(c, "stall_order", []):
        first_kind.setdefault(topic, []).append((series, kind))
    for r in acc["unreported_ranges"]:  # evidence: how the stalled one came to the series after the loss
        order = [s for s, _ in first_kind.get(r["topic"], [])]
        k = order.index(r["series"]) if r["series"] in order else -1
        nxt = first_kind[r["topic"]][k + 1] if 0 <= k < len(order) - 1 else None
        r["next_series_first_message"] = nxt[1] if nxt else None
        r["series"] = r["series"][:8]
    stall = {"topics": _STALL_TOPICS, "stalls": len(c.stalls), "stalled_s": round(sum(c.stalls), 2), **acc}
    safe = [{"device": e.device, "t": e.t, "ms": e.ms, "reply_state": e.reply_state, "reply_ms": e.reply_ms,
             "resumed_after_s": e.resumed_after_s, **({"note": e.note} if e.note else {})} for e in c.safe]
    measured = [e["ms"] for e in safe if not e.get("note", "").startswith("skipped")]  # None: never off
    hostile_ctl_ok = bool(c.hostile_ctl) and all(h["ok"] for h in c.hostile_ctl)  # none sent: not exercised
    stall_exercised = stall["stalls"] > 0 and stall["frames_received"] > 0
    # every raw topic of the rig delivers frames at the end of the tail (a driver that never
    # reconnected, a device that never restarted after its safe state, generates nothing unaccounted)
    last_t: dict[str, float] = {}
    for key in led.seqs:
        times = led.arrays(key)[1]
        if times.size:
            last_t[key[0]] = max(last_t.get(key[0], -math.inf), float(times.max()))
    silent = silent_topics(last_t, [f"raw/{d.name}" for d in c.cfg.device], c.t_run_end)
    not_resumed = [f"{e['device']} at {e['t']} s" for e in safe
                   if not e.get("note", "").startswith("skipped") and e["resumed_after_s"] is None]
    rec_bad = [s.get("bad_messages") for s in spans]
    uncommitted = sum(int((s.get("missing_why") or {}).get("uncommitted") or 0) for s in spans)
    hostile = {
        "path": "a PUB socket of the benchmark: the counting subscriber and every recorder subscribe to it as a "
                "second endpoint; the stage through a forwarder merging it with the daemon's stream "
                "([recon] subscribe)",
        "sent": sum(c.hostile_sent.values()), "by_message": dict(sorted(c.hostile_sent.items())),
        "counted_by": {"subscriber": c.sub.bad_messages,
                       "recorders": sum(int(b or 0) for b in rec_bad),
                       "stages": sum(c.stage_bad)},
        "note": "counts are lower bounds of what reached each consumer: a consumer connecting (ZeroMQ slow joiner) "
                "misses messages, and a killed recorder's or stage's last counts are those it reported last",
    }
    bars = [
        {"figure": "unaccounted frames, every stream", "value": {t: s["unaccounted"] for t, s in streams.items()
                                                                 if s["unaccounted"]} or 0,
         "bar": "= 0 each", "ok": all(s["unaccounted"] == 0 for s in streams.values())},
        {"figure": f"raw topics without frames in the last {_ALIVE_S:g} s", "value": silent or "none",
         "bar": "none", "ok": not silent},
        {"figure": "recorded = delivered, every recorder span",
         "value": f"{sum(1 for s in spans if s['equal'])} of {len(c.spans)} spans" + (
             f" ({uncommitted} frames not committed at the kills: lost by design)" if uncommitted else ""),
         "bar": "every span", "ok": len(spans) == len(c.spans) and all(s["equal"] for s in spans)},
        {"figure": "daemon RSS growth over the second half (%)", "value": growth, "bar": f"< {RSS_BAR_PCT:g} %",
         "ok": growth is not None and growth < RSS_BAR_PCT},
        *({"figure": f"control {k} p99 (ms), timeouts, errors",
           "value": f"{control[k]['p99_ms']}, {control[k]['timeouts']}, {control[k]['errors']}",
           "bar": f"≤ {CONTROL_BAR_MS:g} ms, 0, 0", "ok": control_ok(control[k])} for k in ("status", "stop")),
        {"figure": "safe state → simulator output off, worst (ms)",
         "value": None if not measured or None in measured else max(measured),
         "bar": f"≤ {SAFE_BAR_MS:g} ms, each", "ok": bool(measured) and None not in measured
         and max(measured) <= SAFE_BAR_MS},
        {"figure": "safe states whose output did not come back after start", "value": not_resumed or "none",
         "bar": "none", "ok": not not_resumed},
        {"figure": "hostile control requests answered as expected",
         "value": f"{sum(h['ok'] for h in c.hostile_ctl)} of {len(c.hostile_ctl)}"
         if c.hostile_ctl else "not exercised", "bar": "all (at least one)", "ok": hostile_ctl_ok},
        {"figure": "settings after hostile configure requests", "value": "unchanged"
         if settings_unchanged(settings_before, settings_after) else f"{settings_before} → {settings_after}",
         "bar": "unchanged (read both times)", "ok": settings_unchanged(settings_before, settings_after)},
        {"figure": "stalled subscriber: missed frames not reported as gaps",
         "value": stall["unreported"] if stall_exercised else "not exercised", "bar": "= 0 (at least one stall)",
         "ok": stall_exercised and stall["unreported"] == 0},
        {"figure": "processes (and simulator threads) exited unasked",
         "value": "; ".join([*([c.problem] if c.problem else []), *(f"simulator {n}: {e}" for n, e in
                                                                    c.sim_errors.items())]) or "none",
         "bar": "none", "ok": c.problem is None and not c.sim_errors},
    ]
    return {
        "benchmark": "chaos", "minutes": c.minutes, "seed": c.seed, "cpus": os.cpu_count(),
        "loadavg_1min": [round(load[0], 2), round(load[1], 2)],
        "faults": {"total": sum(c.faults.values()), "by_kind": dict(sorted(c.faults.items())),
                   "log": c.events},
        "frames": frames, "streams": streams, "recorder_spans": spans,
        "rss": {"interval_s": 60.0 if c.minutes >= 5 else 10.0, "series_mb": [round(v, 1) for v in c.rss],
                "t_s": c.rss_t,
                "growth_second_half_pct": growth, "trend_second_half_pct": trend},
        "control": control, "safe_state": safe,
        "hostile_control": {"sent": len(c.hostile_ctl), "as_expected": sum(h["ok"] for h in c.hostile_ctl),
                            "unexpected": [h for h in c.hostile_ctl if not h["ok"]][:20],
                            "settings_before": settings_before, "settings_after": settings_after,
                            "reader_client": "not set up: this rig gives every local client operator rights "
                                             "([daemon] local_operator = true, no CurveZMQ), the stage too"},
        "hostile_data": hostile, "subscriber_stall": stall,
        "restarts": {"stage": [{"t": round(r.t - c.t0, 2), "ping_after_s": r.ping_after_s,
                                "processing_after_s": r.processing_after_s} for r in c.stage_restarts],
                     "recorder": [s["started_s"] for s in spans[1:]] if len(spans) > 1 else []},
        "processes": {"survived": c.problem is None and not c.sim_errors, "problem": c.problem,
                      "simulator_errors": dict(c.sim_errors)},
        "bars": bars, "passed": all(b["ok"] for b in bars),
    }


def print_result(result: dict[str, Any]) -> None:
    """The chaos run as a few lines and its bars, each ok / FAIL."""
    f = result["faults"]
    print(f"medacq bench chaos: {result['minutes']:g} min, seed {result['seed']}, {result['cpus']} cpus, "
          f"load {result['loadavg_1min']}")
    print(f"faults: {f['total']} — " + ", ".join(f"{k} {v}" for k, v in f["by_kind"].items()))
    fr = result["frames"]
    print(f"frames: {fr['generated']} generated, {fr['delivered']} delivered, {fr['announced_lost']} announced lost, "
          f"{fr['unaccounted']} unaccounted ({fr['seen_as_holes']} seen by the subscriber as holes in seq)")
    for h in fr["unannounced_holes"]:
        print(f"  unannounced hole: {h['topic']} seq {h['first_seq']} +{h['count']} at {h['t']} s")
    for s in result["recorder_spans"]:
        print(f"recorder {s['file']} ({s['started_s']}–{s['ended_s']} s, ended by {s['ended_by']}): "
              f"{s['frames_recorded']} recorded, {s['frames_expected']} delivered in its window, "
              f"missing {s['missing']}, extra {s['extra']}, problems {s['problems']}")
        if s.get("last_commit_age_s") is not None:
            print(f"  its last commit {s['last_commit_age_s']} s before the kill")
        w, a = s.get("missing_why"), s.get("acknowledged")
        if w and s["missing"]:
            print(f"  missing: {w['uncommitted']} not committed at its end (oldest received {w['uncommitted_s']} s "
                  f"before it), {w['recorder_gaps']} in the file's gap rows {w['by_reason']}, {w['silent']} silent")
            for r in w["ranges"]:
                print(f"    {r['topic']} {r['series']} seq {r['first_seq']} +{r['count']} at {r['t']} s: {r['why']}")
        if a and a.get("lost"):
            print(f"  acknowledged by its last checkpoint line but not in the file: {a['lost']} frames")
    r = result["rss"]
    print(f"daemon RSS (MB, every {r['interval_s']:g} s, and at the end): {r['series_mb']}; second half "
          f"{r['growth_second_half_pct']} % (least-squares trend {r['trend_second_half_pct']} %)")
    c = result["control"]
    for k in ("status", "stop", "start"):
        print(f"control {k}: n {c[k]['n']}, p50 {c[k]['p50_ms']} ms, p99 {c[k]['p99_ms']} ms, max {c[k]['max_ms']} ms, "
              f"timeouts {c[k]['timeouts']}, errors {c[k]['errors']}")
    for e in result["safe_state"]:
        print(f"safe state {e['device']} at {e['t']} s: output off after {e['ms']} ms (reply {e['reply_state']} "
              f"after {e['reply_ms']} ms), back {e['resumed_after_s']} s after start {e.get('note', '')}")
    h = result["hostile_control"]
    print(f"hostile control: {h['as_expected']} of {h['sent']} as expected; reader client: {h['reader_client']}")
    for u in h["unexpected"]:
        print(f"  {u['name']} ({u['target']}): expected {u['expected']}, got {u['got']}")
    d = result["hostile_data"]
    print(f"hostile data: {d['sent']} messages sent; counted by {d['counted_by']}")
    s = result["subscriber_stall"]
    print(f"stalled subscriber: {s['stalls']} stalls ({s['stalled_s']} s), {s['frames_received']} frames received, "
          f"{s['frames_missed']} missed, {s['reported_as_gaps']} reported as gaps; {s['unseen_series']} series "
          f"({s['unseen_series_frames']} frames) it got no message of")
    for r in s.get("unreported_ranges", []):
        print(f"  unreported: {r['topic']} {r['series']} seq {r['first_seq']} +{r['count']} (series seen: "
              f"{r['series_seen']}; its next series first came as: {r['next_series_first_message']})")
    for r in result["restarts"]["stage"]:
        print(f"stage killed at {r['t']} s: answering after {r['ping_after_s']} s, processing after "
              f"{r['processing_after_s']} s")
    for b in result["bars"]:
        print(f"{'ok  ' if b['ok'] else 'FAIL'}  {b['figure']}: {b['value']} (bar {b['bar']})")
    print("passed" if result["passed"] else "FAILED")
