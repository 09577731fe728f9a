"""The seed's VAE objective and its manual gradients: total = beta * MSE + KL.

MSE is the mean of (x - x_hat)^2 over batch, pixels and channels; KL is summed over the latent
dimensions and averaged over the batch. log sigma^2 is clamped to LOGVAR_RANGE wherever it is
exponentiated, in sampling and KL alike, so one bad batch cannot overflow.
"""

import numpy as np

LOGVAR_RANGE = (-30.0, 20.0)  # exp(0.5 * 20) ~ 2.2e4: wide, but finite in float32


def clamp_logvar(z_log_var):
    """(clamped log-variance, mask of entries inside the range: where gradients flow)."""
    lo, hi = LOGVAR_RANGE
    clamped = np.clip(z_log_var, lo, hi)
    return clamped, (z_log_var >= lo) & (z_log_var <= hi)


def reparameterize(z_mean, z_log_var, eps):
    """z = mu + exp(0.5 * log sigma^2) * eps; returns z and sigma (for the backward)."""
    clamped, _ = clamp_logvar(z_log_var)
    sigma = np.exp(clamped * z_mean.dtype.type(0.5))
    return z_mean + sigma * eps, sigma


def kl_divergence(z_mean, z_log_var):
    """-1/2 sum_d (1 + log s^2 - mu^2 - s^2), averaged over the batch (nats per image)."""
    lv, _ = clamp_logvar(z_log_var)
    per_image = -0.5 * np.sum(1.0 + lv - np.square(z_mean, dtype=np.float64) - np.exp(lv, dtype=np.float64), axis=1)
    return float(per_image.mean())


def mse(x, x_hat):
    """Mean squared error over every element (accumulated in float64)."""
    d = (x_hat - x).astype(np.float64)
    return float(np.mean(d * d))


def psnr(mse_value):
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    return float(10.0 * np.log10(1.0 / max(mse_value, 1e-12)))


def loss_terms(x, x_hat, z_mean, z_log_var, beta):
    """The reported numbers: total, reconstruction (beta * MSE, the seed's units), kl, mse, psnr."""
    m = mse(x, x_hat)
    kl = kl_divergence(z_mean, z_log_var)
    return {"total": beta * m + kl, "reconstruction": beta * m, "kl": kl, "mse": m, "psnr": psnr(m)}


def reconstruction_grad(x, x_hat, beta):
    """d(beta * MSE)/d x_hat = 2 * beta * (x_hat - x) / size."""
    return (x_hat - x) * x.dtype.type(2.0 * beta / x.size)


def latent_grads(dz, z_mean, z_log_var, eps, sigma):
    """Gradients of the total loss w.r.t. mu and log sigma^2, given dL/dz from the decoder."""
    n = z_mean.shape[0]
    dt = z_mean.dtype.type
    _, inside = clamp_logvar(z_log_var)
    d_mean = dz + z_mean * dt(1.0 / n)
    # z depends on log s^2 through sigma = exp(lv / 2); KL through exp(lv): dKL/dlv = (exp(lv) - 1) / 2n.
    d_logvar = (dz * eps * sigma * dt(0.5) + (sigma * sigma - dt(1)) * dt(0.5 / n)) * inside
    return d_mean, d_logvar.astype(z_mean.dtype)
