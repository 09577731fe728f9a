"""Side by side: several training runs' held-out measures (from `python -m scratchvae.evaluate --json`)
and training speed (from each run's metrics.csv) as one Markdown table, and their samples as one
picture, every panel decoded from the same z (the samplers' documented draw for --seed).

    python benches/compare_runs.py runs/seed runs/resize ... [--labels a,b,...] [--figure samples.png]
        [--reconstructions reconstructions.png]

Each run folder holds checkpoint.npz, metrics.csv and eval.json (`evaluate ... --json RUN/eval.json`).
"""

import argparse
import csv
import json
import os
import statistics
import sys

import numpy as np
from PIL import Image, ImageDraw

from scratchvae import images, latent
from scratchvae.data.prefetch import ImageReader
from scratchvae.evaluation import source
from scratchvae.model import VAE

COLUMNS = ("run", "held-out MSE", "PSNR dB", "SSIM", "KL nats", "sample blur / real", "checkerboard / real",
           "grid / real", "s per epoch", "images/s")


def _median_column(path, name):
    with open(path, newline="") as f:
        values = [float(row[name]) for row in csv.DictReader(f) if row.get(name)]
    return statistics.median(values), min(values), max(values), len(values)


def row(folder, label):
    with open(os.path.join(folder, "eval.json")) as f:
        record = json.load(f)
    metrics = os.path.join(folder, "metrics.csv")
    sec, sec_lo, sec_hi, epochs = _median_column(metrics, "seconds")
    ips, _, _, _ = _median_column(metrics, "images_per_s")
    mu, s = record["z_mean"], record["samples"]

    def ratio(key, digits=2):
        r = s.get(key, {}).get("ratio")
        return "n/a" if r is None else f"{r:.{digits}f}"
    return [label, f"{mu['mse']:.4f}", f"{mu['psnr']:.2f}", "n/a" if mu["ssim"] is None else f"{mu['ssim']:.3f}",
            f"{mu['kl']:.1f}", ratio("blur", 3), ratio("checkerboard"), ratio("grid"),
            f"{sec:.0f} ({sec_lo:.0f}-{sec_hi:.0f}, {epochs} epochs)", f"{ips:.1f}"]


def panel(folders, labels, n, seed, path, cols=4):
    """One grid of n decodes per run, side by side, each under its label."""
    tiles = []
    for folder, label in zip(folders, labels):
        vae = VAE.load(os.path.join(folder, "checkpoint.npz"))
        z = latent.draw_z(seed, n, vae.config.z_dim)
        im = Image.fromarray(images.grid(np.asarray(vae.decode(z, training=False)), ncols=cols))
        head = Image.new("RGB", (im.width, 16), "white")
        ImageDraw.Draw(head).text((4, 2), label, fill="black")
        both = Image.new("RGB", (im.width, im.height + 16), "white")
        both.paste(head, (0, 0))
        both.paste(im, (0, 16))
        tiles.append(both)
    out = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), tiles[0].height), "white")
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + 4
    out.quantize(256).save(path, optimize=True)  # a palette keeps the PNG small enough for the README


def reconstructions(folders, labels, n, path):
    """One row per run: its decodes (z = mu) of the first n held-out images of its own split (the
    runs must share data and split for the rows to show the same faces). Generated pixels only."""
    rows = []
    for folder in folders:
        vae, _, meta = source.load_checkpoint(os.path.join(folder, "checkpoint.npz"))
        chosen = source.choose(meta, vae.config.image_size, split="held-out", quiet=True)
        x = ImageReader(chosen.pixels).read(chosen.idx[:n])
        rows.append(np.clip(np.asarray(vae.decode(vae.encode(x, training=False)[0], training=False)), 0, 1))
    images.save_rows(path, rows, labels=labels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders (checkpoint.npz, metrics.csv, eval.json)")
    p.add_argument("--labels", help="comma-separated names for the runs (default: the folder names)")
    p.add_argument("--figure", help="write the samples side by side to this PNG")
    p.add_argument("--n", type=int, default=16, help="samples per run in the figure (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the figure's z (default 0)")
    p.add_argument("--reconstructions", metavar="PNG",
                   help="write each run's reconstructions of the first 8 held-out images, a row per run")
    args = p.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [os.path.basename(os.path.normpath(r)) for r in args.runs]
    if len(labels) != len(args.runs):
        sys.exit(f"--labels names {len(labels)} runs; {len(args.runs)} were given")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for folder, label in zip(args.runs, labels):
        print("| " + " | ".join(row(folder, label)) + " |")
    if args.figure:
        panel(args.runs, labels, args.n, args.seed, args.figure)
        print(f"\nwrote {args.figure}")
    if args.reconstructions:
        reconstructions(args.runs, labels, 8, args.reconstructions)
        print(f"wrote {args.reconstructions}")


if __name__ == "__main__":
    main()
