"""Scratch buffers reused across calls, by key: one object instead of per-module caches.

A buffer is allocated with a backend's `empty` and grown only when a request needs more room, so
repeated calls of the same shapes allocate nothing. The model can own one and pass it to kernels.
"""

import math

import numpy as np


class Workspace:
    """Buffers by (key, dtype), each valid until the next request for the same key (which may hand
    out the same memory again). `empty(shape, dtype)` allocates them; None: the active backend's
    `empty` at each request (a buffer made by one backend is never handed to another)."""

    def __init__(self, empty=None):
        self._empty = empty
        self._buffers = {}

    def buffer(self, key, shape, dtype):
        """A C-contiguous array of `shape` and `dtype`, a view of the buffer kept under `key`."""
        shape = tuple(int(d) for d in shape)
        size = math.prod(shape)
        empty = self._empty
        if empty is None:
            from scratchvae import kernels  # the dispatch point imports backends; not the other way
            empty = kernels.backend().empty
        slot = (key, np.dtype(dtype), empty)
        buf = self._buffers.get(slot)
        if buf is None or buf.size < size:
            buf = self._buffers[slot] = empty((max(size, 1),), np.dtype(dtype))
        return buf[:size].reshape(shape)

    def clear(self):
        """Forget every buffer (their memory is freed once no caller holds a view)."""
        self._buffers.clear()
