"""Checkpoints as plain .npz archives: named arrays plus one JSON metadata record, never pickle.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed into
place, so a crash mid-write leaves the previous checkpoint intact. Loading validates everything.
"""

import io
import json
import os
import tempfile
import zipfile

import numpy as np

META_KEY = "__meta__"
FORMAT = "scratchvae-checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or does not fit; the message says which."""


def atomic_write_bytes(path, data):
    """Write bytes to `path` via a temporary file, fsync and rename (readers never see half)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename is still atomic


def save(path, arrays, meta):
    """Save named arrays (numeric dtypes only) and a JSON-serialisable `meta` dict."""
    for name, a in arrays.items():
        if name == META_KEY or np.asarray(a).dtype.kind not in "fiub":
            raise CheckpointError(f"cannot store {name!r}: only numeric arrays go into a checkpoint")
    record = json.dumps({"format": FORMAT, "version": VERSION, **meta}, sort_keys=True)
    buf = io.BytesIO()
    np.savez(buf, **{META_KEY: np.frombuffer(record.encode(), dtype=np.uint8)}, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load(path):
    """(arrays, meta) from a checkpoint; CheckpointError for anything missing, corrupt or odd."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: give the checkpoint.npz a training run wrote")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}: {e})") from None
    except Exception as e:  # zlib and zipfile raise a wide variety on damaged data
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(e).__name__}: {e})") from None
    raw = arrays.pop(META_KEY, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"checkpoint {path} has no metadata record: not written by scratchvae")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint {path} has a damaged metadata record") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a scratchvae checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('version')}, expected {VERSION}")
    for name, a in arrays.items():
        if a.dtype.kind not in "fiub":
            raise CheckpointError(f"checkpoint {path}: tensor {name} has unsupported dtype {a.dtype}")
    return arrays, meta


def expect(arrays, reference, prefix, path="checkpoint"):
    """Check arrays[prefix + name] exist with the reference's shapes and dtypes; no extras."""
    found = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    missing = sorted(set(reference) - set(found))
    extra = sorted(set(found) - set(reference))
    if missing:
        raise CheckpointError(f"{path}: missing tensor {prefix}{missing[0]} ({len(missing)} missing in all)")
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {prefix}{extra[0]} ({len(extra)} extra in all)")
    for name, ref in reference.items():
        a = found[name]
        if a.shape != ref.shape:
            raise CheckpointError(f"{path}: {prefix}{name} has shape {a.shape}, expected {ref.shape}")
        if a.dtype != ref.dtype:
            raise CheckpointError(f"{path}: {prefix}{name} has dtype {a.dtype}, expected {ref.dtype}")
    return found
