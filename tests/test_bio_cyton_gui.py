"""The OpenBCI GUI (v5/v6) against the simulated Cyton + Daisy, through BrainFlow.

The GUI reaches a serial Cyton only through BrainFlow's ``BoardShim``
(OpenBCI_GUI/BoardBrainflow.pde: prepare_session, config_board, start_stream,
get_board_data, stop_stream, release_session). The command strings below are the ones its
code builds (OpenBCI_GUI/ADS1299SettingsBoard.pde, BoardCyton.pde):

* channel settings ``String.format("x%c%d%d%d%d%d%dX", selector, powerDown, gain,
  inputType, bias, srb2, srb1)`` with enum ordinals and selectors ``1``–``8``, ``QWERTYUI``;
* ``commitDefaultsAllAtOnce``: all 16 defaults concatenated in ONE ``config_board`` call;
* ``setChannelActive(ch, false)``: power down, input SHORTED, bias and SRB2 off;
* ``setCheckingImpedance``: ``z%c%c%cZ`` driving N when SRB2 is connected, else P;
* ``setBoardMode``: ``/0`` .. ``/4``; ``printRegisters``: ``?``.

BrainFlow's ``config_board`` returns what the board printed when it is not streaming (it
reads until the port stays quiet), ``$$$`` terminators included.

Scaling: the GUI (v5.0) multiplies BrainFlow's EEG by 24 / gain because BrainFlow then
converted counts with a fixed gain 24. BrainFlow 5.x (installed: 5.23) tracks the ``x``
commands it forwards (``OpenBCIGainTracker``) and scales by the tracked gain itself, so its
EEG is already µV at the set gain; the test asserts that, and that the GUI's rescale of
fixed-gain-24 values gives the same µV.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

bs = pytest.importorskip("brainflow.board_shim", reason="brainflow is not installed (pip install brainflow)")

from medacq.protocols import cyton as cy  # noqa: E402
from medacq.simulators.adapters import SimulatorServer  # noqa: E402
from medacq.simulators.biosignal_models import EEG_LABELS_16, EEGModel  # noqa: E402
from medacq.simulators.cyton import CytonInterface  # noqa: E402

SELECTORS = "12345678QWERTYUI"  # BoardCyton.channelSelectForSettings
GAINS = (1, 2, 4, 6, 8, 12, 24)  # Gain enum ordinals


def gui_channel_command(ch: int, power_down: int = 0, gain: int = 24, input_type: int = 0,
                        bias: int = 1, srb2: int = 1, srb1: int = 0) -> str:
    """ADS1299Settings.commit(): ``x%c%d%d%d%d%d%dX`` with the enum ordinals (ch is 0-based)."""
    return f"x{SELECTORS[ch]}{power_down}{GAINS.index(gain)}{input_type}{bias}{srb2}{srb1}X"


def gui_impedance_command(ch: int, active: bool, srb2_connected: bool) -> str:
    """BoardCyton.setCheckingImpedance(): drive N if SRB2 is connected, else P."""
    p = "1" if active and not srb2_connected else "0"
    n = "1" if active and srb2_connected else "0"
    return f"z{SELECTORS[ch]}{p}{n}Z"


def registers(dump: str) -> dict[str, list[str]]:
    """``NAME -> [value per ADS]`` from a ``?`` dump (main board first, then Daisy)."""
    out: dict[str, list[str]] = {}
    for ln in dump.splitlines():
        parts = ln.split(", ")
        if len(parts) == 11:
            out.setdefault(parts[0], []).append(parts[2])
    return out


def test_gui_session_through_brainflow_against_the_daisy_simulator():
    board = bs.BoardIds.CYTON_DAISY_BOARD
    bs.BoardShim.disable_board_logger()
    gains = [24] * 16
    gains[1] = 8                      # the user picks x8 on channel 2
    off = (4, 11)                     # channels 5 and 12 switched off
    accel_g = (0.25, -0.5, 0.75)
    iface = CytonInterface(seed=12, daisy=True, accel_g=accel_g)
    with SimulatorServer(iface, "pty", paced=True) as sim:
        params = bs.BrainFlowInputParams()
        params.serial_port = sim.address
        shim = bs.BoardShim(board, params)
        shim.prepare_session()  # BrainFlow: 'v', wait for '$$$', 'd'
        try:
            # 1. BoardCyton init: commitDefaultsAllAtOnce, 16 commands in ONE config_board
            defaults = "".join(gui_channel_command(ch) for ch in range(16))
            assert defaults.startswith("x1060110Xx2060110X") and defaults.endswith("xI060110X")
            reply = shim.config_board(defaults)
            assert reply == "".join(f"Success: Channel set for {n}$$$" for n in range(1, 17))
            # 2. a gain change on one channel
            assert shim.config_board(gui_channel_command(1, gain=8)) == "Success: Channel set for 2$$$"
            # 3. channels switched off: power down, SHORTED, bias 0, SRB2 0
            for ch in off:
                cmd = gui_channel_command(ch, power_down=1, input_type=1, bias=0, srb2=0)
                assert cmd == f"x{SELECTORS[ch]}161000X"
                assert shim.config_board(cmd) == f"Success: Channel set for {ch + 1}$$$"
            # 4. SRB2 off on channel 3, then impedance on channels 3 (P side) and 4 (N side)
            assert shim.config_board(gui_channel_command(2, srb2=0)) == "Success: Channel set for 3$$$"
            assert gui_impedance_command(3, True, True) == "z401Z"
            for ch, srb2 in ((2, False), (3, True)):
                cmd = gui_impedance_command(ch, True, srb2)
                assert shim.config_board(cmd) == f"Success: Lead off set for {ch + 1}$$$"
            # 5. '?' shows all of it in the ADS registers
            dump = shim.config_board("?")
            assert dump.endswith("$$$") and "Daisy ADS Registers" in dump
            regs = registers(dump)
            assert regs["ADS_ID"] == ["3E", "3E"] and regs["CONFIG1"] == ["B6", "96"]  # 250 SPS
            assert regs["CH2SET"][0] == "48"                       # gain 8, SRB2 closed
            assert regs["CH3SET"][0] == "60"                       # gain 24, SRB2 open
            assert regs["CH5SET"][0] == "E1" and regs["CH4SET"][1] == "E1"  # off: PD + shorted
            assert regs["BIAS_SENSP"] == [f"{0xFF & ~(1 << 4):02X}", f"{0xFF & ~(1 << 3):02X}"]
            assert regs["LOFF_SENSP"] == ["04", "00"] and regs["LOFF_SENSN"] == ["08", "00"]
            # impedance off again (the GUI turns it off when the widget closes)
            for ch, srb2 in ((2, False), (3, True)):
                assert shim.config_board(gui_impedance_command(ch, False, srb2)) == \
                    f"Success: Lead off set for {ch + 1}$$$"
            assert registers(shim.config_board("?"))["LOFF_SENSP"] == ["00", "00"]
            # 6. board mode: analog and back to default (accelerometer on again)
            assert shim.config_board("/2") == "Success: analog$$$"
            assert shim.config_board("/0") == "Success: default$$$"
            assert shim.config_board("~~") == "Success: Sample rate is 250Hz$$$"
            # 7. stream
            shim.start_stream()
            t0 = time.monotonic()
            time.sleep(1.6)
            data = shim.get_board_data()
            elapsed = time.monotonic() - t0
            shim.stop_stream()
        finally:
            shim.release_session()
        assert sim.interface.gains().tolist() == gains

    eeg = data[bs.BoardShim.get_eeg_channels(board)]
    assert eeg.shape[0] == 16 and 0.8 * 125 * elapsed < eeg.shape[1] < 1.2 * 125 * elapsed
    # what the model made, as the board quantised it at each channel's gain
    n = eeg.shape[1] + 4
    uv = EEGModel(12, fs=125.0, labels=EEG_LABELS_16, mains_hz=50.0).generate(n)
    scale = cy.uv_scale(np.array(gains, dtype=float))[:, None]
    model_uv = np.clip(np.round(uv / scale), -(2**23), 2**23 - 1) * scale
    # the powered-down channels read 0 on the real board (ADS1299: shorted input, PD set)
    model_uv[list(off)] = 0.0
    assert np.all(eeg[list(off)] == 0.0)

    at24 = [k for k in range(16) if k not in off and gains[k] == 24]
    # BrainFlow may drop an incomplete first pair: find where its record starts
    first = int(np.argmin([np.abs(model_uv[at24, k] - eeg[at24, 0]).max() for k in range(4)]))
    ref = model_uv[:, first:first + eeg.shape[1]]
    # The installed BrainFlow (>= 5) tracks the 'x' commands config_board forwarded
    # (OpenBCIGainTracker, the all-at-once string included) and scales each channel by its own
    # gain: its EEG already is the model's µV, channel 2 at gain 8 included.
    np.testing.assert_allclose(eeg, ref, atol=1e-3)
    # The GUI's "× 24 / gain" (BoardCyton.getNewDataInternal) undoes a fixed-gain-24 scaling.
    # Fed the counts a fixed-24 BrainFlow would have scaled, it gives the same µV; applied
    # on top of this BrainFlow it would shrink channel 2 by 3.
    exact = eeg / cy.uv_scale(np.array(gains, dtype=float))[:, None]
    counts = np.round(exact)
    np.testing.assert_allclose(exact, counts, atol=1e-3)  # whole ADC counts at the tracked gain
    fixed24 = counts * cy.uv_scale(24)
    gui_uv = fixed24 * (24.0 / np.array(gains, dtype=float))[:, None]
    np.testing.assert_allclose(gui_uv, ref, atol=1e-3)
    assert not np.allclose(eeg[1] * 24.0 / 8.0, ref[1], atol=1.0)

    # the accelerometer (default board mode) arrives in g on BrainFlow's accel rows
    accel = data[bs.BoardShim.get_accel_channels(board)]
    np.testing.assert_allclose(accel, np.array(accel_g)[:, None] * np.ones((1, accel.shape[1])), atol=1e-9)
    # packet counters: BrainFlow keeps the even (Daisy-half) counter of each pair
    pk = data[bs.BoardShim.get_package_num_channel(board)]
    assert np.all(np.diff(pk) % 256 == 2)
