"""The VAE objectives and their manual gradients: the seed's total = beta * MSE + KL, or the
sigma-VAE's total = D/2 log(2 pi s2) + D MSE / (2 s2) + KL with s2 = max(MSE, MIN_SIGMA_SQ), in nats
per image (D = H*W*C; at s2 = MSE the reconstruction is D/2 (log(2 pi MSE) + 1)).

MSE is the mean of (x - x_hat)^2 over batch, pixels and channels; KL is summed over the latent
dimensions and averaged over the batch. log sigma^2 is clamped to LOGVAR_RANGE wherever it is
exponentiated, in sampling and KL alike, so one bad batch cannot overflow.
The arithmetic runs in kernels, so the arrays may live on a device; the host sees two floats.
"""

import numpy as np

from scratchvae import kernels as K

LOGVAR_RANGE = (-30.0, 20.0)  # exp(0.5 * 20) ~ 2.2e4: wide, but finite in float32
MIN_SIGMA_SQ = 1e-12  # the sigma-VAE's variance floor (as PSNR's): a perfect batch cannot give log(0)


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


def sigma_sq(m):
    """The sigma-VAE's decoder variance: its optimum, the batch MSE, floored at MIN_SIGMA_SQ."""
    return max(m, MIN_SIGMA_SQ)


def sigma_nll(m, pixels):
    """The Gaussian negative log-likelihood per image in nats at variance s2 = sigma_sq(MSE):
    D/2 log(2 pi s2) + D MSE / (2 s2), which is D/2 (log(2 pi MSE) + 1) above the floor."""
    s2 = sigma_sq(m)
    return float(0.5 * pixels * (np.log(2.0 * np.pi * s2) + m / s2))


def sigma_recon_and_grad(x, x_hat, reducer=None):
    """(MSE, dL/dx_hat) of the sigma-VAE reconstruction L = D/2 log(2 pi s2) + S / (2 N s2), where
    S = sum (x_hat - x)^2 over the batch of N images, s2 = sigma_sq(S / (N D)). s2 is at its
    optimum (or a constant under the floor), so dL/ds2 = 0 and dL/dx_hat = (x_hat - x) / (N s2).
    Two passes of the mse_and_grad kernel: the sum first (scale 0), then the gradient. `reducer`
    (data parallelism) sums S and the element count over the ranks first, so every rank uses the
    global batch's s2 and its own N: the ranks' mean gradient is then that of the global loss."""
    sq = K.zeros((1,), np.float64)
    dx_hat = K.empty(x.shape, x.dtype)
    K.mse_and_grad(sq, dx_hat, x_hat, x, 0.0)
    total = np.array([float(K.to_host(sq)[0]), float(x.size)])
    if reducer is not None:
        reducer(total)
    m = float(total[0] / total[1])
    K.mse_and_grad(sq, dx_hat, x_hat, x, 1.0 / (x.shape[0] * sigma_sq(m)))
    return m, dx_hat


def mse(x, x_hat):
    """Mean squared error over every element (accumulated in float64 on the CPU)."""
    return mse_and_grad(x, x_hat, 0.0)[0]


def psnr(mse_value):
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    return float(10.0 * np.log10(1.0 / max(mse_value, 1e-12)))


def terms(m, kl, beta, recon="mse", pixels=None):
    """The reported numbers from MSE and KL: total, reconstruction, kl, mse, psnr. recon "mse":
    reconstruction = beta * MSE (the seed's units); "sigma": sigma_nll(MSE, pixels) in nats per
    image (beta unused). total = reconstruction + KL: a KL warm-up weight only scales gradients."""
    rec = sigma_nll(m, pixels) if recon == "sigma" else beta * m
    return {"total": rec + kl, "reconstruction": rec, "kl": kl, "mse": m, "psnr": psnr(m)}


def config_terms(m, kl, config):
    """terms() with the objective a VAEConfig names (its recon, beta and pixels per image)."""
    return terms(m, kl, config.beta, config.recon, config.pixels)


def loss_terms(x, x_hat, z_mean, z_log_var, beta, recon="mse"):
    """The reported numbers of a batch (pixels per image from x's shape)."""
    return terms(mse(x, x_hat), kl_divergence(z_mean, z_log_var), beta, recon, x.size // x.shape[0])


def reconstruction_grad(x, x_hat, beta):
    """d(beta * MSE)/d x_hat = 2 * beta * (x_hat - x) / size."""
    return mse_and_grad(x, x_hat, beta)[1]


def latent_grads(dz, z_mean, z_log_var, eps, sigma, kl_weight=1.0):
    """Gradients of reconstruction + kl_weight * KL w.r.t. mu and log sigma^2, given dL/dz from the decoder."""
    d_mean, d_logvar = K.empty(dz.shape, dz.dtype), K.empty(dz.shape, dz.dtype)
    K.latent_grads(d_mean, d_logvar, dz, z_mean, z_log_var, eps, sigma, *LOGVAR_RANGE, kl_weight)
    return d_mean, d_logvar
