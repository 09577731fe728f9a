"""BatchNorm on the CPU, optionally fused with LeakyReLU (alpha 1 is plain BatchNorm).

Forward is one affine pass (scale = invstd*gamma, shift = beta - mean*scale). Backward is two passes:
per-chunk float64 sums of g and g*(x - mean) (g = dy through the activation), then dx = a*g + b*x + off.
The data-parallel split (grad sums, then dx from sums over all ranks) reuses the same two kernels.
"""

import numpy as np
from numba import njit, prange

from scratchvae.kernels.cpu.elementwise import _affine
from scratchvae.kernels.cpu.jit import FASTMATH
from scratchvae.kernels.cpu.reductions import partials
# Small per-channel maps and the frozen-statistics backward: the reference code is the CPU code.
from scratchvae.kernels.reference import bn_act_backward_frozen, bn_invstd, moving_update  # noqa: F401


def bn_forward(y, x, mean, invstd, gamma, beta):
    """y = (x - mean) * invstd * gamma + beta, as one affine pass."""
    scale = (invstd * gamma).astype(x.dtype)
    _affine(y, x, scale, (beta - mean * scale).astype(x.dtype))


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _affine_leaky(y, x, scale, shift, alpha):
    """y[m, c] = leaky(x[m, c] * scale[c] + shift[c])."""
    m, c = x.shape
    for r in prange(m):
        for ch in range(c):
            v = x[r, ch] * scale[ch] + shift[ch]
            y[r, ch] = v if v > 0 else v * alpha


def bn_act_forward(y, x, mean, invstd, gamma, beta, alpha):
    """y = leaky_alpha((x - mean) * invstd * gamma + beta); alpha 1 is plain BatchNorm."""
    t = x.dtype.type
    scale = (invstd * gamma).astype(x.dtype)
    _affine_leaky(y, x, scale, (beta - mean * scale).astype(x.dtype), t(alpha))


# ---------------------------------------------------------------- a BatchNorm applied as an operand is read

def pre_affine(pre, pre_alpha, dtype):
    """(scale, shift, alpha) for reading an operand through a BatchNorm (+ LeakyReLU): the fused ops'
    `pre` (rows mean, invstd, gamma, beta), computed as bn_act_forward computes them, so the values
    read are bit for bit the ones bn_act_forward would have written. None when pre is None."""
    if pre is None:
        return None
    scale = (pre[1] * pre[2]).astype(dtype)
    return scale, (pre[3] - pre[0] * scale).astype(dtype), np.dtype(dtype).type(pre_alpha)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def normalise_rows(out, x, scale, shift, alpha):
    """out[m, c] = leaky(x[m, c] * scale[c] + shift[c]) on the calling thread: one piece of an operand
    read through a BatchNorm (the arithmetic of _affine_leaky)."""
    for r in range(x.shape[0]):
        for ch in range(x.shape[1]):
            v = x[r, ch] * scale[ch] + shift[ch]
            out[r, ch] = v if v > 0 else v * alpha


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def add_grad_sums(part, dy, x, scale, shift, mean, alpha):
    """part[0, c] += sum_m g, part[1, c] += sum_m g * (x[m, c] - mean[c]) in float64, g = dy[m, c] if
    x[m, c] * scale[c] + shift[c] > 0 else alpha * dy[m, c]: bn_act_grad_sums over one piece, the
    slope's mask worked out as normalise_rows works it out. Four rows a pass, as _add_moments (the
    running sums are loaded and stored once per four rows)."""
    c = dy.shape[1]
    s1 = np.zeros(c, np.float64)
    s2 = np.zeros(c, np.float64)
    r, m = 0, dy.shape[0]
    while r + 4 <= m:
        d0, d1, d2, d3 = dy[r], dy[r + 1], dy[r + 2], dy[r + 3]
        x0, x1, x2, x3 = x[r], x[r + 1], x[r + 2], x[r + 3]
        for ch in range(c):
            sc, sh = scale[ch], shift[ch]
            g0 = np.float64(d0[ch] if x0[ch] * sc + sh > 0 else d0[ch] * alpha)
            g1 = np.float64(d1[ch] if x1[ch] * sc + sh > 0 else d1[ch] * alpha)
            g2 = np.float64(d2[ch] if x2[ch] * sc + sh > 0 else d2[ch] * alpha)
            g3 = np.float64(d3[ch] if x3[ch] * sc + sh > 0 else d3[ch] * alpha)
            mu = np.float64(mean[ch])
            s1[ch] += (g0 + g1) + (g2 + g3)
            s2[ch] += (g0 * (np.float64(x0[ch]) - mu) + g1 * (np.float64(x1[ch]) - mu)) + \
                (g2 * (np.float64(x2[ch]) - mu) + g3 * (np.float64(x3[ch]) - mu))
        r += 4
    for r in range(r, m):
        for ch in range(c):
            g = np.float64(dy[r, ch] if x[r, ch] * scale[ch] + shift[ch] > 0 else dy[r, ch] * alpha)
            s1[ch] += g
            s2[ch] += g * (np.float64(x[r, ch]) - np.float64(mean[ch]))
    for ch in range(c):
        part[0, ch] += s1[ch]
        part[1, ch] += s2[ch]


def normalised_copy(buf, x, norm):
    """x read through norm (pre_affine's triple) into buf, a C-contiguous array of x's shape, by
    all cores; x itself when norm is None."""
    if norm is None:
        return x
    c = x.shape[-1]
    _affine_leaky(buf.reshape(-1, c), x.reshape(-1, c), *norm)
    return buf


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _bn_act_sums(parts, dy, x, mean, scale, shift, alpha, chunk):
    """Per chunk k of `chunk` rows: parts[k] = the sums of g and of g * (x - mean) in float64 (add_grad_sums)."""
    m = dy.shape[0]
    for k in prange(parts.shape[0]):
        r0, r1 = k * chunk, min(m, (k + 1) * chunk)
        parts[k] = 0
        add_grad_sums(parts[k], dy[r0:r1], x[r0:r1], scale, shift, mean, alpha)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _bn_act_dx(dx, dy, x, scale, shift, alpha, a, b, off):
    """dx = a * g + b * x + off, g = dy masked by the activation's slope (recomputed from x)."""
    m, c = x.shape
    for r in prange(m):
        for ch in range(c):
            xv = x[r, ch]
            g = dy[r, ch]
            if xv * scale[ch] + shift[ch] <= 0:
                g = g * alpha
            dx[r, ch] = a[ch] * g + b[ch] * xv + off[ch]


def bn_act_grad_sums(s1, s2, dy, x, mean, invstd, gamma, beta, alpha):
    """s1[c] = sum_m g[m,c]; s2[c] = sum_m g[m,c] * (x[m,c] - mean[c]); g = dy through the activation."""
    t = x.dtype.type
    scale = (invstd * gamma).astype(x.dtype)
    shift = (beta - mean * scale).astype(x.dtype)
    chunks, chunk = partials(dy)
    parts = np.empty((chunks.shape[0], 2, dy.shape[1]))
    _bn_act_sums(parts, dy, x, mean, scale, shift, t(alpha), chunk)
    total = parts.sum(axis=0)
    s1[...] = total[0]
    s2[...] = total[1]


def bn_act_dx(dx, dy, x, mean, invstd, gamma, beta, alpha, s1, s2, count):
    """dx = gamma*invstd*(g - s1/count - (x-mean)*invstd^2*s2/count): s1, s2 summed over all `count` rows."""
    t = x.dtype.type
    scale = (invstd * gamma).astype(x.dtype)
    shift = (beta - mean * scale).astype(x.dtype)
    inv_m = t(1.0 / count)
    k = gamma * invstd
    b = -k * invstd * (s2 * invstd) * inv_m
    _bn_act_dx(dx, dy, x, scale, shift, t(alpha), k.astype(x.dtype), b.astype(x.dtype),
               (-b * mean - k * s1 * inv_m).astype(x.dtype))


def bn_act_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha):
    """Backward of bn_act_forward with batch statistics, in two fused passes over x and dy."""
    bn_act_grad_sums(dbeta, dgamma, dy, x, mean, invstd, gamma, beta, alpha)
    bn_act_dx(dx, dy, x, mean, invstd, gamma, beta, alpha, dbeta, dgamma, x.shape[0])
    dgamma *= invstd
