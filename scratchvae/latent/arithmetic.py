"""Latent-space arithmetic shared by the samplers: z drawn from a seed, strengths, linear and spherical
interpolation, and attribute expressions such as `Smiling+Blond_Hair-Eyeglasses`.

export/sample.py repeats these few lines (it must not import scratchvae); tests hold the two equal.
"""

import difflib
import math
import re

import numpy as np

from scratchvae.run.errors import UserError

GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment
MASK64 = (1 << 64) - 1


def splitmix64(seed, count):
    """Outputs 1..count of SplitMix64 started at `seed` mod 2**64, as uint64: output k (from 1) is
    mix(seed + k * GOLDEN), mix being x ^= x >> 30; x *= 0xBF58476D1CE4E5B9; x ^= x >> 27;
    x *= 0x94D049BB133111EB; x ^= x >> 31, all mod 2**64."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed & MASK64) + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(GOLDEN)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def standard_normals(seed, count):
    """`count` float64 normals: outputs 2j+1, 2j+2 of splitmix64(seed) become the 53-bit uniforms
    u1 = ((a >> 11) + 1) / 2**53 in (0, 1] and u2 = (b >> 11) / 2**53 in [0, 1); Box-Muller turns them
    into normals 2j = r cos(t) and 2j+1 = r sin(t), r = sqrt(-2 log u1), t = 2 pi u2. Scalar libm
    calls (math.*), so the page's JS (Math.*) computes the same numbers."""
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
    """The one documented draw, shared by both samplers and the web page (web/app.js): the
    first n * z_dim of standard_normals(seed) in row-major order (SplitMix64 -> 53-bit uniforms ->
    Box-Muller, float64), times the temperature, as float32. Row i is normals i*z_dim .. (i+1)*z_dim - 1
    of one stream, so the first k rows of a draw of n are a draw of k."""
    if not temperature > 0:
        raise UserError(f"--temperature {temperature}: use a positive number (1 is the prior)")
    z = standard_normals(seed, n * z_dim).reshape(n, z_dim)
    return (temperature * z).astype(np.float32)


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


def name_key(name):
    """How a name is matched: case, spaces and underscores do not count (`Blond Hair` is `Blond_Hair`)."""
    return re.sub(r"[\s_]+", "_", name.strip()).lower()


def parse_expression(text, known, skipped=()):
    """[(sign, name), ...] from `Smiling+Blond_Hair-Eyeglasses`, with each name as `known` spells it;
    a name is matched as name_key says, so the page's `Blond Hair` works. One clear line for a bad
    term: a name is never cut at a space or dropped."""
    parts = re.split(r"([+-])", text.strip())  # name, sign, name, ...; a leading sign leaves "" first
    if parts[0].strip() == "" and len(parts) > 1:
        parts = parts[1:]
    else:
        parts = ["+"] + parts
    keys = {name_key(n): n for n in known}
    skipped_keys = {name_key(n): n for n in skipped}
    out = []
    for sign, name in zip(parts[0::2], parts[1::2]):
        if not name.strip():
            raise UserError(f"--attribute {text!r}: write names joined by + or -, e.g. Smiling+Blond_Hair-Eyeglasses")
        key = name_key(name)
        if key not in keys:
            if key in skipped_keys:
                raise UserError(f"--attribute {name.strip()}: {skipped_keys[key]} was skipped when the vectors were "
                                f"made (too few images on one side); remake them with more images or a lower "
                                f"--min-count")
            near = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.0)
            raise UserError(f"--attribute {name.strip()}: no such attribute in the vectors file; nearest: "
                            f"{', '.join(keys[k] for k in near)}")
        out.append((-1.0 if sign == "-" else 1.0, keys[key]))
    return out


def expression_text(terms):
    """`Smiling+Blond_Hair-Eyeglasses` from parse_expression's terms: the names as the vectors spell them."""
    return "".join(("-" if sign < 0 else "+" if i else "") + name for i, (sign, name) in enumerate(terms))


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
