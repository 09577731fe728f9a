"""Images in and pictures out for export/sample.py, with Pillow and NumPy alone.

`load_image` decodes a face exactly as scratchvae/data/imagefile.py does (JPEG draft scaling, the EXIF
orientation, alpha on white, 16-bit scaling, a centred square box resized with LANCZOS), so an image gives the same pixels to both
samplers; `labelled_rows` lays rows out as scratchvae.images.save_rows does. Tests hold them equal.
"""

import io
import math
import os
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

PAD = 2  # pixels of white between and around grid tiles
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")  # what scratchvae.data lets Pillow open
MAX_PIXELS = 64_000_000


class PictureError(Exception):
    """An image that cannot be read or a picture that cannot be written; one line."""


def _to_rgb(img):
    img.load()
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        g = np.clip(np.round(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=2), "RGB")
    if "A" in mode or mode == "PA" or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def _orientation(img):
    """The EXIF orientation tag (1..8); 1 when absent or unreadable."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block means no known rotation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright(img):
    """The image turned as its EXIF orientation says (phone photos are stored sideways)."""
    img.load()
    return ImageOps.exif_transpose(img) if _orientation(img) != 1 else img


def load_image(path, size, channels, crop="center"):
    """(size, size, channels) float32 in [0, 1], as scratchvae's training and sampler see the file."""
    if not os.path.isfile(path):
        raise PictureError(f"no image at {path}")
    if os.path.getsize(path) == 0:
        raise PictureError(f"cannot use {path}: empty file (0 bytes)")
    try:
        with Image.open(path, formats=FORMATS) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise PictureError(f"cannot use {path}: {w}x{h} is over the {MAX_PIXELS:,} pixel limit")
            if img.format in ("JPEG", "MPO"):
                img.draft(None, (2 * size, 2 * size))
            rgb = _to_rgb(_upright(img))
        if crop == "center":
            w, h = rgb.size
            s = min(w, h)
            rgb = rgb.resize((size, size), Image.LANCZOS, box=((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2))
        else:
            rgb = rgb.resize((size, size), Image.LANCZOS)
        pixels = np.asarray(rgb if channels == 3 else rgb.convert("L"), np.uint8).reshape(size, size, channels)
    except PictureError:
        raise
    except Image.UnidentifiedImageError:
        raise PictureError(f"cannot use {path}: not a JPEG, PNG, WebP, BMP or GIF image") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds on damaged files
        raise PictureError(f"cannot use {path}: {type(e).__name__}: {e}"[:200]) from None
    return pixels.astype(np.float32) * np.float32(1 / 255)


def to_uint8(images):
    return np.round(np.clip(np.nan_to_num(images.astype(np.float32)), 0, 1) * 255).astype(np.uint8)


def tile(images, cols):
    """(K, S, S, C) floats in [0, 1] -> one RGB uint8 grid, `cols` wide, PAD pixels of white between tiles
    (scratchvae.images.grid's layout; a gray model's tiles are repeated into RGB as there)."""
    k, s = images.shape[:2]
    rows = math.ceil(k / cols)
    grid = np.full((rows * (s + PAD) + PAD, cols * (s + PAD) + PAD, 3), 255, dtype=np.uint8)
    for i, im in enumerate(to_uint8(images)):
        r, q = divmod(i, cols)
        grid[PAD + r * (s + PAD):(r + 1) * (s + PAD), PAD + q * (s + PAD):(q + 1) * (s + PAD)] = im
    return grid


def labelled_rows(rows, labels=None, columns=None, axis=None):
    """One row of tiles per (K, S, S, C) array, its label at the left, and `columns` (K captions) on a
    line under the rows with `axis` at its left: scratchvae.images.labelled_rows' layout, line for line."""
    xs = [to_uint8(r) for r in rows]
    xs = [np.repeat(x, 3, axis=3) if x.shape[-1] == 1 else x for x in xs]
    k, h, w, _ = xs[0].shape
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = [str(t) for t in labels or []] + ([str(axis)] if columns is not None and axis else [])
    label_w = max(int(probe.textlength(t, font=font)) for t in left) + 2 * PAD if left else 0
    col_w = max([w] + [math.ceil(probe.textlength(str(c), font=font)) + 2 * PAD for c in columns or []])
    line_h = 0 if columns is None else font.getbbox("Ag-+0.")[3] + 2 * PAD
    body_h = len(xs) * (h + PAD) + PAD
    canvas = Image.new("RGB", (label_w + k * (col_w + PAD) + PAD, body_h + line_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, x in enumerate(xs):
        top = PAD + r * (h + PAD)
        for j in range(k):
            canvas.paste(Image.fromarray(x[j]), (label_w + PAD + j * (col_w + PAD) + (col_w - w) // 2, top))
        if labels is not None:
            draw.text((PAD, top + h // 2), str(labels[r]), fill=(0, 0, 0), font=font, anchor="lm")
    if columns is not None:
        middle = body_h + line_h // 2
        for j, caption in enumerate(columns):
            draw.text((label_w + PAD + j * (col_w + PAD) + col_w // 2, middle), str(caption), fill=(0, 0, 0),
                      font=font, anchor="mm")
        if axis:
            draw.text((PAD, middle), str(axis), fill=(96, 96, 96), font=font, anchor="lm")
    return np.asarray(canvas)


def write_png(path, grid):
    """Encode in memory, then temp file + rename, so a reader never sees half a PNG."""
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(fd, 0o666 & ~mask)  # mkstemp makes 0600; the picture should be readable like any file
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise PictureError(f"cannot write {path} ({e.strerror or e}): choose a writable --out") from None
