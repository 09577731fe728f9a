"""Attribute vectors: per attribute, the change of the code z_mean from faces without it to faces with
it, by one of METHODS (below), and the .npz file that carries them with the identity of the checkpoint
they belong to and the method that made them.

The file holds only numeric and fixed-width string arrays, so plain `np.load(allow_pickle=False)`
reads it (export/sample.py does, without scratchvae). The identity is a SHA-256 over the checkpoint's
sorted param/ and state/ tensors (`checkpoint_identity`).
"""

import hashlib
import io
import os
from dataclasses import dataclass, replace

import numpy as np

from scratchvae import kernels as K
from scratchvae.run import atomic
from scratchvae.run.errors import UserError

FORMAT, VERSION = "scratchvae-attribute-vectors", 1
ONNX_IDENTITY_KEY = "checkpoint_sha256"  # the ONNX metadata prop that carries the same identity
DEFAULT_MIN_COUNT = 20
# mean: mean(z | a) - mean(z | not a), the other labels' differences included. joint: one ridge
# regression of z on all labels, each direction with the others held fixed. matched: mean differences
# inside strata of the labels most correlated with a. docs/ATTRIBUTES.md compares them.
METHODS = ("mean", "joint", "matched")
DEFAULT_RIDGE = 1.0  # joint: in label units (+-1); docs/ATTRIBUTES.md says why it is small
# The labels each method holds fixed unless told: joint every other label, matched the 2 labels most
# correlated with the attribute (4 strata). Either also takes a list of names, e.g. Male,Young.
DEFAULT_CONTROLS = {"joint": "all", "matched": 2}
MAX_MATCHED = 6  # matched: at most this many labels (64 strata); more leaves strata empty


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
    vectors: np.ndarray  # (K, z_dim) float32: the change of z from without the attribute to with it
    unit: np.ndarray  # (K, z_dim) float32, each row of vectors over its length
    n_pos: np.ndarray  # (K,) images with the attribute
    n_neg: np.ndarray  # (K,) images without it
    spread: np.ndarray  # (K,) standard deviation of z_mean projected on the unit direction
    identity: str  # checkpoint_identity of the model the codes came from
    skipped: list  # attributes left out: too few images on one side (matched: no stratum with both)
    min_count: int
    method: str = "mean"  # one of METHODS
    n_used: np.ndarray = None  # (K,) images the estimate rests on (matched: those in strata with both sides)
    controls: list = None  # (K,) labels held fixed, comma-joined ("Male,Young"); "all": every other; "" for mean
    ridge: float = 0.0  # the joint fit's ridge (0 for the other methods)
    hold: list = None  # labels whose linear readout of the code every direction keeps fixed (hold_readouts)
    calibrated: list = None  # attributes whose direction was corrected on decoded faces (latent/calibrate.py)
    calibration: str = ""  # how: the classifier, strength, faces and steps

    def __post_init__(self):
        if self.n_used is None:
            self.n_used = np.asarray(self.n_pos) + np.asarray(self.n_neg)
        if self.controls is None:
            self.controls = [""] * len(self.names)
        if self.hold is None:
            self.hold = []
        if self.calibrated is None:
            self.calibrated = []

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


def encode_all(vae, reader, idx, batch_size, quiet=True):
    """z_mean of the images reader.read(idx) in inference mode, (len(idx), z_dim) float32."""
    from tqdm import tqdm
    out = np.empty((len(idx), vae.config.z_dim), np.float32)
    bar = tqdm(total=len(idx), desc="encoding", unit="img", disable=quiet, leave=False, dynamic_ncols=True)
    for start in range(0, len(idx), batch_size):
        stop = min(len(idx), start + batch_size)
        out[start:stop] = np.asarray(vae.encode(reader.read(idx[start:stop]))[0])
        bar.update(stop - start)
    bar.close()
    return out


def directions(z, values, attributes, identity, min_count=DEFAULT_MIN_COUNT, method="mean", ridge=DEFAULT_RIDGE,
               controls=None, hold=()):
    """Vectors from codes z (N, z_dim) and labels values (N, A) of +1/-1 for attribute names, by
    `method`, holding fixed `controls` (joint and matched: "all", a count of most correlated labels, or
    a list of names; None: the method's default); attributes with fewer than min_count images on either
    side get none. `hold`: label names whose linear readout of the code each direction then keeps
    fixed (hold_readouts); an attribute is never held against itself."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    hold = list(hold or [])
    unknown = [n for n in hold if n not in attributes]
    if unknown:
        raise UserError(f"--hold {unknown[0]}: not a label of this file (e.g. Male)")
    z = np.asarray(z, np.float64)
    pos = np.asarray(values) > 0
    n_pos = pos.sum(axis=0)
    n_neg = len(z) - n_pos
    keep = [a for a in range(len(attributes)) if n_pos[a] >= min_count and n_neg[a] >= min_count]
    n_used = np.full(len(keep), len(z), np.int64)
    if method == "mean":
        held = [[] for _ in keep]
        vec = np.stack([z[pos[:, a]].mean(axis=0) - z[~pos[:, a]].mean(axis=0) for a in keep]) if keep \
            else np.zeros((0, z.shape[1]))
    else:
        held = control_sets(pos, keep, attributes, DEFAULT_CONTROLS[method] if controls is None else controls)
        if method == "joint":
            vec = joint_fit(z, pos, keep, held, ridge)
        else:
            vec, n_used = matched_differences(z, pos, keep, held)
            found = n_used > 0  # no stratum shows the attribute on both sides: no matched estimate
            keep, vec, n_used = [a for a, f in zip(keep, found) if f], vec[found], n_used[found]
            held = [h for h, f in zip(held, found) if f]
    if hold and len(keep):
        vec = hold_readouts(z, pos, vec, keep, [attributes.index(n) for n in hold])
    every = len(attributes) - 1
    names_held = ["all" if method == "joint" and len(h) == every else ",".join(attributes[b] for b in h) for h in held]
    unit, spread = unit_and_spread(vec, z)
    return Vectors([attributes[a] for a in keep], vec.astype(np.float32), unit,
                   n_pos[keep].astype(np.int64), n_neg[keep].astype(np.int64), spread, identity,
                   [attributes[a] for a in range(len(attributes)) if a not in keep], int(min_count), method,
                   n_used, names_held, float(ridge) if method == "joint" else 0.0, hold)


def unit_and_spread(vec, z):
    """Each row of vec over its length (float32; a zero row stays zero) and the standard deviation of
    the codes z along it."""
    vec = np.asarray(vec, np.float64)
    lengths = np.linalg.norm(vec, axis=1, keepdims=True)
    unit = np.divide(vec, lengths, out=np.zeros_like(vec), where=lengths > 0)
    spread = np.std(np.asarray(z, np.float64) @ unit.T, axis=0) if len(vec) else np.zeros(0)
    return unit.astype(np.float32), spread


def with_directions(v, vec, z, calibrated, calibration):
    """A copy of v whose directions are vec (same rows), unit and spread measured again on codes z,
    recording which attributes were calibrated and how."""
    unit, spread = unit_and_spread(vec, z)
    return replace(v, vectors=np.asarray(vec, np.float32), unit=unit, spread=spread, calibrated=list(calibrated),
                   calibration=str(calibration))


def correlations(pos):
    """(A, A) |phi|: the absolute Pearson correlation of every pair of 0/1 label columns; a label
    constant in these images correlates with nothing (-1, so it is never picked)."""
    xc = pos - pos.mean(axis=0)
    norms = np.linalg.norm(xc, axis=0)
    phi = np.abs(xc.T @ xc) / np.maximum(np.outer(norms, norms), 1e-300)
    phi[:, norms == 0] = -1.0
    return phi


FACET = 0.5  # "others": a label this correlated with the attribute (|phi|) is part of it, not held fixed


def control_sets(pos, keep, attributes, controls):
    """Per kept attribute, the label columns held fixed, never the attribute itself: every other label
    ("all"), every other label except the attribute's facets, those correlated with it at |phi| >= FACET
    ("others": a smile lifts the cheeks and opens the mouth, so High_Cheekbones and Mouth_Slightly_Open
    move with Smiling, while Male and Young stay), its `controls` most correlated labels, strongest first
    (an int), or the named ones (a list)."""
    if controls == "all":
        return [[b for b in range(len(attributes)) if b != a] for a in keep]
    if controls == "others":
        phi = correlations(pos.astype(np.float64))
        return [[b for b in range(len(attributes)) if b != a and 0 <= phi[a, b] < FACET] for a in keep]
    if isinstance(controls, (int, np.integer)):
        phi = correlations(pos.astype(np.float64))
        return [[b for b in np.argsort(-phi[a], kind="stable") if b != a and phi[a, b] >= 0][:controls] for a in keep]
    unknown = [n for n in controls if n not in attributes]
    if unknown:
        raise UserError(f"--controls {unknown[0]}: not a label of this file (e.g. Male,Young)")
    return [[attributes.index(n) for n in controls if attributes.index(n) != a] for a in keep]


def joint_fit(z, pos, keep, held, ridge):
    """(K, z_dim) float64: per kept attribute a, twice its coefficient in the ridge regression of z on
    a and its held labels (coded +1/-1, with an unpenalised intercept), so the row is the change of z as
    a goes from -1 to +1 while the held labels stay as they are. Centring both sides takes out the
    intercept: b = (Yc^T Yc + ridge I)^-1 Yc^T Zc on the columns [a] + held. With every label held this
    is one joint fit; the ridge keeps it solvable when a label is constant or two coincide."""
    y = np.where(pos, 1.0, -1.0)
    yc, zc = y - y.mean(axis=0), z - z.mean(axis=0)
    gram, cross = yc.T @ yc, yc.T @ zc  # (A, A), (A, z_dim)
    vec = np.zeros((len(keep), z.shape[1]))
    for row, (a, h) in enumerate(zip(keep, held)):
        cols = [a] + list(h)
        vec[row] = 2.0 * np.linalg.solve(gram[np.ix_(cols, cols)] + ridge * np.eye(len(cols)), cross[cols])[0]
    return vec


READOUT_RIDGE = 1e-3  # hold_readouts: the readouts' ridge, a share of the codes' mean variance


def readouts(z, pos):
    """(A, z_dim): each label's least-squares linear readout of the centred code (labels +-1), ridge
    READOUT_RIDGE times the codes' mean variance; and the codes' covariance (z_dim, z_dim)."""
    y = np.where(pos, 1.0, -1.0)
    zc, yc = z - z.mean(axis=0), y - y.mean(axis=0)
    cov = zc.T @ zc / len(z)
    lam = READOUT_RIDGE * np.trace(cov) / len(cov)
    return np.linalg.solve(cov + lam * np.eye(len(cov)), zc.T @ yc / len(z)).T, cov


def hold_readouts(z, pos, vec, keep, hold):
    """Each row of vec (the direction of attribute keep[row]) moved as little as it can be, measured in
    the codes' own spread (the Mahalanobis norm of the change), so that the linear readouts of the
    labels in `hold` do not change along it: v - S C^T (C S C^T)^-1 C v, with S the codes' covariance
    and C the held labels' readouts. A label that a readout can tell from the codes (Male) then stays
    as it was to that readout however the direction was made; the attribute itself is never held."""
    w, cov = readouts(z, pos)
    out = np.array(vec, np.float64)
    for row, a in enumerate(keep):
        c = w[[b for b in hold if b != a]]
        if len(c):
            # pinv: a held label constant in these codes has a zero readout and holds nothing
            out[row] -= cov @ c.T @ (np.linalg.pinv(c @ cov @ c.T, rcond=1e-10, hermitian=True) @ (c @ out[row]))
    return out


def matched_differences(z, pos, keep, held):
    """Per kept attribute a: mean differences with and without a inside each stratum of its held labels
    (2 labels: 4 strata), averaged with weights n+ n- / (n+ + n-), one over the variance factor of a
    difference of two means, so a stratum with one blond man among 800 men does not swing the estimate;
    strata without both sides are skipped. ((K, z_dim) vectors, (K,) images in the strata used)."""
    vec, n_used = np.zeros((len(keep), z.shape[1])), np.zeros(len(keep), np.int64)
    for row, (a, h) in enumerate(zip(keep, held)):
        stratum = pos[:, list(h)].astype(np.int64) @ (1 << np.arange(len(h), dtype=np.int64))
        total = 0.0
        for s in np.unique(stratum):
            with_a, without_a = (stratum == s) & pos[:, a], (stratum == s) & ~pos[:, a]
            n1, n0 = with_a.sum(), without_a.sum()
            if n1 == 0 or n0 == 0:
                continue
            weight = n1 * n0 / (n1 + n0)
            vec[row] += weight * (z[with_a].mean(axis=0) - z[without_a].mean(axis=0))
            total += weight
            n_used[row] += n1 + n0
        if total > 0:
            vec[row] /= total
    return vec, n_used


def save(path, v):
    """Write the vectors file atomically (temporary name, then rename)."""
    buf = io.BytesIO()
    np.savez(buf, format=np.array(FORMAT), version=np.array(VERSION, np.int64),
             identity=np.array(v.identity), names=np.array(v.names, dtype=str).reshape(-1),
             vectors=v.vectors, unit=v.unit, n_pos=v.n_pos, n_neg=v.n_neg, spread=v.spread,
             skipped=np.array(v.skipped, dtype=str).reshape(-1), min_count=np.array(v.min_count, np.int64),
             method=np.array(v.method), n_used=np.asarray(v.n_used, np.int64),
             controls=np.array(v.controls, dtype=str).reshape(-1), ridge=np.array(v.ridge, np.float64),
             hold=np.array(v.hold, dtype=str).reshape(-1),
             calibrated=np.array(v.calibrated, dtype=str).reshape(-1), calibration=np.array(v.calibration))
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
    try:  # a file from before the methods has no method, n_used, controls, ridge, hold or calibration: a mean file
        v = Vectors(raw["names"].tolist(), raw["vectors"].astype(np.float32), raw["unit"].astype(np.float32),
                    raw["n_pos"], raw["n_neg"], raw["spread"], str(raw["identity"]), raw["skipped"].tolist(),
                    int(raw["min_count"]), str(raw.get("method", "mean")), raw.get("n_used"),
                    raw["controls"].tolist() if "controls" in raw else None, float(raw.get("ridge", 0.0)),
                    raw["hold"].tolist() if "hold" in raw else None,
                    raw["calibrated"].tolist() if "calibrated" in raw else None, str(raw.get("calibration", "")))
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path} is a damaged vectors file ({e}); remake it") from None
    if (v.vectors.ndim != 2 or v.vectors.shape != v.unit.shape or len(v.names) != len(v.vectors)
            or np.shape(v.n_used) != (len(v.names),) or len(v.controls) != len(v.names)
            or not set(v.calibrated) <= set(v.names)):
        raise UserError(f"{path} is a damaged vectors file (inconsistent shapes); remake it")
    if z_dim is not None and v.z_dim != z_dim:
        raise UserError(f"{path} holds {v.z_dim}-dimensional vectors but the model's z has {z_dim}: "
                        f"make vectors for this model with python -m scratchvae.attributes")
    if identity is not None and v.identity != identity:
        raise UserError(f"{path} was made for another checkpoint (identity {v.identity[:12]}…, this one "
                        f"{identity[:12]}…): make vectors for this model with python -m scratchvae.attributes")
    return v
