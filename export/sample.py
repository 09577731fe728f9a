"""Faces from the exported ONNX models with onnxruntime: a grid of new faces, reconstructions, walks
between faces, attribute edits with the vectors of python -m scratchvae.attributes, and morphs.

Imports only onnxruntime, numpy, Pillow and the standard library (never Numba or scratchvae), so it
runs wherever the .onnx files are copied. Images are NHWC float32 in [0, 1], as the models expect.
Random faces are drawn from --seed as python -m scratchvae.sample draws them (z ~ N(0, I), or the
fitted prior of --prior), so the same seed gives the same faces.

Output convention (python -m scratchvae.sample follows it too, and the same command writes the same
files): each mode makes one picture, named after what it shows: grid (the default), reconstructions
(--reconstruct), walk (--interpolate), edits (--vectors with --attribute) and morph (--morph); modes
may be combined, and --grid adds the grid to others. Pictures go beside the decoder; --out names the
file when one picture is made, and the folder (created when needed) when several are or when it ends
in /. An existing picture is replaced only with --force. Every input (photographs, vectors, prior,
the two graphs and their pairing, the output folder) is checked before anything is written, so a
failed run leaves no file behind.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import onnxruntime as ort

import edits
import pictures

RECON_COLS = 8  # reconstructions per row pair (inputs above, reconstructions below)
KINDS = ("grid", "reconstructions", "walk", "edits", "morph")  # the order pictures are made and listed in

DESCRIPTION = ("Draw faces from the ONNX graphs that export/to_onnx.py writes: a grid of new faces,\n"
               "reconstructions of photographs, walks between two faces, attribute edits and morphs, each as\n"
               "one PNG, with onnxruntime alone.")
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


class SampleError(Exception):
    """A user's mistake; the message is the one line printed."""


def build_parser():
    p = argparse.ArgumentParser(prog="python export/sample.py", description=DESCRIPTION,
                                epilog=CONVENTION.format(beside="beside the decoder"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoder", required=True, help="decoder.onnx from export/to_onnx.py")
    p.add_argument("--encoder", help="encoder.onnx from the same export: needed for --reconstruct, --image, "
                                     "--morph and a walk between photographs")
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
                                 "(default: named after what each shows, beside the decoder)")
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


def parse_args(argv):
    return build_parser().parse_args(edits.fix_negative_values(list(argv)))


def open_runner(path, role):
    if not os.path.isfile(path):
        raise SampleError(f"no {role} model at {path}: give the {role}.onnx that export/to_onnx.py wrote")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings would break the one-line contract
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own classes for bad protobufs and graphs
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise SampleError(f"{path} is not a usable ONNX {role} ({reason})") from None


def _static(dims):
    """Dims after the batch axis as ints, or None where the model leaves them symbolic."""
    rest = dims[1:]
    return [int(d) for d in rest] if all(isinstance(d, int) for d in rest) else None


def _config(runner):
    raw = runner.get_modelmeta().custom_metadata_map.get("config")
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}


def decoder_geometry(runner, path):
    """(z_dim, image size, channels) from the decoder's shapes, else from its metadata."""
    ins, outs = runner.get_inputs(), runner.get_outputs()
    if len(ins) != 1 or len(outs) != 1 or len(ins[0].shape) != 2 or len(outs[0].shape) != 4:
        raise SampleError(f"{path} is not a scratchvae decoder: expected z (N, z_dim) -> image (N, H, W, C)")
    z, image, cfg = _static(ins[0].shape), _static(outs[0].shape), _config(runner)
    try:
        z_dim = z[0] if z else int(cfg["z_dim"])
        size, channels = (image[0], image[2]) if image else (int(cfg["image_size"]), int(cfg["channels"]))
    except (KeyError, TypeError, ValueError):
        raise SampleError(f"{path} has symbolic shapes and no config metadata: re-export it") from None
    return z_dim, size, channels


def check_encoder(runner, path, z_dim, size, channels):
    ins, outs = runner.get_inputs(), runner.get_outputs()
    names = [o.name for o in outs]
    if len(ins) != 1 or "z_mean" not in names or len(ins[0].shape) != 4:
        raise SampleError(f"{path} is not a scratchvae encoder: expected image (N, H, W, C) -> z_mean, z_log_var")
    image, z = _static(ins[0].shape), _static(outs[names.index("z_mean")].shape)
    if (image and image != [size, size, channels]) or (z and z != [z_dim]):
        raise SampleError(f"{path} does not fit the decoder (images {image}, z {z} vs {[size, size, channels]}, "
                          f"[{z_dim}]): export both from one checkpoint")


def identity(decoder, encoder=None, paths=("decoder", "encoder")):
    """The checkpoint identity the models were exported with (metadata prop checkpoint_sha256), or None
    when they carry none; refused when encoder and decoder carry different ones."""
    found = [s.get_modelmeta().custom_metadata_map.get(edits.IDENTITY_KEY) if s else None for s in (decoder, encoder)]
    if found[0] and found[1] and found[0] != found[1]:
        raise SampleError(f"{paths[1]} and {paths[0]} come from different checkpoints (identities {found[1][:12]}… "
                          f"and {found[0][:12]}…): give the encoder.onnx exported with this decoder")
    return found[0] or found[1]


def wanted(args):
    """The pictures the options ask for, in KINDS order."""
    asked = {"reconstructions": bool(args.reconstruct), "walk": args.interpolate is not None,
             "edits": bool(args.vectors or args.attribute), "morph": bool(args.morph)}
    asked["grid"] = args.grid or not any(asked.values())
    return [kind for kind in KINDS if asked[kind]]


def draws_random_faces(args, kinds):
    """True when the command decodes random faces: the grid, edits of -n faces, a walk between two of them."""
    return "grid" in kinds or ("edits" in kinds and not args.image) or ("walk" in kinds and not args.interpolate)


def check_args(args):
    """Option mistakes, before any file is read; the pictures to make."""
    kinds = wanted(args)
    if args.image and not args.attribute:
        raise SampleError("--image names faces to edit with --vectors and --attribute "
                          "(to reconstruct, use --reconstruct)")
    if bool(args.vectors) != bool(args.attribute):
        raise SampleError("--vectors and --attribute go together: the vectors file, and the attributes to add")
    if (args.n is not None and args.n < 1) or args.steps < 2:
        raise SampleError("-n must be at least 1 and --steps at least 2")
    if args.n is not None and "grid" not in kinds and not ("edits" in kinds and not args.image):
        raise SampleError(f"-n counts the grid's faces or the random faces to edit, and this command makes neither "
                          f"(it makes the {' and '.join(kinds)}): add --grid for a grid as well")
    if args.interpolate is not None and len(args.interpolate) not in (0, 2):
        raise SampleError(f"--interpolate takes two images or none, got {len(args.interpolate)}")
    if args.prior and not draws_random_faces(args, kinds):
        raise SampleError("--prior is for random faces (the grid, -n faces to edit, a walk between random faces), "
                          "and this command draws none")
    if not args.temperature > 0 or not math.isfinite(args.temperature):
        raise SampleError(f"--temperature {args.temperature}: use a positive number (1 is the prior)")
    if (args.reconstruct or args.interpolate or args.morph or args.image) and not args.encoder:
        raise SampleError("encoding images (--reconstruct, --interpolate, --morph, --image) "
                          "needs --encoder encoder.onnx")
    return kinds


def _stem(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    return "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "_.+-" else "_" for ch in stem)[:40]


def describe(paths):
    stems = [_stem(p) for p in paths[:2]]
    return "-".join(stems) + (f"-and-{len(paths) - 2}-more" if len(paths) > 2 else "")


def picture_names(args, kinds, expressions):
    """{kind: file name}, each saying what the picture shows, as python -m scratchvae.sample names them."""
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
            raise SampleError(f"--out {out} names one file, but this command makes {len(names)} pictures "
                              f"({', '.join(names)}): give --out a folder")
        paths = {kind: os.path.join(out or beside, name) for kind, name in names.items()}
    folder = os.path.dirname(os.path.abspath(next(iter(paths.values()))))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a folder" if not os.path.isdir(existing) else "cannot be written"
        raise SampleError(f"cannot write into {folder}: {existing} {why}; choose another --out")
    for path in paths.values():
        if os.path.isdir(path):
            raise SampleError(f"{path} is a folder: choose another --out")
        if os.path.exists(path) and not force:
            raise SampleError(f"{path} exists: pass --force to replace it, or choose another --out")
    return paths


def write_all(paths, made):
    """Write every picture; when one write fails, remove those this run created (and its new folders)."""
    created, new_files = _first_missing(os.path.dirname(os.path.abspath(next(iter(paths.values()))))), []
    try:
        for kind, path in paths.items():
            new = not os.path.exists(path)
            pictures.write_png(path, made[kind])
            if new:
                new_files.append(path)
    except pictures.PictureError:
        for path in new_files:
            os.unlink(path)
        folder = os.path.dirname(os.path.abspath(path))
        while created:
            try:
                os.rmdir(folder)
            except OSError:
                break
            if folder == created:
                break
            folder = os.path.dirname(folder)
        raise


def strength_captions(strengths):
    """Column captions of an edit: 0, or the strength with its sign (+1.5, -3)."""
    return ["0" if s == 0 else f"{float(s):+.3g}" for s in strengths]


def step_captions(steps):
    """Column captions of a walk: t from 0 to 1."""
    return [f"{t:.2g}" for t in np.linspace(0, 1, steps)]


def reconstruction_rows(x, y):
    """(rows, labels): inputs above their reconstructions, RECON_COLS to a row pair, white after the last."""
    cols, rows = min(len(x), RECON_COLS), []
    for i in range(0, len(x), cols):
        blank = np.ones((cols - len(x[i:i + cols]),) + x.shape[1:], np.float32)
        rows += [np.concatenate([x[i:i + cols], blank]), np.concatenate([y[i:i + cols], blank])]
    return rows, ["input", "reconstructed"] * (len(rows) // 2)


def random_faces(args, stamp, z_dim):
    """draw(n): the first n random codes of --seed, from N(0, I) or from --prior, whose checkpoint_sha256
    must be the graphs' (checked here, before anything is drawn or written)."""
    if not args.prior:
        return lambda n: edits.draw_z(args.seed, n, z_dim, args.temperature)
    w, mu, factor = edits.load_prior(args.prior, z_dim, stamp)
    return lambda n: edits.draw_prior(w, mu, factor, args.seed, n, args.temperature)


def run(args):
    kinds = check_args(args)
    strengths = edits.parse_strengths(args.strengths)
    decoder = open_runner(args.decoder, "decoder")
    z_dim, size, channels = decoder_geometry(decoder, args.decoder)
    encoder = None
    if args.encoder:
        encoder = open_runner(args.encoder, "encoder")
        check_encoder(encoder, args.encoder, z_dim, size, channels)
    stamp = identity(decoder, encoder, (args.decoder, args.encoder))
    draw = random_faces(args, stamp, z_dim)
    expressions = []
    if "edits" in kinds:
        names, vec, skipped = edits.load_vectors(args.vectors, z_dim, stamp)
        expressions = [edits.expression_text(edits.parse_expression(text, names, skipped)) for text in args.attribute]
    photos = {key: np.stack([pictures.load_image(p, size, channels, args.crop) for p in getattr(args, key)])
              for key in ("reconstruct", "interpolate", "image", "morph") if getattr(args, key)}  # (K, S, S, C)
    paths = plan_outputs(picture_names(args, kinds, expressions), args.out,
                         os.path.dirname(os.path.abspath(args.decoder)), args.force)

    def decode(z):
        """Images of z (..., z_dim), the leading shape kept."""
        flat = np.ascontiguousarray(z.reshape(-1, z_dim), dtype=np.float32)
        out = decoder.run(["image"], {"z": flat})[0]
        return out.reshape(z.shape[:-1] + out.shape[1:])

    def encode(x):
        return encoder.run(["z_mean"], {"image": x})[0]  # the posterior mean: no sampling noise

    made = {}
    if "grid" in kinds:
        n = args.n or 64
        made["grid"] = pictures.tile(decode(draw(n)), math.ceil(math.sqrt(n)))
    if "reconstructions" in kinds:
        x = photos["reconstruct"]
        made["reconstructions"] = pictures.labelled_rows(*reconstruction_rows(x, decode(encode(x))))
    if "walk" in kinds:
        x = photos.get("interpolate")
        z = draw(2) if x is None else encode(x)  # random: the grid's first two faces
        row = decode(edits.lerp(z[0], z[1], np.linspace(0, 1, args.steps)))
        ends = [] if x is None else ["input"]
        made["walk"] = pictures.labelled_rows([row if x is None else np.concatenate([x[:1], row, x[1:]])],
                                              ["linear"], ends + step_captions(args.steps) + ends, "t")
    if "edits" in kinds:
        x = photos.get("image")
        if x is not None:
            z, faces = encode(x), [os.path.basename(p) for p in args.image]
        else:
            n = args.n or 8
            z, faces = draw(n), [f"z{i}" for i in range(n)]
        rows, labels = [], []
        for text in expressions:
            edited = decode(edits.attribute_rows(z, edits.combine(edits.parse_expression(text, names), names, vec),
                                                 strengths))
            for i, row in enumerate(edited):
                rows.append(row if x is None else np.concatenate([x[i:i + 1], row]))
                labels.append(f"{text}, {faces[i]}")
        made["edits"] = pictures.labelled_rows(rows, labels, ([] if x is None else ["input"])
                                               + strength_captions(strengths), "strength")
    if "morph" in kinds:
        x = photos["morph"]
        z, t = encode(x), np.linspace(0, 1, args.steps)
        rows = [np.concatenate([x[:1], decode(walk(z[0], z[1], t)), x[1:]]) for walk in (edits.lerp, edits.slerp)]
        made["morph"] = pictures.labelled_rows(rows, ["linear", "slerp"],
                                               ["input"] + step_captions(args.steps) + ["input"], "t")
    write_all(paths, made)
    return [(path, made[kind].shape) for kind, path in paths.items()]


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        written = run(args)
    except (SampleError, edits.EditError, pictures.PictureError) as e:
        print(f"sample: error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(f"{path} ({shape[1]}x{shape[0]})" for path, shape in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
