"""Attribute vectors: mean(z_mean | attribute) - mean(z_mean | not attribute) per attribute, and the
.npz file that carries them with the identity of the checkpoint they belong to.

The file holds only numeric and fixed-width string arrays, so plain `np.load(allow_pickle=False)`
reads it (export/sample.py does, without scratchvae). The identity is a SHA-256 over the checkpoint's
sorted param/ and state/ tensors (`checkpoint_identity`).
"""

import hashlib
import io
import os
from dataclasses import dataclass

import numpy as np

from scratchvae import atomic
from scratchvae import kernels as K
from scratchvae.errors import UserError

FORMAT, VERSION = "scratchvae-attribute-vectors", 1
ONNX_IDENTITY_KEY = "checkpoint_sha256"  # the ONNX metadata prop that carries the same identity
DEFAULT_MIN_COUNT = 20


def checkpoint_identity(arrays):
    """Hex SHA-256 over every `param/` and `state/` array, in sorted name order: for each, its name
    in UTF-8, a zero byte, its byte count as 8 little-endian bytes, then its bytes (C order,
    little-endian). Other arrays (the optimizer's) and the metadata do not count."""
    h = hashlib.sha256()
    for name in sorted(k for k in arrays if k.startswith(("param/", "state/"))):
        a = np.asarray(arrays[name])
        data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        h.update(name.encode("utf-8") + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def model_identity(vae):
    """checkpoint_identity of the arrays `vae.save` would write."""
    arrays = {f"param/{k}": K.to_host(v) for k, v in vae.params().items()}
    arrays.update({f"state/{k}": K.to_host(v) for k, v in vae.state().items()})
    return checkpoint_identity(arrays)


@dataclass
class Vectors:
    names: list  # attributes with a vector, in the label file's order
    vectors: np.ndarray  # (K, z_dim) float32 mean differences
    unit: np.ndarray  # (K, z_dim) float32, each row of vectors over its length
    n_pos: np.ndarray  # (K,) images with the attribute behind each mean
    n_neg: np.ndarray  # (K,) images without it
    spread: np.ndarray  # (K,) standard deviation of z_mean projected on the unit direction
    identity: str  # checkpoint_identity of the model the codes came from
    skipped: list  # attributes left out: too few images on one side
    min_count: int

    @property
    def z_dim(self):
        return self.vectors.shape[1]

    def ratio(self):
        """Length of each direction over the spread of the codes along it: how far, in standard
        deviations of the data, the mean face moves; the longest edit most visibly."""
        return np.linalg.norm(self.vectors.astype(np.float64), axis=1) / np.maximum(self.spread, 1e-12)

    def ranking(self):
        """Row indices from the most visible edit to the least: ratio() descending, ties in file order."""
        return np.argsort(-self.ratio(), kind="stable")


def directions(z, values, attributes, identity, min_count=DEFAULT_MIN_COUNT):
    """Vectors from codes z (N, z_dim) and labels values (N, A) of +1/-1 for attribute names."""
    z = np.asarray(z, np.float64)
    pos = np.asarray(values) > 0
    n_pos = pos.sum(axis=0)
    n_neg = len(z) - n_pos
    keep = [a for a in range(len(attributes)) if n_pos[a] >= min_count and n_neg[a] >= min_count]
    vec = np.zeros((len(keep), z.shape[1]), np.float64)
    spread = np.zeros(len(keep), np.float64)
    for row, a in enumerate(keep):
        vec[row] = z[pos[:, a]].mean(axis=0) - z[~pos[:, a]].mean(axis=0)
        length = np.linalg.norm(vec[row])
        spread[row] = np.std(z @ (vec[row] / length)) if length > 0 else 0.0
    lengths = np.linalg.norm(vec, axis=1, keepdims=True)
    unit = np.divide(vec, lengths, out=np.zeros_like(vec), where=lengths > 0)
    return Vectors([attributes[a] for a in keep], vec.astype(np.float32), unit.astype(np.float32),
                   n_pos[keep].astype(np.int64), n_neg[keep].astype(np.int64), spread, identity,
                   [attributes[a] for a in range(len(attributes)) if a not in keep], int(min_count))


def save(path, v):
    """Write the vectors file atomically (temporary name, then rename)."""
    buf = io.BytesIO()
    np.savez(buf, format=np.array(FORMAT), version=np.array(VERSION, np.int64),
             identity=np.array(v.identity), names=np.array(v.names, dtype=str).reshape(-1),
             vectors=v.vectors, unit=v.unit, n_pos=v.n_pos, n_neg=v.n_neg, spread=v.spread,
             skipped=np.array(v.skipped, dtype=str).reshape(-1), min_count=np.array(v.min_count, np.int64))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    atomic.write_bytes(path, buf.getvalue())


def load(path, identity=None, z_dim=None):
    """Vectors from a file; with `identity` or `z_dim`, refuse a file made for another model."""
    if not os.path.isfile(path):
        raise UserError(f"no vectors file at {path}: make one with python -m scratchvae.attributes")
    try:
        with np.load(path, allow_pickle=False) as f:
            raw = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - zipfile and the .npy parser raise many kinds on damage
        raise UserError(f"{path} is not a readable vectors file ({type(e).__name__}); remake it") from None
    if str(raw.get("format", "")) != FORMAT or int(raw.get("version", -1)) != VERSION:
        raise UserError(f"{path} is not a scratchvae attribute-vectors file (version {VERSION})")
    try:
        v = Vectors(raw["names"].tolist(), raw["vectors"].astype(np.float32), raw["unit"].astype(np.float32),
                    raw["n_pos"], raw["n_neg"], raw["spread"], str(raw["identity"]), raw["skipped"].tolist(),
                    int(raw["min_count"]))
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path} is a damaged vectors file ({e}); remake it") from None
    if v.vectors.ndim != 2 or v.vectors.shape != v.unit.shape or len(v.names) != len(v.vectors):
        raise UserError(f"{path} is a damaged vectors file (inconsistent shapes); remake it")
    if z_dim is not None and v.z_dim != z_dim:
        raise UserError(f"{path} holds {v.z_dim}-dimensional vectors but the model's z has {z_dim}: "
                        f"make vectors for this model with python -m scratchvae.attributes")
    if identity is not None and v.identity != identity:
        raise UserError(f"{path} was made for another checkpoint (identity {v.identity[:12]}…, this one "
                        f"{identity[:12]}…): make vectors for this model with python -m scratchvae.attributes")
    return v
