"""GPU figures: scratchvae's numba.cuda backend against PyTorch eager on the same GPU, one run.

Training images/s (forward, backward and Adam; median of timed steps after warm-up), decoder
sampling images/s, and a check that the first training step on the GPU gives the same loss and
gradient norm as the Numba CPU kernels from the same weights. PyTorch is optional (skipped with a
note when it is not installed, or sees no GPU).

    python benches/bench_gpu.py [--batch 32] [--sample-batch 64] [--image-size 128] [--steps 10]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from scratchvae import kernels  # noqa: E402
from scratchvae.model import VAE, VAEConfig  # noqa: E402
from scratchvae.optim import Adam  # noqa: E402


def median_time(fn, warmup, steps, sync):
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def first_step(config, x, eps, backend):
    """Loss terms and gradient norm of the first step from seed-0 weights on `backend`."""
    with kernels.using(backend):
        vae = VAE(config, seed=0)
        terms = vae.forward_backward(x, eps)
        norm = Adam(1e-4).step(vae.params(), vae.grads())
    return terms, norm


def ours(config, args, rng):
    from numba import cuda
    x = rng.uniform(0, 1, (args.batch, config.image_size, config.image_size, config.channels)).astype(np.float32)
    eps = rng.standard_normal((args.batch, config.z_dim), dtype=np.float32)
    out = {}
    t0 = time.perf_counter()
    cpu_terms, cpu_norm = first_step(config, x, eps, "cpu")
    gpu_terms, gpu_norm = first_step(config, x, eps, "cuda")
    out["first step"] = (cpu_terms, cpu_norm, gpu_terms, gpu_norm, time.perf_counter() - t0)
    with kernels.using("cuda"):
        vae, opt = VAE(config, seed=0), Adam(1e-4)
        dx, deps = kernels.from_host(x), kernels.from_host(eps)

        def step():
            vae.forward_backward(dx, deps)
            opt.step(vae.params(), vae.grads())

        out["train"] = args.batch / median_time(step, args.warmup, args.steps, cuda.synchronize)
        z = kernels.from_host(rng.standard_normal((args.sample_batch, config.z_dim), dtype=np.float32))
        out["sample"] = args.sample_batch / median_time(lambda: vae.decode(z), args.warmup, args.steps,
                                                        cuda.synchronize)
    return out


def torch_rows(config, args, rng):
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "PyTorch sees no GPU"
    sys.path.insert(0, str(HERE))
    from torch_reference import TorchVAE, make_optimizer
    with kernels.using("cpu"):
        seed_vae = VAE(config, seed=0)
    rows = {}
    for label, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        model = TorchVAE(config).load_from_scratchvae(seed_vae).cuda().to(memory_format=fmt)
        model.train()
        opt = make_optimizer(model, 1e-4)
        x = torch.rand(args.batch, config.channels, config.image_size, config.image_size,
                       device="cuda").contiguous(memory_format=fmt)
        eps = torch.randn(args.batch, config.z_dim, device="cuda")

        def step():
            total, _, _ = model.loss_terms(x, eps)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()

        train = args.batch / median_time(step, args.warmup, args.steps, torch.cuda.synchronize)
        model.eval()
        z = torch.randn(args.sample_batch, config.z_dim, device="cuda")
        with torch.no_grad():
            sample = args.sample_batch / median_time(lambda: model.decode(z), args.warmup, args.steps,
                                                     torch.cuda.synchronize)
        rows[f"PyTorch {torch.__version__} eager, {label}"] = (train, sample)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--filters", type=int, default=VAEConfig.filters, help="a smaller model for a quick check")
    p.add_argument("--blocks", type=int, default=VAEConfig.blocks)
    p.add_argument("--z-dim", type=int, default=VAEConfig.z_dim)
    args = p.parse_args()

    from scratchvae import device
    ok, reason = device.check("cuda")
    if not ok:
        sys.exit(f"bench_gpu: {reason}")
    config = VAEConfig(image_size=args.image_size, filters=args.filters, blocks=args.blocks, z_dim=args.z_dim)
    rng = np.random.default_rng(0)
    print(f"GPU: {reason}; batch {args.batch} (training), {args.sample_batch} (sampling), "
          f"{args.image_size}x{args.image_size}, median of {args.steps} after {args.warmup} warm-up", flush=True)
    mine = ours(config, args, rng)
    cpu_terms, cpu_norm, gpu_terms, gpu_norm, secs = mine["first step"]
    print("first step from the same weights (CPU kernels | CUDA kernels):")
    for k in cpu_terms:
        print(f"  {k:<6} {cpu_terms[k]:.7g} | {gpu_terms[k]:.7g}  (rel. diff {abs(cpu_terms[k] - gpu_terms[k]) / max(abs(cpu_terms[k]), 1e-30):.1e})")
    print(f"  grad norm {cpu_norm:.7g} | {gpu_norm:.7g}  (rel. diff {abs(cpu_norm - gpu_norm) / cpu_norm:.1e}); "
          f"{secs:.0f} s with compilation", flush=True)
    rows = {"scratchvae (numba.cuda)": (mine["train"], mine["sample"])}
    others = torch_rows(config, args, rng)
    if isinstance(others, str):
        print(f"(no PyTorch rows: {others})")
    else:
        rows.update(others)
    print(f"\n| | training images/s | scratchvae / this | sampling images/s | scratchvae / this |\n|---|---|---|---|---|")
    for label, (train, sample) in rows.items():
        print(f"| {label} | {train:.1f} | {mine['train'] / train:.2f}x | {sample:.1f} | {mine['sample'] / sample:.2f}x |")


if __name__ == "__main__":
    main()
