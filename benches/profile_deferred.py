"""The seed decoder's last BatchNorm + LeakyReLU and the 3-channel transposed convolution after it,
with the BatchNorm's output written out and with it deferred (layers/norm.DeferredNorm: the
convolution normalises as it reads), rounds alternating in one process:

    python benches/profile_deferred.py [--batch 32] [--size 128] [--rounds 7] [--threads N]

Each round runs the pair's training forward (BatchNorm, then convolution) and backward
(convolution, then BatchNorm) on the same input and output gradient. It prints the medians and
ranges of both, their ratio, the largest difference between the two ways' input and parameter
gradients relative to their largest value, and the activation memory the BatchNorm holds. Run it
from another tree (or with PYTHONPATH=TREE) to time that tree's layers; it drops the launch's
OpenBLAS kernel override unless --keep-blas-override, as the other benches do.
"""

import fair  # noqa: I001

fair.run_without_blas_override()

import scratchvae  # noqa: F401,E402  before NumPy: its process settings apply before NumPy loads OpenBLAS

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from scratchvae.kernels import threads  # noqa: E402
from scratchvae.kernels.workspace import Workspace  # noqa: E402
from scratchvae.layers import BatchNormLeakyReLU, Conv2DTranspose  # noqa: E402
from scratchvae.layers.norm import DeferredNorm  # noqa: E402


def pair(deferred, channels, rng_seed):
    """(BatchNorm + LeakyReLU, Conv2DTranspose to 3 channels) as the model builds the decoder's last
    two (the convolution writes its input gradient over its input where nothing is deferred)."""
    handoff = DeferredNorm(channels, np.float32) if deferred else None
    ws = Workspace()
    bn = BatchNormLeakyReLU(channels, 0.3, name="bn_4", workspace=ws, deferred=handoff)
    conv = Conv2DTranspose(channels, 3, 3, 1, rng=np.random.default_rng(rng_seed), name="conv_t_out", workspace=ws,
                           overwrite_input=True, deferred=handoff)
    bn.params["gamma"][...] = np.linspace(0.5, 1.5, channels)
    bn.params["beta"][...] = np.linspace(-0.2, 0.2, channels)
    return bn, conv


def held_bytes(layer):
    """Bytes of the buffers a layer keeps across calls (its outputs among them)."""
    return sum(b.nbytes for b in layer._buffers._buffers.values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=128, help="height and width of the maps")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    fair.add_profile_options(p)
    args = p.parse_args(argv)
    threads.set_threads(args.threads)
    rng = np.random.default_rng(0)
    n, s, c = args.batch, args.size, args.channels
    x = rng.standard_normal((n, s, s, c)).astype(np.float32)
    dy = rng.standard_normal((n, s, s, 3)).astype(np.float32)
    layers = {False: pair(False, c, 1), True: pair(True, c, 1)}
    times = {m: {"forward": [], "backward": []} for m in layers}
    grads = {}

    def step(mode):
        bn, conv = layers[mode]
        t0 = time.perf_counter()
        conv.forward(bn.forward(x, True), True)
        t1 = time.perf_counter()
        dx = bn.backward(conv.backward(dy.copy()))
        t2 = time.perf_counter()
        return (t1 - t0) * 1000, (t2 - t1) * 1000, [dx, bn.grads["gamma"], bn.grads["beta"], conv.grads["kernel"]]

    for m in layers:  # warm-up: compile, grow the buffers
        step(m)
    for _ in range(args.rounds):
        for m in layers:
            fwd, bwd, out = step(m)
            times[m]["forward"].append(fwd)
            times[m]["backward"].append(bwd)
            grads[m] = [a.copy() for a in out]
    print(f"{threads.describe()}; batch {n}, {s}x{s}x{c} -> {s}x{s}x3; median (range) of {args.rounds} "
          f"alternating rounds, ms")
    print(f"{'pass':10s} {'written out':>22s}  {'deferred':>22s}  {'ratio':>6s}")
    for part in ("forward", "backward"):
        cells = [f"{np.median(times[m][part]):7.2f} ({min(times[m][part]):.2f}-{max(times[m][part]):.2f})"
                 for m in layers]
        ratio = np.median(times[False][part]) / np.median(times[True][part])
        print(f"{part:10s} {cells[0]:>22s}  {cells[1]:>22s}  {ratio:5.2f}x")
    total = [np.median(np.add(times[m]["forward"], times[m]["backward"])) for m in layers]
    print(f"{'both':10s} {total[0]:22.2f}  {total[1]:22.2f}  {total[0] / total[1]:5.2f}x")
    names = ("dx", "bn gamma", "bn beta", "conv kernel")
    diffs = ", ".join(f"{name} {float(np.abs(a - b).max() / np.abs(a).max()):.1e}"
                      for name, a, b in zip(names, grads[False], grads[True]))
    print(f"largest difference relative to the largest value: {diffs}")
    print(f"BatchNorm buffers held: written out {held_bytes(layers[False][0]) / 2 ** 20:.0f} MB, "
          f"deferred {held_bytes(layers[True][0]) / 2 ** 20:.0f} MB")


if __name__ == "__main__":
    main()
