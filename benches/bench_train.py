"""Training throughput of scratchvae against PyTorch on the same CPU, in interleaved rounds.

Every contender runs in a child process of its own (peak RSS is its own, thread pools never mix),
started from the environment the bench was launched with plus one explicit thread count
(benches/fair.py): the machine's sgemm rate, scratchvae, PyTorch eager (NCHW and channels_last)
on the Keras-exact twin and on the plain model a PyTorch user would write, and torch.compile
(channels_last, default mode). Each round runs every contender once, in turn; the table gives the
median images/s over the rounds with its range, ours/this from the medians, the share of the sgemm
limit (sgemm measured in every round), the first step (JIT or compile, never in the median) and
peak RSS. Every timed step does the same work: one float32 batch already in the contender's layout.

    python benches/bench_train.py [--rounds 3] [--batch 32] [--image-size 128] [--steps 6] [--markdown]
    python benches/bench_train.py --torch-wait-policy unset   # skip the OMP_WAIT_POLICY probe (faster)
    python benches/bench_train.py --contenders ours,eager-cl-plain,compile-cl-plain
    python benches/bench_train.py --device cuda    # the GPU backend against PyTorch CUDA (bench_gpu.py)
"""

import fair  # noqa: I001  first: it keeps the environment as launched, before scratchvae is imported
fair.scratchvae_first()  # noqa: E402  in scratchvae's child: its process settings before NumPy loads

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict

import numpy as np

# key: (label, plain model, channels_last, torch.compile)
TORCH = {
    "eager-nchw-keras": ("PyTorch eager, NCHW, Keras-exact twin", False, False, False),
    "eager-cl-keras": ("PyTorch eager, channels_last, Keras-exact twin", False, True, False),
    "eager-nchw-plain": ("PyTorch eager, NCHW, plain padding=1", True, False, False),
    "eager-cl-plain": ("PyTorch eager, channels_last, plain padding=1", True, True, False),
    "compile-cl-plain": ("torch.compile, channels_last, plain padding=1", True, True, True),
    "compile-cl-keras": ("torch.compile, channels_last, Keras-exact twin", False, True, True),
}
LABELS = {"ours": "scratchvae (Numba + BLAS)", **{k: v[0] for k, v in TORCH.items()}}
DEFAULT = [k for k in LABELS if k != "compile-cl-keras"]
MODELS_NOTE = ("Keras-exact twin: benches/torch_reference.TorchVAE, TF 'same' padding (F.pad with the extra "
               "row/column at the end, a cropped copy after each stride-2 transposed convolution), Keras "
               "BatchNorm and Adam. Plain: TorchVAE(plain=True), nn.Conv2d(padding=1), "
               "nn.ConvTranspose2d(padding=1, output_padding=1), nn.BatchNorm, torch Adam: same channels and "
               "FLOPs.")


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


def inputs(config, batch, count, seed=0):
    """The one float32 NHWC batch in [0, 1] and `count` eps arrays every contender trains on."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch, config.image_size, config.image_size, config.channels)).astype(np.float32)
    return x, [rng.standard_normal((batch, config.z_dim), dtype=np.float32) for _ in range(count)]


def child(args):
    """Runs one measurement and prints one JSON line."""
    result = {"wait_policy_at_start": fair.launched_wait_policy()}  # as launched, before any import changed it
    launched = os.environ.get("OMP_WAIT_POLICY")
    if args.child in TORCH:
        import torch  # before scratchvae: OpenMP reads OMP_WAIT_POLICY when torch loads it
        torch.set_num_threads(args.threads)
    from scratchvae.model import VAEConfig
    if args.child in TORCH:  # scratchvae's import set OMP_WAIT_POLICY for itself, not for what torch starts later
        os.environ.pop("OMP_WAIT_POLICY", None)
        os.environ.update({"OMP_WAIT_POLICY": launched} if launched is not None else {})
    config = VAEConfig.from_dict(json.loads(args.config))
    x, eps = inputs(config, args.batch, args.warmup + args.steps)
    if args.child == "sgemm":
        from scratchvae.kernels import threads as th
        th.set_threads(args.threads)
        n = args.sgemm_size
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        a @ a
        times = []
        for _ in range(5):
            t = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t)
        result["gflops"] = 2 * n ** 3 / np.median(times) / 1e9
    elif args.child == "ours":
        from scratchvae.kernels import threads as th
        from scratchvae.model import VAE
        from scratchvae.optim import Adam
        th.set_threads(args.threads)
        vae, opt = VAE(config), Adam()
        times = []
        for e in eps:
            t = time.perf_counter()
            vae.forward_backward(x, e)
            opt.step(vae.params(), vae.grads())
            times.append(time.perf_counter() - t)
        first, times = times[0], times[args.warmup:]
        result.update(threads=th.describe(), version="scratchvae")
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from torch_reference import torch_train_times
        _, plain, channels_last, compiled = TORCH[args.child]
        try:
            first, times = torch_train_times(config, x, eps, args.warmup, channels_last, plain, compiled)
        except Exception as e:  # torch.compile needs a C++ toolchain: the row says why
            traceback.print_exc()
            message = str(e).strip().splitlines()
            print(json.dumps({**result, "error": f"{type(e).__name__}: {message[0] if message else ''}"[:200]}))
            return
        result.update(threads=f"torch threads {torch.get_num_threads()}", version=f"torch {torch.__version__}")
    if args.child != "sgemm":
        result.update(images_per_s=args.batch / float(np.median(times)), first_step_s=first)
    result["wait_policy_after_imports"] = fair.seen_wait_policy()
    result["peak_rss_mb"] = fair.peak_rss_mb()
    print(json.dumps(result))


def run_child(args, kind, policy="unset", extra_env=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--config", args.config,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--sgemm-size", str(args.sgemm_size)]
    result = fair.run_json_child(cmd, fair.child_env(args.threads, policy, extra=extra_env))
    # The check that nothing leaks: each child ran under the policy chosen for it (torch throughout).
    for when in ("at_start", "after_imports") if kind in TORCH else ("at_start",):
        seen = result.get(f"wait_policy_{when}", policy)
        if seen != policy:
            return {"error": f"OMP_WAIT_POLICY {when.replace('_', ' ')} was {seen}, not {policy}"}
    return result


def first_step_seconds(args, config):
    """Seconds from launching `python -m scratchvae.train` to its first finished step (best of 2)."""
    best = None
    with tempfile.TemporaryDirectory() as out:
        for _ in range(2):  # the first run also warms Numba's cache and the data cache
            cmd = [sys.executable, "-u", "-m", "scratchvae.train", "--out", out, "--epochs", "1", "--overwrite",
                   "--batch-size", str(args.batch), "--threads", str(args.threads),
                   "--image-size", str(config.image_size), "--filters", str(config.filters),
                   "--blocks", str(config.blocks), "--z-dim", str(config.z_dim)]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, bufsize=1,
                                    env=fair.child_env(args.threads))
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


def measure(args, contenders, policies, log=print):
    """{(kind, policy): [one child's result per round]}, with ("sgemm", None) measured first in each round."""
    results = defaultdict(list)
    with tempfile.TemporaryDirectory() as inductor_cache:  # empty at the first compile of this run
        for r in range(args.rounds):
            results[("sgemm", None)].append(run_child(args, "sgemm"))
            for kind in contenders:
                # Both wait policies alternate which goes first, round by round.
                for policy in (policies[::-1] if r % 2 else policies) if kind in TORCH else [None]:
                    extra = {"TORCHINDUCTOR_CACHE_DIR": inductor_cache} if kind.startswith("compile") else None
                    res = run_child(args, kind, policy or "unset", extra)
                    results[(kind, policy)].append(res)
                    what = f"{res['images_per_s']:.2f} images/s" if "images_per_s" in res else res.get("error")
                    log(f"round {r + 1}/{args.rounds}: {LABELS[kind]}{f' [{policy}]' if policy else ''}: {what}")
    return results


def summarize(results, flops):
    """Rows {kind: dict} for the table (PyTorch under its better wait policy) and the sgemm Spread."""
    gflops = [r.get("gflops") for r in results[("sgemm", None)]]
    limits = [g * 1e9 / flops if g else None for g in gflops]
    rows = {}
    for (kind, policy), runs in results.items():
        if kind == "sgemm":
            continue
        ips = [r.get("images_per_s") for r in runs]
        row = {"policy": policy, "ips": fair.spread(ips), "runs": runs,
               "share": fair.spread([i / lim if i and lim else None for i, lim in zip(ips, limits)]),
               "first": fair.spread([r.get("first_step_s") for r in runs]),
               "rss": max((r["peak_rss_mb"] for r in runs if "peak_rss_mb" in r), default=None)}
        best = rows.get(kind)
        if best is None or (row["ips"] and (best["ips"] is None or row["ips"].median > best["ips"].median)):
            rows[kind] = row
    return rows, fair.spread(gflops), fair.spread(limits)


def report(args, config, results, policies, first=None):
    """The printed lines: machine, sgemm, the table, the wait-policy probe, compile times, errors."""
    from bench_layers import cpu_model
    flops = step_flops(config)
    rows, sgemm, limit = summarize(results, flops)
    ours = rows.get("ours", {}).get("ips")
    threads = "; ".join(sorted({r["threads"] for runs in results.values() for r in runs if "threads" in r}))
    versions = ", ".join(sorted({r["version"] for runs in results.values() for r in runs if "version" in r}))
    lines = [f"machine: {cpu_model()}, {args.threads} threads for every contender ({threads}); {versions}",
             f"sgemm {args.sgemm_size}^3: {fair.show(sgemm, '.1f')[0]} GFLOP/s (range {fair.show(sgemm, '.1f')[1]}); one "
             f"step costs {flops / 1e9:.3g} GFLOP per image -> matrix-product limit {fair.show(limit, '.1f')[0]} "
             f"images/s",
             args.blas_line,
             f"batch {args.batch}, {config.image_size}x{config.image_size}, filters {config.filters}, blocks "
             f"{config.blocks}, z {config.z_dim}; each round: median of {args.steps} steps after {args.warmup} "
             f"warm-up; {args.rounds} rounds, median and range over rounds", ""]
    head = ["", "OMP_WAIT_POLICY", "images/s", "range", "ours / this", "share of sgemm limit",
            "first step s", "peak RSS MB"]
    body = []
    for kind in [k for k in LABELS if k in rows]:
        row = rows[kind]
        ips, rss = row["ips"], row["rss"]
        policy = row["policy"] or next((f"{r['wait_policy_after_imports'] or 'unset'} (scratchvae's own)"
                                        for r in row["runs"] if "wait_policy_after_imports" in r), "")
        share, ratio = row["share"], fair.ratio(ours, ips)
        body.append([LABELS[kind], policy, *fair.show(ips), f"{ratio:.2f}x" if ratio else "",
                     f"{share.median:.0%}" if share else "", fair.show(row["first"], ".1f")[0],
                     f"{rss:.0f}" if rss else ""])
    lines += fair.table(head, body, args.markdown)
    lines += ["", MODELS_NOTE]
    if len(policies) > 1:
        lines += ["", "OMP_WAIT_POLICY for PyTorch, images/s median (range) under each; the table above "
                  "uses the better one:"]
        for kind in [k for k in TORCH if (k, policies[0]) in results]:
            cells = [f"{p}: {'%s (%s)' % fair.show(fair.spread([r.get('images_per_s') for r in results[(kind, p)]]))}"
                     for p in policies]
            lines.append(f"  {LABELS[kind]}: " + ", ".join(cells))
    for kind in [k for k in TORCH if TORCH[k][3]]:
        for policy in policies:
            runs = results.get((kind, policy), [])
            firsts = [f"{r['first_step_s']:.1f}" for r in runs if "first_step_s" in r]
            if firsts:
                lines.append(f"{LABELS[kind]} [{policy}]: first step (compile included) per round {', '.join(firsts)}"
                             f" s; its cache starts empty in round 1")
    notes = [f"{LABELS[kind]}{f' [{policy}]' if policy else ''}: {error}" for (kind, policy), runs in results.items()
             if kind != "sgemm" for error in sorted({r["error"] for r in runs if "error" in r})]
    notes += [f"sgemm: {error}" for error in sorted({r["error"] for r in results[("sgemm", None)] if "error" in r})]
    if notes:
        lines += ["", "failed:"] + [f"  {n}" for n in notes]
    if first is not None:
        lines.append(f"\nfirst step of `python -m scratchvae.train` finished {first:.1f} s after launch "
                     f"(Numba cache warm)")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, help="images per step (default 32; 64 with --device cuda)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--filters", type=int, default=128)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--z-dim", type=int, default=200)
    p.add_argument("--steps", type=int, default=6, help="timed steps per child (their median is the round's)")
    p.add_argument("--warmup", type=int, default=2, help="steps before timing (the first one compiles)")
    p.add_argument("--rounds", type=int, default=3, help="each round runs every contender once, in turn")
    p.add_argument("--threads", type=int, default=fair.cores(), help="threads for every contender (default: all cores)")
    p.add_argument("--contenders", default=",".join(DEFAULT),
                   help=f"comma-separated, from {', '.join(LABELS)}; 'all' for every one (default: all but "
                        f"compile-cl-keras)")
    p.add_argument("--no-torch", action="store_true", help="only scratchvae (and sgemm)")
    p.add_argument("--torch-wait-policy", choices=["auto", "unset", "passive"], default="auto",
                   help="OMP_WAIT_POLICY for the PyTorch children: auto runs each under both (unset, PASSIVE) "
                        "in every round and reports PyTorch's better one")
    p.add_argument("--sgemm-size", type=int, default=4096, help="n of the n x n x n float32 product timed")
    p.add_argument("--markdown", action="store_true")
    fair.add_blas_override_option(p)
    p.add_argument("--skip-first-step", action="store_true")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: the numba.cuda backend against PyTorch on the GPU (benches/bench_gpu.py)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.blas_line = fair.apply_blas_override_option(args)
    if args.device == "cuda":
        import bench_gpu
        return bench_gpu.main(["--batch", str(args.batch or 64), "--image-size", str(args.image_size),
                               "--steps", str(args.steps), "--warmup", str(args.warmup)])
    args.batch = args.batch or 32
    if args.child:
        return child(args)
    if args.rounds < 1 or args.steps < 1 or args.threads < 1:
        p.error("--rounds, --steps and --threads must be at least 1")
    contenders = list(LABELS) if args.contenders == "all" else args.contenders.split(",")
    unknown = [k for k in contenders if k not in LABELS]
    if unknown:
        p.error(f"unknown contender(s) {', '.join(unknown)}: choose from {', '.join(LABELS)}")
    if args.no_torch:
        contenders = [k for k in contenders if k not in TORCH]

    from scratchvae.model import VAEConfig
    config = VAEConfig(image_size=args.image_size, filters=args.filters, blocks=args.blocks, z_dim=args.z_dim)
    args.config = json.dumps(config.to_dict())
    policies = ["unset", "passive"] if args.torch_wait_policy == "auto" else [args.torch_wait_policy]
    results = measure(args, contenders, policies, log=lambda line: print(line, file=sys.stderr, flush=True))
    first = None if args.skip_first_step else first_step_seconds(args, config)
    print("\n".join(report(args, config, results, policies, first)))


if __name__ == "__main__":
    main()
