"""Procedural cartoon faces: the built-in data set, so training works with no download.

Face i is drawn from its own parameter vector seeded by (seed, i), so a face never depends on how
many others were asked for. Shapes are soft-edged signed-distance fields on whole pixel grids in a
head-centred frame (x right, y down, head about 1 unit wide); output is NHWC uint8 like the photos.
"""

from __future__ import annotations

import functools
import math

import numpy as np

SYNTHETIC_VERSION = 3  # bump whenever the drawing changes, so cached sets are redrawn
_CHUNK_PIXELS = 1 << 17  # pixels rendered together: enough to vectorise, few enough for L2
_N_U = 96  # uniforms drawn per face; more than the parameters use, so adding one keeps old faces

_SKIN = np.array([[0.97, 0.83, 0.73], [0.94, 0.76, 0.63], [0.88, 0.67, 0.53], [0.79, 0.58, 0.43],
                  [0.65, 0.45, 0.32], [0.49, 0.33, 0.23], [0.36, 0.24, 0.17]])
_HAIR = np.array([[0.07, 0.06, 0.06], [0.20, 0.13, 0.08], [0.38, 0.24, 0.14], [0.55, 0.25, 0.12],
                  [0.80, 0.64, 0.38], [0.92, 0.82, 0.58], [0.62, 0.61, 0.60], [0.88, 0.87, 0.85],
                  [0.45, 0.20, 0.45]])
_HAIR_P = np.array([0.26, 0.24, 0.16, 0.07, 0.10, 0.06, 0.05, 0.03, 0.03])
_IRIS = np.array([[0.36, 0.21, 0.10], [0.14, 0.09, 0.06], [0.30, 0.50, 0.76], [0.30, 0.52, 0.32],
                  [0.52, 0.40, 0.20], [0.50, 0.56, 0.62]])
_N_STYLES = 6  # short, long, bob, curly, buzz, bun
# Pose ranges, shared by the parameters and the window that bounds the facial features.
_SCALE, _SHIFT_X, _SHIFT_Y, _ROLL = (1.18, 1.26), 0.03, (0.02, 0.06), 0.05
# Head-frame boxes (x0, x1, y0, y1) that hold each feature for every parameter in range.
_EYES_BOX, _NOSE_BOX, _MOUTH_BOX = (-.47, .47, -.36, .09), (-.45, .45, -.12, .3), (-.3, .3, .17, .45)


def synthetic_faces(n: int, image_size: int = 128, seed: int = 0) -> np.ndarray:
    """Return n faces as uint8 (n, image_size, image_size, 3); face i depends only on (seed, i)."""
    if n < 0 or image_size < 1 or seed < 0:
        raise ValueError(f"synthetic_faces needs n >= 0, image_size >= 1, seed >= 0; "
                         f"got n={n}, image_size={image_size}, seed={seed}")
    out = np.empty((n, image_size, image_size, 3), np.uint8)
    chunk = max(1, min(64, _CHUNK_PIXELS // (image_size * image_size)))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        out[start:stop] = _render(_params(seed, start, stop), image_size)
    return out


def _params(seed: int, start: int, stop: int) -> dict[str, np.ndarray]:
    """Per-face drawing parameters as (B,) float64 arrays (colours (B, 3))."""
    u = np.stack([np.random.default_rng([seed, i]).random(_N_U) for i in range(start, stop)])
    cols = iter(u.T)

    def r(lo, hi):
        return lo + (hi - lo) * next(cols)

    def pick(table, probs=None):
        w = np.full(len(table), 1.0 / len(table)) if probs is None else probs
        k = np.searchsorted(np.cumsum(w) / w.sum(), next(cols), side="right")
        return table[np.minimum(k, len(table) - 1)]

    p: dict[str, np.ndarray] = {}
    p["scale"], p["cx"], p["cy"] = r(*_SCALE), r(-_SHIFT_X, _SHIFT_X), r(*_SHIFT_Y)
    p["roll"], p["yaw"] = r(-_ROLL, _ROLL), r(-0.5, 0.5)
    p["a"], p["b"], p["taper"] = r(0.42, 0.52), r(0.56, 0.66), r(0.0, 0.35)
    t = r(0.0, 1.0) * (len(_SKIN) - 1)
    k = np.minimum(t.astype(int), len(_SKIN) - 2)
    f = (t - k)[:, None]
    p["skin"] = np.clip((1 - f) * _SKIN[k] + f * _SKIN[k + 1] + 0.03 * (np.stack(
        [r(-1, 1), r(-1, 1), r(-1, 1)], 1)), 0, 1)
    p["hair"] = np.clip(pick(_HAIR, _HAIR_P) * r(0.85, 1.15)[:, None], 0, 1)
    p["style"] = np.minimum((r(0, 1) * _N_STYLES).astype(int), _N_STYLES - 1)
    p["hairline"], p["hair_curve"], p["hair_sweep"] = r(-0.52, -0.36), r(0.4, 1.3), r(-0.6, 0.6)
    p["volume"], p["hair_len"] = r(0.03, 0.10), r(0.0, 1.0)
    p["eye_y"], p["eye_sep"] = r(-0.12, -0.04), r(0.19, 0.24)
    p["eye_rx"], p["eye_ry"] = r(0.085, 0.11), r(0.042, 0.060)
    p["iris"] = pick(_IRIS) * r(0.8, 1.2)[:, None]
    p["gaze"] = r(-0.015, 0.015)
    p["brow_off"], p["brow_th"] = r(0.09, 0.12), r(0.02, 0.03)
    p["brow_arch"], p["brow_tilt"] = r(0.0, 0.04), r(-0.15, 0.2)
    p["nose_y"], p["nose_w"] = r(0.10, 0.17), r(0.035, 0.06)
    p["mouth_y"], p["mouth_w"] = r(0.27, 0.33), r(0.14, 0.20)
    p["smile"], p["mouth_open"] = r(-0.02, 0.06), np.maximum(r(-0.04, 0.05), 0.0)
    p["lip_th"] = r(0.022, 0.034)
    p["lip"] = np.clip(p["skin"] * 0.55 + np.array([0.72, 0.22, 0.28]) * r(0.3, 0.55)[:, None], 0, 1)
    p["bg0"] = np.stack([r(0.15, 0.95), r(0.15, 0.95), r(0.15, 0.95)], 1)
    p["bg1"] = np.clip(p["bg0"] * r(0.55, 1.25)[:, None], 0, 1)
    p["bg_dir"] = r(-1.0, 1.0)
    p["clothes"] = np.stack([r(0.05, 0.9), r(0.05, 0.9), r(0.05, 0.9)], 1)
    p["light"], p["light_k"] = r(-1.0, 1.0), r(0.05, 0.2)
    p["blush"] = np.maximum(r(-0.2, 0.3), 0.0)
    p["glasses"] = (r(0, 1) < 0.12).astype(float)
    p["beard"] = (r(0, 1) < 0.10).astype(float)
    # Trigonometry per face in plain Python: identical numbers whatever the chunk size.
    p["cos"] = np.array([math.cos(v) for v in p["roll"]])
    p["sin"] = np.array([math.sin(v) for v in p["roll"]])
    return p


def _render(p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Draw the faces described by p; returns uint8 (B, size, size, 3)."""
    f32 = np.float32
    # Scalars become (B, 1, 1); colours (3, B, 1, 1): channel-first so painting runs on
    # contiguous planes instead of broadcasting over a trailing axis of 3.
    q = {k: (v.T.astype(f32)[..., None, None] if v.ndim == 2 else v.astype(f32)[:, None, None])
         for k, v in p.items()}
    g = (np.arange(size, dtype=f32) + f32(0.5)) * f32(2.0 / size) - f32(1.0)
    xi, yi = g[None, None, :], g[:, None][None]  # image frame, [-1, 1], y down
    dx, dy = xi - q["cx"], yi - q["cy"]
    inv_s = f32(1) / q["scale"]
    X = (q["cos"] * dx + q["sin"] * dy) * inv_s  # (B, S, S) head frame
    Y = (q["cos"] * dy - q["sin"] * dx) * inv_s
    ipw = q["scale"] * f32(size / 2.0) / f32(1.3)  # 1 / (edge softness in head units)
    c = _Canvas(X, Y, ipw)

    # Background: linear gradient along a per-face direction, then shoulders and neck.
    t = np.clip(f32(0.5) + f32(0.5) * (q["bg_dir"] * xi + (f32(1) - np.abs(q["bg_dir"])) * yi), 0, 1)
    img = q["bg0"] + t * (q["bg1"] - q["bg0"])  # (3, B, S, S)
    c.img = img
    skin, hair = q["skin"], q["hair"]
    shoulders = _ellipse(xi - q["cx"] * f32(0.5), yi, f32(0), f32(1.6), f32(1.1), f32(0.62))
    neck = _box(X, Y - f32(0.75), q["a"] * f32(0.42), f32(0.45), f32(0.06))
    c.paint(c.cov(neck), skin * f32(0.8))
    c.paint(c.cov(shoulders), q["clothes"])
    c.paint(c.cov(_ellipse(X, Y, f32(0), f32(0.8), q["a"] * f32(0.48), f32(0.12))) *
            c.cov(-shoulders), skin * f32(0.85))

    _hair_back(c, q)
    for sgn in (f32(-1), f32(1)):  # ears sit behind the head outline
        ear = _ellipse(X, Y, sgn * q["a"] * f32(0.97), q["eye_y"] + f32(0.07), f32(0.065), f32(0.11))
        c.paint(c.cov(ear), skin * f32(0.9))

    # Head: egg shape (jaw narrows by taper), shaded by a side light and darker near the rim.
    rx = q["a"] * (f32(1) - q["taper"] * np.clip(Y / q["b"], 0, 1) ** 2)
    k = np.sqrt((X / rx) ** 2 + (Y / q["b"]) ** 2)
    head = (k - f32(1)) * np.sqrt(q["a"] * q["b"])
    shade = (f32(1) + q["light_k"] * q["light"] * X / q["a"]
             - f32(0.22) * np.clip((k - f32(0.7)) / f32(0.3), 0, 1) ** 2)
    c.paint(c.cov(head), skin * shade)
    if (p["beard"] > 0).any():
        top = q["mouth_y"] - f32(0.04) - f32(0.8) * X * X  # rises towards the sideburns
        beard = np.maximum(head, (top - Y) * f32(0.7))
        c.paint(c.cov(beard, 2) * q["beard"] * f32(0.8), hair * f32(0.9))
    _hair_front(c, q)
    for draw, box in ((_eyes, _EYES_BOX), (_nose, _NOSE_BOX), (_mouth, _MOUTH_BOX)):
        draw(c.window(*_window(size, box)), q)

    img = _blur(c.img)  # a slight lens blur, so edges look photographed
    return np.round(np.clip(img, 0, 1) * f32(255)).astype(np.uint8).transpose(1, 2, 3, 0)


class _Canvas:
    """Head-frame coordinates (B, S, S), edge sharpness, and the picture being painted."""

    def __init__(self, X, Y, ipw, img=None):
        self.X, self.Y, self.ipw, self.img = X, Y, ipw, img

    def cov(self, d, soft=1.0):
        """Coverage of the shape whose signed distance is d (negative inside), antialiased."""
        return np.clip(np.float32(0.5) - d * (self.ipw / np.float32(soft)), 0, 1)

    def paint(self, alpha, color):
        """Alpha-blend color ((3,B,1,1) or (3,B,S,S)) over the picture (3,B,S,S)."""
        for ch in range(3):
            self.img[ch] += alpha * (color[ch] - self.img[ch])

    def window(self, rows: slice, cols: slice) -> "_Canvas":
        """A view of a pixel rectangle; painting it paints the whole picture."""
        return _Canvas(self.X[:, rows, cols], self.Y[:, rows, cols], self.ipw,
                       self.img[:, :, rows, cols])

    def subset(self, idx):
        return _Canvas(self.X[idx], self.Y[idx], self.ipw[idx], self.img[:, idx])


def _on(c: _Canvas, q: dict, mask: np.ndarray, draw) -> None:
    """Run draw(canvas, params) on the faces where mask holds; skips the work for the others."""
    idx = np.nonzero(mask.reshape(-1))[0]
    if idx.size:
        sub = c.subset(idx)
        draw(sub, {k: (v[:, idx] if v.ndim == 4 else v[idx]) for k, v in q.items()})
        c.img[:, idx] = sub.img


@functools.lru_cache(maxsize=None)
def _window(size: int, box: tuple) -> tuple[slice, slice]:
    """Pixel rows and columns that a head-frame box can reach under any pose in range.

    Only a saving: every pixel's value is computed the same way inside or outside a window,
    so the window is fixed per size and a face never depends on its neighbours.
    """
    x0, x1, y0, y1 = box
    xs, ys = [], []
    for roll in np.linspace(-_ROLL, _ROLL, 25):
        for X, Y in ((x0, y0), (x0, y1), (x1, y0), (x1, y1)):
            for s in _SCALE:
                dx, dy = s * (math.cos(roll) * X - math.sin(roll) * Y), s * (
                    math.sin(roll) * X + math.cos(roll) * Y)
                xs += [dx - _SHIFT_X, dx + _SHIFT_X]
                ys += [dy + _SHIFT_Y[0], dy + _SHIFT_Y[1]]
    margin = 4  # pixels of antialiased edge and blur beyond the shapes

    def span(lo, hi):
        a = max(0, int(math.floor((lo + 1) * size / 2)) - margin)
        return slice(a, min(size, int(math.ceil((hi + 1) * size / 2)) + margin))

    return span(min(ys), max(ys)), span(min(xs), max(xs))


def _ellipse(X, Y, ex, ey, rx, ry):
    """Approximate signed distance to an axis-aligned ellipse (exact on a circle)."""
    k = np.sqrt(((X - ex) / rx) ** 2 + ((Y - ey) / ry) ** 2)
    return (k - np.float32(1)) * np.sqrt(rx * ry)


def _box(X, Y, hw, hh, r):
    """Signed distance to a box of half sizes (hw, hh) centred at 0 with corner radius r."""
    qx, qy = np.abs(X) - (hw - r), np.abs(Y) - (hh - r)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def _rgb(r, g, b):
    """A constant colour shaped (3, 1, 1, 1) to broadcast against (3, B, S, S)."""
    return np.array([r, g, b], np.float32).reshape(3, 1, 1, 1)


def _tri(t):
    """Triangle wave in [0, 0.5] of period 1: cheap texture without transcendental functions."""
    return np.abs(t - np.floor(t) - np.float32(0.5))


def _blur(img):
    """[1, 2, 1] / 4 along both spatial axes of (3, B, S, S), edges repeated."""
    quarter, half = np.float32(0.25), np.float32(0.5)
    p = np.pad(img, ((0, 0), (0, 0), (1, 1), (0, 0)), mode="edge")
    img = (p[:, :, :-2] + p[:, :, 2:]) * quarter + img * half
    p = np.pad(img, ((0, 0), (0, 0), (0, 0), (1, 1)), mode="edge")
    return (p[..., :-2] + p[..., 2:]) * quarter + img * half


def _hair_shade(c: _Canvas, q: dict):
    """Hair colour with strands and a highlight on the lit side, (B, S, S, 3)."""
    f32 = np.float32
    strands = _tri(c.X * f32(16) - c.Y * f32(4) * q["hair_sweep"]) * f32(0.08)
    shine = f32(0.12) * q["light"] * np.clip(c.X / q["a"], -1, 1)
    return q["hair"] * (f32(0.92) + strands + shine)


def _hair_back(c: _Canvas, q: dict) -> None:
    """Hair that shows around and below the head (drawn before the head)."""
    f32 = np.float32
    style = q["style"]

    def long_or_bob(s, p, bottom, extra):
        top = _ellipse(s.X, s.Y, f32(0), f32(-0.06), p["a"] + p["volume"] + f32(0.04),
                       p["b"] + p["volume"])
        half = (bottom + f32(0.1)) * f32(0.5)
        drop = _box(s.X, s.Y - (bottom - half), p["a"] + p["volume"] + extra, half, f32(0.14))
        s.paint(s.cov(np.minimum(top, drop)), _hair_shade(s, p) * f32(0.85))

    _on(c, q, style == 1, lambda s, p: long_or_bob(s, p, f32(0.5) + f32(0.45) * p["hair_len"],
                                                  f32(0.05)))
    _on(c, q, style == 2, lambda s, p: long_or_bob(s, p, f32(0.25) + f32(0.15) * p["hair_len"],
                                                  f32(0.09)))

    def curly(s, p):
        d = _ellipse(s.X, s.Y, f32(0), f32(-0.12), p["a"] + f32(0.2) + p["volume"], p["b"] + f32(0.12))
        d = d + f32(0.09) * (_tri(s.X * f32(6)) + _tri(s.Y * f32(6))) - f32(0.04)
        s.paint(s.cov(d), _hair_shade(s, p) * f32(0.85))

    def bun(s, p):
        d = _ellipse(s.X, s.Y, f32(0.15) * p["hair_sweep"], -p["b"] - f32(0.1), f32(0.17), f32(0.15))
        s.paint(s.cov(d), _hair_shade(s, p))

    _on(c, q, style == 3, curly)
    _on(c, q, style == 5, bun)


def _hair_front(c: _Canvas, q: dict) -> None:
    """The hair cap over the top of the head, ending at a curved, swept hairline."""
    f32 = np.float32
    X, Y = c.X, c.Y
    vol = np.where(q["style"] == 4, f32(0.012), q["volume"])
    curly = (q["style"] == 3).astype(f32)
    cap = _ellipse(X, Y, f32(0), f32(-0.03) - vol * f32(0.5), q["a"] + vol, q["b"] + vol * f32(1.5))
    cap = cap + curly * (f32(0.06) * (_tri(X * f32(7)) + _tri(Y * f32(7))) - f32(0.02))
    line = q["hairline"] + q["hair_curve"] * X * X + f32(0.12) * q["hair_sweep"] * X
    line = line - np.where(q["style"] == 4, f32(0.12), f32(0))
    d = np.maximum(cap, (Y - line) * f32(0.7))
    alpha = c.cov(d) * np.where(q["style"] == 4, f32(0.75), f32(1))
    c.paint(alpha, _hair_shade(c, q))


def _eyes(c: _Canvas, q: dict) -> None:
    """Eye sockets, whites, irises, lids and brows, shifted and foreshortened by yaw."""
    f32 = np.float32
    X, Y, skin = c.X, c.Y, q["skin"]
    fx, ey, ry = q["yaw"] * f32(0.06), q["eye_y"], q["eye_ry"]
    dark = _rgb(0.08, 0.06, 0.05)
    for sgn in (f32(-1), f32(1)):
        ex = fx + sgn * q["eye_sep"] * (f32(1) + f32(0.1) * sgn * q["yaw"])
        rx = q["eye_rx"] * (f32(1) + f32(0.15) * sgn * q["yaw"])
        c.paint(c.cov(_ellipse(X, Y, ex, ey - f32(0.01), rx * f32(1.4), ry * f32(2.2)), 3) *
                f32(0.35), skin * f32(0.78))
        white = _ellipse(X, Y, ex, ey, rx, ry)
        inside = c.cov(white)
        c.paint(inside, _rgb(0.96, 0.95, 0.93))
        ix, ir = ex + q["gaze"], ry * f32(1.1)
        iris = _ellipse(X, Y, ix, ey, ir, ir)
        c.paint(c.cov(iris) * inside, q["iris"])
        c.paint(c.cov(iris + ir * f32(0.55)) * inside, dark)  # pupil: the iris shrunk
        glint = _ellipse(X, Y, ix - ir * f32(0.3), ey - ir * f32(0.35), ir * f32(0.25), ir * f32(0.25))
        c.paint(c.cov(glint) * inside * f32(0.9), _rgb(1.0, 1.0, 1.0))
        lid = np.maximum(np.abs(white) - f32(0.008), Y - ey + ry * f32(0.2))
        c.paint(c.cov(lid) * f32(0.85), dark)
        # Brow: a band around an arched, tilted curve, thinning towards the outer end.
        bw = rx * f32(1.3)
        t = (X - ex) / bw
        yc = (ey - q["brow_off"] - q["brow_arch"] * (f32(1) - t * t)
              - q["brow_tilt"] * sgn * (X - ex) * f32(0.3))
        th = q["brow_th"] * (f32(1) - f32(0.45) * np.clip(sgn * t, 0, 1))
        brow = np.maximum(np.abs(Y - yc) - th, np.abs(X - ex) - bw)
        c.paint(c.cov(brow) * f32(0.9), q["hair"] * f32(0.7) + skin * f32(0.1))
    _on(c, q, q["glasses"] > 0, _glasses)


def _glasses(c: _Canvas, q: dict) -> None:
    """Round frames with faintly tinted lenses and a bridge."""
    f32 = np.float32
    fx, frame = q["yaw"] * f32(0.06), _rgb(0.1, 0.08, 0.08)
    for sgn in (f32(-1), f32(1)):
        ring = _ellipse(c.X, c.Y, fx + sgn * q["eye_sep"], q["eye_y"], f32(0.13), f32(0.1))
        c.paint(c.cov(ring) * f32(0.12), _rgb(0.7, 0.8, 0.9))
        c.paint(c.cov(np.abs(ring) - f32(0.012)), frame)
    bridge = _box(c.X - fx, c.Y - q["eye_y"] + f32(0.03), q["eye_sep"] - f32(0.12),
                  f32(0.01), f32(0.005))
    c.paint(c.cov(bridge), frame)


def _nose(c: _Canvas, q: dict) -> None:
    """A hint of a nose (side shadow, tip outline, nostrils) and blushed cheeks."""
    f32 = np.float32
    X, Y, skin = c.X, c.Y, q["skin"]
    fx = q["yaw"] * f32(0.06)
    nx, ny, nw = fx * f32(1.6), q["nose_y"], q["nose_w"]
    side = np.where(q["light"] > 0, f32(-1), f32(1))  # shadow on the side away from the light
    c.paint(c.cov(_ellipse(X, Y, nx + side * nw * f32(0.8), ny - f32(0.06), nw * f32(0.45),
                           f32(0.12)), 2) * f32(0.4), skin * f32(0.7))
    tip = _ellipse(X, Y, nx, ny - f32(0.005), nw * f32(0.9), f32(0.035))
    c.paint(c.cov(np.maximum(np.abs(tip) - f32(0.006), ny - Y)) * f32(0.45), skin * f32(0.5))
    for sgn in (f32(-1), f32(1)):
        nostril = _ellipse(X, Y, nx + sgn * nw * f32(0.55), ny + f32(0.01), f32(0.022), f32(0.013))
        c.paint(c.cov(nostril) * f32(0.7), skin * f32(0.4))
        blush = _ellipse(X, Y, fx + sgn * q["eye_sep"] * f32(1.15), ny + f32(0.05),
                         f32(0.09), f32(0.05))
        c.paint(c.cov(blush, 6) * q["blush"], _rgb(0.92, 0.42, 0.42))


def _mouth(c: _Canvas, q: dict) -> None:
    """Lips between two curves that meet at the corners; open mouths show dark and teeth."""
    f32 = np.float32
    X, Y = c.X, c.Y
    mx, w = q["yaw"] * f32(0.084), q["mouth_w"]
    t = (X - mx) / w
    inner = np.clip(f32(1) - t * t, 0, 1)
    s = np.sqrt(inner)  # lip thickness profile, 1 at the middle and 0 at the corners
    mid = q["mouth_y"] + q["smile"] * (inner - f32(0.5))  # smile > 0 lifts the corners
    half_open = q["mouth_open"] * f32(0.5) * s
    ends = np.abs(X - mx) - w
    lips = np.maximum(np.maximum(mid - half_open - q["lip_th"] * s - Y,
                                 Y - mid - half_open - q["lip_th"] * f32(1.3) * s), ends)
    c.paint(c.cov(lips), q["lip"])
    c.paint(c.cov(np.maximum(np.abs(Y - mid) - half_open - f32(0.004), ends)) * f32(0.8),
            q["lip"] * f32(0.35))
    teeth = np.maximum(np.maximum(mid - half_open - Y, Y - mid + half_open * f32(0.1)), ends)
    c.paint(c.cov(teeth) * (q["mouth_open"] > f32(0.01)), _rgb(0.93, 0.91, 0.86))
