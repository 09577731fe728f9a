"""Faces from the exported ONNX models with onnxruntime: a sample grid, reconstructions, an interpolation.

Imports only onnxruntime, numpy, Pillow and the standard library (never Numba or scratchvae), so it
runs wherever the .onnx files are copied. Images are NHWC float32 in [0, 1], as the models expect.
"""

import argparse
import io
import json
import math
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort
from PIL import Image

PAD = 2  # pixels of white between and around grid tiles
RECON_COLS = 8  # reconstructions per row pair (inputs above, reconstructions below)


class SampleError(Exception):
    """A user's mistake; the message is the one line printed."""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decoder", required=True, help="decoder.onnx from export/to_onnx.py")
    p.add_argument("--encoder", help="encoder.onnx: needed for --reconstruct and image interpolation")
    p.add_argument("-n", type=int, default=64, help="faces in the sample grid (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed for the latent draws")
    p.add_argument("--out", default="samples.png", help="PNG to write")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--reconstruct", nargs="+", metavar="IMG", help="write input/reconstruction pairs instead")
    mode.add_argument("--interpolate", nargs="*", metavar="IMG",
                      help="write an interpolation strip instead: between two images, or two random points")
    p.add_argument("--steps", type=int, default=8, help="decoded frames in the interpolation (default 8)")
    return p.parse_args(argv)


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


def load_image(path, size, channels):
    """Centre-cropped square, resized with LANCZOS, as (size, size, channels) float32 in [0, 1]."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
            x = np.asarray(im, dtype=np.float32) / np.float32(255)
    except FileNotFoundError:
        raise SampleError(f"no image at {path}") from None
    except OSError as e:  # Pillow's UnidentifiedImageError is an OSError too
        raise SampleError(f"cannot read image {path} ({e})") from None
    return x.reshape(size, size, channels)


def tile(images, cols):
    """(K, S, S, C) floats in [0, 1] -> one uint8 grid, `cols` wide, PAD pixels of white between tiles."""
    k, s, _, c = images.shape
    rows = math.ceil(k / cols)
    grid = np.full((rows * (s + PAD) + PAD, cols * (s + PAD) + PAD, c), 255, dtype=np.uint8)
    pixels = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
    for i, im in enumerate(pixels):
        r, q = divmod(i, cols)
        grid[PAD + r * (s + PAD):(r + 1) * (s + PAD), PAD + q * (s + PAD):(q + 1) * (s + PAD)] = im
    return grid[..., 0] if c == 1 else grid


def write_png(path, grid):
    """Encode in memory, then temp file + rename, so a reader never sees half a PNG."""
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(fd, 0o666 & ~mask)  # mkstemp makes 0600; the picture should be readable like any file
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise SampleError(f"cannot write {path} ({e.strerror or e}): choose a writable --out") from None


def run(args):
    if args.n < 1 or args.steps < 2:
        raise SampleError("-n must be at least 1 and --steps at least 2")
    if args.interpolate is not None and len(args.interpolate) not in (0, 2):
        raise SampleError(f"--interpolate takes two images or none, got {len(args.interpolate)}")
    decoder = open_session(args.decoder, "decoder")
    z_dim, size, channels = decoder_geometry(decoder, args.decoder)
    encoder = None
    if args.encoder:
        encoder = open_session(args.encoder, "encoder")
        check_encoder(encoder, args.encoder, z_dim, size, channels)
    if (args.reconstruct or args.interpolate) and encoder is None:
        raise SampleError("reconstructing or interpolating images needs --encoder encoder.onnx")

    rng = np.random.default_rng(args.seed)

    def decode(z):
        return decoder.run(["image"], {"z": np.ascontiguousarray(z, dtype=np.float32)})[0]

    def encode(paths):
        x = np.stack([load_image(p, size, channels) for p in paths])  # (K, S, S, C)
        return x, encoder.run(["z_mean"], {"image": x})[0]  # the posterior mean: no sampling noise

    if args.reconstruct:
        x, z = encode(args.reconstruct)
        y = decode(z)
        cols = min(len(x), RECON_COLS)
        pairs = []
        for i in range(0, len(x), cols):
            row_x, row_y = x[i:i + cols], y[i:i + cols]
            blank = np.ones((cols - len(row_x),) + x.shape[1:], np.float32)
            pairs += [np.concatenate([row_x, blank]), np.concatenate([row_y, blank])]
        grid = tile(np.concatenate(pairs), cols)
    elif args.interpolate is not None:
        t = np.linspace(0, 1, args.steps, dtype=np.float32)[:, None]
        if args.interpolate:
            x, z = encode(args.interpolate)
        else:
            x, z = None, rng.standard_normal((2, z_dim)).astype(np.float32)
        frames = decode((1 - t) * z[0] + t * z[1])
        strip = frames if x is None else np.concatenate([x[:1], frames, x[1:]])
        grid = tile(strip, len(strip))
    else:
        faces = decode(rng.standard_normal((args.n, z_dim)).astype(np.float32))
        grid = tile(faces, math.ceil(math.sqrt(args.n)))
    write_png(args.out, grid)
    return grid.shape


def main(argv=None):
    args = parse_args(argv)
    try:
        shape = run(args)
    except SampleError as e:
        print(f"sample: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({shape[1]}x{shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
