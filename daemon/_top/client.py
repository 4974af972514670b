"""Subscribe to medacq streams and talk to the daemon (public entry point).

See :class:`Subscriber` and :class:`ControlClient`; the implementation lives in
:mod:`medacq.daemon.client.api`.
"""

from medacq.daemon.client.api import (
    ControlClient,
    DaemonUnreachable,
    GapInfo,
    Message,
    RequestFailed,
    Subscriber,
)
from medacq.protocols.stream import HeaderError

__all__ = ["Subscriber", "Message", "GapInfo", "HeaderError", "ControlClient", "DaemonUnreachable", "RequestFailed"]
