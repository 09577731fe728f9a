"""BatchNorm on CUDA, optionally fused with LeakyReLU (alpha 1 is plain BatchNorm).

Forward: per-channel scale = invstd*gamma, shift = beta - mean*scale, then one affine pass. Backward:
per-chunk sums of g and g*(x - mean) (g = dy through the activation), per-channel coefficients from
their fixed-order sums, then dx = k*g + b*x + off. The data-parallel split reuses the same kernels.
"""

import functools
import math

import numba
import numpy as np
from numba import cuda

from scratchvae.kernels.cuda.arrays import SCRATCH
from scratchvae.kernels.cuda.launch import flat, launch, per_channel, same_size
from scratchvae.kernels.cuda.reductions import RX, RY, column_kernels, column_launch, device_sums


@cuda.jit(cache=True)
def _bn_coeffs(scale, shift, mean, invstd, gamma, beta):
    """scale = invstd * gamma; shift = beta - mean * scale (per channel)."""
    for c in range(cuda.grid(1), scale.size, cuda.gridsize(1)):
        s = invstd[c] * gamma[c]
        scale[c] = s
        shift[c] = beta[c] - mean[c] * s


@cuda.jit(cache=True)
def _affine_leaky(y, x, scale, shift, alpha):
    """y[m, c] = leaky(x[m, c] * scale[c] + shift[c]); alpha 1 is the plain affine map."""
    c = scale.size
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i] * scale[i % c] + shift[i % c]
        y[i] = v if v > 0 else v * alpha


def _bn_scale_shift(x, mean, invstd, gamma, beta):
    """Device vectors scale = invstd * gamma, shift = beta - mean * scale."""
    per_channel(x, mean, invstd, gamma, beta)
    c = mean.size
    scale = SCRATCH.buffer("bn_scale", (c,), x.dtype)
    shift = SCRATCH.buffer("bn_shift", (c,), x.dtype)
    launch(_bn_coeffs, c, scale, shift, mean, invstd, gamma, beta)
    return scale, shift


def read_normalised(a, pre, pre_alpha, ws, key):
    """An operand with a BatchNorm (+ LeakyReLU) applied as it is read (the ops' `pre`: mean,
    invstd, gamma, beta per channel): a itself when pre is None, else a buffer `key` of ws (None:
    the backend's SCRATCH) holding leaky_pre_alpha((a - pre[0]) * pre[1] * pre[2] + pre[3])."""
    if pre is None:
        return a
    out = (SCRATCH if ws is None else ws).buffer(key, a.shape, a.dtype)
    bn_act_forward(out, a, pre[0], pre[1], pre[2], pre[3], pre_alpha)
    return out


def bn_forward(y, x, mean, invstd, gamma, beta):
    """y = (x - mean) * invstd * gamma + beta, as one affine pass."""
    same_size(y, x)
    scale, shift = _bn_scale_shift(x, mean, invstd, gamma, beta)
    launch(_affine_leaky, x.size, flat(y), flat(x), scale, shift, x.dtype.type(1))


def bn_act_forward(y, x, mean, invstd, gamma, beta, alpha):
    """y = leaky_alpha((x - mean) * invstd * gamma + beta); alpha 1 is plain BatchNorm."""
    same_size(y, x)
    scale, shift = _bn_scale_shift(x, mean, invstd, gamma, beta)
    launch(_affine_leaky, x.size, flat(y), flat(x), scale, shift, x.dtype.type(alpha))


@functools.cache
def _backward_kernels(dtype):
    """{name: kernel}: bn_act_sums (per-chunk sums of g and g*(x - mean)), bn_back_coeffs."""
    ft = numba.from_dtype(np.dtype(dtype))
    column_total, _ = device_sums(dtype)

    @cuda.jit
    def bn_act_sums(part1, part2, dy, x, mean, scale, shift, alpha, chunk):
        """Per chunk k: part1 = sum g, part2 = sum g * (x - mean), g = dy masked by the activation."""
        sh1 = cuda.shared.array((RY, RX), ft)
        sh2 = cuda.shared.array((RY, RX), ft)
        c = cuda.blockIdx.x * RX + cuda.threadIdx.x
        k = cuda.blockIdx.y
        acc1 = ft(0)
        acc2 = ft(0)
        if c < x.shape[1]:
            for r in range(k * chunk + cuda.threadIdx.y, min(x.shape[0], (k + 1) * chunk), RY):
                xv = x[r, c]
                g = dy[r, c]
                if xv * scale[c] + shift[c] <= 0:
                    g = g * alpha
                acc1 += g
                acc2 += g * (xv - mean[c])
        total1 = column_total(sh1, acc1)
        total2 = column_total(sh2, acc2)
        if cuda.threadIdx.y == 0 and c < x.shape[1]:
            part1[k, c] = total1
            part2[k, c] = total2

    @cuda.jit
    def bn_back_coeffs(dgamma, dbeta, k, b, off, part1, part2, mean, invstd, gamma, inv_m, batch):
        """dbeta = sum part1; dgamma = invstd sum part2; dx = k g + b x + off with k = gamma invstd,
        and with batch statistics b = -k invstd dgamma / m, off = -b mean - k dbeta / m (else 0)."""
        for c in range(cuda.grid(1), dgamma.size, cuda.gridsize(1)):
            s1 = ft(0)
            s2 = ft(0)
            for j in range(part1.shape[0]):
                s1 += part1[j, c]
                s2 += part2[j, c]
            dbeta[c] = s1
            dg = s2 * invstd[c]
            dgamma[c] = dg
            kc = gamma[c] * invstd[c]
            k[c] = kc
            if batch:
                bc = -kc * invstd[c] * dg * inv_m
                b[c] = bc
                off[c] = -bc * mean[c] - kc * s1 * inv_m
            else:
                b[c] = 0
                off[c] = 0

    return {"bn_act_sums": bn_act_sums, "bn_back_coeffs": bn_back_coeffs}


@cuda.jit(cache=True)
def _bn_act_dx(dx, dy, x, scale, shift, alpha, k, b, off):
    """dx = k * g + b * x + off per channel, g = dy masked by the activation's slope (from x)."""
    c = scale.size
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        ch = i % c
        xv = x[i]
        g = dy[i]
        if xv * scale[ch] + shift[ch] <= 0:
            g = g * alpha
        dx[i] = k[ch] * g + b[ch] * xv + off[ch]


def _bn_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha, batch):
    same_size(dx, dy, x)
    per_channel(x, dgamma, dbeta)
    t = x.dtype.type
    r = _backward_kernels(x.dtype)
    c = mean.size
    scale, shift = _bn_scale_shift(x, mean, invstd, gamma, beta)
    grid, block, chunks, chunk = column_launch(x)
    part1 = SCRATCH.buffer("part1", (chunks, c), x.dtype)
    part2 = SCRATCH.buffer("part2", (chunks, c), x.dtype)
    r["bn_act_sums"][grid, block](part1, part2, dy, x, mean, scale, shift, t(alpha), chunk)
    k, b, off = (SCRATCH.buffer(key, (c,), x.dtype) for key in ("bn_k", "bn_b", "bn_off"))
    launch(r["bn_back_coeffs"], c, dgamma, dbeta, k, b, off, part1, part2, mean, invstd, gamma,
           t(1.0 / x.shape[0]), batch)
    launch(_bn_act_dx, x.size, flat(dx), flat(dy), flat(x), scale, shift, t(alpha), k, b, off)


def bn_act_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha):
    """Backward of bn_act_forward with batch statistics: column sums of g and g*(x-mean), then dx."""
    _bn_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha, True)


def bn_act_backward_frozen(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha):
    """Backward with constant (moving) statistics: dbeta = sum g, dgamma = sum g*xhat, dx = g*gamma*invstd."""
    _bn_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha, False)


def bn_act_grad_sums(s1, s2, dy, x, mean, invstd, gamma, beta, alpha):
    """s1[c] = sum_m g[m,c]; s2[c] = sum_m g[m,c] * (x[m,c] - mean[c]); g = dy through the activation."""
    same_size(dy, x)
    per_channel(x, s1, s2)
    c = mean.size
    scale, shift = _bn_scale_shift(x, mean, invstd, gamma, beta)
    grid, block, chunks, chunk = column_launch(x)
    part1 = SCRATCH.buffer("part1", (chunks, c), x.dtype)
    part2 = SCRATCH.buffer("part2", (chunks, c), x.dtype)
    _backward_kernels(x.dtype)["bn_act_sums"][grid, block](part1, part2, dy, x, mean, scale, shift,
                                                           x.dtype.type(alpha), chunk)
    finish_cols = column_kernels(x.dtype)["finish_cols"]
    one = x.dtype.type(1)
    launch(finish_cols, c, s1, part1, one)
    launch(finish_cols, c, s2, part2, one)


@cuda.jit(cache=True)
def _bn_dx_coeffs(k, b, off, s1, s2, mean, invstd, gamma, inv_m):
    """k = gamma invstd; b = -k invstd (s2 invstd) / m; off = -b mean - k s1 / m (per channel)."""
    for c in range(cuda.grid(1), k.size, cuda.gridsize(1)):
        kc = gamma[c] * invstd[c]
        bc = -kc * invstd[c] * (s2[c] * invstd[c]) * inv_m
        k[c] = kc
        b[c] = bc
        off[c] = -bc * mean[c] - kc * s1[c] * inv_m


def bn_act_dx(dx, dy, x, mean, invstd, gamma, beta, alpha, s1, s2, count):
    """dx = gamma*invstd*(g - s1/count - (x-mean)*invstd^2*s2/count): s1, s2 summed over all `count` rows."""
    same_size(dx, dy, x)
    per_channel(x, s1, s2)
    t = x.dtype.type
    c = mean.size
    scale, shift = _bn_scale_shift(x, mean, invstd, gamma, beta)
    k, b, off = (SCRATCH.buffer(key, (c,), x.dtype) for key in ("bn_k", "bn_b", "bn_off"))
    launch(_bn_dx_coeffs, c, k, b, off, s1, s2, mean, invstd, gamma, t(1.0 / count))
    launch(_bn_act_dx, x.size, flat(dx), flat(dy), flat(x), scale, shift, t(alpha), k, b, off)


@cuda.jit(cache=True)
def _bn_invstd(invstd, var, eps, one):
    """invstd = 1 / sqrt(var + eps)."""
    for c in range(cuda.grid(1), var.size, cuda.gridsize(1)):
        invstd[c] = one / math.sqrt(var[c] + eps)


def bn_invstd(invstd, var, eps):
    """invstd = 1 / sqrt(var + eps)."""
    same_size(invstd, var)
    t = var.dtype.type
    launch(_bn_invstd, var.size, invstd, var, t(eps), t(1))


@cuda.jit(cache=True)
def _moving_update(moving, batch, m, one_minus_m):
    """moving = m * moving + (1 - m) * batch."""
    for c in range(cuda.grid(1), moving.size, cuda.gridsize(1)):
        moving[c] = m * moving[c] + one_minus_m * batch[c]


def moving_update(moving, batch, momentum):
    """moving = momentum * moving + (1 - momentum) * batch."""
    same_size(moving, batch)
    m = moving.dtype.type(momentum)
    launch(_moving_update, moving.size, moving, batch, m, moving.dtype.type(1) - m)
