"""Latent-space arithmetic shared by the samplers: z drawn from a seed, strengths, linear and spherical
interpolation, and attribute expressions such as `Smiling+Blond_Hair-Eyeglasses`.

export/sample.py repeats these few lines (it must not import scratchvae); tests hold the two equal.
"""

import difflib
import re

import numpy as np

from scratchvae.errors import UserError

EXPRESSION = re.compile(r"([+-]?)([^+\-\s]+)")


def draw_z(seed, n, z_dim, temperature=1.0):
    """The one documented draw: row i of `default_rng(seed).standard_normal((n, z_dim))` (float64),
    times the temperature, as float32. The first k rows of a draw of n are a draw of k."""
    if not temperature > 0:
        raise UserError(f"--temperature {temperature}: use a positive number (1 is the prior)")
    return (temperature * np.random.default_rng(seed).standard_normal((n, z_dim))).astype(np.float32)


def parse_strengths(text):
    """`-3:3:7` (first:last:count, evenly spaced) or `0,1,2` (a list) -> float32 array."""
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
        raise UserError(f"--strengths {text!r}: write first:last:count (e.g. -3:3:7) or a list (e.g. 0,1,2)") \
            from None
    if not np.all(np.isfinite(values)):
        raise UserError(f"--strengths {text!r}: every strength must be a finite number")
    return values.astype(np.float32)


def lerp(a, b, t):
    """(len(t), z_dim) points (1 - t) a + t b."""
    t = np.asarray(t, np.float64)[:, None]
    return ((1 - t) * a.astype(np.float64) + t * b.astype(np.float64)).astype(np.float32)


def slerp(a, b, t):
    """Spherical interpolation: the angle between a and b is swept at a constant rate, so the
    norms stay near those of a and b (a straight line passes closer to the origin, where the prior
    puts few codes). Falls back to lerp when a and b are (anti)parallel within rounding."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = np.dot(a64, b64) / max(np.linalg.norm(a64) * np.linalg.norm(b64), 1e-300)
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return lerp(a, b, t)
    t = np.asarray(t, np.float64)[:, None]
    return ((np.sin((1 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)).astype(np.float32)


def parse_expression(text, known, skipped=()):
    """[(sign, name), ...] from `Smiling+Blond_Hair-Eyeglasses`; one clear line for a bad term."""
    text = text.strip()
    terms = EXPRESSION.findall(text)
    if not terms or "".join(s + n for s, n in terms) != text.replace(" ", ""):
        raise UserError(f"--attribute {text!r}: write names joined by + or -, e.g. Smiling+Blond_Hair-Eyeglasses")
    out = []
    for sign, name in terms:
        if name not in known:
            if name in skipped:
                raise UserError(f"--attribute {name}: skipped when the vectors were made (too few images on one "
                                f"side); remake them with more images or a lower --min-count")
            near = difflib.get_close_matches(name, list(known), n=3, cutoff=0.0)
            raise UserError(f"--attribute {name}: no such attribute in the vectors file; nearest: {', '.join(near)}")
        out.append((-1.0 if sign == "-" else 1.0, name))
    return out


def combine(terms, names, vectors):
    """The direction of an expression: the signed sum of its attribute vectors, float32 (z_dim,)."""
    row = {name: i for i, name in enumerate(names)}
    total = np.zeros(vectors.shape[1], np.float64)
    for sign, name in terms:
        total += sign * vectors[row[name]].astype(np.float64)
    return total.astype(np.float32)


def attribute_rows(z, direction, strengths):
    """(faces, strengths, z_dim): z + s * direction for every face and strength."""
    return (z[:, None, :].astype(np.float32)
            + strengths.astype(np.float32)[None, :, None] * direction.astype(np.float32)[None, None, :])


def fix_negative_values(argv, options=("--strengths", "--attribute")):
    """argparse reads `--strengths -3:3:7` as two options; glue such values on as `--strengths=-3:3:7`."""
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
