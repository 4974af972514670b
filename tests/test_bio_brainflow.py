"""Third-party software written for the real board works against our simulator's pty
unchanged: BrainFlow's CYTON_BOARD and CYTON_DAISY_BOARD read the values the model made."""

from __future__ import annotations

import time

import numpy as np
import pytest

bs = pytest.importorskip("brainflow.board_shim", reason="brainflow is not installed (pip install brainflow)")

from medacq.simulators.adapters import SimulatorServer  # noqa: E402
from medacq.simulators.cyton import CytonInterface  # noqa: E402

from test_bio_drivers import cyton_expected  # noqa: E402


@pytest.mark.parametrize("daisy", [False, True])
def test_brainflow_reads_the_simulated_cyton(daisy):
    board = bs.BoardIds.CYTON_DAISY_BOARD if daisy else bs.BoardIds.CYTON_BOARD
    bs.BoardShim.disable_board_logger()
    tilt = (0.5, 0.0, 0.875)  # BrainFlow updates its accel rows only when X is non-zero
    with SimulatorServer(CytonInterface(seed=5, daisy=daisy, accel_g=tilt), "pty", paced=True) as sim:
        params = bs.BrainFlowInputParams()
        params.serial_port = sim.address
        shim = bs.BoardShim(board, params)
        shim.prepare_session()
        try:
            shim.start_stream()
            time.sleep(1.2)
            data = shim.get_board_data()
            shim.stop_stream()
        finally:
            shim.release_session()
    eeg = data[bs.BoardShim.get_eeg_channels(board)]
    n_ch = 16 if daisy else 8
    assert eeg.shape[0] == n_ch and eeg.shape[1] >= 100
    exp = cyton_expected(5, daisy, eeg.shape[1] + 4)
    # BrainFlow may skip an incomplete first sample: find where its record starts
    off = int(np.argmin([np.abs(exp[:, k] - eeg[:, 0]).max() for k in range(4)]))
    np.testing.assert_allclose(eeg, exp[:, off:off + eeg.shape[1]], atol=1e-3)
    accel = data[bs.BoardShim.get_accel_channels(board)]
    seen = accel[0] != 0  # rows stay 0 until BrainFlow's first accelerometer packet
    assert seen.sum() > accel.shape[1] // 2
    np.testing.assert_allclose(accel[:, seen], np.array(tilt)[:, None] * np.ones((1, seen.sum())), atol=1e-9)
