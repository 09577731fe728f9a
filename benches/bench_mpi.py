"""Data-parallel throughput: images per second of the training step at 1 and K MPI ranks on this
machine, with the same global batch (strong scaling), and the time the ranks spend in collectives:
waiting for the gradient sums after backward (they start layer by layer during it) and inside the
BatchNorm sums (which include waiting for the slower rank). A row with one rank at the per-rank
batch shows what K ranks would reach if communication and waiting were free.

Each run is its own `mpiexec -n K` job of this script; every rank uses --threads cores.

    python benches/bench_mpi.py [--ranks 1 2] [--batch 32] [--image-size 64] [--threads 1] [--steps 6] [--markdown]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def child(args):
    from scratchvae.kernels import threads
    from scratchvae.model import VAE, VAEConfig
    from scratchvae.optim import Adam
    from scratchvae.run import distributed
    comm = distributed.connect()
    threads.set_threads(args.threads)
    in_collectives = [0.0]
    plain_sum = comm.sum_

    def timed_sum(a):
        t = time.perf_counter()
        plain_sum(a)
        in_collectives[0] += time.perf_counter() - t

    comm.sum_ = timed_sum
    config = VAEConfig(image_size=args.image_size, filters=args.filters, blocks=args.blocks, z_dim=args.z_dim)
    sync = distributed.DataParallel(comm)
    vae, opt = VAE(config, **sync.model_hooks()), Adam()
    per_rank = args.batch // comm.size
    rng = np.random.default_rng(comm.rank)
    x = rng.uniform(0, 1, (per_rank, args.image_size, args.image_size, 3)).astype(np.float32)
    steps, grad_sum, bn = [], [], []
    for i in range(args.warmup + args.steps):
        eps = rng.standard_normal((per_rank, config.z_dim), dtype=np.float32)
        t = time.perf_counter()
        waited = sync.waited
        terms = vae.forward_backward(x, eps)
        sync.finish_gradients(vae)
        t_grad = sync.waited - waited
        bn_sync = in_collectives[0]
        sync.mean_terms(terms, config)
        opt.step(vae.params(), vae.grads())
        if i >= args.warmup:
            steps.append(time.perf_counter() - t)
            grad_sum.append(t_grad)
            bn.append(bn_sync)
        in_collectives[0] = 0.0
    step = float(np.median(steps))
    if comm.rank == 0:
        n_params = sum(p.size for p in vae.params().values())
        print(json.dumps({"ranks": comm.size, "step_s": step, "images_per_s": args.batch / step,
                          "grad_sum_ms": 1e3 * float(np.median(grad_sum)),
                          "collectives_ms": 1e3 * float(np.median(bn)), "grad_mb": 4 * n_params / 1e6}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--filters", type=int, default=128)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--z-dim", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="cores per rank")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if mpiexec is None:
        sys.exit("mpiexec not found: pip install 'scratchvae[mpi]'")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
             if k in ("image_size", "filters", "blocks", "z_dim", "threads", "steps", "warmup")]
    rows = []
    # Each K ranks, and one rank with the batch of one of them: what K ranks would reach with free
    # communication and no waiting (a smaller batch alone makes each step less efficient).
    runs = [(k, args.batch) for k in args.ranks] + [(1, args.batch // k) for k in args.ranks if k > 1]
    for k, batch in runs:
        done = subprocess.run([mpiexec, "-n", str(k), sys.executable, os.path.abspath(__file__), "--child",
                               f"--batch={batch}", *flags], capture_output=True, text=True, cwd=os.path.dirname(HERE))
        if done.returncode != 0:
            sys.exit(f"{k} ranks failed:\n{done.stderr[-2000:]}")
        rows.append({**json.loads(done.stdout.strip().splitlines()[-1]), "batch": batch})
    base = rows[0]["images_per_s"] / rows[0]["ranks"]
    print(f"model: {args.image_size}x{args.image_size}, filters {args.filters}, blocks {args.blocks}, "
          f"z {args.z_dim}; {args.threads} thread(s) per rank; {os.cpu_count()} cores; "
          f"gradients {rows[0]['grad_mb']:.1f} MB fp32 per step")
    head = ["ranks", "global batch", "step s", "images/s", "efficiency", "gradient sum wait ms", "BN sync ms"]
    table = [[str(r["ranks"]), str(r["batch"]), f"{r['step_s']:.3f}", f"{r['images_per_s']:.1f}",
              f"{r['images_per_s'] / (base * r['ranks']):.0%}" if r["batch"] == args.batch else "",
              f"{r['grad_sum_ms']:.1f}", f"{r['collectives_ms']:.1f}"] for r in rows]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in table:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)]
        print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
        for row in table:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
