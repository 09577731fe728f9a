"""The data path, measured: decoding in threads against processes, building the cache, the share of
step time spent waiting for batches, and resident memory while reading a big cache.

    python benches/bench_data.py [--data ../shared/data/celeba-sample] [--steps 30] [--big-mb 800]

The cache is built in a temporary folder (never in the repository) and removed afterwards.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "celeba-sample")


def _decode_many(paths, size):
    from scratchvae import data
    return sum(data.decode_image(p, size)[0] is not None for p in paths)


def decode_rates(paths, size, workers):
    """Images per second decoding `paths`: one thread, `workers` threads, `workers` processes."""
    from scratchvae import data
    out = {}
    t = time.perf_counter()
    for p in paths:
        data.decode_image(p, size)
    out["1 thread"] = len(paths) / (time.perf_counter() - t)
    with ThreadPoolExecutor(workers) as pool:
        t = time.perf_counter()
        list(pool.map(lambda p: data.decode_image(p, size), paths))
        out[f"{workers} threads"] = len(paths) / (time.perf_counter() - t)
    import multiprocessing
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_decode_many, paths[:1], size).result()  # started and warm
        chunks = [paths[i:i + 256] for i in range(0, len(paths), 256)]
        t = time.perf_counter()
        list(pool.map(_decode_many, chunks, [size] * len(chunks)))
        out[f"{workers} processes"] = len(paths) / (time.perf_counter() - t)
    return out


def gil_free_share(paths, size):
    """Share of decoding time spent in Pillow's C calls that release the GIL (decode, resize, encode),
    from cProfile; profiling inflates the Python side, so this is a lower bound. Threads can speed
    decoding up by at most 1 / (1 - share), whatever the core count."""
    import cProfile
    import pstats
    from scratchvae import data
    prof = cProfile.Profile()
    prof.enable()
    for p in paths:
        data.decode_image(p, size)
    prof.disable()
    stats = pstats.Stats(prof)
    free = sum(tt for (_, _, fn), (_, _, tt, _, _) in stats.stats.items()
               if fn in ("<method 'decode' of 'ImagingDecoder' objects>", "<method 'resize' of 'ImagingCore' objects>",
                         "<method 'encode' of 'ImagingEncoder' objects>"))
    return free / stats.total_tt


def overhead(images, args):
    """Train-like steps of the default model reading through the prefetcher: waiting vs step time."""
    from scratchvae import train
    from scratchvae.data.prefetch import ImageReader, Prefetcher
    from scratchvae.kernels import threads
    from scratchvae.model import VAE, VAEConfig
    from scratchvae.optim import Adam
    threads.set_threads(args.threads)
    vae, opt = VAE(VAEConfig(image_size=args.image_size)), Adam()
    reader = ImageReader(images)
    order = np.random.default_rng(0).permutation(len(images))
    n = args.warmup + args.steps
    batches = [np.sort(order[i * args.batch:(i + 1) * args.batch]) for i in range(n)]
    t = time.perf_counter()
    for idx in batches:
        reader.read(idx)
    read_ms = 1e3 * (time.perf_counter() - t) / n  # assembling a batch, in the foreground
    with Prefetcher(reader.read, iter(batches)) as feed:
        for i, x in enumerate(feed):
            if i == args.warmup:
                waited, t0 = feed.waited, time.perf_counter()
            eps = train.step_noise(0, 0, i, (len(x), 200))
            vae.forward_backward(x, eps)
            opt.step(vae.params(), vae.grads())
        total = time.perf_counter() - t0
        waited = feed.waited - waited
    return {"step_ms": 1e3 * total / args.steps, "wait_ms": 1e3 * waited / args.steps, "read_ms": read_ms,
            "share": waited / total}


RSS = """
import json, sys
import numpy as np
from scratchvae.data.prefetch import ImageReader, Prefetcher

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

images = np.load(sys.argv[1], mmap_mode="r")
start = status("VmRSS:")
order = np.random.default_rng(0).permutation(len(images))
batches = [np.sort(order[i:i + 64]) for i in range(0, len(images), 64)]
if sys.argv[2] == "reader":
    reader = ImageReader(images)
    with Prefetcher(reader.read, iter(batches)) as feed:
        for x in feed:
            pass
else:  # indexing the memory map, as a plain np.load(mmap_mode="r") user would
    for idx in batches:
        x = images[idx].astype(np.float32) / 255
print(json.dumps({"growth": status("VmHWM:") - start}))
"""


def rss_growth(big_mb, folder):
    """Peak resident memory growth reading every batch of a generated cache of big_mb MB."""
    path = os.path.join(folder, "big.npy")
    n = big_mb * (1 << 20) // (64 * 64 * 3)
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 64, 64, 3))
    for i in range(0, n, 4096):
        rows[i:i + 4096] = i % 251
    rows.flush()
    del rows
    out = {"cache_mb": os.path.getsize(path) / (1 << 20)}
    for how in ("reader", "memmap"):
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(RSS), path, how], capture_output=True,
                              text=True, check=True)
        out[how] = json.loads(done.stdout)["growth"] / (1 << 20)
    os.unlink(path)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--decode-images", type=int, default=2000)
    p.add_argument("--big-mb", type=int, default=800)
    args = p.parse_args()
    from scratchvae import data
    with tempfile.TemporaryDirectory() as folder:
        names = sorted(f for f in os.listdir(args.data) if f.lower().endswith((".jpg", ".jpeg", ".png")))
        paths = [os.path.join(args.data, f) for f in names[:args.decode_images]]
        rates = decode_rates(paths, args.image_size, args.workers)
        print(f"decoding {len(paths)} images of {args.data} to {args.image_size}x{args.image_size}, "
              f"{os.cpu_count()} cores:")
        for k, v in rates.items():
            print(f"  {k:>12}: {v:7.0f} images/s")
        share = gil_free_share(paths[:1000], args.image_size)
        print(f"  Pillow holds no GIL for {100 * share:.0f}% of decoding: threads top out at "
              f"{1 / (1 - share):.1f}x whatever the cores, processes do not")
        t = time.perf_counter()
        found = data.load_images(args.data, args.image_size, cache_dir=folder, progress=False,
                                 workers=args.workers)
        build = time.perf_counter() - t
        print(f"cache of {len(found)} images built in {build:.1f} s ({len(found) / build:.0f} images/s, "
              f"{args.workers} worker processes), {found.images.nbytes / 1e6:.0f} MB")
        t = time.perf_counter()
        data.verify_cache(found.images)
        print(f"checksum verified in {time.perf_counter() - t:.2f} s")
        r = overhead(found.images, args)
        print(f"training steps (default model, {args.image_size}x{args.image_size}, batch {args.batch}, "
              f"{args.steps} steps): step {r['step_ms']:.0f} ms, waiting for data {r['wait_ms']:.2f} ms "
              f"= {100 * r['share']:.2f}% of step time (a batch takes {r['read_ms']:.1f} ms to assemble)")
        del found
        m = rss_growth(args.big_mb, folder)
        print(f"reading every batch of a {m['cache_mb']:.0f} MB cache: peak RSS grows {m['reader']:.0f} MB with "
              f"the reader and prefetcher, {m['memmap']:.0f} MB indexing the memory map")


if __name__ == "__main__":
    main()
