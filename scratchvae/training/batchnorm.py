"""Precise BatchNorm statistics for a run: after each epoch, before the held-out evaluation and the
pictures, every BatchNorm's moving statistics become the exact mean and variance over a pass of
training batches (Keras' moving averages, momentum 0.99, lag behind the weights in short runs).
"""

import math

import numpy as np

IMAGES = 2000  # the default pass measures about this many training images,
SHARE = 4  # but at most one in SHARE of them: a training-mode forward costs about a third of a step,
# so the pass stays under a tenth of an epoch (measuring every training image instead would cost about
# a third of an epoch; the statistics of a few hundred images per channel are as exact for inference)
SETTLE_STEPS = 3  # moving averages settle after about this many times 1 / (1 - momentum) steps


def default_images(train_images=None):
    """About IMAGES training images, and at most train_images / SHARE of them."""
    return IMAGES if train_images is None else min(IMAGES, train_images // SHARE)


def default_batches(batch_size, train_images=None):
    """--bn-batches when it is not given: enough batches for default_images() (at least one batch)."""
    return max(1, math.ceil(default_images(train_images) / batch_size))


def measure(vae, reader, train_idx, seed, epoch, batch_size, n_batches, mine=slice(None), progress=False):
    """Training-mode forwards over `n_batches` batches of the training images (at most one epoch's
    worth) and every BatchNorm's statistics replaced by theirs; returns the images measured. The
    batches and the decoder's noise derive from (seed, epoch) alone, so a resumed run repeats them;
    under MPI each rank takes its rows `mine` of every global batch and the sums are global."""
    n_batches = min(n_batches, len(train_idx) // batch_size)
    if n_batches < 1:
        return 0
    order = np.random.default_rng([seed, epoch, 3 << 28]).permutation(train_idx)
    z_dim = vae.config.z_dim

    def batches():
        from tqdm import tqdm
        for b in tqdm(range(n_batches), desc="BatchNorm statistics", unit="batch", disable=not progress,
                      leave=False, dynamic_ncols=True):
            idx = np.sort(order[b * batch_size:(b + 1) * batch_size])[mine]
            eps = np.random.default_rng([seed, epoch, 3 << 28, b]).standard_normal((batch_size, z_dim),
                                                                                  dtype=np.float32)[mine]
            yield reader.read(idx), eps
    vae.measure_batchnorm(batches())
    return n_batches * batch_size


def unsettled_warning(n_batches, total_steps, momentum):
    """A line for the console when Keras' moving averages alone are used and the run is too short
    for them to settle (None otherwise)."""
    settle = SETTLE_STEPS / (1.0 - momentum)
    if n_batches == 0 and total_steps < settle:
        return (f"note: --bn-batches 0 keeps Keras' moving averages, and {total_steps} steps are too few for them "
                f"to settle (about {settle:.0f} at momentum {momentum:g}): held-out results and samples will be "
                f"worse than training ones; drop --bn-batches 0 to measure exact statistics after each epoch")
    return None
