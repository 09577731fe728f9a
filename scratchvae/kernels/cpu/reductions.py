"""Column reductions of (M, C) arrays on the CPU: sums and centred sums of squares per channel.

Race-free across threads: each prange iteration owns a chunk of rows and writes its own row of
partial sums; the partials are then summed serially (NumPy) in a fixed order.
"""

import numpy as np
from numba import njit, prange

from scratchvae.kernels.cpu.jit import FASTMATH

_CHUNK_ROWS = 2048  # rows per partial sum in the reductions


def partials(a):
    """(part, chunk): an empty (chunks, C) array of partial sums for `a` (M, C), and rows per chunk."""
    chunks = max(1, -(-a.shape[0] // _CHUNK_ROWS))
    return np.empty((chunks, a.shape[1]), dtype=a.dtype), -(-a.shape[0] // chunks)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _col_sums(part, a, chunk):
    """part[k, c] = sum of a[m, c] over rows m of chunk k."""
    m, c = a.shape
    for k in prange(part.shape[0]):
        for ch in range(c):
            part[k, ch] = 0
        for r in range(k * chunk, min(m, (k + 1) * chunk)):
            for ch in range(c):
                part[k, ch] += a[r, ch]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _centered_sq_sums(part, a, mean, chunk):
    """part[k, c] = sum of (a[m, c] - mean[c])^2 over rows m of chunk k."""
    m, c = a.shape
    for k in prange(part.shape[0]):
        for ch in range(c):
            part[k, ch] = 0
        for r in range(k * chunk, min(m, (k + 1) * chunk)):
            for ch in range(c):
                d = a[r, ch] - mean[ch]
                part[k, ch] += d * d


def sum_rows(out, a):
    """out[c] = sum_m a[m, c]."""
    part, chunk = partials(a)
    _col_sums(part, a, chunk)
    out[...] = part.sum(axis=0)


def bn_stats(mean, var, x):
    """mean[c] = mean_m x[m,c]; var[c] = mean_m (x[m,c] - mean[c])^2 (biased, two passes)."""
    part, chunk = partials(x)
    inv_m = x.dtype.type(1.0 / x.shape[0])
    _col_sums(part, x, chunk)
    mean[...] = part.sum(axis=0) * inv_m
    _centered_sq_sums(part, x, mean, chunk)
    var[...] = part.sum(axis=0) * inv_m


def centered_sq_sums(out, x, mean):
    """out[c] = sum_m (x[m,c] - mean[c])^2."""
    part, chunk = partials(x)
    _centered_sq_sums(part, x, mean, chunk)
    out[...] = part.sum(axis=0)
