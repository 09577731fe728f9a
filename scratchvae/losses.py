"""The seed's VAE objective and its manual gradients: total = beta * MSE + KL.

MSE is the mean of (x - x_hat)^2 over batch, pixels and channels; KL is summed over the latent
dimensions and averaged over the batch. log sigma^2 is clamped to LOGVAR_RANGE wherever it is
exponentiated, in sampling and KL alike, so one bad batch cannot overflow.
The arithmetic runs in kernels, so the arrays may live on a device; the host sees two floats.
"""

import numpy as np

from scratchvae import kernels as K

LOGVAR_RANGE = (-30.0, 20.0)  # exp(0.5 * 20) ~ 2.2e4: wide, but finite in float32


def reparameterize(z_mean, z_log_var, eps):
    """z = mu + exp(0.5 * log sigma^2) * eps; returns z and sigma (for the backward)."""
    z, sigma = K.empty(z_mean.shape, z_mean.dtype), K.empty(z_mean.shape, z_mean.dtype)
    K.reparameterize(z, sigma, z_mean, z_log_var, eps, *LOGVAR_RANGE)
    return z, sigma


def kl_divergence(z_mean, z_log_var):
    """-1/2 sum_d (1 + log s^2 - mu^2 - s^2), averaged over the batch (nats per image)."""
    out = K.zeros((1,), np.float64)
    K.kl_sum(out, z_mean, z_log_var, *LOGVAR_RANGE)
    return float(K.to_host(out)[0]) / z_mean.shape[0]


def mse_and_grad(x, x_hat, beta):
    """(mean squared error over every element, d(beta * MSE)/d x_hat = 2 beta (x_hat - x) / size)."""
    sq = K.zeros((1,), np.float64)
    dx_hat = K.empty(x.shape, x.dtype)
    K.mse_and_grad(sq, dx_hat, x_hat, x, 2.0 * beta / x.size)
    return float(K.to_host(sq)[0]) / x.size, dx_hat


def mse(x, x_hat):
    """Mean squared error over every element (accumulated in float64 on the CPU)."""
    return mse_and_grad(x, x_hat, 0.0)[0]


def psnr(mse_value):
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    return float(10.0 * np.log10(1.0 / max(mse_value, 1e-12)))


def terms(m, kl, beta):
    """The reported numbers from MSE and KL: total, reconstruction (beta * MSE), kl, mse, psnr."""
    return {"total": beta * m + kl, "reconstruction": beta * m, "kl": kl, "mse": m, "psnr": psnr(m)}


def loss_terms(x, x_hat, z_mean, z_log_var, beta):
    """The reported numbers of a batch."""
    return terms(mse(x, x_hat), kl_divergence(z_mean, z_log_var), beta)


def reconstruction_grad(x, x_hat, beta):
    """d(beta * MSE)/d x_hat = 2 * beta * (x_hat - x) / size."""
    return mse_and_grad(x, x_hat, beta)[1]


def latent_grads(dz, z_mean, z_log_var, eps, sigma):
    """Gradients of the total loss w.r.t. mu and log sigma^2, given dL/dz from the decoder."""
    d_mean, d_logvar = K.empty(dz.shape, dz.dtype), K.empty(dz.shape, dz.dtype)
    K.latent_grads(d_mean, d_logvar, dz, z_mean, z_log_var, eps, sigma, *LOGVAR_RANGE)
    return d_mean, d_logvar
