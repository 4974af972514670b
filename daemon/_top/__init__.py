"""medacq: get every frame off the instruments of an imaging rig, to whoever needs it.

Subpackages: :mod:`medacq.protocols` (sans-I/O codecs and the stream format),
:mod:`medacq.drivers`, :mod:`medacq.simulators`, :mod:`medacq.daemon`, and the
subscriber client :mod:`medacq.client`.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
