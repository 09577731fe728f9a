"""Where one training step of the seed model spends its time: each layer's forward and backward, and
Adam, timed in place (wall-clock around each call) over a few steps after two warm-up steps.

    python benches/profile_step.py [--batch 32] [--steps 6] [--threads N] [--keep-blas-override]

Run it as `python benches/profile_step.py` (scratchvae is imported before NumPy, as the CLI does).
As the side-by-side benches do, it runs without an OpenBLAS kernel override it was launched with
(it starts itself again without fair.BLAS_OVERRIDE_VARS), unless --keep-blas-override.
The per-layer times add up to the step; read them as shares, the machine being shared and noisy.
"""

import fair  # noqa: I001

fair.run_without_blas_override()

import scratchvae  # noqa: F401,E402  before NumPy: its process settings apply before NumPy loads OpenBLAS

import argparse
import collections
import time

import numpy as np

from scratchvae.kernels import threads
from scratchvae.model import VAE, VAEConfig
from scratchvae.optim import Adam


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    fair.add_profile_options(p)
    args = p.parse_args(argv)
    threads.set_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch, 128, 128, 3)).astype(np.float32)
    vae, opt = VAE(VAEConfig()), Adam()
    spent = collections.defaultdict(float)

    def timed(key, fn):
        def run(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            spent[key] += time.perf_counter() - t
            return out
        return run

    for name, layer in vae.named_layers():
        layer.forward = timed((name, "forward"), layer.forward)
        layer.backward = timed((name, "backward"), layer.backward)
    step = timed(("adam", "step"), opt.step)
    for i in range(2 + args.steps):
        if i == 2:
            spent.clear()
            t0 = time.perf_counter()
        vae.forward_backward(x, rng.standard_normal((args.batch, 200)).astype(np.float32))
        step(vae.params(), vae.grads())
    per_step = (time.perf_counter() - t0) / args.steps
    print(f"{threads.describe()}; batch {args.batch}, mean of {args.steps} steps after 2 warm-up")
    print(f"step {per_step * 1000:.0f} ms = {args.batch / per_step:.1f} images/s; the calls below add up to "
          f"{sum(spent.values()) / args.steps * 1000:.0f} ms\n")
    rows = collections.defaultdict(dict)
    for (name, part), seconds in spent.items():
        rows[name][part] = seconds / args.steps * 1000
    print(f"{'layer':24s} {'forward ms':>11s} {'backward ms':>12s} {'share':>6s}")
    for name, d in sorted(rows.items(), key=lambda kv: -sum(kv[1].values())):
        fwd, bwd = d.get("forward", d.get("step", 0.0)), d.get("backward", 0.0)
        print(f"{name:24s} {fwd:11.1f} {bwd:12.1f} {(fwd + bwd) / per_step / 10:5.1f}%")


if __name__ == "__main__":
    main()
