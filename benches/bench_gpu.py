"""GPU figures: scratchvae's numba.cuda backend against PyTorch eager on the same GPU, one run.

Training images/s (forward, backward and Adam; median of timed steps after warm-up), decoder
sampling images/s, and a check that the first training step on the GPU gives the same loss and
gradient norm as the Numba CPU kernels from the same weights. PyTorch is optional (skipped with a
note when it is not installed, or sees no GPU).

    python benches/bench_gpu.py [--batch 64] [--sample-batch 64] [--image-size 128] [--steps 10] [--profile]

PyTorch runs in float32 with TF32 off (cuDNN and matmul), so both sides do the same arithmetic.
--profile adds where a training step's time goes, kernel by kernel (each launch synchronised).
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


def profile(config, args, rng, steps=3):
    """Per-kernel GPU time of training steps: every kernel call is timed between two synchronisations."""
    import collections
    from numba import cuda
    from scratchvae.kernels import cuda as gpu
    from scratchvae.kernels import reference
    skip = {"empty", "zeros", "to_host", "from_host", "is_device_array", "may_share_memory"}
    names = [n for n in dir(reference) if not n.startswith("_") and callable(getattr(gpu, n, None))
             and n not in skip and getattr(getattr(gpu, n), "__module__", "").startswith(gpu.__name__ + ".")]
    per_name, per_gemm = collections.defaultdict(lambda: [0, 0.0]), collections.defaultdict(lambda: [0, 0.0])
    depth = [0]

    def timed(name, fn):
        def wrapper(*a, **kw):
            if depth[0]:
                return fn(*a, **kw)
            depth[0] += 1
            cuda.synchronize()
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                cuda.synchronize()
                dt = time.perf_counter() - t
                depth[0] -= 1
                per_name[name][0] += 1
                per_name[name][1] += dt
                if name == "gemm":
                    out, x = a[0], a[1]
                    ta = a[3] if len(a) > 3 else kw.get("trans_a", False)
                    tb = a[4] if len(a) > 4 else kw.get("trans_b", False)
                    kdim = x.shape[0] if ta else x.shape[1]
                    key = (tuple(out.shape), kdim, bool(ta), bool(tb))
                    per_gemm[key][0] += 1
                    per_gemm[key][1] += dt
        return wrapper

    with kernels.using("cuda"):
        x = kernels.from_host(rng.uniform(0, 1, (args.batch, config.image_size, config.image_size,
                                                 config.channels)).astype(np.float32))
        eps = kernels.from_host(rng.standard_normal((args.batch, config.z_dim), dtype=np.float32))
        vae, opt = VAE(config, seed=0), Adam(1e-4)
        for _ in range(2):
            vae.forward_backward(x, eps)
            opt.step(vae.params(), vae.grads())
        originals = {n: getattr(gpu, n) for n in names}
        try:
            for n, fn in originals.items():
                setattr(gpu, n, timed(n, fn))
            cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                vae.forward_backward(x, eps)
                opt.step(vae.params(), vae.grads())
            cuda.synchronize()
            wall = (time.perf_counter() - t) / steps
        finally:
            for n, fn in originals.items():
                setattr(gpu, n, fn)
    total = sum(v[1] for v in per_name.values()) / steps
    print(f"\nprofile: one training step, batch {args.batch}: {wall * 1e3:.1f} ms with a synchronisation after "
          f"every kernel call, {total * 1e3:.1f} ms inside kernel calls, "
          f"{sum(v[0] for v in per_name.values()) // steps} calls")
    print("| kernel | calls | ms | share |\n|---|---|---|---|")
    for n, (c, secs) in sorted(per_name.items(), key=lambda kv: -kv[1][1])[:16]:
        print(f"| {n} | {c // steps} | {secs / steps * 1e3:.2f} | {secs / steps / wall:.0%} |")
    print("| gemm out shape | k | trans a, b | calls | ms | GFLOP/s |\n|---|---|---|---|---|---|")
    for (shape, kdim, ta, tb), (c, secs) in sorted(per_gemm.items(), key=lambda kv: -kv[1][1])[:14]:
        flop = 2.0 * shape[0] * shape[1] * kdim * c
        print(f"| {shape} | {kdim} | {ta:d}, {tb:d} | {c // steps} | {secs / steps * 1e3:.2f} | {flop / secs / 1e9:.0f} |")


def gemm_alone(steps=10):
    """GFLOP/s of the CUDA gemm on the seed model's main shapes (training at batch 64), split-K included."""
    from numba import cuda
    from scratchvae.kernels import cuda as gpu
    from scratchvae.kernels.cuda import matmul
    rng = np.random.default_rng(0)
    shapes = [(20480, 128, 1152, False), (1152, 128, 20480, True), (49152, 128, 256, False), (27, 128, 917504, True)]
    print("\n| gemm m, n, k, trans a | k slices | GFLOP/s |\n|---|---|---|")
    for m, n, k, ta in shapes:
        a = gpu.from_host(rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32))
        b = gpu.from_host(rng.standard_normal((k, n), dtype=np.float32))
        out = gpu.empty((m, n), np.float32)
        secs = median_time(lambda: gpu.gemm(out, a, b, ta), 2, steps, cuda.synchronize)
        slices = -(-k // matmul._k_slice(-(-n // matmul.WN) * -(-m // matmul.WM), k))
        print(f"| {m}, {n}, {k}, {ta:d} | {slices} | {2.0 * m * n * k / secs / 1e9:.0f} |")


def torch_rows(config, args, rng):
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "PyTorch sees no GPU"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--filters", type=int, default=VAEConfig.filters, help="a smaller model for a quick check")
    p.add_argument("--blocks", type=int, default=VAEConfig.blocks)
    p.add_argument("--z-dim", type=int, default=VAEConfig.z_dim)
    p.add_argument("--profile", action="store_true", help="also time every kernel of a training step")
    p.add_argument("--gemm", action="store_true", help="also time the gemm alone on the main shapes")
    args = p.parse_args(argv)

    from scratchvae.run import device
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
    print("\n| | training images/s | scratchvae / this | sampling images/s | scratchvae / this |\n|---|---|---|---|---|")
    for label, (train, sample) in rows.items():
        print(f"| {label} | {train:.1f} | {mine['train'] / train:.2f}x | {sample:.1f} | {mine['sample'] / sample:.2f}x |")
    if args.profile:
        profile(config, args, rng)
    if args.gemm:
        gemm_alone()


if __name__ == "__main__":
    main()
