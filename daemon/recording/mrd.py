"""Send an ``mri`` stream's k-space lines to an MRD server (Gadgetron, python-ismrmrd-server) and
collect the images it sends back (the MRD streaming protocol: :mod:`medacq.protocols.mrd`).

:class:`MrdClient` is the client side of one MRD connection: ``CONFIG_FILE`` (the server's
reconstruction name, e.g. python-ismrmrd-server's ``simplefft``) or ``CONFIG_TEXT``, the XML
``HEADER`` built from the stream descriptor (:func:`~medacq.daemon.recording.ismrmrd.header_xml`),
one ``ACQUISITION`` (1008) per ``(coil, readout)`` line with the same acquisition header the
ISMRMRD file gets (phase line, slice, repetition, flags), ``CLOSE``; a reader thread parses what
the server sends meanwhile: ``IMAGE`` (1022) messages are kept (:attr:`MrdClient.images`, bounded),
``TEXT`` logged, the server's ``CLOSE`` ends it. A stream the codec cannot parse on ends the
connection with the reason in :attr:`MrdClient.error` (counted, never a thread's crash).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from typing import Any

import numpy as np

from medacq.protocols.mrd import MrdClose, MrdConnection, MrdError, MrdImage, MrdText

from .ismrmrd import acquisition_header, header_xml

__all__ = ["MrdClient"]

log = logging.getLogger("medacq.mrd")


def _host_port(address: str) -> tuple[str, int]:
    a = address.removeprefix("tcp://")
    host, _, port = a.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"MRD server address {address!r}: expected [tcp://]host:port")
    return host, int(port)


class MrdClient:
    """One MRD connection for the stream described by ``descriptor`` (a dict).

    Args:
        address: ``[tcp://]host:port`` of the MRD server (python-ismrmrd-server listens on 9002).
        descriptor: the ``mri`` stream's descriptor (matrix, FOV, Larmor frequency...).
        config: the reconstruction to run: a config name (``CONFIG_FILE``), or its text when
            ``config_text`` (``CONFIG_TEXT``).
        max_images: images kept (the oldest dropped first, counted in ``images_dropped``).
    """

    def __init__(self, address: str, descriptor: dict[str, Any], config: str = "simplefft",
                 config_text: bool = False, timeout: float = 10.0, max_images: int = 1024) -> None:
        self.descriptor = descriptor
        self.codec = MrdConnection()
        self.images: deque[MrdImage] = deque(maxlen=max_images)
        self.texts: list[str] = []
        self.images_received = self.images_dropped = self.sent = 0
        self.error: str | None = None
        self.server_closed = threading.Event()
        geo = descriptor.get("geometry") or {}
        self.n_lines = int((geo.get("matrix") or [descriptor["shape"][1]])[0])
        bw = float(descriptor.get("sample_rate_hz") or 0.0)
        self.dwell_us = 1e6 / bw if bw else 0.0
        self.sock = socket.create_connection(_host_port(address), timeout=timeout)
        self.sock.settimeout(None)
        self._lock = threading.Lock()
        self._send(MrdConnection.send_config_text(config) if config_text else MrdConnection.send_config_file(config))
        self._send(MrdConnection.send_header(header_xml(descriptor)))
        self._reader = threading.Thread(target=self._read, name="mrd-reader", daemon=True)
        self._reader.start()

    def _send(self, data: bytes) -> None:
        with self._lock:
            self.sock.sendall(data)

    def send_line(self, line: np.ndarray, meta: dict[str, Any], t_ms: int = 0) -> None:
        """One ``(coil, readout)`` complex line with its frame ``meta`` as an ACQUISITION message."""
        line = np.ascontiguousarray(line, dtype=np.complex64)
        if line.ndim != 2:
            raise ValueError(f"an mri line is (coil, readout), not {line.shape}")
        head = acquisition_header(line, meta, self.n_lines, self.dwell_us, self.sent, t_ms)
        self._send(MrdConnection.send_acquisition(head, line))
        self.sent += 1

    def _read(self) -> None:
        try:
            while not self.server_closed.is_set():
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                self.codec.receive_data(data)
                while (ev := self.codec.next_event()) is not None:
                    if isinstance(ev, MrdImage):
                        if len(self.images) == self.images.maxlen:
                            self.images_dropped += 1
                        self.images.append(ev)
                        self.images_received += 1
                    elif isinstance(ev, MrdText):
                        self.texts.append(ev.text)
                        log.info("MRD server: %s", ev.text)
                    elif isinstance(ev, MrdClose):
                        self.server_closed.set()
                        break
        except MrdError as exc:
            self.error = str(exc)
            log.error("MRD stream from the server: %s", exc)
        except OSError as exc:
            if not self.server_closed.is_set():
                self.error = f"connection: {exc}"
        finally:
            self.server_closed.set()

    def close(self, timeout: float = 10.0) -> bool:
        """Send CLOSE, wait (up to ``timeout`` s) for the server's CLOSE after its last image;
        True when it came."""
        try:
            self._send(MrdConnection.send_close())
            ok = self.server_closed.wait(timeout) and self.error is None
        except OSError as exc:
            self.error = f"connection: {exc}"
            ok = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._reader.join(2.0)
        return bool(ok)
