"""The VAE's loss terms on CUDA: squared error with its gradient, KL, the reparameterisation and
the latent gradients. The sums are flat, deterministic reductions (per-block partials, fixed order);
lv is z_log_var clipped to [lo, hi].
"""

import functools
import math

import numba
import numpy as np
from numba import cuda

from scratchvae.kernels.cuda.launch import THREADS, flat, launch, same_size
from scratchvae.kernels.cuda.reductions import device_sums, flat_reduce


@functools.cache
def _partials(dtype):
    """{name: kernel}: the per-block partials of mse_and_grad and kl_sum for one dtype."""
    ft = numba.from_dtype(np.dtype(dtype))
    _, block_total = device_sums(dtype)

    @cuda.jit
    def mse_partials(part, dx_hat, x_hat, x, scale):
        """dx_hat = scale (x_hat - x); part[block] = sum of (x_hat - x)^2 over this block's elements."""
        sh = cuda.shared.array(THREADS, ft)
        acc = ft(0)
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            d = x_hat[i] - x[i]
            dx_hat[i] = d * scale
            acc += d * d
        total = block_total(sh, acc)
        if cuda.threadIdx.x == 0:
            part[cuda.blockIdx.x] = total

    @cuda.jit
    def kl_partials(part, z_mean, z_log_var, lo, hi):
        """part[block] = sum of (1 + lv - mu^2 - exp(lv)), lv clipped to [lo, hi]."""
        sh = cuda.shared.array(THREADS, ft)
        acc = ft(0)
        for i in range(cuda.grid(1), z_mean.size, cuda.gridsize(1)):
            lv = z_log_var[i]
            if lv < lo:
                lv = lo
            elif lv > hi:
                lv = hi
            mu = z_mean[i]
            acc += ft(1) + lv - mu * mu - math.exp(lv)
        total = block_total(sh, acc)
        if cuda.threadIdx.x == 0:
            part[cuda.blockIdx.x] = total

    return {"mse_partials": mse_partials, "kl_partials": kl_partials}


def mse_and_grad(sq_sum, dx_hat, x_hat, x, scale):
    """sq_sum[0] = sum (x_hat - x)^2; dx_hat = scale * (x_hat - x)."""
    same_size(dx_hat, x_hat, x)
    flat_reduce(sq_sum, _partials(x.dtype)["mse_partials"], x.size, x.dtype, 1, flat(dx_hat), flat(x_hat),
                flat(x), x.dtype.type(scale))


def kl_sum(out, z_mean, z_log_var, lo, hi):
    """out[0] = -1/2 sum (1 + lv - mu^2 - exp(lv)) over batch and latent, lv = clip(log s^2, lo, hi)."""
    same_size(z_mean, z_log_var)
    t = z_mean.dtype.type
    flat_reduce(out, _partials(z_mean.dtype)["kl_partials"], z_mean.size, z_mean.dtype, -0.5, flat(z_mean),
                flat(z_log_var), t(lo), t(hi))


@cuda.jit(cache=True)
def _reparameterize(z, sigma, z_mean, z_log_var, eps, lo, hi, half):
    """sigma = exp(clip(lv, lo, hi) / 2); z = mu + sigma * eps."""
    for i in range(cuda.grid(1), z.size, cuda.gridsize(1)):
        lv = z_log_var[i]
        if lv < lo:
            lv = lo
        elif lv > hi:
            lv = hi
        s = math.exp(lv * half)
        sigma[i] = s
        z[i] = z_mean[i] + s * eps[i]


def reparameterize(z, sigma, z_mean, z_log_var, eps, lo, hi):
    """sigma = exp(clip(lv, lo, hi) / 2); z = mu + sigma * eps."""
    same_size(z, sigma, z_mean, z_log_var, eps)
    t = z.dtype.type
    launch(_reparameterize, z.size, flat(z), flat(sigma), flat(z_mean), flat(z_log_var), flat(eps),
           t(lo), t(hi), t(0.5))


@cuda.jit(cache=True)
def _latent_grads(d_mean, d_logvar, dz, z_mean, z_log_var, eps, sigma, inv_n, half, half_inv_n,
                  one, zero, lo, hi):
    """d_mean = dz + mu*inv_n; d_logvar = (dz*eps*sigma/2 + (sigma^2 - 1)*half_inv_n) * [lo <= lv <= hi]."""
    for i in range(cuda.grid(1), dz.size, cuda.gridsize(1)):
        s = sigma[i]
        lv = z_log_var[i]
        inside = one if lv >= lo and lv <= hi else zero
        d_mean[i] = dz[i] + z_mean[i] * inv_n
        d_logvar[i] = (dz[i] * eps[i] * s * half + (s * s - one) * half_inv_n) * inside


def latent_grads(d_mean, d_logvar, dz, z_mean, z_log_var, eps, sigma, lo, hi, kl_weight=1.0):
    """d_mean = dz + w*mu/n; d_logvar = (dz*eps*sigma/2 + w*(sigma^2-1)/(2n)) * [lo <= lv <= hi], n = batch,
    w = kl_weight (folded into the scalars on the host: w = 1 gives the same bits as no weight)."""
    same_size(d_mean, d_logvar, dz, z_mean, z_log_var, eps, sigma)
    t = dz.dtype.type
    n = z_mean.shape[0]
    launch(_latent_grads, dz.size, flat(d_mean), flat(d_logvar), flat(dz), flat(z_mean), flat(z_log_var),
           flat(eps), flat(sigma), t(kl_weight / n), t(0.5), t(0.5 * kl_weight / n), t(1), t(0), t(lo), t(hi))
