"""What a run shows after each epoch: the held-out loss terms, the pictures (reconstructions,
samples, loss curves) and metrics.csv, one row per epoch; after the last, faces from the fitted prior.

Loss terms come from scratchvae.losses; under MPI the held-out batches are shared out over the
ranks and their sums combined. Pictures and metrics are written by rank 0 only.
"""

import csv
import io
import os

import numpy as np

from scratchvae import images, losses
from scratchvae import kernels as K
from scratchvae.latent import mixture
from scratchvae.run import atomic, distributed
from scratchvae.training import batchnorm, draws

N_SAMPLES, N_RECON = 64, 8
AVERAGED = ("total", "reconstruction", "kl", "mse")  # PSNR is not averaged: it is the mean MSE's
TERMS = (*AVERAGED, "psnr")  # the order of losses.terms
# metrics.csv's columns for the life of a run: a resumed history comes back from the checkpoint's
# JSON with its keys sorted, and scripts read the file by position.
# train_inference_mse comes last, so the older columns keep their places.
COLUMNS = ("epoch", "step", "kl_weight", *(f"train_{k}" for k in TERMS), *(f"val_{k}" for k in TERMS),
           "images_per_s", "seconds", "train_inference_mse")


def held_out(vae, reader, val_idx, s, epoch, comm=None):
    """Inference-mode loss terms on the held-out images, z sampled as in training: each batch's terms
    (from losses) weighted by its size, PSNR from the mean MSE (and with recon "sigma" the total and
    reconstruction too: one variance for the whole set). Under MPI each rank takes every K-th batch
    and the sums are shared."""
    comm = comm or distributed.Single()
    sums = np.zeros(len(AVERAGED) + 1)  # the terms times their image counts, then the count
    for j, start in enumerate(range(0, len(val_idx), s.batch_size)):
        if j % comm.size != comm.rank:
            continue
        idx = val_idx[start:start + s.batch_size]
        eps = draws.held_out_noise(s.seed, epoch, start, (len(idx), vae.config.z_dim))
        terms = vae.evaluate(reader.read(idx), eps, training=False)
        sums += [*(terms[k] * len(idx) for k in AVERAGED), len(idx)]
    comm.sum_(sums)
    result = {k: float(sums[i] / sums[-1]) for i, k in enumerate(AVERAGED)}
    if vae.config.recon == "sigma":  # one variance, the held-out MSE, for all of them (as evaluate uses)
        return losses.config_terms(result["mse"], result["kl"], vae.config)
    return {**result, "psnr": losses.psnr(result["mse"])}


def training_alike(train_idx, n_held_out):
    """The training images measured as the held-out ones are, spread evenly over the training set: as
    many as the BatchNorm statistics take by default (about 2,000, at most a quarter of them), and at
    least as many as are held out. A set as small as a small held-out one would add its own noise."""
    n = min(len(train_idx), max(n_held_out, batchnorm.default_images(len(train_idx))))
    return np.asarray(train_idx)[np.arange(n) * len(train_idx) // max(n, 1)]


def metrics_row(epoch, step, train, val, images, seconds, kl_weight=None, train_inference_mse=None):
    """One line of metrics.csv (and of the checkpoint's history): the epoch's mean training terms,
    its held-out terms and its speed; with a KL warm-up, the epoch's mean KL weight (`kl_weight`).
    train_* are averaged over the epoch's steps in training mode (batch statistics, the weights
    still moving), so they do not compare with val_*; train_inference_mse is the held-out
    measurement repeated on training images (training_alike): inference mode, the same z
    draws, the end-of-epoch weights. Held-out MSE far above it means over-fitting."""
    weight = {} if kl_weight is None else {"kl_weight": round(kl_weight, 6)}
    alike = {} if train_inference_mse is None else {"train_inference_mse": round(train_inference_mse, 6)}
    return {"epoch": epoch, "step": step, **weight,
            **{f"train_{k}": round(v, 6) for k, v in train.items()},
            **{f"val_{k}": round(v, 6) for k, v in val.items()},
            "images_per_s": round(images / seconds, 2), "seconds": round(seconds, 1), **alike}


def save_pictures(vae, reader, val_idx, s, history, out):
    """reconstructions.png, samples.png, loss.png and metrics.csv in `out`."""
    shown = reader.read(val_idx[:N_RECON])
    z_mean, _ = vae.encode(shown)
    images.save_rows(os.path.join(out, "reconstructions.png"), [shown, K.to_host(vae.decode(z_mean))],
                     labels=["held-out", "reconstructed"])
    save_samples(os.path.join(out, "samples.png"), vae, draws.picture_latents(s.seed, N_SAMPLES, vae.config.z_dim))
    epochs = [h["epoch"] for h in history]
    images.plot_curves(os.path.join(out, "loss.png"),
                       {"train total": [h["train_total"] for h in history],
                        "held-out total": [h["val_total"] for h in history],
                        "held-out reconstruction": [h["val_reconstruction"] for h in history],
                        "held-out KL": [h["val_kl"] for h in history]},
                       title="loss per epoch", log_y=vae.config.recon == "mse", x=epochs)
    write_metrics(os.path.join(out, "metrics.csv"), history)


def save_samples(path, vae, z):
    """The grid of faces decoded from latents z, 8 to a row: samples.png and samples-prior.png."""
    images.save_grid(path, K.to_host(vae.decode(z)), ncols=8)


def save_prior_samples(vae, fitted, s, out):
    """samples-prior.png: the grid of samples.png, its z drawn from the fitted prior by
    scratchvae.latent.mixture.draw with the run's seed (the samplers repeat it from the same seed)."""
    z = mixture.draw(fitted.weights, fitted.means, fitted.cholesky, s.seed, N_SAMPLES)
    save_samples(os.path.join(out, "samples-prior.png"), vae, z)


def write_metrics(path, history):
    """metrics.csv: one row per epoch, in COLUMNS' order (any other key after them, sorted)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[c for c in COLUMNS if c in history[0]]
                            + sorted(set(history[0]) - set(COLUMNS)))
    writer.writeheader()
    writer.writerows(history)
    atomic.write_bytes(path, buf.getvalue().encode())


def format_terms(t):
    return f"total {t['total']:.1f} rec {t['reconstruction']:.1f} kl {t['kl']:.1f} mse {t['mse']:.4f} " \
           f"psnr {t['psnr']:.1f}"
