"""Column reductions of (M, C) arrays on the CPU: sums and centred sums of squares per channel, and
BatchNorm's mean and variance in one pass.

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


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _shifted_moments(part1, part2, a, shift, chunk):
    """part1[k, c], part2[k, c] = sum of d and of d^2 over rows m of chunk k, d = a[m, c] - shift[c]
    in float64 (part1, part2 and shift are float64)."""
    m, c = a.shape
    for k in prange(part1.shape[0]):
        s1 = np.zeros(c, np.float64)
        s2 = np.zeros(c, np.float64)
        for r in range(k * chunk, min(m, (k + 1) * chunk)):
            for ch in range(c):
                d = np.float64(a[r, ch]) - shift[ch]
                s1[ch] += d
                s2[ch] += d * d
        part1[k] = s1
        part2[k] = s2


def bn_stats(mean, var, x):
    """mean[c] = mean_m x[m,c]; var[c] = mean_m (x[m,c] - mean[c])^2 (biased), in one pass over x:
    float64 sums of d and d^2 about a shift (x's first row, so d is small where the spread is),
    var = E[d^2] - E[d]^2. One read of x instead of two (the map before the decoder's last
    BatchNorm is 268 MB at batch 32)."""
    part, chunk = partials(x)
    part1, part2 = np.empty(part.shape, np.float64), np.empty(part.shape, np.float64)
    shift = x[0].astype(np.float64)
    _shifted_moments(part1, part2, x, shift, chunk)
    inv_m = 1.0 / x.shape[0]
    d1 = part1.sum(axis=0) * inv_m
    mean[...] = shift + d1
    var[...] = np.maximum(part2.sum(axis=0) * inv_m - d1 * d1, 0.0)


def centered_sq_sums(out, x, mean):
    """out[c] = sum_m (x[m,c] - mean[c])^2."""
    part, chunk = partials(x)
    _centered_sq_sums(part, x, mean, chunk)
    out[...] = part.sum(axis=0)
