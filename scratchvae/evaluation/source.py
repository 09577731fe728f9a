"""Which images a checkpoint is evaluated on. On the source it was trained on: by default that run's
held-out split, rebuilt from the settings the checkpoint records (source, limit, seed, batch size,
held-out fraction, CelebA's partition), so it holds the very indices training held out. Any other
folder or zip: every image. Images are decoded at the checkpoint's size, as training did.
"""

import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scratchvae import data
from scratchvae.run.errors import UserError

SYNTHETIC = "built-in synthetic faces"
SPLITS = ("held-out", "all")
RUN_SPLITS = ("held-out", "train")  # rebuilt from the checkpoint's settings; "train" is for tools, not evaluate
# What rebuilding the run's split needs from meta["train"], with the types train.py records.
SPLIT_KEYS = {"limit": (int, type(None)), "crop": str, "batch_size": int, "seed": int, "val_fraction": (int, float)}


@dataclass
class Chosen:
    pixels: np.ndarray  # (N, S, S, 3) uint8, often a read-only memory map
    idx: np.ndarray  # sorted int64 indices into pixels of the images to evaluate
    source: str  # the folder or zip, or SYNTHETIC
    split: str  # "held-out" or "all"
    crop: str | None  # None for the synthetic faces
    notes: list = field(default_factory=list)  # one-line remarks for the console
    names: list | None = None  # each image's name inside the source (None for the synthetic faces)
    train_idx: np.ndarray | None = None  # the run's training images (its own data only)


def choose(meta, image_size, data_path=None, split=None, limit=None, crop=None, n=None, cache_dir=None,
           quiet=False, own_split="held-out"):
    """The images to evaluate, from the checkpoint's metadata and the command's options; without a
    split, `own_split` of the run's own data, or all of any other."""
    s = meta.get("train") if isinstance(meta.get("train"), dict) else {}
    notes = []
    if data_path is None:
        if "data" not in s:
            raise UserError("the checkpoint records no training data: pass --data a folder or zip of images")
        if s["data"] is not None:
            if not isinstance(s["data"], str) or not os.path.exists(s["data"]):
                raise UserError(f"the checkpoint was trained on {s['data']!r}, which is not here: pass --data")
            notes.append(f"data: the run's own source {s['data']} (recorded in the checkpoint)")
        source, same = s["data"], True
    else:
        source = os.path.abspath(data_path)
        recorded = s.get("data")
        same = isinstance(recorded, str) and (recorded == source
                                              or os.path.realpath(recorded) == os.path.realpath(source))
    split = split or (own_split if same else "all")
    if split not in SPLITS + RUN_SPLITS:
        raise UserError(f"--split {split!r}: use held-out or all")
    if split in RUN_SPLITS and not same:
        run = "not recorded" if "data" not in s else SYNTHETIC if s["data"] is None else s["data"]
        raise UserError(f"--split {split}: {source} is not the data this checkpoint was trained on "
                        f"({run}); use --split all")
    if n is not None and n < 1:
        raise UserError(f"--n {n} must be at least 1")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit} must be at least 1")
    if split in RUN_SPLITS:
        chosen = _run_split(split, s, meta, image_size, source, limit, crop, cache_dir, quiet, notes)
    else:
        # The first n of every image are the first n files: decode no more than those.
        first = min((v for v in (limit, n) if v is not None), default=None)
        chosen = _everything(s, meta, image_size, source, first, crop, same, cache_dir, quiet, notes)
    if n is not None:
        chosen.idx = chosen.idx[:n]
    return chosen


def _run_split(split, s, meta, image_size, source, limit, crop, cache_dir, quiet, notes):
    for key, kind in SPLIT_KEYS.items():
        if key not in s or isinstance(s[key], bool) or not isinstance(s[key], kind):
            raise UserError(f"the checkpoint does not record its held-out split ({key} = {s.get(key)!r}); "
                            f"evaluate with --split all")
    if limit is not None and limit != s["limit"]:
        raise UserError(f"--limit {limit}: the run's held-out split is drawn from its first "
                        f"{s['limit'] or 'all'} images; drop --limit (cap the count with --n) or pass --split all")
    if source is None:
        count = meta.get("images")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise UserError("the checkpoint does not record how many synthetic faces it was trained on; "
                            "evaluate real images with --data")
        pixels, partition, crop, names = _synthetic(count, image_size, s["seed"], quiet), None, None, None
    else:
        crop = crop or s["crop"]
        found = data.load_images(source, image_size, crop=crop, limit=s["limit"], cache_dir=cache_dir,
                                 progress=not quiet, min_count=2 * s["batch_size"])
        pixels, partition, names = found.images, found.partition, found.names
        if isinstance(meta.get("images"), int) and meta["images"] != len(pixels):
            notes.append(f"note: {source} now gives {len(pixels)} images, the run was trained on {meta['images']}: "
                         f"this held-out split is not exactly the run's")
        notes += _size_note(source, found.names, image_size, crop)
    train_idx, val_idx = data.split_indices(len(pixels), s["val_fraction"], s["batch_size"], s["seed"], partition)
    idx = val_idx if split == "held-out" else train_idx
    return Chosen(pixels, idx, source or SYNTHETIC, split, crop, notes, names, train_idx)


def _everything(s, meta, image_size, source, limit, crop, same, cache_dir, quiet, notes):
    if source is None:
        count = limit or meta.get("images")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise UserError("the checkpoint does not record how many synthetic faces it was trained on; "
                            "pass --limit N")
        pixels = _synthetic(count, image_size, s.get("seed", 0), quiet)
        return Chosen(pixels, np.arange(len(pixels), dtype=np.int64), SYNTHETIC, "all", None, notes)
    crop = crop or (s.get("crop") if same and s.get("crop") in data.CROPS else "center")
    found = data.load_images(source, image_size, crop=crop, limit=limit, cache_dir=cache_dir, progress=not quiet)
    notes += _size_note(source, found.names, image_size, crop)
    return Chosen(found.images, np.arange(len(found), dtype=np.int64), source, "all", crop, notes, found.names)


def _synthetic(count, image_size, seed, quiet):
    from scratchvae.data.synthetic import synthetic_faces
    if not quiet:
        print(f"drawing {count} built-in synthetic faces at {image_size}x{image_size} (seed {seed})", file=sys.stderr)
    return synthetic_faces(count, image_size, seed=seed)


def native_size(source, name):
    """(width, height) of one image of a folder or zip, read from its header; None when unreadable."""
    path = Path(source)
    try:
        if path.is_dir() and (path / name).is_file():
            return data.upright_size(path / name)
        zip_path = path if path.suffix.lower() == ".zip" else path / data.CELEBA_ZIP
        with zipfile.ZipFile(zip_path) as zf, zf.open(name) as f:
            return data.upright_size(f)
    except Exception:  # noqa: BLE001 - only a remark depends on it
        return None


def _size_note(source, names, image_size, crop):
    """One line when the images are not already at the checkpoint's size (judged by the first one)."""
    size = native_size(source, names[0]) if names else None
    if size is None or size == (image_size, image_size):
        return []
    how = "centre-cropped to a square and resized" if crop == "center" else "resized (squashed)"
    return [f"note: the images are {size[0]}x{size[1]} (e.g. {names[0]}), the checkpoint's size is "
            f"{image_size}x{image_size}: each is {how} to {image_size}x{image_size}"]


def load_checkpoint(path):
    """(vae, arrays, meta) of a checkpoint for measuring it; one clear UserError for anything wrong
    with the file (missing, damaged, foreign, non-finite)."""
    from scratchvae.model import VAE
    from scratchvae.run import checkpoint
    try:
        vae, arrays, meta = VAE.load(path, with_extras=True)
    except (checkpoint.CheckpointError, ValueError, MemoryError) as e:
        raise UserError(str(e)) from None
    bad = checkpoint.non_finite({**vae.params(), **vae.state()})
    if bad is not None:
        raise UserError(f"{path} holds non-finite values in {bad}; use an earlier checkpoint")
    return vae, arrays, meta
