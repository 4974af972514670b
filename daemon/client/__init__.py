"""The public subscriber and control client (also importable as :mod:`medacq.client`).

Imports only :mod:`medacq.protocols` (``tests/test_layering.py``), so a scientist's script on
another machine needs neither drivers nor the daemon's services.
"""

from medacq.daemon.client.api import ControlClient, DaemonUnreachable, GapInfo, Message, RequestFailed, Subscriber
from medacq.daemon.client.clock import ClockError, ClockEstimate, ClockEstimator
from medacq.daemon.client.keys import ClientKeys
from medacq.protocols.stream import StreamDecodeError

__all__ = ["ClientKeys", "ControlClient", "DaemonUnreachable", "GapInfo", "Message", "RequestFailed", "StreamDecodeError",
           "Subscriber", "ClockError", "ClockEstimate", "ClockEstimator"]
