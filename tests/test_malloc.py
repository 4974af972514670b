"""Fixed glibc malloc thresholds give frames held by worker threads back to the OS once freed."""

from __future__ import annotations

import subprocess
import sys

import pytest

_CHILD = r"""
import queue, sys, threading
import numpy as np
from medacq.daemon.common.malloc import pin_malloc_thresholds
if sys.argv[1] == "pin":
    assert pin_malloc_thresholds()
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096
q = queue.Queue()
keep = []
def producer(size):
    for _ in range(40):
        q.put(np.ones(size, np.uint8)); keep.append(bytes(300))   # frames and small objects that stay
np.ones(1_500_000, np.uint8)  # the first freed mmapped block: glibc raises its threshold here
base = rss()
for _ in range(3):
    ts = [threading.Thread(target=producer, args=(s,)) for s in (1_500_000, 370_000, 370_000)]
    [t.start() for t in ts]; [t.join() for t in ts]
    held = []
    while not q.empty():
        held.append(q.get())
    del held
print((rss() - base) / 1e6)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and /proc: Linux")
def test_frames_held_by_threads_go_back_to_the_os_with_pinned_thresholds():
    def grown(mode: str) -> float:
        r = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return float(r.stdout.strip())

    pinned = grown("pin")
    # 102 MB of frames held and freed three times: back to the start (glibc's own dynamic threshold
    # keeps most of it here, measured 114-175 MB: the reason for the module, not asserted)
    assert pinned < 5.0, (pinned, grown("default"))
