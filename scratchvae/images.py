"""Pictures for people: image grids, labelled rows of images and line charts, as PNG files.

Images come in as NHWC float in [0, 1] (uint8 is taken as is); everything is drawn with Pillow
and written atomically (scratchvae.run.atomic: a temporary file in the same folder, then renamed).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from scratchvae.run import atomic

BACKGROUND = (255, 255, 255)
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def save_grid(path, images, ncols: int | None = None, pad: int = 2) -> None:
    """Tile images (N, H, W, 3) into one PNG, ncols wide (near-square when None)."""
    _save(Image.fromarray(grid(images, ncols, pad)), path)


def grid(images, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """The tiled images as one uint8 (rows, cols, 3) picture on a white background."""
    x = _to_uint8(images)
    n, h, w, _ = x.shape
    ncols = max(1, min(n, ncols or math.ceil(math.sqrt(n))))
    nrows = max(1, math.ceil(n / ncols))
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), BACKGROUND, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top:top + h, left:left + w] = x[i]
    return canvas


def save_rows(path, rows, labels=None, pad: int = 2, columns=None, axis=None) -> None:
    """One row per array in rows (each (K, H, W, 3), same K, H, W), with an optional label at the left
    and optional column captions under the rows (labelled_rows)."""
    _save(Image.fromarray(labelled_rows(rows, labels, columns, axis, pad)), path)


def labelled_rows(rows, labels=None, columns=None, axis=None, pad: int = 2) -> np.ndarray:
    """The rows as one uint8 (height, width, 3) picture: each row's label at its left; `columns`, K
    captions (a strength, a step), on a line under the rows, centred under their tiles, with `axis`
    (what the captions count) at the line's left. A column is widened to fit its caption.
    export/pictures.py lays rows out the same way; a test holds the two equal."""
    if not len(rows):
        raise ValueError("save_rows needs at least one row of images")
    xs = [_to_uint8(r) for r in rows]
    if any(x.shape != xs[0].shape for x in xs):
        raise ValueError(f"save_rows needs rows of one shape; got {[x.shape for x in xs]}")
    if labels is not None and len(labels) != len(xs):
        raise ValueError(f"save_rows got {len(labels)} labels for {len(xs)} rows")
    k, h, w, _ = xs[0].shape
    if columns is not None and len(columns) != k:
        raise ValueError(f"save_rows got {len(columns)} column captions for {k} columns")
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = [str(t) for t in labels or []] + ([str(axis)] if columns is not None and axis else [])
    label_w = max(int(probe.textlength(t, font=font)) for t in left) + 2 * pad if left else 0
    col_w = max([w] + [math.ceil(probe.textlength(str(c), font=font)) + 2 * pad for c in columns or []])
    line_h = 0 if columns is None else font.getbbox("Ag-+0.")[3] + 2 * pad
    body_h = len(xs) * (h + pad) + pad
    canvas = Image.new("RGB", (label_w + k * (col_w + pad) + pad, body_h + line_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for r, x in enumerate(xs):
        top = pad + r * (h + pad)
        for j in range(k):
            canvas.paste(Image.fromarray(x[j]), (label_w + pad + j * (col_w + pad) + (col_w - w) // 2, top))
        if labels is not None:
            draw.text((pad, top + h // 2), str(labels[r]), fill=(0, 0, 0), font=font, anchor="lm")
    if columns is not None:
        middle = body_h + line_h // 2
        for j, caption in enumerate(columns):
            draw.text((label_w + pad + j * (col_w + pad) + col_w // 2, middle), str(caption), fill=(0, 0, 0),
                      font=font, anchor="mm")
        if axis:
            draw.text((pad, middle), str(axis), fill=(96, 96, 96), font=font, anchor="lm")
    return np.asarray(canvas)


def save_png(path, pixels) -> None:
    """A uint8 (H, W, 3) picture written as a PNG, atomically."""
    _save(Image.fromarray(np.asarray(pixels, np.uint8)), path)


def plot_curves(path, series: dict[str, list[float]], title: str = "", xlabel: str = "epoch",
                log_y: bool = False, size: tuple[int, int] = (640, 400), x=None) -> None:
    """Line chart of each series against x (default 1, 2, 3, ...) with axes, ticks and a legend.

    Non-finite values (and non-positive ones on a log axis) leave gaps; a lone point is a dot.
    """
    ys = {str(name): _finite(v, log_y) for name, v in series.items()}
    n = max([len(v) for v in ys.values()] or [1])
    xs = np.arange(1.0, n + 1) if x is None else np.asarray(x, np.float64).reshape(-1)
    if len(xs) < n or not np.isfinite(xs).all():
        raise ValueError(f"plot_curves needs {n} finite x values; got {len(xs)}")
    width, height = size
    img = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    black = (0, 0, 0)
    if title:
        draw.text((width / 2, 12), title, fill=black, font=font, anchor="mm")
    # Legend above the axes, wrapped into rows, so it never hides a curve.
    left, right, bottom = 64, width - 16, height - 42
    lx, ly = left, 28 if title else 10
    for i, name in enumerate(ys):
        w = 30 + draw.textlength(name, font=font)
        if lx + w > right and lx > left:
            lx, ly = left, ly + 14
        color = COLORS[i % len(COLORS)]
        draw.line([(lx, ly), (lx + 18, ly)], fill=color, width=3)
        draw.text((lx + 22, ly), name, fill=black, font=font, anchor="lm")
        lx += w + 8
    top = ly + 14 if ys else ly
    draw.text(((left + right) / 2, height - 8), xlabel, fill=black, font=font, anchor="mb")

    x_lo, x_hi = float(xs[:n].min()), float(xs[:n].max())
    if x_hi - x_lo < 1e-12:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    every = np.concatenate([v[np.isfinite(v)] for v in ys.values()] or [np.zeros(0)])
    y_lo, y_hi = (float(every.min()), float(every.max())) if every.size else (0.0, 1.0)
    if not every.size:
        draw.text(((left + right) / 2, (top + bottom) / 2), "no data", fill=(128, 128, 128),
                  font=font, anchor="mm")
    if y_hi - y_lo < 1e-12 * max(1.0, abs(y_hi)):
        y_lo, y_hi = y_lo - max(0.5, abs(y_lo) * 0.1), y_hi + max(0.5, abs(y_hi) * 0.1)
    margin = 0.05 * (y_hi - y_lo)
    y_lo, y_hi = y_lo - margin, y_hi + margin

    def px(v):
        return left + (v - x_lo) / (x_hi - x_lo) * (right - left)

    def py(v):
        return bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top)

    # Grid and ticks first, so the data is drawn over them.
    grid = (232, 232, 232)
    for t in _ticks(x_lo, x_hi, integer=bool(np.all(xs == np.round(xs)))):
        draw.line([(px(t), top), (px(t), bottom)], fill=grid)
        draw.line([(px(t), bottom), (px(t), bottom + 4)], fill=black)
        draw.text((px(t), bottom + 6), _label(t), fill=black, font=font, anchor="mt")
    for t in _log_ticks(y_lo, y_hi) if log_y else _ticks(y_lo, y_hi):
        draw.line([(left, py(t)), (right, py(t))], fill=grid)
        draw.line([(left - 4, py(t)), (left, py(t))], fill=black)
        draw.text((left - 6, py(t)), _label(10 ** t if log_y else t), fill=black, font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=black)

    for i, v in enumerate(ys.values()):
        color = COLORS[i % len(COLORS)]
        pts = [(px(xs[j]), py(y)) if np.isfinite(y) else None for j, y in enumerate(v)]
        for j, p in enumerate(pts):
            if p is None:
                continue
            nxt = pts[j + 1] if j + 1 < len(pts) else None
            prev = pts[j - 1] if j > 0 else None
            if nxt is not None:
                draw.line([p, nxt], fill=color, width=2)
            if (nxt is None and prev is None) or len(pts) <= 40:
                draw.ellipse([p[0] - 2.5, p[1] - 2.5, p[0] + 2.5, p[1] + 2.5], fill=color)
    _save(img, path)


def _label(v: float) -> str:
    """A tick label: whole numbers in full below a million, else three significant digits."""
    if abs(v) < 1e6 and abs(v - round(v)) < 1e-9 * max(1.0, abs(v)):
        return str(int(round(v)))
    return f"{v:.3g}"


def _log_ticks(lo: float, hi: float) -> list[float]:
    """log10 positions of 1-2-5 values (or whole decades over a wide range) inside [lo, hi]."""
    if hi - lo < 1.0:
        return [math.log10(t) for t in _ticks(10 ** lo, 10 ** hi) if t > 0]
    mults = (1, 2, 5) if hi - lo < 3.5 else (1,)
    cands = [math.log10(m) + k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in mults]
    return [t for t in cands if lo <= t <= hi]


def _finite(values, log_y: bool) -> np.ndarray:
    """Values as float64, on the log10 scale when asked; unusable points become NaN."""
    v = np.asarray(list(values), np.float64).reshape(-1)
    v = np.where(np.isfinite(v), v, np.nan)
    if log_y:
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
    return v


def _ticks(lo: float, hi: float, integer: bool = False, target: int = 6) -> list[float]:
    """Round-numbered ticks (1, 2 or 5 times a power of ten) inside [lo, hi]."""
    raw = (hi - lo) / target
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if step * m >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _to_uint8(images) -> np.ndarray:
    """(N, H, W, C) or (N, H, W) float in [0, 1] (or uint8) to (N, H, W, 3) uint8."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected images shaped (N, H, W, 3); got {x.shape}")
    if x.dtype != np.uint8:
        x = np.round(np.clip(np.nan_to_num(x.astype(np.float32)), 0, 1) * 255).astype(np.uint8)
    return np.repeat(x, 3, axis=3) if x.shape[-1] == 1 else x


def _save(img: Image.Image, path) -> None:
    """Encode a PNG and write it atomically (scratchvae.run.atomic), creating its folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic.write_bytes(path, buf.getvalue())
