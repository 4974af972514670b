"""The simulated rig's simulators really run at lower priority: every thread of their process,
not only the one that asked (Linux keeps a niceness per thread; ``os.nice`` changes the caller's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_CHILD = """
import json, os, threading
from medacq.simulators.rig import DEFAULT_RIG, SimulatedRig, lower_priority

def nices():
    return {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}

rig = SimulatedRig([e for e in DEFAULT_RIG if e.name == "synth0"], paced=True).start()
try:
    before = nices()
    changed = lower_priority(3)
    after = nices()
    late = {}
    def report():  # a thread started afterwards by a simulator-side thread inherits the priority
        late["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=report); t.start(); t.join()
finally:
    rig.stop()
print(json.dumps({"before": before, "after": after, "changed": changed, "late": late["nice"]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_lower_priority_reaches_every_thread_of_the_simulators_process():
    r = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    before, after = out["before"], out["after"]
    assert len(before) >= 2  # the main thread and at least the simulator's server thread
    both = set(before) & set(after)
    assert both and out["changed"] >= len(both)
    for tid in both:
        assert after[tid] == min(19, before[tid] + 3), (tid, before[tid], after[tid])
    assert out["late"] == min(19, before[min(before, key=int)] + 3)
