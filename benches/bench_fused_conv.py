"""The encoder's inference plan (Conv2D + BatchNorm tile by tile, scratchvae/inference.FusedConv)
against the layer-by-layer inference forward of the same layers, alternately in one process.

    python benches/bench_fused_conv.py [--batch 64] [--rounds 7] [--threads N]
"""

import argparse
import os
import time

import numpy as np

from scratchvae import threads
from scratchvae.model import VAE


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args(argv)
    threads.set_threads(args.threads)
    vae = VAE()  # the seed model, 128x128; speed does not depend on the values
    x = np.random.default_rng(0).random((args.batch, 128, 128, 3), dtype=np.float32)
    runs = {"plan (tiled Conv2D + BatchNorm)": lambda: vae.trunk_plan.run(x),
            "layer by layer": lambda: vae.trunk.forward(x, training=False)}
    outs = {k: np.array(f()) for k, f in runs.items()}  # warm-up, and the two agree
    diff = float(np.max(np.abs(np.subtract(*outs.values()))))
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    print(f"encoder trunk, batch {args.batch}, 128x128, {threads.describe()}, {args.rounds} alternating rounds; "
          f"max |diff| {diff:.1e}")
    for k, v in times.items():
        print(f"{k:32s} median {1e3 * np.median(v):7.1f} ms  range {1e3 * min(v):.1f}-{1e3 * max(v):.1f}")
    a, b = (np.median(v) for v in times.values())
    print(f"layer by layer / plan: {b / a:.2f}x")


if __name__ == "__main__":
    main()
