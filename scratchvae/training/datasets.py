"""The images a run trains on: the built-in synthetic faces (drawn once, then cached) or a folder
or zip through scratchvae.data, split into training and held-out indices.

Images stay uint8 (N, S, S, 3); files that could not be used are named on the console and listed
in --out/skipped.txt. Only the root rank speaks.
"""

import io
import os

import numpy as np

from scratchvae import data
from scratchvae.run import atomic
from scratchvae.run.errors import UserError
from scratchvae.training import outdir

# The built-in data set: sized so the no-argument run finishes within 5 minutes on 2 cores, with
# enough faces that its held-out ones score like its training ones.
SYNTHETIC_COUNT = 3072  # 2,560 to train on and 512 held out (settings.SYNTHETIC_VAL_FRACTION)
SHOW_SKIPPED = 5  # skipped files named on the console; all of them go to --out/skipped.txt


def synthetic_data(n, size, seed, cache_dir):
    """The built-in faces, drawn once and then memory-mapped from the cache (a fast second start)."""
    from scratchvae.data.synthetic import SYNTHETIC_VERSION, synthetic_faces
    folder = cache_dir or data.default_cache_dir()
    path = os.path.join(folder, f"synthetic-v{SYNTHETIC_VERSION}-{n}x{size}px-seed{seed}.npy")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        pass
    pixels = synthetic_faces(n, size, seed=seed)
    try:
        os.makedirs(folder, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, pixels)
        atomic.write_bytes(path, buf.getvalue())
    except OSError:
        pass  # no cache folder: draw them again next time
    return pixels


def load_data(s, cache_dir, quiet, out, root=True):
    """(uint8 images (N,S,S,3), train indices, held-out indices) for Settings `s`."""
    say = print if root else silent
    if s.data is None:
        n = SYNTHETIC_COUNT if s.limit is None else min(s.limit, SYNTHETIC_COUNT)
        pixels, partition = synthetic_data(n, s.image_size, s.seed, cache_dir), None
        say(f"data: {n} built-in synthetic faces at {s.image_size}x{s.image_size} (pass --data for real ones)")
    else:
        try:
            found = data.load_images(s.data, s.image_size, crop=s.crop, limit=s.limit, cache_dir=cache_dir,
                                     progress=not quiet, min_count=2 * s.batch_size)
        except data.DataError as e:
            raise UserError(str(e)) from None
        pixels, partition = found.images, found.partition
        say(f"data: {len(pixels)} images from {s.data} at {s.image_size}x{s.image_size}"
            + (f"; skipped {len(found.skipped)} file(s) that could not be used:" if found.skipped else ""))
        if root:
            report_skipped(found.skipped, out)
    try:
        train_idx, val_idx = data.split_indices(len(pixels), s.val_fraction, s.batch_size, s.seed, partition)
    except data.DataError as e:
        raise UserError(str(e)) from None
    if len(train_idx) < s.batch_size:
        raise UserError(f"only {len(train_idx)} training images for --batch-size {s.batch_size}: "
                        f"lower the batch size or add images")
    return pixels, train_idx, val_idx


def report_skipped(skipped, out):
    """Name the first few files that could not be used, with the reason; list all in --out/skipped.txt."""
    for name, why in skipped[:SHOW_SKIPPED]:
        print(f"  {name}: {why}")
    if len(skipped) > SHOW_SKIPPED:
        path = os.path.join(out, "skipped.txt")
        with outdir.writing(out):
            atomic.write_bytes(path, "".join(f"{n}\t{w}\n" for n, w in skipped).encode())
        print(f"  ... and {len(skipped) - SHOW_SKIPPED} more, all listed in {path}")


def silent(*args, **kwargs):
    """print's stand-in on the ranks that do not speak."""
