"""Single calls the speed work measures, in one process: each step of a batch-1 decode, the
encoder's first step at batch 64, the last layer's training forward + backward and the training
Sigmoid at batch 32, BatchNorm + LeakyReLU's training backward on the 64x64 and 128x128 maps, the
decoder Dense's weight gradient, an Adam step on the seed model, and folding a 128x128
transposed-convolution kernel against comparing it.

    python benches/profile_calls.py [--repeats 30] [--threads N] [--keep-blas-override]

Medians of `repeats` calls after warm-up calls. Run it from another tree with that tree's code
(PYTHONPATH=TREE python benches/profile_calls.py) to compare commits; it uses only the package's
own entry points (the VAE and its decoder plan, the kernels, the layers, Adam). Like the benches' children it runs without an OpenBLAS kernel
override it was launched with, unless --keep-blas-override. Absolute times move with the machine.
"""

import fair  # noqa: I001

fair.run_without_blas_override()

import scratchvae  # noqa: F401,E402  before NumPy: its process settings apply before NumPy loads OpenBLAS

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from scratchvae import kernels as K  # noqa: E402
from scratchvae.kernels import threads  # noqa: E402
from scratchvae.layers import Conv2DTranspose  # noqa: E402
from scratchvae.model import VAE, VAEConfig  # noqa: E402
from scratchvae.optim import Adam  # noqa: E402


def median_ms(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    fair.add_profile_options(p)
    args = p.parse_args(argv)
    threads.set_threads(args.threads)
    rng = np.random.default_rng(0)
    vae = VAE(VAEConfig())
    print(f"{threads.describe()}; median of {args.repeats} calls")

    z = rng.standard_normal((1, 200)).astype(np.float32)
    inputs, h = [], z
    for step in vae.decoder_plan.steps:  # each step's input, for timing the steps one by one
        inputs.append(h)
        h = np.array(step(h))
    print(f"decode, batch 1: {median_ms(lambda: vae.decode(z), args.repeats):.2f} ms a call")
    for step, x in zip(vae.decoder_plan.steps, inputs):
        print(f"  {step.describe():24s} {median_ms(lambda: step(x), args.repeats):.3f} ms")

    images = rng.uniform(0, 1, (64, 128, 128, 3)).astype(np.float32)
    first = vae.trunk_plan.steps[0]
    ms = median_ms(lambda: first(images), args.repeats)
    print(f"encoder's first step ({first.describe()}), batch 64: {ms:.2f} ms")

    last = Conv2DTranspose(128, 3, 3, 1, rng=rng)
    x = rng.standard_normal((32, 128, 128, 128)).astype(np.float32)
    dy = rng.standard_normal((32, 128, 128, 3)).astype(np.float32)

    def forward_backward():
        last.forward(x, True)
        last.backward(dy.copy())
    print(f"last layer (128 -> 3 transposed convolution), batch 32, training forward + backward: "
          f"{median_ms(forward_backward, max(5, args.repeats // 3)):.1f} ms")

    pre = rng.standard_normal((32, 128, 128, 3)).astype(np.float32)
    out = np.empty_like(pre)
    ms = median_ms(lambda: K.sigmoid_forward(out, pre), args.repeats)
    print(f"Sigmoid forward, batch 32 (128x128x3): {ms:.2f} ms")

    for size in (64, 128):  # BatchNorm + LeakyReLU's training backward on the seed's larger maps
        m = 32 * size * size
        xb, gb = (rng.standard_normal((m, 128)).astype(np.float32) for _ in range(2))
        mean, invstd = xb.mean(axis=0), (1 / np.sqrt(xb.var(axis=0) + 1e-3)).astype(np.float32)
        gamma, beta = np.ones(128, np.float32), np.zeros(128, np.float32)
        dxb, dgamma, dbeta = np.empty_like(xb), np.empty(128, np.float32), np.empty(128, np.float32)
        ms = median_ms(lambda: K.bn_act_backward(dxb, dgamma, dbeta, gb, xb, mean, invstd, gamma, beta, 0.3),
                       max(5, args.repeats // 3))
        print(f"BatchNorm + LeakyReLU backward, batch 32, {size}x{size}x128: {ms:.2f} ms")

    za, dz = rng.standard_normal((32, 200)).astype(np.float32), rng.standard_normal((32, 8192)).astype(np.float32)
    dk = np.empty((200, 8192), np.float32)
    ms = median_ms(lambda: K.gemm(dk, za, dz, trans_a=True), args.repeats)
    print(f"the decoder Dense's weight gradient (200x32 @ 32x8192, gemm trans_a): {ms:.2f} ms")

    opt = Adam()
    params, grads = vae.params(), vae.grads()
    ms = median_ms(lambda: opt.step(params, grads), args.repeats)
    print(f"Adam step on the seed model's parameters: {ms:.2f} ms")

    kernel = rng.standard_normal((3, 3, 128, 128)).astype(np.float32)
    ones, zeros = np.ones(128, np.float32), np.zeros(128, np.float32)
    w2, b2 = np.empty((128, 1152), np.float32), np.empty(128, np.float32)
    copy = kernel.copy()
    fold = median_ms(lambda: K.fold_adjoint_weights(w2, b2, kernel, zeros, ones, zeros), args.repeats)
    compare = median_ms(lambda: np.array_equal(kernel, copy), args.repeats)
    print(f"folding a 3x3x128x128 kernel: {fold * 1000:.0f} us; comparing it with a copy: {compare * 1000:.0f} us")


if __name__ == "__main__":
    main()
