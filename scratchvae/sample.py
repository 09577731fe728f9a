"""python -m scratchvae.sample: new faces, reconstructions, latent walks, attribute edits and morphs.

Uses the model's inference mode (BatchNorm moving statistics). z ~ N(0, I) comes from --seed through
scratchvae.latent.draw_z, the draw export/sample.py makes too, so both samplers give the same faces.
Pictures are named after what they show and written beside the checkpoint unless --out says otherwise;
an existing picture is replaced only with --force.
"""

import argparse
import os
import re
import sys

import numpy as np

from scratchvae import checkpoint, images, latent, vectors
from scratchvae.errors import UserError
from scratchvae.model import VAE

DECODE_BATCH = 64


def build_parser():
    p = argparse.ArgumentParser(prog="python -m scratchvae.sample",
                                description="Draw faces from a scratchvae checkpoint.")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint.npz written by python -m scratchvae.train")
    p.add_argument("-n", type=int, help="new faces in the grid (default 64), or random faces to edit when "
                                        "--attribute is given without --image (default 8)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for z: face i is row i of the one documented draw, SplitMix64 -> Box-Muller "
                        "(scratchvae.latent.draw_z; the web page draws the same) (default 0)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scale of the prior's standard deviation for random z (default 1)")
    p.add_argument("--out", help="PNG to write (default: named after what it shows, beside the checkpoint)")
    p.add_argument("--force", action="store_true", help="replace pictures that already exist")
    p.add_argument("--reconstruct", nargs="+", metavar="IMG", help="image files to encode and decode")
    p.add_argument("--interpolate", nargs="*", metavar="IMG",
                   help="a latent walk between two images, or between the first two random faces when none are given")
    p.add_argument("--steps", type=int, default=8, help="decoded frames of a walk or morph (default 8)")
    p.add_argument("--crop", choices=["center", "squash"], default="center", help="how to fit given images")
    p.add_argument("--vectors", metavar="VECTORS.npz", help="attribute vectors from python -m scratchvae.attributes")
    p.add_argument("--attribute", action="append", metavar="EXPR",
                   help="an attribute or a sum such as Smiling+Blond_Hair-Eyeglasses; repeat for more rows")
    p.add_argument("--image", action="extend", nargs="+", metavar="IMG",
                   help="faces to edit with --attribute (default: -n random faces)")
    p.add_argument("--strengths", default="-3:3:7",
                   help="s in z + s*v: first:last:count or a list like 0,1,2 (default -3:3:7)")
    p.add_argument("--morph", nargs=2, metavar=("A", "B"),
                   help="linear and spherical interpolation between two face images, as two rows")
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


def place_checkpoint(args):
    """Lists of images end where the next option starts, so a checkpoint written after them lands in
    the list: take it back out (an image is never a .npz), and insist on exactly one checkpoint."""
    found = []
    for key in ("reconstruct", "interpolate", "image"):
        values = getattr(args, key)
        if values:
            found += [v for v in values if v.lower().endswith(".npz")]
            setattr(args, key, [v for v in values if not v.lower().endswith(".npz")])
    if args.checkpoint is None and len(found) == 1:
        args.checkpoint = found.pop()
    if args.checkpoint is None:
        raise UserError("give the checkpoint.npz to sample from (python -m scratchvae.sample CHECKPOINT ...)")
    if found:
        raise UserError(f"{found[0]} is not an image: give one checkpoint, before the options")


def _stem(path):
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", os.path.splitext(os.path.basename(path))[0])[:40]


def describe(paths):
    """A file-name part naming the input images: their stems, the first two and a count."""
    stems = [_stem(p) for p in paths[:2]]
    return "-".join(stems) + (f"-and-{len(paths) - 2}-more" if len(paths) > 2 else "")


def plan_outputs(args, folder):
    """{picture kind: path}, named after what each shows; refused when one exists without --force."""
    random_part = f"seed{args.seed}" + (f"-t{args.temperature:g}" if args.temperature != 1 else "")
    if args.vectors or args.attribute:
        faces = describe(args.image) if args.image else f"n{args.n or 8}-{random_part}"
        named = {"attributes": f"attributes-{'_'.join(_stem(e) for e in args.attribute or [])}-{faces}.png"}
    elif args.morph:
        named = {"morph": f"morph-{describe(args.morph)}.png"}
    else:
        named = {"samples": f"samples-n{args.n or 64}-{random_part}.png"}
        if args.reconstruct:
            named["reconstructions"] = f"reconstructions-{describe(args.reconstruct)}.png"
        if args.interpolate is not None:
            named["interpolation"] = f"interpolation-{describe(args.interpolate) or random_part}.png"
    if args.out:
        stem = os.path.splitext(args.out)[0]
        paths = {k: args.out if i == 0 else f"{stem}_{k}.png" for i, k in enumerate(named)}
    else:
        paths = {k: os.path.join(folder, name) for k, name in named.items()}
    for path in paths.values():
        if os.path.exists(path) and not args.force:
            raise UserError(f"{path} exists: pass --force to replace it, or choose another --out")
    return paths


def check_modes(args):
    new = [flag for flag, on in (("--vectors/--attribute", args.vectors or args.attribute), ("--morph", args.morph))
           if on]
    old = [flag for flag, on in (("--reconstruct", args.reconstruct), ("--interpolate", args.interpolate is not None))
           if on]
    if len(new) > 1 or (new and old):
        raise UserError(f"{' and '.join(new + old)} make different pictures: run them one at a time")
    if args.image and not args.attribute:
        raise UserError("--image names faces to edit with --vectors and --attribute "
                        "(to reconstruct, use --reconstruct)")
    if bool(args.vectors) != bool(args.attribute):
        raise UserError("--vectors and --attribute go together: the vectors file, and the attributes to add")
    if (args.n is not None and args.n < 1) or args.steps < 2:
        raise UserError("-n must be at least 1 and --steps at least 2")
    if args.interpolate is not None and len(args.interpolate) not in (0, 2):
        raise UserError(f"--interpolate takes two images or none, got {len(args.interpolate)}")


def decode(vae, z):
    """Decoded images of z (..., z_dim), in batches, with the leading shape kept."""
    flat = z.reshape(-1, z.shape[-1])
    out = [np.asarray(vae.decode(flat[i:i + DECODE_BATCH])) for i in range(0, len(flat), DECODE_BATCH)]
    return np.concatenate(out).reshape(z.shape[:-1] + out[0].shape[1:])


def attribute_picture(vae, found, expressions, strengths, z, x=None, face_names=None):
    """(rows, labels): for each expression and face, decodes of z + s * v across the strengths,
    after the input image when there is one."""
    rows, labels = [], []
    for text in expressions:
        terms = latent.parse_expression(text, found.names, found.skipped)
        faces = decode(vae, latent.attribute_rows(z, latent.combine(terms, found.names, found.vectors), strengths))
        for i, row in enumerate(faces):
            rows.append(row if x is None else np.concatenate([x[i:i + 1], row]))
            labels.append(f"{text}, {face_names[i]}")
    return rows, labels


def morph_picture(vae, x, steps):
    """(rows, labels): the two faces at the ends, linear and spherical walks between their codes."""
    z, t = np.asarray(vae.encode(x)[0]), np.linspace(0, 1, steps)
    return [np.concatenate([x[:1], decode(vae, walk(z[0], z[1], t)), x[1:]])
            for walk in (latent.lerp, latent.slerp)], ["linear", "slerp"]


def run(args):
    place_checkpoint(args)
    check_modes(args)
    strengths = latent.parse_strengths(args.strengths)
    paths = plan_outputs(args, os.path.dirname(os.path.abspath(args.checkpoint)))
    vae, arrays, _ = VAE.load(args.checkpoint, with_extras=True)
    bad = checkpoint.non_finite({**vae.params(), **vae.state()})
    if bad is not None:
        raise ValueError(f"{args.checkpoint} holds non-finite values in {bad}: it would draw blank faces; "
                         f"use an earlier checkpoint")
    size, z_dim = vae.config.image_size, vae.config.z_dim
    if args.attribute:
        found = vectors.load(args.vectors, vectors.checkpoint_identity(arrays), z_dim)
        for text in args.attribute:
            latent.parse_expression(text, found.names, found.skipped)  # refuse a bad name before any work
        if args.image:
            x = read_images(args.image, size, args.crop)
            z, names = np.asarray(vae.encode(x)[0]), [os.path.basename(p) for p in args.image]
        else:
            x, n = None, args.n or 8
            z, names = latent.draw_z(args.seed, n, z_dim, args.temperature), [f"z{i}" for i in range(n)]
        rows, labels = attribute_picture(vae, found, args.attribute, strengths, z, x, names)
        images.save_rows(paths["attributes"], rows, labels=labels)
        print(f"columns: {'input, ' if x is not None else ''}s = {', '.join(f'{s:g}' for s in strengths)}")
    elif args.morph:
        rows, labels = morph_picture(vae, read_images(args.morph, size, args.crop), args.steps)
        images.save_rows(paths["morph"], rows, labels=labels)
    else:
        z = latent.draw_z(args.seed, args.n or 64, z_dim, args.temperature)
        images.save_grid(paths["samples"], decode(vae, z))
        if args.reconstruct:
            x = read_images(args.reconstruct, size, args.crop)
            images.save_rows(paths["reconstructions"], [x, decode(vae, np.asarray(vae.encode(x)[0]))],
                             labels=["input", "reconstructed"])
        if args.interpolate is not None:
            if args.interpolate:
                ends = np.asarray(vae.encode(read_images(args.interpolate, size, args.crop))[0])
            else:
                ends = latent.draw_z(args.seed, 2, z_dim, args.temperature)  # the grid's first two faces
            t = np.linspace(0, 1, args.steps)
            images.save_rows(paths["interpolation"], [decode(vae, latent.lerp(ends[0], ends[1], t))])
    print("wrote " + ", ".join(paths.values()))
    return 0


def main(argv=None):
    argv = latent.fix_negative_values(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (UserError, checkpoint.CheckpointError, ValueError, OSError, MemoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
