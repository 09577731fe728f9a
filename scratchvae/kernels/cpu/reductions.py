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


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _add_moments(part, a, shift, r0, r1):
    """part[0, c] += sum of d, part[1, c] += sum of d^2 over rows r0 <= r < r1 of a (M, C), with
    d = a[r, c] - shift[c] in float64 (part and shift are float64). The fused kernels call it on
    each piece they have just written (shift 0); bn_stats on chunks of its input."""
    c = a.shape[1]
    s1 = np.zeros(c, np.float64)
    s2 = np.zeros(c, np.float64)
    r = r0
    while r + 4 <= r1:  # four rows a pass: the running sums (too many to stay in registers) are loaded
        a0, a1, a2, a3 = a[r], a[r + 1], a[r + 2], a[r + 3]  # and stored once per four rows
        for ch in range(c):
            d0 = np.float64(a0[ch]) - shift[ch]
            d1 = np.float64(a1[ch]) - shift[ch]
            d2 = np.float64(a2[ch]) - shift[ch]
            d3 = np.float64(a3[ch]) - shift[ch]
            s1[ch] += (d0 + d1) + (d2 + d3)
            s2[ch] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        r += 4
    for r in range(r, r1):
        for ch in range(c):
            d = np.float64(a[r, ch]) - shift[ch]
            s1[ch] += d
            s2[ch] += d * d
    for ch in range(c):
        part[0, ch] += s1[ch]
        part[1, ch] += s2[ch]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _chunk_moments(parts, a, shift, chunk):
    """_add_moments of each chunk of `chunk` rows into its own slot of parts, in parallel."""
    for k in prange(parts.shape[0]):
        _add_moments(parts[k], a, shift, k * chunk, min(a.shape[0], (k + 1) * chunk))


def moment_parts(count, channels):
    """Zeroed float64 sums for _add_moments: one (2, channels) slot per piece or chunk."""
    return np.zeros((count, 2, channels), np.float64)


def finish_moments(mean, var, parts, rows, shift=None):
    """mean, var = the mean and biased variance per channel from the slots' sums of d and d^2 about
    shift (None: 0) over `rows` rows: var = E[d^2] - E[d]^2. The slots are added in order, so the
    result does not depend on which core filled which."""
    total = parts.sum(axis=0)
    inv_m = 1.0 / rows
    d1 = total[0] * inv_m
    mean[...] = d1 if shift is None else shift + d1
    var[...] = np.maximum(total[1] * inv_m - d1 * d1, 0.0)


def bn_stats(mean, var, x):
    """mean[c] = mean_m x[m,c]; var[c] = mean_m (x[m,c] - mean[c])^2 (biased), in one pass over x:
    float64 sums of d and d^2 about a shift (x's first row, so d is small where the spread is).
    One read of x instead of two (the map before the decoder's last BatchNorm is 268 MB at batch 32)."""
    part, chunk = partials(x)
    parts = moment_parts(part.shape[0], x.shape[1])
    shift = x[0].astype(np.float64)
    _chunk_moments(parts, x, shift, chunk)
    finish_moments(mean, var, parts, x.shape[0], shift)


def centered_sq_sums(out, x, mean):
    """out[c] = sum_m (x[m,c] - mean[c])^2."""
    part, chunk = partials(x)
    _centered_sq_sums(part, x, mean, chunk)
    out[...] = part.sum(axis=0)
