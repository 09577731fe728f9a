"""Every random draw of a run, each a pure function of (seed, epoch, step): the data order, the
reparameterisation noise of a training step and of a held-out batch, and the latents of the
sample grid. So a resumed run repeats an uninterrupted one exactly.
"""

import numpy as np

HELD_OUT = 1 << 20  # held-out batches draw as steps 2^20 + their first row, clear of training steps
ORDER = 1 << 30  # the data order of an epoch draws as this step
PICTURES = 424242  # the sample grid's latents: the same faces after every epoch


def step_noise(seed, epoch, step, shape):
    """The reparameterisation noise of one step: a pure function of (seed, epoch, step)."""
    return np.random.default_rng([seed, epoch, step]).standard_normal(shape, dtype=np.float32)


def held_out_noise(seed, epoch, start, shape):
    """The noise of the held-out batch that starts at row `start` of the held-out set."""
    return step_noise(seed, epoch, HELD_OUT + start, shape)


def epoch_order(seed, epoch, train_idx):
    """The training images of an epoch in the order its batches take them."""
    return np.random.default_rng([seed, epoch, ORDER]).permutation(train_idx)


def picture_latents(seed, n, z_dim):
    """(n, z_dim) standard-normal latents for the sample grid."""
    return np.random.default_rng([seed, PICTURES]).standard_normal((n, z_dim), dtype=np.float32)
