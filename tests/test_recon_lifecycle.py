"""The stage closes a reconstructor when it replaces it (descriptor change) or drops it (no
reconstructor for the modality any more, stage stop), and never feeds it a frame afterwards."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import zmq
from pydantic import BaseModel, ConfigDict, Field

from medacq.daemon.common.config import parse_config
from medacq.daemon.recon import registry
from medacq.daemon.recon.base import Output, Reconstructor, ReconstructorError
from medacq.daemon.recon.stage import ReconStage
from medacq.protocols.stream import HeaderTemplate, MessageKind, StreamDescriptor, StreamHeader, encode_header

SERIES = "3c1d4a8e-0d3e-4c1a-9a53-6d1b8e1f0a15"


class CountingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gain: float = Field(default=1.0, description="output = gain x input (1)")


class CountingRecon(Reconstructor):
    """Counts its frames and closes; refuses a descriptor whose meta says ``fail``."""

    modality = "counting"
    Settings = CountingSettings
    made: list["CountingRecon"] = []
    tried: list[StreamDescriptor] = []
    lock = threading.Lock()

    def __init__(self, descriptor: StreamDescriptor, settings: Any = None) -> None:
        super().__init__(descriptor, settings)
        self.tried.append(descriptor)
        if descriptor.meta.get("fail"):
            raise ReconstructorError("refused")
        self.frames = 0
        self.closed = 0
        self.after_close = 0
        with self.lock:
            self.made.append(self)

    def process(self, header: dict[str, Any], frame: np.ndarray) -> list[Output]:
        if self.closed:
            self.after_close += 1
        self.frames += 1
        return [Output("", frame * np.float32(self.settings.gain), list(self.descriptor.axes))]

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def counting(monkeypatch):
    monkeypatch.setitem(registry.RECONSTRUCTORS, "counting", f"{__name__}:CountingRecon")
    monkeypatch.setattr(CountingRecon, "made", [])
    monkeypatch.setattr(CountingRecon, "tried", [])
    return CountingRecon.made


def _desc(shape: list[int], modality: str = "counting", **meta: Any) -> list[bytes]:
    d = StreamDescriptor(stream="s", modality=modality, dtype="<f4", shape=shape, axes=["a", "b"], meta=meta)
    return [b"raw/s", encode_header(StreamHeader(stream="s", kind=MessageKind.DESCRIPTOR, series=SERIES, seq=0,
                                                 t_host_ns=1, t_mono_ns=2, descriptor=d))]


def _frame(seq: int, shape: list[int]) -> list[bytes]:
    return [b"raw/s", HeaderTemplate("s", SERIES, "<f4", shape, ["a", "b"], "").frame(seq, 1, 2),
            np.full(shape, seq, "<f4").tobytes()]


def _run(endpoints, steps) -> tuple[ReconStage, list[dict]]:
    cfg = parse_config({**endpoints, "recon": {**endpoints["recon"], "settings": {"counting": {"gain": 2.0}}}})
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(cfg.daemon.data_endpoint)
    stage = ReconStage(cfg).start()
    statuses = []
    try:
        time.sleep(0.5)
        for step in steps:
            if step == "status":
                time.sleep(0.3)
                statuses.append(stage.status()["streams"]["s"])
            else:
                pub.send_multipart(step)
                time.sleep(0.15)
    finally:
        stage.shutdown()
        pub.close(0)
    return stage, statuses


def test_close_on_replace_drop_and_stop(endpoints, counting):
    stage, st = _run(endpoints, [
        _desc([2, 2]), _frame(0, [2, 2]), _frame(1, [2, 2]), "status",
        _desc([1, 4]), _frame(2, [1, 4]), "status",                   # replaced: the first is closed
        _desc([1, 4], modality="no-such-modality"), _frame(3, [1, 4]), "status",  # dropped: closed
        _desc([1, 4]), _frame(4, [1, 4]), "status",                   # a new one; closed at stop
    ])
    assert [r.frames for r in counting] == [2, 1, 1]
    assert [r.closed for r in counting] == [1, 1, 1]   # each exactly once, the last by shutdown
    assert [r.after_close for r in counting] == [0, 0, 0]
    assert all(r.settings.gain == 2.0 for r in counting)  # the validated model reached each one
    assert [s["reconstructor"] for s in st] == ["CountingRecon", "CountingRecon", None, "CountingRecon"]
    assert all(s["errors"] == 0 for s in st)
    assert stage.streams["s"].recon is None


def test_a_failed_replacement_closes_the_old_one_and_never_uses_it(endpoints, counting):
    _, st = _run(endpoints, [
        _desc([2, 2]), _frame(0, [2, 2]), "status",
        _desc([2, 2], fail=True), _frame(1, [2, 2]), _frame(2, [2, 2]), "status",
    ])
    assert len(counting) == 1 and counting[0].frames == 1 and counting[0].closed == 1
    # built when the descriptor arrived (one error), not again for each of its frames (one
    # error each: not reconstructed) within ReconStage.rebuild_after_s
    assert len(CountingRecon.tried) == 2
    assert st[1]["reconstructor"] is None and st[1]["errors"] == 3 and "refused" in st[1]["last_error"]
    assert st[1]["frames_in"] == 3 and st[1]["frames_done"] == 1


def test_a_close_that_raises_does_not_stop_the_stream(endpoints, counting, monkeypatch):
    def bad_close(self) -> None:
        self.closed += 1
        raise RuntimeError("boom")

    monkeypatch.setattr(CountingRecon, "close", bad_close)
    _, st = _run(endpoints, [_desc([2, 2]), _frame(0, [2, 2]), _desc([1, 4]), _frame(1, [1, 4]), "status"])
    assert [r.frames for r in counting] == [1, 1] and [r.closed for r in counting] == [1, 1]
    assert st[0]["errors"] == 0 and st[0]["frames_done"] == 2


def test_bmode_igtl_server_is_shared_across_a_replacement_and_closed_by_the_last_holder():
    from medacq.daemon.recon.modalities import ultrasound as us
    from conftest import free_port

    port = free_port()
    a = us._shared_server("127.0.0.1", port, "BMODE")
    b = us._shared_server("127.0.0.1", port, "BMODE")  # the replacement takes its hold first
    assert a is b
    us._release_server(a)                              # then the old one is closed
    assert not a._stop.is_set() and us._SERVERS.get(("127.0.0.1", port, "BMODE")) is a
    us._release_server(b)
    assert a._stop.is_set() and ("127.0.0.1", port, "BMODE") not in us._SERVERS
