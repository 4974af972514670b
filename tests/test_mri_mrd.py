"""MRD streaming (message 1008 acquisitions out, 1022 images back): our codec both ways, and
:class:`~medacq.daemon.recording.mrd.MrdClient` against an MRD server whose reading and writing
is the ``ismrmrd`` package's own (ProtocolDeserializer / ProtocolSerializer), as a
python-ismrmrd-server's is."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from medacq.drivers._base import Frame
from medacq.drivers.mri import MriDriver, MriSettings
from medacq.protocols.mrd import (
    ACQUISITION_HEADER_DTYPE, IMAGE_HEADER_DTYPE, MrdAcquisition, MrdClose, MrdConnection, MrdError, MrdHeader,
    MrdImage,
)
from medacq.simulators.adapters import SimulatorServer
from medacq.simulators.mri import make

ismrmrd = pytest.importorskip("ismrmrd", reason="the ismrmrd package (PyPI) is the other end of the stream")
ser = pytest.importorskip("ismrmrd.serialization", reason="ismrmrd's stream (de)serializers (1.15 has them)")
if not all(hasattr(ser, n) for n in ("ProtocolDeserializer", "ProtocolSerializer", "ConfigFile")):
    pytest.skip("this ismrmrd has no ProtocolDeserializer/ProtocolSerializer/ConfigFile (1.15 has them)",
                allow_module_level=True)


def test_codec_round_trip_byte_at_a_time():
    head = np.zeros((), ACQUISITION_HEADER_DTYPE)
    head["idx"]["kspace_encode_step_1"] = 5
    data = (np.arange(2 * 8) + 1j).reshape(2, 8).astype(np.complex64)
    ih = np.zeros((), IMAGE_HEADER_DTYPE)
    ih["slice"] = 3
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    stream = (MrdConnection.send_header("<x/>") + MrdConnection.send_acquisition(head, data)
              + MrdConnection.send_image(ih, img, "<meta/>") + MrdConnection.send_close())
    c = MrdConnection()
    evs = []
    for i in range(len(stream)):
        c.receive_data(stream[i:i + 1])
        while (ev := c.next_event()) is not None:
            evs.append(ev)
    assert [type(e) for e in evs] == [MrdHeader, MrdAcquisition, MrdImage, MrdClose]
    assert evs[0].xml == "<x/>"
    assert evs[1].head["idx"]["kspace_encode_step_1"] == 5 and np.array_equal(evs[1].data, data)
    assert evs[2].head["slice"] == 3 and evs[2].attributes == "<meta/>" and np.array_equal(evs[2].data[0, 0], img)
    bad = MrdConnection()
    bad.receive_data(b"\x07\x00rest")
    with pytest.raises(MrdError, match="unknown MRD message id 7"):
        bad.next_event()


def _server(lsock: socket.socket, got: dict) -> None:
    """An MRD server: the ismrmrd package reads the stream, reconstructs (centred 2D FFT, RSS) and
    sends one magnitude image back, then CLOSE."""
    conn, _ = lsock.accept()
    with conn, conn.makefile("rb") as rf, conn.makefile("wb") as wf:
        acqs = []
        for obj in ser.ProtocolDeserializer(rf).deserialize():
            if isinstance(obj, ismrmrd.Acquisition):
                acqs.append(obj)
            elif isinstance(obj, ser.ConfigFile):
                got["config"] = str(obj)
            else:
                got.setdefault("other", []).append(obj)
        got["acqs"] = acqs
        n = acqs[0].number_of_samples
        k = np.zeros((acqs[0].active_channels, n, n), np.complex64)
        for a in acqs:
            k[:, a.idx.kspace_encode_step_1] = a.data
        im = np.sqrt((np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(1, 2))), axes=(1, 2))) ** 2)
                     .sum(0)).astype(np.float32)
        got["image"] = im
        out = ismrmrd.Image.from_array(im, acquisition=acqs[-1], transpose=False)
        out.image_index = 1
        s = ser.ProtocolSerializer(wf)
        s.serialize(out)
        s.close()


def test_client_streams_acquisitions_and_gets_the_image_back():
    from medacq.daemon.recording.mrd import MrdClient

    n = 16
    with SimulatorServer(make(), "tcp", paced=False) as srv:
        d = MriDriver("mri0", srv.tcp_address, MriSettings.model_validate(
            {"sequence": {"sequence": "gre", "matrix": n, "te_ms": 4, "tr_ms": 20, "flip_deg": 30},
             "repetitions": 1, "dummy_scans": 0}))
        d.open()
        d.start()
        frames: list = []
        deadline = time.monotonic() + 20
        while len(frames) < n and time.monotonic() < deadline:
            frames += [f for f in d.read(0.5) if isinstance(f, Frame)]
        desc = d.descriptor().model_dump()
        d.close()
    lsock = socket.create_server(("127.0.0.1", 0))
    got: dict = {}
    th = threading.Thread(target=_server, args=(lsock, got), daemon=True)
    th.start()
    c = MrdClient(f"tcp://127.0.0.1:{lsock.getsockname()[1]}", desc, config="simplefft")
    for f in frames:
        c.send_line(f.data, f.meta)
    assert c.close(10), c.error
    th.join(5)
    lsock.close()
    assert got["config"] == "simplefft"
    hdr = got["other"][0]
    assert hdr.encoding[0].encodedSpace.matrixSize.x == n
    assert hdr.experimentalConditions.H1resonanceFrequency_Hz == round(desc["meta"]["larmor_hz"])
    acqs = got["acqs"]
    assert len(acqs) == n
    for i in (0, 7, n - 1):
        assert acqs[i].idx.kspace_encode_step_1 == frames[i].meta["line"]
        np.testing.assert_array_equal(acqs[i].data, frames[i].data)
    assert acqs[-1].is_flag_set(ismrmrd.ACQ_LAST_IN_ENCODE_STEP1)
    (img,) = c.images
    assert tuple(int(v) for v in img.head["matrix_size"]) == (n, n, 1) and int(img.head["image_index"]) == 1
    np.testing.assert_array_equal(img.data[0, 0], got["image"])
