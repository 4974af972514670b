"""Subscribe to medacq streams and talk to the daemon (public entry point).

See :class:`Subscriber` and :class:`ControlClient`; the implementation lives in
:mod:`medacq.daemon.client.api`. Every undecodable message raises (or, by default, is
skipped and counted as) :class:`StreamDecodeError`, defined in :mod:`medacq.protocols.stream`.
"""

from medacq.daemon.client.api import (
    ControlClient,
    DaemonUnreachable,
    GapInfo,
    Message,
    RequestFailed,
    Subscriber,
)
from medacq.daemon.client.clock import ClockError, ClockEstimate, ClockEstimator
from medacq.daemon.client.keys import ClientKeys
from medacq.protocols.qos import QosPolicy
from medacq.protocols.stream import HeaderError, StreamDecodeError

__all__ = ["Subscriber", "Message", "GapInfo", "HeaderError", "StreamDecodeError", "QosPolicy", "ControlClient",
           "DaemonUnreachable", "RequestFailed", "ClientKeys", "ClockEstimator", "ClockEstimate", "ClockError"]
