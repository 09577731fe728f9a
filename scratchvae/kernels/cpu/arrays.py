"""Arrays of the CPU backend: host NumPy arrays, so allocation and transfers are NumPy's own.

The whole-array helpers (fill, copy, add, overlap checks) are the reference's: NumPy-bound already.
"""

import numpy as np

from scratchvae.kernels.reference import add, copy, fill, is_device_array, may_share_memory  # noqa: F401


def empty(shape, dtype):
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def to_host(a):
    return np.asarray(a)


def from_host(a):
    return np.ascontiguousarray(a)
