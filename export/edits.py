"""Latent arithmetic, the attribute-vectors file and the fitted prior for export/sample.py, with NumPy alone.

A copy of scratchvae.latent, of scratchvae.latent.vectors' and scratchvae.latent.prior's readers and
of scratchvae.latent.mixture.draw (this side must not import scratchvae or Numba); tests/test_attributes.py and
tests/test_prior_samplers.py hold the two sides equal on the same inputs.
"""

import difflib
import math
import os
import re

import numpy as np

FORMAT, VERSION = "scratchvae-attribute-vectors", 1
IDENTITY_KEY = "checkpoint_sha256"  # ONNX metadata prop carrying the checkpoint's identity, when exported with it
GOLDEN, MASK64 = 0x9E3779B97F4A7C15, (1 << 64) - 1  # SplitMix64's increment; 64-bit wrap
PRIOR_FORMAT, PRIOR_VERSION = "scratchvae-latent-prior", 1
PRIOR_SALT = 0xD1B54A32D192ED03  # the prior draw's component choice: SplitMix64 from seed ^ PRIOR_SALT


class EditError(Exception):
    """A user's mistake; the message is the one line printed."""


def splitmix64(seed, count):
    """Outputs 1..count of SplitMix64 started at seed mod 2**64, as uint64 (scratchvae.latent.splitmix64)."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed & MASK64) + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(GOLDEN)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def standard_normals(seed, count):
    """SplitMix64 from seed mod 2**64 -> 53-bit uniforms u1 in (0, 1], u2 in [0, 1) -> Box-Muller pairs
    r cos(t), r sin(t) with r = sqrt(-2 log u1), t = 2 pi u2 (float64): scratchvae.latent's stream."""
    pairs = (count + 1) // 2
    x = splitmix64(seed, 2 * pairs)
    u1 = ((x[0::2] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0 ** -53
    u2 = (x[1::2] >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    out = np.empty(2 * pairs, np.float64)
    for j, (a, b) in enumerate(zip(u1.tolist(), u2.tolist())):
        r, t = math.sqrt(-2.0 * math.log(a)), 2.0 * math.pi * b
        out[2 * j], out[2 * j + 1] = r * math.cos(t), r * math.sin(t)
    return out[:count]


def draw_z(seed, n, z_dim, temperature=1.0):
    """Row i of the (n, z_dim) row-major fill from standard_normals(seed), times the temperature, as
    float32 (the draw scratchvae.latent documents; the first k rows of a draw of n are a draw of k)."""
    if not temperature > 0:
        raise EditError(f"--temperature {temperature}: use a positive number (1 is the prior)")
    return (temperature * standard_normals(seed, n * z_dim).reshape(n, z_dim)).astype(np.float32)


def draw_prior(weights, means, cholesky, seed, n, temperature=1.0):
    """(n, d) float32 from a fitted prior, step for step as scratchvae.latent.mixture.draw documents it: normals
    e = standard_normals(seed, n * d) by rows; row i's component k_i = min(searchsorted(c / c[-1], u_i,
    side="right"), K - 1), c = cumsum(weights), u_i = (splitmix64(seed ^ PRIOR_SALT)[i] >> 11) / 2**53;
    z_i = means[k_i] + temperature * sum_j L[:, j] * e_i[j] (L = cholesky[k_i], j in order, float64)."""
    if not temperature > 0:
        raise EditError(f"--temperature {temperature}: use a positive number (1 is the fitted prior)")
    w, mu, factor = (np.asarray(a, np.float64) for a in (weights, means, cholesky))
    k, d = mu.shape
    e = standard_normals(seed, n * d).reshape(n, d)
    u = (splitmix64((seed ^ PRIOR_SALT) & MASK64, n) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    cum = np.cumsum(w)
    comp = np.minimum(np.searchsorted(cum / cum[-1], u, side="right"), k - 1)
    z = np.empty((n, d), np.float64)
    for c in np.unique(comp):
        rows = comp == c
        acc = np.zeros((int(rows.sum()), d), np.float64)
        for j in range(d):  # acc += L[:, j] * e[j], j in index order, as the page's loop adds them
            acc += factor[c][:, j][None, :] * e[rows, j][:, None]
        z[rows] = mu[c] + temperature * acc
    return z.astype(np.float32)


def parse_strengths(text):
    """`-3:3:7` (first:last:count) or `0,1,2` -> float32 array."""
    try:
        if ":" in text:
            first, last, count = text.split(":")
            count = int(count)
            if count < 1:
                raise ValueError
            values = np.linspace(float(first), float(last), count)
        else:
            values = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise EditError(f"--strengths {text!r}: write first:last:count (e.g. -3:3:7) or a list (e.g. 0,1,2)") \
            from None
    if not np.all(np.isfinite(values)):
        raise EditError(f"--strengths {text!r}: every strength must be a finite number")
    return values.astype(np.float32)


def lerp(a, b, t):
    t = np.asarray(t, np.float64)[:, None]
    return ((1 - t) * a.astype(np.float64) + t * b.astype(np.float64)).astype(np.float32)


def slerp(a, b, t):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = np.dot(a64, b64) / max(np.linalg.norm(a64) * np.linalg.norm(b64), 1e-300)
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return lerp(a, b, t)
    t = np.asarray(t, np.float64)[:, None]
    return ((np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)).astype(np.float32)


def name_key(name):
    """Case, spaces and underscores do not count: `Blond Hair` is `Blond_Hair`."""
    return re.sub(r"[\s_]+", "_", name.strip()).lower()


def parse_expression(text, known, skipped=()):
    """[(sign, name), ...] from `Smiling+Blond_Hair-Eyeglasses`, names as `known` spells them."""
    parts = re.split(r"([+-])", text.strip())
    if parts[0].strip() == "" and len(parts) > 1:
        parts = parts[1:]
    else:
        parts = ["+"] + parts
    keys = {name_key(n): n for n in known}
    skipped_keys = {name_key(n): n for n in skipped}
    out = []
    for sign, name in zip(parts[0::2], parts[1::2]):
        if not name.strip():
            raise EditError(f"--attribute {text!r}: write names joined by + or -, e.g. Smiling+Blond_Hair-Eyeglasses")
        key = name_key(name)
        if key not in keys:
            if key in skipped_keys:
                raise EditError(f"--attribute {name.strip()}: {skipped_keys[key]} was skipped when the vectors were "
                                f"made (too few images on one side); remake them with more images or a lower "
                                f"--min-count")
            near = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.0)
            raise EditError(f"--attribute {name.strip()}: no such attribute in the vectors file; nearest: "
                            f"{', '.join(keys[k] for k in near)}")
        out.append((-1.0 if sign == "-" else 1.0, keys[key]))
    return out


def expression_text(terms):
    """`Smiling+Blond_Hair-Eyeglasses` from parse_expression's terms."""
    return "".join(("-" if sign < 0 else "+" if i else "") + name for i, (sign, name) in enumerate(terms))


def combine(terms, names, vectors):
    row = {name: i for i, name in enumerate(names)}
    total = np.zeros(vectors.shape[1], np.float64)
    for sign, name in terms:
        total += sign * vectors[row[name]].astype(np.float64)
    return total.astype(np.float32)


def attribute_rows(z, direction, strengths):
    """(faces, strengths, z_dim): z + s * direction."""
    return (z[:, None, :].astype(np.float32)
            + strengths.astype(np.float32)[None, :, None] * direction.astype(np.float32)[None, None, :])


def fix_negative_values(argv, options=("--strengths", "--attribute")):
    """Glue `--strengths -3:3:7` into `--strengths=-3:3:7` so argparse does not read an option."""
    out, i = [], 0
    while i < len(argv):
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if argv[i] in options and value.startswith("-") and value[1:2] not in ("-", ""):
            out.append(f"{argv[i]}={value}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def load_vectors(path, z_dim, identity=None):
    """(names, vectors (K, z_dim) float32, skipped) from a vectors file, read with allow_pickle=False;
    refused when its z size differs, or when `identity` (from the ONNX metadata) is not the file's."""
    if not os.path.isfile(path):
        raise EditError(f"no vectors file at {path}: make one with python -m scratchvae.attributes")
    try:
        with np.load(path, allow_pickle=False) as f:
            raw = {k: f[k] for k in f.files}
        if str(raw["format"]) != FORMAT or int(raw["version"]) != VERSION:
            raise KeyError("format")
        names, vec, skipped = raw["names"].tolist(), raw["vectors"].astype(np.float32), raw["skipped"].tolist()
        file_identity = str(raw["identity"])
    except Exception as e:  # noqa: BLE001 - zipfile and the .npy parser raise many kinds on damage
        raise EditError(f"{path} is not a readable scratchvae attribute-vectors file ({type(e).__name__})") from None
    if vec.ndim != 2 or len(names) != len(vec):
        raise EditError(f"{path} is a damaged vectors file (inconsistent shapes); remake it")
    if vec.shape[1] != z_dim:
        raise EditError(f"{path} holds {vec.shape[1]}-dimensional vectors but the decoder's z has {z_dim}: "
                        f"use the vectors made for this model")
    if identity is not None and identity != file_identity:
        raise EditError(f"{path} was made for another checkpoint (identity {file_identity[:12]}…, the ONNX "
                        f"models' {identity[:12]}…): use the vectors made for this model")
    return names, vec, skipped


def load_prior(path, z_dim, identity=None):
    """(weights (K,), means (K, z_dim), cholesky (K, z_dim, z_dim)) float64 from a prior file of python -m
    scratchvae.prior, read with allow_pickle=False and checked as scratchvae.latent.prior.load checks it; refused
    when its z size differs, or when `identity` (the decoder's metadata) is not the file's checkpoint_sha256."""
    redo = "fit it again with python -m scratchvae.prior"
    if not os.path.isfile(path):
        raise EditError(f"no prior file at {path}: fit one with python -m scratchvae.prior CHECKPOINT")
    try:
        with np.load(path, allow_pickle=False) as f:
            raw = {k: f[k] for k in f.files}
        if str(raw["format"]) != PRIOR_FORMAT or int(raw["version"]) != PRIOR_VERSION:
            raise KeyError("format")
        w, mu, factor = (raw[k].astype(np.float64) for k in ("weights", "means", "cholesky"))
        file_identity, stored_dim = str(raw["checkpoint_sha256"]), int(raw["z_dim"])
    except Exception as e:  # noqa: BLE001 - zipfile and the .npy parser raise many kinds on damage
        raise EditError(f"{path} is not a readable scratchvae latent-prior file ({type(e).__name__}); {redo}") \
            from None
    k = len(w) if w.ndim == 1 else -1
    if k < 1 or mu.ndim != 2 or mu.shape[0] != k or factor.shape != (k, mu.shape[1], mu.shape[1]) \
            or stored_dim != mu.shape[1]:
        raise EditError(f"{path} is a damaged prior file (shapes {w.shape}, {mu.shape}, {factor.shape}); {redo}")
    if not all(np.all(np.isfinite(a)) for a in (w, mu, factor)) or np.any(w < 0) or not w.sum() > 0 \
            or np.any(np.triu(factor, 1)) or np.any(np.diagonal(factor, axis1=1, axis2=2) <= 0):
        raise EditError(f"{path} is a damaged prior file (non-finite values, negative weights or factors that are "
                        f"not lower-triangular with a positive diagonal); {redo}")
    if mu.shape[1] != z_dim:
        raise EditError(f"{path} holds a prior of {mu.shape[1]}-dimensional codes but the decoder's z has {z_dim}: "
                        f"use the prior fitted for this model")
    if identity is not None and identity != file_identity:
        raise EditError(f"{path} was made for another checkpoint (identity {file_identity[:12]}…, the ONNX "
                        f"models' {identity[:12]}…): use the prior fitted for this model")
    return w, mu, factor
