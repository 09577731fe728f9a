"""Checkpoints as plain .npz archives: named arrays plus one JSON metadata record, never pickle.

Writes are atomic (scratchvae.run.atomic), so a crash mid-write leaves the previous checkpoint intact.
Loading validates everything.
"""

import io
import json
import os
import zipfile

import numpy as np

from scratchvae.run import atomic

META_KEY = "__meta__"
FORMAT = "scratchvae-checkpoint"
VERSION = 1
MAX_EXPANSION = 64  # np.savez stores members uncompressed, so a real checkpoint unpacks to ~1x


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or does not fit; the message says which."""


def save(path, arrays, meta):
    """Save named arrays (numeric dtypes only) and a JSON-serialisable `meta` dict."""
    for name, a in arrays.items():
        if name == META_KEY or np.asarray(a).dtype.kind not in "fiub":
            raise CheckpointError(f"cannot store {name!r}: only numeric arrays go into a checkpoint")
    record = json.dumps({"format": FORMAT, "version": VERSION, **meta}, sort_keys=True)
    buf = io.BytesIO()
    np.savez(buf, **{META_KEY: np.frombuffer(record.encode(), dtype=np.uint8)}, **arrays)
    atomic.write_bytes(path, buf.getvalue())


def load(path):
    """(arrays, meta) from a checkpoint; CheckpointError for anything missing, corrupt or odd.

    The archive is read member by member with NumPy's header parser and never unpickled: each
    member must be a numeric .npy whose header agrees with its size, so a crafted file cannot
    make us allocate more than it holds (or more than MAX_EXPANSION times its size on disk).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: give the checkpoint.npz a training run wrote")
    try:
        arrays = _read_archive(path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, zlib and the header parser raise many kinds on damage
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}: {e})"[:300]) \
            from None
    raw = arrays.pop(META_KEY, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"checkpoint {path} has no metadata record: not written by scratchvae")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"checkpoint {path} has a damaged metadata record") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a scratchvae checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('version')!r}, expected {VERSION}")
    return arrays, meta


def _read_archive(path):
    """Every member of the .npz as a writable array, validated before its data is read."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint (truncated, or not an .npz "
                              f"archive); give a complete checkpoint.npz a training run wrote")
    on_disk = os.path.getsize(path)
    arrays = {}
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        declared = sum(i.file_size for i in infos)
        if declared > MAX_EXPANSION * on_disk + (1 << 20):
            raise CheckpointError(f"checkpoint {path} declares {declared:,} bytes unpacked from {on_disk:,} on "
                                  f"disk: refused (not written by scratchvae, possibly a zip bomb)")
        for info in infos:
            name = info.filename[:-4]
            if not info.filename.endswith(".npy") or name in arrays:
                raise CheckpointError(f"checkpoint {path} has an unexpected member {info.filename!r}: "
                                      f"not written by scratchvae")
            with zf.open(info) as f:
                arrays[name] = _read_npy(f, info.file_size, name, path)
    return arrays


def _read_npy(f, size, name, path):
    """One .npy member: numeric dtype only, and exactly as many data bytes as its header promises."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise CheckpointError(f"checkpoint {path}: tensor {name} has .npy version {version}, not 1.0 or 2.0")
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "fiub":
        raise CheckpointError(f"checkpoint {path}: tensor {name} has dtype {dtype}; only numeric arrays are "
                              f"accepted (objects are never unpickled)")
    count = 1
    for n in shape:
        count *= n
    nbytes = count * dtype.itemsize
    if nbytes != size - f.tell():
        raise CheckpointError(f"checkpoint {path}: tensor {name} claims shape {shape} ({nbytes:,} bytes) but holds "
                              f"{size - f.tell():,} bytes: the file is damaged")
    data = f.read(nbytes)
    if len(data) != nbytes or f.read(1):  # the read to the end also checks the member's CRC
        raise CheckpointError(f"checkpoint {path}: tensor {name} is truncated")
    return np.frombuffer(bytearray(data), dtype=dtype).reshape(shape, order="F" if fortran else "C")


def non_finite(arrays):
    """The name of the first floating-point array holding a NaN or an infinity, else None."""
    for name, a in arrays.items():
        if np.asarray(a).dtype.kind == "f" and not np.all(np.isfinite(a)):
            return name
    return None


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
