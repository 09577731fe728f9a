"""python -m scratchvae.sample: new faces, reconstructions and latent walks from a checkpoint.

Uses the model's inference mode (BatchNorm moving statistics); z ~ N(0, I) from --seed.
"""

import argparse
import os
import sys

import numpy as np

from scratchvae import checkpoint, images
from scratchvae.model import VAE


def build_parser():
    p = argparse.ArgumentParser(prog="python -m scratchvae.sample",
                                description="Draw faces from a scratchvae checkpoint.")
    p.add_argument("checkpoint", help="a checkpoint.npz written by python -m scratchvae.train")
    p.add_argument("-n", type=int, default=64, help="number of new faces (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed for z ~ N(0, I) (default 0)")
    p.add_argument("--out", default="samples.png", help="PNG grid of new faces (default samples.png)")
    p.add_argument("--reconstruct", nargs="+", metavar="IMG", help="image files to encode and decode")
    p.add_argument("--interpolate", nargs="*", metavar="IMG",
                   help="a latent walk between two images, or two random points when none are given")
    p.add_argument("--steps", type=int, default=8, help="images in the interpolation strip (default 8)")
    p.add_argument("--crop", choices=["center", "squash"], default="center", help="how to fit given images")
    return p


def read_images(paths, size, crop):
    from scratchvae import data
    out = []
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"no image at {path}")
        pixels, why = data.decode_image(path, size, crop)
        if pixels is None:
            raise ValueError(f"cannot use {path}: {why}")
        out.append(pixels)
    return np.stack(out).astype(np.float32) * np.float32(1 / 255)


def run(args):
    vae = VAE.load(args.checkpoint)
    bad = checkpoint.non_finite({**vae.params(), **vae.state()})
    if bad is not None:
        raise ValueError(f"{args.checkpoint} holds non-finite values in {bad}: it would draw blank faces; "
                         f"use an earlier checkpoint")
    size, stem = vae.config.image_size, os.path.splitext(args.out)[0]
    if args.n < 1 or args.steps < 2:
        raise ValueError("-n must be at least 1 and --steps at least 2")
    rng = np.random.default_rng(args.seed)
    z = rng.standard_normal((args.n, vae.config.z_dim), dtype=np.float32)
    images.save_grid(args.out, vae.decode(z))
    written = [args.out]
    if args.reconstruct:
        x = read_images(args.reconstruct, size, args.crop)
        path = f"{stem}_reconstructions.png"
        images.save_rows(path, [x, vae.decode(vae.encode(x)[0])], labels=["input", "reconstructed"])
        written.append(path)
    if args.interpolate is not None:
        if len(args.interpolate) == 2:
            ends = vae.encode(read_images(args.interpolate, size, args.crop))[0]
        elif not args.interpolate:
            ends = rng.standard_normal((2, vae.config.z_dim), dtype=np.float32)
        else:
            raise ValueError("--interpolate takes two image files, or none for two random points")
        t = np.linspace(0, 1, args.steps, dtype=np.float32)[:, None]
        path = f"{stem}_interpolation.png"
        images.save_rows(path, [vae.decode((1 - t) * ends[0] + t * ends[1])])
        written.append(path)
    print("wrote " + ", ".join(written))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (checkpoint.CheckpointError, ValueError, OSError, MemoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
