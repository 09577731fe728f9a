"""Reusable scratch buffers: one Workspace hands out views of buffers kept at their largest size.

A buffer is valid until the next request for the same key (a later request may grow it anew).
Buffers are allocated with the active backend's `empty`, so they live where the kernels run.
"""

import numpy as np


class Workspace:
    def __init__(self):
        self._store = {}

    def buffer(self, key, shape, dtype):
        """A view of the buffer `key` with `shape` and `dtype`, reallocated only when it must grow."""
        from scratchvae import kernels as K
        shape = tuple(int(d) for d in shape)
        size = int(np.prod(shape))
        dtype = np.dtype(dtype)
        buf = self._store.get((key, dtype))
        if buf is None or buf.size < size:
            buf = self._store[(key, dtype)] = K.empty((max(size, 1),), dtype)
        return buf[:size].reshape(shape)
