"""The evaluation passes over a model in inference mode, batch by batch: the chosen images encoded
and decoded twice (z sampled with seeded eps as in training, and z = mu), then samples decoded from
codes z (by default z ~ N(0, I)). Loss terms come from scratchvae.losses; per-image measures are
summed as they go, and a few images and latent codes are kept for the pictures.
"""

import numpy as np

from scratchvae import losses
from scratchvae.evaluation import pixels

# default_rng([seed, stream]): eps, the samples' z and the floor's training photographs never share draws
EPS_STREAM, SAMPLE_STREAM, FLOOR_STREAM = 1, 2, 3
SHOWN_RECONSTRUCTIONS, SHOWN_SAMPLES, LATENT_DIMS = 8, 64, 8
MODES = ("z_sampled", "z_mean")


def _batches(n, batch_size):
    return [(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]


def grid_period(config):
    """The period of the decoder's upsampling grid, 2**blocks pixels, or None where the images are too
    small to hold two periods (then the grid measure is left out)."""
    period = 2 ** config.blocks
    return period if config.image_size >= 2 * period else None


def _grid_sum(x, period):
    return float(pixels.grid_peak_ratio(x, period).sum()) if period else 0.0


def _no_bar(*args, **kwargs):
    class _Bar:
        def update(self, k):
            pass

        def close(self):
            pass
    return _Bar()


def reconstructions(vae, read, n, batch_size, seed, features=None, bar=_no_bar):
    """Measures of the reconstructions of images read(start, stop) -> float32 (B, S, S, 3), start < n.

    Returns {"z_sampled": terms, "z_mean": terms} (terms: total, reconstruction, kl, mse, psnr, ssim),
    "real": per-image blur, checkerboard and grid means of the originals, "shown": the first images and
    their reconstructions, "latents": z_mean of the first LATENT_DIMS dimensions (n, k), and
    "features" and "features_z_mean": the feature vectors of the originals and of their
    reconstructions from z = mu (or None).
    """
    rng = np.random.default_rng([seed, EPS_STREAM])
    with_ssim = vae.config.image_size >= pixels.SSIM_WINDOW
    period = grid_period(vae.config)
    sums = {"kl": 0.0, "blur": 0.0, "checkerboard": 0.0, "grid": 0.0,
            **{f"{m}_{k}": 0.0 for m in MODES for k in ("sq", "ssim")}}
    shown = {"original": [], "z_mean": [], "z_sampled": []}
    latents, feats, feats_rec = [], [], []
    progress = bar(total=n, desc="reconstructing", unit="img")
    for start, stop in _batches(n, batch_size):
        x = read(start, stop)
        b = len(x)
        z_mean, z_log_var = vae.encode(x, training=False)
        eps = rng.standard_normal(z_mean.shape, dtype=np.float32)
        z, _ = losses.reparameterize(z_mean, z_log_var, eps)
        sums["kl"] += losses.kl_divergence(z_mean, z_log_var) * b
        for mode, code in (("z_sampled", z), ("z_mean", z_mean)):
            x_hat = np.asarray(vae.decode(code, training=False))
            sums[f"{mode}_sq"] += losses.mse(x, x_hat) * b
            if with_ssim:
                sums[f"{mode}_ssim"] += float(pixels.ssim(x, x_hat).sum())
            if start < SHOWN_RECONSTRUCTIONS:
                shown[mode].append(x_hat[:SHOWN_RECONSTRUCTIONS - start])
            if features is not None and mode == "z_mean":
                feats_rec.append(features(x_hat))
        if start < SHOWN_RECONSTRUCTIONS:
            shown["original"].append(x[:SHOWN_RECONSTRUCTIONS - start])
        sums["blur"] += float(pixels.laplacian_variance(x).sum())
        sums["checkerboard"] += float(pixels.nyquist_share(x).sum())
        sums["grid"] += _grid_sum(x, period)
        latents.append(np.array(z_mean[:, :LATENT_DIMS], np.float64))
        if features is not None:
            feats.append(features(x))
        progress.update(b)
    progress.close()
    result = {}
    for mode in MODES:
        terms = losses.config_terms(sums[f"{mode}_sq"] / n, sums["kl"] / n, vae.config)
        terms["ssim"] = sums[f"{mode}_ssim"] / n if with_ssim else None
        result[mode] = terms
    result["real"] = {"blur": sums["blur"] / n, "checkerboard": sums["checkerboard"] / n,
                      "grid": sums["grid"] / n if period else None}
    result["shown"] = {k: np.concatenate(v) for k, v in shown.items()}
    result["latents"] = np.concatenate(latents)
    result["features"] = np.concatenate(feats) if features is not None else None
    result["features_z_mean"] = np.concatenate(feats_rec) if features is not None else None
    return result


def normal_codes(n, z_dim, seed, temperature=1.0):
    """n codes z ~ N(0, T^2 I), float32 (n, z_dim), from default_rng([seed, SAMPLE_STREAM]). Drawn at
    once or batch by batch, the Generator gives the same values."""
    z = np.random.default_rng([seed, SAMPLE_STREAM]).standard_normal((n, z_dim), dtype=np.float32)
    return z if temperature == 1.0 else z * np.float32(temperature)


def samples(vae, z, batch_size, features=None, bar=_no_bar):
    """Measures of the samples decoded from codes z (n, z_dim): mean blur, checkerboard and grid per
    image, the first SHOWN_SAMPLES images, and their features (or None)."""
    n = len(z)
    period = grid_period(vae.config)
    blur = checker = grid = 0.0
    shown, feats = [], []
    progress = bar(total=n, desc="sampling", unit="img")
    for start, stop in _batches(n, batch_size):
        x = np.asarray(vae.decode(np.ascontiguousarray(z[start:stop], dtype=np.float32), training=False))
        blur += float(pixels.laplacian_variance(x).sum())
        checker += float(pixels.nyquist_share(x).sum())
        grid += _grid_sum(x, period)
        if start < SHOWN_SAMPLES:
            shown.append(x[:SHOWN_SAMPLES - start])
        if features is not None:
            feats.append(features(x))
        progress.update(stop - start)
    progress.close()
    return {"blur": blur / n, "checkerboard": checker / n, "grid": grid / n if period else None, "shown": np.concatenate(shown),
            "features": np.concatenate(feats) if features is not None else None}
