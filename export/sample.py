"""Faces from the exported ONNX models with onnxruntime: a sample grid, reconstructions, walks between
faces, and attribute edits with the vectors of python -m scratchvae.attributes.

Imports only onnxruntime, numpy, Pillow and the standard library (never Numba or scratchvae), so it
runs wherever the .onnx files are copied. Images are NHWC float32 in [0, 1], as the models expect.
z is drawn from --seed as python -m scratchvae.sample draws it, so the same seed gives the same faces.
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


class SampleError(Exception):
    """A user's mistake; the message is the one line printed."""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decoder", required=True, help="decoder.onnx from export/to_onnx.py")
    p.add_argument("--encoder", help="encoder.onnx: needed for --reconstruct, --image, --morph and image interpolation")
    p.add_argument("-n", type=int, help="faces in the sample grid (default 64), or random faces to edit when "
                                        "--attribute is given without --image (default 8)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for z: face i is row i of the one documented draw, SplitMix64 -> Box-Muller "
                        "(scratchvae.latent.draw_z; the web page draws the same) (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the prior's standard deviation (default 1)")
    p.add_argument("--out", help="PNG to write (default: named after what it shows, beside the decoder)")
    p.add_argument("--force", action="store_true", help="replace a picture that already exists")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--reconstruct", nargs="+", metavar="IMG", help="write input/reconstruction pairs instead")
    mode.add_argument("--interpolate", nargs="*", metavar="IMG",
                      help="write an interpolation strip instead: between two images, or the first two random faces")
    mode.add_argument("--morph", nargs=2, metavar=("A", "B"), help="linear and spherical walks between two faces")
    mode.add_argument("--vectors", metavar="VECTORS.npz", help="attribute vectors from python -m scratchvae.attributes")
    p.add_argument("--attribute", action="append", metavar="EXPR",
                   help="with --vectors: an attribute or a sum such as Smiling+Blond_Hair-Eyeglasses (repeatable)")
    p.add_argument("--image", action="extend", nargs="+", metavar="IMG", help="with --vectors: faces to edit")
    p.add_argument("--strengths", default="-3:3:7", help="s in z + s*v: first:last:count or 0,1,2 (default -3:3:7)")
    p.add_argument("--steps", type=int, default=8, help="decoded frames in a walk or morph (default 8)")
    p.add_argument("--crop", choices=["center", "squash"], default="center", help="how to fit given images")
    return p.parse_args(edits.fix_negative_values(list(argv)))


def open_session(path, role):
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


def _config(session):
    raw = session.get_modelmeta().custom_metadata_map.get("config")
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}


def decoder_geometry(session, path):
    """(z_dim, image size, channels) from the decoder's shapes, else from its metadata."""
    ins, outs = session.get_inputs(), session.get_outputs()
    if len(ins) != 1 or len(outs) != 1 or len(ins[0].shape) != 2 or len(outs[0].shape) != 4:
        raise SampleError(f"{path} is not a scratchvae decoder: expected z (N, z_dim) -> image (N, H, W, C)")
    z, image, cfg = _static(ins[0].shape), _static(outs[0].shape), _config(session)
    try:
        z_dim = z[0] if z else int(cfg["z_dim"])
        size, channels = (image[0], image[2]) if image else (int(cfg["image_size"]), int(cfg["channels"]))
    except (KeyError, TypeError, ValueError):
        raise SampleError(f"{path} has symbolic shapes and no config metadata: re-export it") from None
    return z_dim, size, channels


def check_encoder(session, path, z_dim, size, channels):
    ins, outs = session.get_inputs(), session.get_outputs()
    names = [o.name for o in outs]
    if len(ins) != 1 or "z_mean" not in names or len(ins[0].shape) != 4:
        raise SampleError(f"{path} is not a scratchvae encoder: expected image (N, H, W, C) -> z_mean, z_log_var")
    image, z = _static(ins[0].shape), _static(outs[names.index("z_mean")].shape)
    if (image and image != [size, size, channels]) or (z and z != [z_dim]):
        raise SampleError(f"{path} does not fit the decoder (images {image}, z {z} vs {[size, size, channels]}, "
                          f"[{z_dim}]): export both from one checkpoint")


def identity(*sessions):
    """The checkpoint identity the models were exported with (metadata prop checkpoint_sha256), or None
    when they carry none; refused when encoder and decoder carry different ones."""
    found = {sess.get_modelmeta().custom_metadata_map.get(edits.IDENTITY_KEY) for sess in sessions if sess}
    found.discard(None)
    if len(found) > 1:
        raise SampleError("the encoder and decoder come from different checkpoints: export both from one checkpoint")
    return found.pop() if found else None


def _stem(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    return "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "_.+-" else "_" for ch in stem)[:40]


def describe(paths):
    stems = [_stem(p) for p in paths[:2]]
    return "-".join(stems) + (f"-and-{len(paths) - 2}-more" if len(paths) > 2 else "")


def output_path(args):
    """--out, or a name saying what the picture shows beside the decoder; refused when it exists without --force."""
    random_part = f"seed{args.seed}" + (f"-t{args.temperature:g}" if args.temperature != 1 else "")
    if args.vectors:
        faces = describe(args.image) if args.image else f"n{args.n or 8}-{random_part}"
        name = f"attributes-{'_'.join(_stem(e) for e in args.attribute)}-{faces}.png"
    elif args.morph:
        name = f"morph-{describe(args.morph)}.png"
    elif args.reconstruct:
        name = f"reconstructions-{describe(args.reconstruct)}.png"
    elif args.interpolate is not None:
        name = f"interpolation-{describe(args.interpolate) or random_part}.png"
    else:
        name = f"samples-n{args.n or 64}-{random_part}.png"
    path = args.out or os.path.join(os.path.dirname(os.path.abspath(args.decoder)), name)
    if os.path.exists(path) and not args.force:
        raise SampleError(f"{path} exists: pass --force to replace it, or choose another --out")
    return path


def check_args(args):
    if (args.n is not None and args.n < 1) or args.steps < 2:
        raise SampleError("-n must be at least 1 and --steps at least 2")
    if args.interpolate is not None and len(args.interpolate) not in (0, 2):
        raise SampleError(f"--interpolate takes two images or none, got {len(args.interpolate)}")
    if bool(args.vectors) != bool(args.attribute):
        raise SampleError("--vectors and --attribute go together: the vectors file, and the attributes to add")
    if args.image and not args.vectors:
        raise SampleError("--image names faces to edit with --vectors and --attribute "
                          "(to reconstruct, use --reconstruct)")
    needs = args.reconstruct or args.interpolate or args.morph or args.image
    if needs and not args.encoder:
        raise SampleError("encoding images (--reconstruct, --interpolate, --morph, --image) "
                          "needs --encoder encoder.onnx")


def run(args):
    check_args(args)
    strengths = edits.parse_strengths(args.strengths)
    path = output_path(args)
    decoder = open_session(args.decoder, "decoder")
    z_dim, size, channels = decoder_geometry(decoder, args.decoder)
    encoder = None
    if args.encoder:
        encoder = open_session(args.encoder, "encoder")
        check_encoder(encoder, args.encoder, z_dim, size, channels)

    def decode(z):
        """Images of z (..., z_dim), the leading shape kept."""
        flat = np.ascontiguousarray(z.reshape(-1, z_dim), dtype=np.float32)
        out = decoder.run(["image"], {"z": flat})[0]
        return out.reshape(z.shape[:-1] + out.shape[1:])

    def encode(paths):
        x = np.stack([pictures.load_image(p, size, channels, args.crop) for p in paths])  # (K, S, S, C)
        return x, encoder.run(["z_mean"], {"image": x})[0]  # the posterior mean: no sampling noise

    if args.vectors:
        names, vec, skipped = edits.load_vectors(args.vectors, z_dim, identity(decoder, encoder))
        terms = [edits.parse_expression(text, names, skipped) for text in args.attribute]
        if args.image:
            x, z = encode(args.image)
            faces = [os.path.basename(p) for p in args.image]
        else:
            n = args.n or 8
            x, z, faces = None, edits.draw_z(args.seed, n, z_dim, args.temperature), [f"z{i}" for i in range(n)]
        rows, labels = [], []
        for text, term in zip(args.attribute, terms):
            edited = decode(edits.attribute_rows(z, edits.combine(term, names, vec), strengths))
            for i, row in enumerate(edited):
                rows.append(row if x is None else np.concatenate([x[i:i + 1], row]))
                labels.append(f"{text}, {faces[i]}")
        grid = pictures.labelled_rows(rows, labels)
    elif args.morph:
        x, z = encode(args.morph)
        t = np.linspace(0, 1, args.steps)
        rows = [np.concatenate([x[:1], decode(walk(z[0], z[1], t)), x[1:]]) for walk in (edits.lerp, edits.slerp)]
        grid = pictures.labelled_rows(rows, ["linear", "slerp"])
    elif args.reconstruct:
        x, z = encode(args.reconstruct)
        y = decode(z)
        cols = min(len(x), RECON_COLS)
        pairs = []
        for i in range(0, len(x), cols):
            row_x, row_y = x[i:i + cols], y[i:i + cols]
            blank = np.ones((cols - len(row_x),) + x.shape[1:], np.float32)
            pairs += [np.concatenate([row_x, blank]), np.concatenate([row_y, blank])]
        grid = pictures.tile(np.concatenate(pairs), cols)
    elif args.interpolate is not None:
        t = np.linspace(0, 1, args.steps)
        if args.interpolate:
            x, z = encode(args.interpolate)
        else:
            x, z = None, edits.draw_z(args.seed, 2, z_dim, args.temperature)
        frames = decode(edits.lerp(z[0], z[1], t))
        strip = frames if x is None else np.concatenate([x[:1], frames, x[1:]])
        grid = pictures.tile(strip, len(strip))
    else:
        n = args.n or 64
        grid = pictures.tile(decode(edits.draw_z(args.seed, n, z_dim, args.temperature)), math.ceil(math.sqrt(n)))
    pictures.write_png(path, grid)
    return path, grid.shape


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path, shape = run(args)
    except (SampleError, edits.EditError, pictures.PictureError) as e:
        print(f"sample: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({shape[1]}x{shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
