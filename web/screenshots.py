"""Screenshots of a built site in headless Chromium, for the README and docs/WEB.md: the page after
loading (sample grid), the first attribute slider at -3, 0 and +3 on one selected face, and the
morph strip; also prints the page's measured decode time per face.

    python export/to_web.py CKPT --vectors VECTORS --attribute Smiling --out site/
    python web/screenshots.py site/ --out shots/ [--seed 0] [--face 5]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import browser  # noqa: E402  (the stdlib DevTools client the browser test uses)

DESCRIPTION = " ".join(__doc__.split("\n\n")[0].split())  # the opening paragraph, whole
RESULTS = "JSON.parse(document.getElementById('test-results').textContent || '{}')"


def results(b):
    return b.evaluate(RESULTS)


def wait_decodes(b, before):
    b.wait_for(f"{RESULTS}.decodes > {before} || {RESULTS}.edits > {before}")


def set_slider(b, value):
    n = results(b)["edits"]
    b.evaluate(f"(() => {{ const s = document.getElementById('attr-0'); s.value = '{value}';"
               " s.dispatchEvent(new Event('input')); })()")
    b.wait_for(f"{RESULTS}.edits > {n}")


def element_shot(b, full, selector, path, pad=8):
    """Crop the full-page screenshot to one element's box (CSS pixels; the window's scale is 1)."""
    box = b.evaluate(f"(() => {{ const r = document.querySelector('{selector}').getBoundingClientRect();"
                     " return [r.left, r.top, r.right, r.bottom]; })()")
    left, top, right, bottom = (int(round(v)) for v in box)
    Image.open(full).crop((max(0, left - pad), max(0, top - pad), right + pad, bottom + pad)).save(path, optimize=True)


def small(path, target, scale=0.6, colours=256):
    """A README-sized copy: scaled down and reduced to a palette."""
    im = Image.open(path).convert("RGB")
    im = im.resize((int(im.width * scale), int(im.height * scale)), Image.LANCZOS)
    im.quantize(colours).save(target, optimize=True)


def side_by_side(paths, target, gap=8):
    ims = [Image.open(p).convert("RGB") for p in paths]
    out = Image.new("RGB", (sum(i.width for i in ims) + gap * (len(ims) - 1), max(i.height for i in ims)), "white")
    x = 0
    for im in ims:
        out.paste(im, (x, 0))
        x += im.width + gap
    out.quantize(128).save(target, optimize=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python web/screenshots.py", description=DESCRIPTION)
    p.add_argument("site", help="a folder written by export/to_web.py")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--seed", type=int, default=0, help="the seed of the sample grid shown (default 0)")
    p.add_argument("--face", type=int, default=5, help="the face to select and edit (default 5)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with browser.serve(args.site) as url, tempfile.TemporaryDirectory() as profile:
        b = browser.Browser(profile)
        try:
            b.open(url + "?test=1")
            b.wait_for(f"{RESULTS}.ready || {RESULTS}.failed")
            if not results(b).get("ready"):
                sys.exit(f"the page did not get ready: {results(b)}")
            n = results(b)["decodes"]
            b.evaluate(f"document.getElementById('seed').value = '{args.seed}';"
                       "document.getElementById('sample-form').requestSubmit()")
            b.wait_for(f"{RESULTS}.decodes > {n}")
            b.wait_for("document.querySelectorAll('#grid canvas').length >= 16")
            b.evaluate(f"document.querySelectorAll('#grid .face')[{args.face}].click()")
            b.wait_for(f"document.querySelectorAll('#grid .face')[{args.face}].getAttribute('aria-pressed') === 'true'")
            slider = b.evaluate("(document.querySelector(\"label[for='attr-0']\") || {}).textContent || ''")
            if slider:  # a site made without --vectors has no sliders: the page and the morph only
                for value in ("-3", "0", "3"):
                    set_slider(b, value)
                    full = out / f"page-{slider.strip().split()[0].lower()}-{value}.png"
                    b.screenshot(full)
                    element_shot(b, full, "#selected", out / f"selected-{value}.png")
            b.screenshot(out / "page.png")
            element_shot(b, out / "page.png", "#morph-section", out / "morph.png")
            if slider:
                small(out / f"page-{slider.strip().split()[0].lower()}-3.png", out / "page-small.png")
                side_by_side([out / f"selected-{v}.png" for v in ("-3", "0", "3")], out / "selected-strip.png")
            r = results(b)
            print(json.dumps({"slider": slider, "decode_ms": r.get("decode_ms")}))
        finally:
            b.close()


if __name__ == "__main__":
    main()
