"""Decoder sampling throughput: onnxruntime on our folded ONNX export vs scratchvae's own Numba decode.

Both run in this one process on the same weights (default 128x128 config unless --checkpoint):
warm-up, then the median of --repeats timed calls, at batch 64 and batch 1. Prints images/s.

    python benches/bench_sample.py [--checkpoint ckpt.npz] [--repeats 5] [--threads N]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
import onnx_graphs  # noqa: E402
from scratchvae import kernels  # noqa: E402
from scratchvae.model import VAE  # noqa: E402


def median_seconds(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="weights to use (default: a fresh VAE(); speed does not depend on values)")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 1])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="threads for both engines (0: each engine's default)")
    args = p.parse_args(argv)

    vae = VAE.load(args.checkpoint) if args.checkpoint else VAE()
    if args.threads:
        numba.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads  # 0 lets onnxruntime pick (one per physical core)
    model = onnx_graphs.build_decoder({**vae.params(), **vae.state()}, vae.config, fold=True)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    cfg = vae.config
    print(f"decoder {cfg.z_dim} -> {cfg.image_size}x{cfg.image_size}x{cfg.channels}, filters {cfg.filters}, "
          f"blocks {cfg.blocks}; cpu_count {os.cpu_count()}, numba threads {numba.get_num_threads()} "
          f"(backend {kernels.active_name()}), onnxruntime {ort.__version__} intra_op_num_threads "
          f"{args.threads or 'default'}")
    print(f"{'batch':>5}  {'numba img/s':>12}  {'onnxruntime img/s':>18}  {'ort/numba':>9}  {'max|diff|':>9}")
    rng = np.random.default_rng(0)
    for n in args.batches:
        z = rng.standard_normal((n, cfg.z_dim)).astype(np.float32)
        ours = vae.decode(z, training=False)
        theirs = session.run(["image"], {"z": z})[0]
        t_numba = median_seconds(lambda: vae.decode(z, training=False), args.repeats)
        t_ort = median_seconds(lambda: session.run(["image"], {"z": z}), args.repeats)
        print(f"{n:>5}  {n / t_numba:>12.1f}  {n / t_ort:>18.1f}  {t_numba / t_ort:>9.2f}  "
              f"{float(np.max(np.abs(ours - theirs))):>9.1e}")


if __name__ == "__main__":
    main()
