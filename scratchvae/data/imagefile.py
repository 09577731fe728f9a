"""One image file to the array training sees: the only place that decides how a picture is read.

Pillow opens it (JPEG, PNG, WebP, BMP, GIF only; over MAX_PIXELS refused from the header), the EXIF
orientation is applied, alpha is composited on white, 16-bit values are scaled, then a centre crop
(or a squash) and a Lanczos resize give (S, S, 3) uint8. export/sample.py, which may not import
this package, keeps a copy that a test holds equal to this one.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
MAX_PIXELS = 64_000_000  # larger images are refused unread: a decompression bomb costs gigabytes


def decode(data, size: int, crop: str) -> tuple[np.ndarray | None, str]:
    """One image (a path or bytes) to (size, size, 3) uint8, or (None, why it was skipped)."""
    if (len(data) if isinstance(data, bytes) else os.path.getsize(data)) == 0:
        return None, "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data, formats=FORMATS) as img:
            w, h = img.size  # known from the header, before any pixel is decoded
            if w * h > MAX_PIXELS:
                return None, f"{w}x{h} is over the {MAX_PIXELS:,} pixel limit"
            if img.format in ("JPEG", "MPO"):
                img.draft(None, (2 * size, 2 * size))  # DCT scaling: decode big JPEGs at 1/2..1/8
            rgb = _to_rgb(_upright(img))
        if crop == "center":
            w, h = rgb.size
            s = min(w, h)
            box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
            rgb = rgb.resize((size, size), Image.LANCZOS, box=box)
        else:
            rgb = rgb.resize((size, size), Image.LANCZOS)
        return np.asarray(rgb, np.uint8), ""
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, f"refused as a decompression bomb ({e})"[:160]
    except Image.UnidentifiedImageError:
        return None, "not a JPEG, PNG, WebP, BMP or GIF image"
    except Exception as e:  # noqa: BLE001 - any failure skips just this file, with its reason
        return None, (f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)[:160]


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 upright .. 8); 1 when absent or unreadable (a damaged EXIF
    block does not make a good picture unusable)."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means: no rotation known
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright(img: Image.Image) -> Image.Image:
    """The decoded image turned as its EXIF orientation says (phone photos are stored sideways)."""
    img.load()
    return ImageOps.exif_transpose(img) if _orientation(img) != 1 else img


def upright_size(fp) -> tuple[int, int]:
    """(width, height) of an image file (path or file object) as it is shown, from its header:
    swapped when its EXIF orientation turns it by 90 degrees."""
    with Image.open(fp, formats=FORMATS) as img:
        w, h = img.size
        return (h, w) if _orientation(img) in (5, 6, 7, 8) else (w, h)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Decoded 8-bit RGB: alpha composited on white, 16-bit gray scaled, other modes converted."""
    img.load()
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        # Pillow's convert('L') clips 16-bit values at 255 instead of scaling them.
        a = np.asarray(img).astype(np.float64)
        g = np.clip(np.round(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=2), "RGB")
    if "A" in mode or mode == "PA" or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")
