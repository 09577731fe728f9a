"""BatchNorm on the CPU, optionally fused with LeakyReLU (alpha 1 is plain BatchNorm).

Forward is one affine pass (scale = invstd*gamma, shift = beta - mean*scale). Backward is two passes:
per-chunk sums of g and g*(x - mean) (g = dy through the activation), then dx = a*g + b*x + off.
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


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _bn_act_sums(part1, part2, dy, x, mean, scale, shift, alpha, chunk):
    """Per chunk: sum of g and of g * (x - mean), g = dy masked by the activation's slope."""
    m, c = dy.shape
    for k in prange(part1.shape[0]):
        for ch in range(c):
            part1[k, ch] = 0
            part2[k, ch] = 0
        for r in range(k * chunk, min(m, (k + 1) * chunk)):
            for ch in range(c):
                xv = x[r, ch]
                g = dy[r, ch]
                if xv * scale[ch] + shift[ch] <= 0:
                    g = g * alpha
                part1[k, ch] += g
                part2[k, ch] += g * (xv - mean[ch])


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
    part1, chunk = partials(dy)
    part2 = np.empty_like(part1)
    _bn_act_sums(part1, part2, dy, x, mean, scale, shift, t(alpha), chunk)
    s1[...] = part1.sum(axis=0)
    s2[...] = part2.sum(axis=0)


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
