"""Training throughput of scratchvae against PyTorch on the same CPU, side by side in one run.

Each measurement runs in its own child process (so peak RSS is its own, and thread pools do not
mix): the machine's sgemm GFLOP/s, scratchvae images/s, PyTorch eager NCHW and channels_last
images/s (when torch is installed), the ratios, the share of the sgemm limit, peak RSS, and the
time from launching `python -m scratchvae.train` to its first finished step (Numba cache warm).

    python benches/bench_train.py [--batch 32] [--image-size 128] [--steps 6] [--threads N] [--markdown]
    python benches/bench_train.py --device cuda    # the GPU backend against PyTorch CUDA (bench_gpu.py)
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench_layers import cpu_model  # benches/ is the script folder, so this sibling imports

HERE = os.path.dirname(os.path.abspath(__file__))
# One training step of the seed model costs about 6.46 GFLOP per image at 128x128 (forward 2.15):
# counted below from the layer shapes, so other sizes scale correctly.


def step_flops(config):
    """Multiply-adds x 2 of forward + backward (backward = 2x forward for convs and denses)."""
    s, f, c, z = config.image_size, config.filters, config.channels, config.z_dim
    fwd = 0
    size, cin = s, c
    for _ in range(config.blocks):  # encoder convs
        size //= 2
        fwd += size * size * 9 * cin * f
        cin = f
    fwd += 2 * size * size * f * z  # the two heads
    fwd += z * size * size * f  # decoder dense
    for _ in range(config.blocks):  # transposed convs (as many MACs as the conv they mirror)
        fwd += size * size * 9 * f * f
        size *= 2
    fwd += size * size * 9 * f * c  # final stride-1 transposed conv
    return 2 * fwd * 3


def child(args):
    """Runs one measurement and prints one JSON line."""
    threads = args.threads
    if args.child == "sgemm":
        from scratchvae import threads as th
        th.set_threads(threads)
        a = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
        a @ a
        times = []
        for _ in range(5):
            t = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t)
        result = {"gflops": 2 * 4096 ** 3 / np.median(times) / 1e9}
    elif args.child == "ours":
        from scratchvae import threads as th
        from scratchvae.model import VAE, VAEConfig
        from scratchvae.optim import Adam
        th.set_threads(threads)
        vae, opt = VAE(VAEConfig(image_size=args.image_size)), Adam()
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, (args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
        times = []
        for i in range(args.warmup + args.steps):
            eps = rng.standard_normal((args.batch, 200), dtype=np.float32)
            t = time.perf_counter()
            vae.forward_backward(x, eps)
            opt.step(vae.params(), vae.grads())
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
        result = {"images_per_s": args.batch / float(np.median(times)), "threads": th.describe()}
    else:
        import torch
        sys.path.insert(0, HERE)
        from torch_reference import torch_train_throughput
        from scratchvae.model import VAEConfig
        torch.set_num_threads(threads)
        ips = torch_train_throughput(VAEConfig(image_size=args.image_size), args.batch, args.steps,
                                     channels_last=args.child == "torch-cl", warmup=args.warmup)
        result = {"images_per_s": ips, "threads": torch.get_num_threads(), "version": torch.__version__}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_child(args, kind):
    cmd = [sys.executable, __file__, "--child", kind, "--batch", str(args.batch), "--image-size",
           str(args.image_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def first_step_seconds(args):
    """Seconds from launching `python -m scratchvae.train` to its first finished step (best of 2)."""
    best = None
    with tempfile.TemporaryDirectory() as out:
        for _ in range(2):  # the first run also warms Numba's cache and the data cache
            cmd = [sys.executable, "-u", "-m", "scratchvae.train", "--out", out, "--epochs", "1",
                   "--batch-size", str(args.batch), "--threads", str(args.threads)]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, bufsize=1)
            seen, buf = None, ""
            while seen is None:
                ch = proc.stderr.read(1)
                if not ch:
                    break
                buf = (buf + ch)[-200:]
                if "| 1/" in buf:  # tqdm has counted the first step
                    seen = time.perf_counter() - t0
            proc.kill()
            proc.wait()
            if seen is not None:
                best = seen if best is None else min(best, seen)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, help="images per step (default 32; 64 with --device cuda)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--skip-first-step", action="store_true")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: the numba.cuda backend against PyTorch on the GPU (benches/bench_gpu.py)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device == "cuda":
        import bench_gpu
        return bench_gpu.main(["--batch", str(args.batch or 64), "--image-size", str(args.image_size),
                               "--steps", str(args.steps), "--warmup", str(args.warmup)])
    args.batch = args.batch or 32
    if args.child:
        return child(args)

    from scratchvae.model import VAEConfig
    flops = step_flops(VAEConfig(image_size=args.image_size))
    sgemm = run_child(args, "sgemm").get("gflops", float("nan"))
    rows = [("scratchvae (Numba + BLAS)", run_child(args, "ours"))]
    for kind, label in (("torch-nchw", "PyTorch eager, NCHW"), ("torch-cl", "PyTorch eager, channels_last")):
        rows.append((label, run_child(args, kind)))
    first = None if args.skip_first_step else first_step_seconds(args)

    ours = rows[0][1].get("images_per_s")
    limit = sgemm * 1e9 / flops
    print(f"machine: {cpu_model()}, {args.threads} threads; {rows[0][1].get('threads', '')}")
    print(f"sgemm 4096^3: {sgemm:.1f} GFLOP/s; one step costs {flops / 1e9:.2f} GFLOP per image "
          f"-> matrix-product limit {limit:.1f} images/s")
    print(f"batch {args.batch}, {args.image_size}x{args.image_size}, median of {args.steps} steps after "
          f"{args.warmup} warm-up\n")
    head = ["", "images/s", "scratchvae speed-up", "share of sgemm limit", "peak RSS MB"]
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    else:
        print(f"{head[0]:<32}{head[1]:>10}{head[2]:>22}{head[3]:>22}{head[4]:>13}")
    for label, r in rows:
        if "error" in r:
            cells = [label, "n/a", "", "", r["error"][:60]]
        else:
            ips = r["images_per_s"]
            cells = [label, f"{ips:.2f}", f"{ours / ips:.2f}x" if ours else "", f"{ips / limit:.0%}",
                     f"{r['peak_rss_mb']:.0f}"]
        if args.markdown:
            print("| " + " | ".join(cells) + " |")
        else:
            print(f"{cells[0]:<32}{cells[1]:>10}{cells[2]:>22}{cells[3]:>22}{cells[4]:>13}")
    if first is not None:
        print(f"\nfirst step of `python -m scratchvae.train` finished {first:.1f} s after launch (Numba cache warm)")


if __name__ == "__main__":
    main()
