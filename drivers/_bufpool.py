"""Reusable frame buffers for drivers that receive large frames (X-ray panels, ultrasound RF).

A frame handed to the daemon lives on in its queue, the publisher and ZeroMQ's zero-copy send,
and is freed on another thread. A fresh multi-megabyte allocation per frame then costs the
acquisition thread a page fault per 4 KiB page when the frame is written (the allocator gives
the freed pages back to the kernel in between). :class:`BufferPool` keeps a few buffers and
hands one out again only when nothing refers to it any more (CPython reference count: every
view of a buffer -- a frame's array, a ``memoryview``, pyzmq's zero-copy message -- holds a
reference to it), so a reused buffer is never one a subscriber can still see.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["BufferPool"]


def _free_refs() -> int:
    """References to a pooled buffer, seen from :meth:`BufferPool.take`'s loop, when nothing
    else holds it (the pool's list, the loop variable, getrefcount's argument)."""
    bufs = [np.empty(1, np.uint8)]
    for a in bufs:
        return sys.getrefcount(a)
    raise AssertionError("unreachable")


_FREE_REFS = _free_refs()


class BufferPool:
    """Up to ``keep`` byte buffers (``uint8`` arrays), reused once unreferenced.

    Args:
        keep: buffers kept for reuse; when all are in use a new buffer is allocated and the
            oldest kept one is forgotten (it is freed once its last user lets go).
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = max(1, keep)
        self._bufs: list[np.ndarray] = []
        #: buffers handed out again (reuse) / newly allocated
        self.reused = 0
        self.allocated = 0

    def take(self, nbytes: int) -> np.ndarray:
        """A C-contiguous ``uint8`` array of exactly ``nbytes`` bytes that nothing else refers
        to (contents undefined). Keep a reference only as long as the data are in use."""
        for a in self._bufs:
            if a.nbytes == nbytes and sys.getrefcount(a) <= _FREE_REFS:
                self.reused += 1
                return a
        a = np.empty(nbytes, np.uint8)
        self.allocated += 1
        if len(self._bufs) >= self.keep:
            del self._bufs[0]
        self._bufs.append(a)
        return a
