"""python -m scratchvae.attributes: attribute vectors of a checkpoint from CelebA's labels.

Encodes the labelled images in inference mode (z = z_mean), takes per attribute the difference of
the mean code with and without it, writes them with the checkpoint's identity (scratchvae/vectors.py)
and prints the attributes ranked by how far their direction moves a face relative to the codes' spread.
"""

import argparse
import os
import sys

import numpy as np

from scratchvae import labels, threads, vectors
from scratchvae.errors import UserError
from scratchvae.evaluation import source
from scratchvae.prefetch import ImageReader

SPLIT_CHOICES = ("train", "held-out", "all")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m scratchvae.attributes",
                                description="Attribute vectors (mean code with an attribute minus without) "
                                            "from CelebA's list_attr_celeba.txt.")
    p.add_argument("checkpoint", help="a checkpoint.npz written by python -m scratchvae.train")
    p.add_argument("--data", help="the labelled images: a folder, a .zip or CelebA's layout (default: the "
                                  "source the checkpoint was trained on)")
    p.add_argument("--attributes", metavar="PATH",
                   help="list_attr_celeba.txt (default: found in or beside --data, or in an Anno/ folder)")
    p.add_argument("--out", help="vectors file to write (default: vectors.npz beside the checkpoint)")
    p.add_argument("--force", action="store_true", help="replace an existing vectors file")
    p.add_argument("--split", choices=SPLIT_CHOICES,
                   help="train: the run's training images (default on its own data); held-out: its held-out "
                        "images; all: every image (default on other data)")
    p.add_argument("--limit", type=int, help="encode at most the first N images of the split")
    p.add_argument("--min-count", type=int, default=vectors.DEFAULT_MIN_COUNT,
                   help=f"skip an attribute with fewer images on either side (default {vectors.DEFAULT_MIN_COUNT})")
    p.add_argument("--crop", choices=list(source.data.CROPS),
                   help="how images are fitted to the checkpoint's size (default: the run's, else center)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--cache-dir", help="where decoded images are cached (default: the user cache folder)")
    p.add_argument("--threads", type=int, help="threads for Numba and BLAS (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def load_model(path):
    """(vae, meta, identity); one clear UserError for anything wrong with the file."""
    vae, arrays, meta = source.load_checkpoint(path)
    return vae, meta, vectors.checkpoint_identity(arrays)


def encode_all(vae, reader, idx, batch_size, quiet=True):
    """z_mean of the images reader.read(idx) in inference mode, (len(idx), z_dim) float32."""
    from tqdm import tqdm
    out = np.empty((len(idx), vae.config.z_dim), np.float32)
    bar = tqdm(total=len(idx), desc="encoding", unit="img", disable=quiet, leave=False, dynamic_ncols=True)
    for start in range(0, len(idx), batch_size):
        stop = min(len(idx), start + batch_size)
        out[start:stop] = np.asarray(vae.encode(reader.read(idx[start:stop]))[0])
        bar.update(stop - start)
    bar.close()
    return out


def table(v):
    """The ranked table: attributes by length of their direction over the codes' spread along it."""
    ratio, length = v.ratio(), np.linalg.norm(v.vectors.astype(np.float64), axis=1)
    lines = [f"{'rank':>4}  {'attribute':<20} {'with':>6} {'without':>7} {'|v|':>7} {'spread':>7} {'|v|/spread':>10}"]
    for rank, i in enumerate(v.ranking(), 1):
        lines.append(f"{rank:>4}  {v.names[i]:<20} {int(v.n_pos[i]):>6} {int(v.n_neg[i]):>7} {length[i]:>7.3f} "
                     f"{v.spread[i]:>7.3f} {ratio[i]:>10.2f}")
    return "\n".join(lines)


def run(args):
    if args.batch_size < 1 or args.min_count < 1:
        raise UserError("--batch-size and --min-count must be at least 1")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "vectors.npz")
    if os.path.exists(out) and not args.force:
        raise UserError(f"{out} exists: pass --force to replace it, or choose another --out")
    try:
        threads.set_threads(args.threads)
    except ValueError as e:
        raise UserError(f"--threads: {e}") from None
    vae, meta, identity = load_model(args.checkpoint)
    chosen = source.choose(meta, vae.config.image_size, args.data, args.split, None, args.crop, args.limit,
                           args.cache_dir, args.quiet, own_split="train")
    for note in chosen.notes:
        print(note, file=sys.stderr)
    if chosen.names is None:
        raise UserError("the built-in synthetic faces have no labels: pass --data a labelled CelebA folder")
    found = labels.read(labels.find(chosen.source, args.attributes))
    values = labels.for_images(found, [chosen.names[i] for i in chosen.idx])
    reader = ImageReader(chosen.pixels)
    z = encode_all(vae, reader, chosen.idx, args.batch_size, args.quiet)
    result = vectors.directions(z, values, found.attributes, identity, args.min_count)
    if not result.names:
        raise UserError(f"every attribute has fewer than {args.min_count} of the {len(z)} images on one side: "
                        f"use more images or a lower --min-count")
    try:
        vectors.save(out, result)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e}): choose a writable --out") from None
    print(f"{len(z)} images ({chosen.split} split of {chosen.source}), labels from {found.path}")
    print(table(result))
    if result.skipped:
        print(f"skipped (fewer than {args.min_count} images on one side): {', '.join(result.skipped)}")
    print(f"wrote {out} ({len(result.names)} attributes, checkpoint identity {identity[:12]}…)")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
