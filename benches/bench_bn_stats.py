"""What the precise BatchNorm statistics cost on the built-in job: measuring them over all of its
training images (one epoch's batches, the old default) and over the default's quarter of them,
against the training steps of one epoch; all in one process, alternating, the median of three rounds.

    python -m scratchvae.train --out runs/first          # any built-in run's checkpoint
    python benches/bench_bn_stats.py runs/first/checkpoint.npz
"""

import argparse
import time

import numpy as np

from scratchvae.data import split_indices
from scratchvae.data.prefetch import ImageReader
from scratchvae.data.synthetic import synthetic_faces
from scratchvae.kernels import threads
from scratchvae.model import VAE
from scratchvae.optim import Adam
from scratchvae.training import batchnorm, datasets, settings

BATCH = settings.SYNTHETIC_BATCH
# the built-in job's split (split_indices, as training makes it): its training images, steps per epoch
TRAIN, HELD_OUT = (len(i) for i in split_indices(datasets.SYNTHETIC_COUNT, settings.SYNTHETIC_VAL_FRACTION, BATCH))
STEPS = TRAIN // BATCH


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint of the built-in job (64 px)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    threads.set_threads(args.threads)
    vae = VAE.load(args.checkpoint)
    reader = ImageReader(synthetic_faces(datasets.SYNTHETIC_COUNT, vae.config.image_size, seed=0))
    train_idx = np.arange(HELD_OUT, datasets.SYNTHETIC_COUNT)
    opt, rng = Adam(lr=1e-5), np.random.default_rng(0)

    def steps(n):
        for _ in range(n):
            idx = np.sort(rng.choice(train_idx, BATCH, replace=False))
            vae.forward_backward(reader.read(idx), rng.standard_normal((BATCH, vae.config.z_dim), dtype=np.float32))
            opt.step(vae.params(), vae.grads())

    steps(2)  # warm-up: compile and allocate
    batchnorm.measure(vae, reader, train_idx, 0, 0, BATCH, 2)
    epoch, stats = [], {STEPS: [], batchnorm.default_batches(BATCH, TRAIN): []}
    for r in range(args.rounds):
        t = time.perf_counter()
        steps(20)
        epoch.append((time.perf_counter() - t) / 20 * STEPS)
        for n in stats:
            t = time.perf_counter()
            batchnorm.measure(vae, reader, train_idx, 0, r, BATCH, n)
            stats[n].append(time.perf_counter() - t)
    ep = float(np.median(epoch))
    print(f"epoch of {STEPS} steps (from 20 timed per round): {ep:.1f} s (rounds {', '.join(f'{v:.1f}' for v in epoch)})")
    for n, times in stats.items():
        bn = float(np.median(times))
        print(f"statistics over {n} batches ({n * BATCH} images): {bn:.1f} s (rounds "
              f"{', '.join(f'{v:.1f}' for v in times)}); share of epoch + statistics {bn / (ep + bn):.1%}")


if __name__ == "__main__":
    main()
