"""python -m scratchvae.sample: new faces, reconstructions, latent walks, attribute edits and morphs.

Uses the model's inference mode (BatchNorm moving statistics). Random faces come from --seed through
scratchvae.latent.draw_z (z ~ N(0, I)), or from a prior fitted to the checkpoint's codes (--prior
prior.npz, scratchvae.latent.mixture.draw); export/sample.py and the web page draw the same, so the three
samplers give the same faces.

Output convention (export/sample.py follows it too, and the same command writes the same files):
each mode makes one picture, named after what it shows: grid (the default), reconstructions
(--reconstruct), walk (--interpolate), edits (--vectors with --attribute) and morph (--morph); modes
may be combined, and --grid adds the grid to others. Pictures go beside the checkpoint; --out names
the file when one picture is made, and the folder (created when needed) when several are or when it
ends in /. An existing picture is replaced only with --force. Every input is checked before anything
is written, so a failed run leaves no file behind.
"""

import argparse
import math
import os
import re
import sys

import numpy as np

from scratchvae import images, latent
from scratchvae.latent import vectors
from scratchvae.model import VAE
from scratchvae.run import checkpoint
from scratchvae.run.errors import UserError, run_command

DECODE_BATCH = 64
RECON_COLS = 8  # reconstructions per row pair (inputs above, reconstructions below)
KINDS = ("grid", "reconstructions", "walk", "edits", "morph")  # the order pictures are made and listed in

DESCRIPTION = ("Draw faces from a scratchvae checkpoint: a grid of new faces, reconstructions of\n"
               "photographs, walks between two faces, attribute edits and morphs, each as one PNG.")
CONVENTION = """\
pictures (one per mode; modes may be combined):
  grid             -n new faces from --seed (made when no other mode is given, or with --grid)
  reconstructions  --reconstruct IMG...: each photograph above its reconstruction
  walk             --interpolate [A B]: a straight line between two photographs' codes, or between
                   the first two random faces when none are given
  edits            --vectors V --attribute EXPR: z + s*v across --strengths, for the --image
                   photographs or -n random faces
  morph            --morph A B: linear and spherical (slerp) walks between two photographs

where they go: each picture is named after what it shows (grid-n64-seed0.png, walk-a-b.png, ...)
and written {beside}. --out names the file when the command makes one picture, and the
folder (created when needed) when it makes several, or when it ends in /. An existing picture is
replaced only with --force. Every input is checked before anything is written: a failed run leaves
no file behind, and the corrected command runs as if it were the first.

random faces: z ~ N(0, I) times --temperature, drawn from --seed (face i is row i of the draw), or
from the fitted prior with --prior prior.npz (--temperature scales each component's spread)."""


def build_parser():
    p = argparse.ArgumentParser(prog="python -m scratchvae.sample", description=DESCRIPTION,
                                epilog=CONVENTION.format(beside="beside the checkpoint"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="a checkpoint.npz written by python -m scratchvae.train")
    p.add_argument("-n", type=int, help="new faces in the grid (default 64), or random faces to edit when "
                                        "--attribute is given without --image (default 8)")
    p.add_argument("--grid", action="store_true", help="make the grid as well as the other pictures asked for")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for random faces: face i is row i of the one documented draw, SplitMix64 -> "
                        "Box-Muller (scratchvae.latent.draw_z; the web page draws the same) (default 0)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scale of the prior's spread for random faces (default 1)")
    p.add_argument("--prior", metavar="PRIOR.npz",
                   help="draw random faces from this prior, fitted to the checkpoint's codes by python -m "
                        "scratchvae.prior, instead of N(0, I)")
    p.add_argument("--out", help="the PNG to write when one picture is made, else the folder for them "
                                 "(default: named after what each shows, beside the checkpoint)")
    p.add_argument("--force", action="store_true", help="replace pictures that already exist")
    p.add_argument("--reconstruct", nargs="+", metavar="IMG", help="photographs to encode and decode")
    p.add_argument("--interpolate", nargs="*", metavar="IMG",
                   help="a walk between two photographs, or between the first two random faces when none are given")
    p.add_argument("--steps", type=int, default=8, help="decoded frames of a walk or morph (default 8)")
    p.add_argument("--crop", choices=["center", "squash"], default="center", help="how to fit given images")
    p.add_argument("--vectors", metavar="VECTORS.npz", help="attribute vectors from python -m scratchvae.attributes")
    p.add_argument("--attribute", action="append", metavar="EXPR",
                   help="an attribute or a sum such as Smiling+Blond_Hair-Eyeglasses (the page's 'Blond Hair' "
                        "works too); repeat for more rows")
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


def wanted(args):
    """The pictures the options ask for, in KINDS order."""
    asked = {"reconstructions": bool(args.reconstruct), "walk": args.interpolate is not None,
             "edits": bool(args.vectors or args.attribute), "morph": bool(args.morph)}
    asked["grid"] = args.grid or not any(asked.values())
    return [kind for kind in KINDS if asked[kind]]


def draws_random_faces(args, kinds):
    """True when the command decodes random faces: the grid, edits of -n faces, a walk between two of them."""
    return "grid" in kinds or ("edits" in kinds and not args.image) or ("walk" in kinds and not args.interpolate)


def check_modes(args):
    """Option mistakes, before any file is read."""
    kinds = wanted(args)
    if args.image and not args.attribute:
        raise UserError("--image names faces to edit with --vectors and --attribute "
                        "(to reconstruct, use --reconstruct)")
    if bool(args.vectors) != bool(args.attribute):
        raise UserError("--vectors and --attribute go together: the vectors file, and the attributes to add")
    if (args.n is not None and args.n < 1) or args.steps < 2:
        raise UserError("-n must be at least 1 and --steps at least 2")
    if args.n is not None and "grid" not in kinds and not ("edits" in kinds and not args.image):
        raise UserError(f"-n counts the grid's faces or the random faces to edit, and this command makes neither "
                        f"(it makes the {' and '.join(kinds)}): add --grid for a grid as well")
    if args.interpolate is not None and len(args.interpolate) not in (0, 2):
        raise UserError(f"--interpolate takes two images or none, got {len(args.interpolate)}")
    if args.prior and not draws_random_faces(args, kinds):
        raise UserError("--prior is for random faces (the grid, -n faces to edit, a walk between random faces), "
                        "and this command draws none")
    if not args.temperature > 0 or not math.isfinite(args.temperature):
        raise UserError(f"--temperature {args.temperature}: use a positive number (1 is the prior)")
    return kinds


def _stem(path):
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", os.path.splitext(os.path.basename(path))[0])[:40]


def describe(paths):
    """A file-name part naming the input images: their stems, the first two and a count."""
    stems = [_stem(p) for p in paths[:2]]
    return "-".join(stems) + (f"-and-{len(paths) - 2}-more" if len(paths) > 2 else "")


def picture_names(args, kinds, expressions):
    """{kind: file name}, each saying what the picture shows; export/sample.py names them the same."""
    random_part = (f"seed{args.seed}" + ("-prior" if args.prior else "")
                   + (f"-t{args.temperature:g}" if args.temperature != 1 else ""))
    names = {"grid": f"grid-n{args.n or 64}-{random_part}.png",
             "reconstructions": f"reconstructions-{describe(args.reconstruct or [])}.png",
             "walk": f"walk-{describe(args.interpolate or []) or random_part}.png",
             "morph": f"morph-{describe(args.morph or [])}.png"}
    if "edits" in kinds:
        faces = describe(args.image) if args.image else f"n{args.n or 8}-{random_part}"
        names["edits"] = f"edits-{'_'.join(_stem(e) for e in expressions)}-{faces}.png"
    return {kind: names[kind] for kind in kinds}


def _first_missing(folder):
    """The outermost folder on the way to `folder` that does not exist yet (None when it exists)."""
    folder, missing = os.path.abspath(folder), None
    while not os.path.exists(folder):
        folder, missing = os.path.dirname(folder), folder
    return missing


def plan_outputs(names, out, beside, force):
    """{kind: path} by the output convention; refused when a picture exists without --force, when one
    --out file is given for several pictures, or when the folder cannot be written."""
    as_folder = out is not None and (out.endswith(("/", os.sep)) or os.path.isdir(out))
    if out is not None and len(names) == 1 and not as_folder:
        paths = {kind: out for kind in names}
    else:
        if out is not None and (os.path.isfile(out) or out.lower().endswith(".png")):
            raise UserError(f"--out {out} names one file, but this command makes {len(names)} pictures "
                            f"({', '.join(names)}): give --out a folder")
        paths = {kind: os.path.join(out or beside, name) for kind, name in names.items()}
    folder = os.path.dirname(os.path.abspath(next(iter(paths.values()))))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a folder" if not os.path.isdir(existing) else "cannot be written"
        raise UserError(f"cannot write into {folder}: {existing} {why}; choose another --out")
    for path in paths.values():
        if os.path.isdir(path):
            raise UserError(f"{path} is a folder: choose another --out")
        if os.path.exists(path) and not force:
            raise UserError(f"{path} exists: pass --force to replace it, or choose another --out")
    return paths


def write_all(paths, pictures):
    """Write every picture; when one write fails, remove those this run created (and its new folders)."""
    created, made = _first_missing(os.path.dirname(os.path.abspath(next(iter(paths.values()))))), []
    try:
        for kind, path in paths.items():
            new = not os.path.exists(path)
            images.save_png(path, pictures[kind])
            if new:
                made.append(path)
    except OSError as e:
        for path in made:
            os.unlink(path)
        if created:
            _remove_empty(os.path.dirname(os.path.abspath(path)), created)
        raise UserError(f"cannot write {path} ({e.strerror or e}): choose a writable --out") from None


def _remove_empty(folder, top):
    """Remove `folder` and its parents up to `top` while they are empty."""
    while True:
        try:
            os.rmdir(folder)
        except OSError:
            return
        if os.path.abspath(folder) == os.path.abspath(top):
            return
        folder = os.path.dirname(folder)


def decode(vae, z):
    """Decoded images of z (..., z_dim), in batches, with the leading shape kept."""
    flat = z.reshape(-1, z.shape[-1])
    out = [np.asarray(vae.decode(flat[i:i + DECODE_BATCH])) for i in range(0, len(flat), DECODE_BATCH)]
    return np.concatenate(out).reshape(z.shape[:-1] + out[0].shape[1:])


def strength_captions(strengths):
    """Column captions of an edit: 0, or the strength with its sign (+1.5, -3)."""
    return ["0" if s == 0 else f"{float(s):+.3g}" for s in strengths]


def step_captions(steps):
    """Column captions of a walk: t from 0 to 1."""
    return [f"{t:.2g}" for t in np.linspace(0, 1, steps)]


def attribute_picture(vae, found, expressions, strengths, z, x=None, face_names=None):
    """(rows, labels): for each expression and face, decodes of z + s * v across the strengths,
    after the input image when there is one."""
    rows, labels = [], []
    for text in expressions:
        terms = latent.parse_expression(text, found.names, found.skipped)
        faces = decode(vae, latent.attribute_rows(z, latent.combine(terms, found.names, found.vectors), strengths))
        for i, row in enumerate(faces):
            rows.append(row if x is None else np.concatenate([x[i:i + 1], row]))
            labels.append(f"{latent.expression_text(terms)}, {face_names[i]}")
    return rows, labels


def morph_picture(vae, x, steps):
    """(rows, labels): the two faces at the ends, linear and spherical walks between their codes."""
    z, t = np.asarray(vae.encode(x)[0]), np.linspace(0, 1, steps)
    return [np.concatenate([x[:1], decode(vae, walk(z[0], z[1], t)), x[1:]])
            for walk in (latent.lerp, latent.slerp)], ["linear", "slerp"]


def reconstruction_rows(x, y):
    """(rows, labels): inputs above their reconstructions, RECON_COLS to a row pair, white after the last."""
    cols, rows = min(len(x), RECON_COLS), []
    for i in range(0, len(x), cols):
        blank = np.ones((cols - len(x[i:i + cols]),) + x.shape[1:], np.float32)
        rows += [np.concatenate([x[i:i + cols], blank]), np.concatenate([y[i:i + cols], blank])]
    return rows, ["input", "reconstructed"] * (len(rows) // 2)


def load_model(path):
    """(vae, identity); refused in one line when it holds non-finite values."""
    vae, arrays, _ = VAE.load(path, with_extras=True)
    bad = checkpoint.non_finite({**vae.params(), **vae.state()})
    if bad is not None:
        raise ValueError(f"{path} holds non-finite values in {bad}: it would draw blank faces; "
                         f"use an earlier checkpoint")
    return vae, vectors.checkpoint_identity(arrays)


def random_faces(args, identity, z_dim):
    """draw(n): the first n random codes of --seed, from N(0, I) or from --prior (checked here, before
    anything is drawn or written)."""
    if not args.prior:
        return lambda n: latent.draw_z(args.seed, n, z_dim, args.temperature)
    from scratchvae.latent import mixture, prior
    fitted = prior.load(args.prior, identity=identity, z_dim=z_dim)
    return lambda n: mixture.draw(fitted.weights, fitted.means, fitted.cholesky, args.seed, n, args.temperature)


def run(args):
    place_checkpoint(args)
    kinds = check_modes(args)
    strengths = latent.parse_strengths(args.strengths)
    vae, identity = load_model(args.checkpoint)
    size, z_dim = vae.config.image_size, vae.config.z_dim
    draw = random_faces(args, identity, z_dim)
    expressions, found = [], None
    if "edits" in kinds:
        found = vectors.load(args.vectors, identity, z_dim)
        expressions = [latent.expression_text(latent.parse_expression(text, found.names, found.skipped))
                       for text in args.attribute]
    photos = {key: read_images(getattr(args, key), size, args.crop)
              for key in ("reconstruct", "interpolate", "image", "morph") if getattr(args, key)}
    paths = plan_outputs(picture_names(args, kinds, expressions), args.out,
                         os.path.dirname(os.path.abspath(args.checkpoint)), args.force)
    pictures = {}
    if "grid" in kinds:
        pictures["grid"] = images.grid(decode(vae, draw(args.n or 64)))
    if "reconstructions" in kinds:
        x = photos["reconstruct"]
        rows, labels = reconstruction_rows(x, decode(vae, np.asarray(vae.encode(x)[0])))
        pictures["reconstructions"] = images.labelled_rows(rows, labels)
    if "walk" in kinds:
        x = photos.get("interpolate")
        ends = draw(2) if x is None else np.asarray(vae.encode(x)[0])  # random: the grid's first two faces
        row = decode(vae, latent.lerp(ends[0], ends[1], np.linspace(0, 1, args.steps)))
        ends_caption = [] if x is None else ["input"]
        pictures["walk"] = images.labelled_rows([row if x is None else np.concatenate([x[:1], row, x[1:]])],
                                                ["linear"], ends_caption + step_captions(args.steps) + ends_caption,
                                                "t")
    if "edits" in kinds:
        x = photos.get("image")
        if x is not None:
            z, names = np.asarray(vae.encode(x)[0]), [os.path.basename(p) for p in args.image]
        else:
            n = args.n or 8
            z, names = draw(n), [f"z{i}" for i in range(n)]
        rows, labels = attribute_picture(vae, found, expressions, strengths, z, x, names)
        pictures["edits"] = images.labelled_rows(rows, labels, ([] if x is None else ["input"])
                                                 + strength_captions(strengths), "strength")
    if "morph" in kinds:
        rows, labels = morph_picture(vae, photos["morph"], args.steps)
        pictures["morph"] = images.labelled_rows(rows, labels, ["input"] + step_captions(args.steps) + ["input"],
                                                 "t")
    write_all(paths, pictures)
    print("wrote " + ", ".join(paths.values()))
    return 0


def main(argv=None):
    argv = latent.fix_negative_values(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    return run_command(run, args, (checkpoint.CheckpointError, ValueError, OSError, MemoryError))


if __name__ == "__main__":
    sys.exit(main())
