"""Test-only driver (loaded with ``MEDACQ_EXTRA_DRIVERS=wedgeable=ops_wedge_driver:WedgeableDriver``).

The synthetic driver, except that once the file named by ``wedge_file`` exists its
``read`` blocks for good: a device thread wedged in a driver call, as a hung USB
transfer or a kernel driver bug would leave it. Nothing in medacq can interrupt it;
only the systemd watchdog can recover the process.
"""

from __future__ import annotations

import os
import threading

from medacq.drivers.synthetic import SyntheticDriver, SyntheticSettings

__all__ = ["WedgeableDriver", "WedgeableSettings"]


class WedgeableSettings(SyntheticSettings):
    wedge_file: str = ""


class WedgeableDriver(SyntheticDriver):
    kind = "wedgeable"
    Settings = WedgeableSettings

    def read(self, timeout: float):
        if self.settings.wedge_file and os.path.exists(self.settings.wedge_file):
            threading.Event().wait()  # blocks forever
        return super().read(timeout)
