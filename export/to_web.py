"""Write a static site that runs the VAE in the visitor's browser (page, models, vectors, prior, runtime).

The page (web/index.html, app.js, style.css), encoder.onnx and decoder.onnx as export/to_onnx.py
builds them, model.json, the attribute vectors as vectors.json, the fitted prior as prior.json (the
page's seed grid then draws from it, as python -m scratchvae.sample --prior does), and onnxruntime-web's
WebAssembly runtime copied from web/node_modules.

    npm ci --prefix web        # once: the pinned onnxruntime-web
    python export/to_web.py runs/x/checkpoint.npz --vectors runs/x/vectors.npz --out site/
    python export/to_web.py ... --attribute Smiling --attribute Eyeglasses    # these sliders first
    python export/to_web.py ... --prior runs/x/prior.npz    # faces from the fitted prior
    python -m http.server -d site 8000
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

import to_onnx
from scratchvae import latent
from scratchvae.latent import prior
from scratchvae.latent import vectors as attribute_vectors
from scratchvae.run.atomic import write_bytes
from scratchvae.run.errors import UserError

WEB = Path(__file__).resolve().parents[1] / "web"
PAGE = ("index.html", "app.js", "style.css")
ORT_DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
# The WebAssembly build only (no WebGL/WebGPU): the library, its Emscripten loader and the binary. The
# two ES modules are written as .js so that any static server sends them with a JavaScript MIME type
# (Python 3.11's http.server may not know .mjs); app.js passes their new names to onnxruntime-web.
ORT_FILES = {"ort.wasm.min.mjs": "ort.wasm.min.js", "ort-wasm-simd-threaded.mjs": "ort-wasm-simd-threaded.js",
             "ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm"}
SITE_FORMAT, SITE_VERSION = "scratchvae-web", 1
DEFAULT_SLIDERS = 8
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.1, 2.0  # the page's temperature slider (index.html)


def build_parser():
    p = argparse.ArgumentParser(prog="python export/to_web.py", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint.npz written by training")
    p.add_argument("--vectors", metavar="VECTORS.npz",
                   help="attribute vectors from python -m scratchvae.attributes for this checkpoint "
                        "(without them the page has no attribute sliders)")
    p.add_argument("--out", required=True, help="folder for the site (created if missing; its files are replaced)")
    p.add_argument("--sliders", type=int, default=DEFAULT_SLIDERS,
                   help=f"attribute sliders: the longest directions, ranked as the attributes table ranks "
                        f"them (default {DEFAULT_SLIDERS})")
    p.add_argument("--attribute", action="append", default=[], metavar="NAME",
                   help="give this attribute a slider, ahead of the longest directions (repeat for more; "
                        "--sliders still caps the count, raised to the names given)")
    p.add_argument("--prior", metavar="PRIOR.npz",
                   help="a prior fitted to this checkpoint's codes by python -m scratchvae.prior: the page draws its "
                        "faces from it, as python -m scratchvae.sample --prior does (default: N(0, I))")
    p.add_argument("--temperature", type=float, default=1.0,
                   help=f"the page's temperature slider starts here, e.g. the one benches/prior_temperature.py "
                        f"chose (0.1 to {MAX_TEMPERATURE:g}; default 1)")
    return p


def parse_args(argv):
    return build_parser().parse_args(argv)


def runtime_files(dist=None):
    """{source path: name in the site's ort/ folder}; refused in one line when npm has not installed them."""
    dist = Path(dist or ORT_DIST)
    missing = [name for name in ORT_FILES if not (dist / name).is_file()]
    if missing:
        raise to_onnx.ExportError(f"onnxruntime-web is not installed ({dist / missing[0]} is missing): "
                                  f"run npm ci --prefix web")
    return {dist / name: target for name, target in ORT_FILES.items()}


def slider_order(v, chosen=()):
    """Row order of the vectors in the page: the chosen names first, then the rest as the attributes
    table ranks them (most visible edit first). An unknown or skipped name is refused in one line."""
    known = {name: i for i, name in enumerate(v.names)}
    first = []
    for name in chosen:
        for _, n in latent.parse_expression(name, known, v.skipped):
            if known[n] not in first:
                first.append(known[n])
    return first + [i for i in v.ranking() if i not in first]


def vectors_document(v, identity, cfg, sliders, chosen=()):
    """The vectors as JSON-ready data, rows in slider_order; the first `sliders` get sliders."""
    order = slider_order(v, chosen)
    sliders = max(sliders, len(set(chosen)))
    ratio = v.ratio()
    return {"format": "scratchvae-web-vectors", "version": SITE_VERSION, "identity": identity,
            "z_dim": int(cfg.z_dim), "image_size": int(cfg.image_size), "sliders": int(min(sliders, len(order))),
            "names": [v.names[i] for i in order],
            "vectors": [[float(x) for x in v.vectors[i]] for i in order],  # float32 values, exact in JSON
            "counts": [[int(v.n_pos[i]), int(v.n_neg[i])] for i in order],
            "ratio": [round(float(ratio[i]), 4) for i in order], "skipped": list(v.skipped)}


def prior_document(p, identity):
    """The prior as JSON-ready data: float64 values written exactly (Python's shortest round-trip form,
    which JSON.parse reads back to the same double), each factor as its lower triangle by rows
    (L[0][0], L[1][0], L[1][1], L[2][0], ...): the page's draw multiplies in the same order."""
    rows, cols = np.tril_indices(p.z_dim)
    return {"format": "scratchvae-web-prior", "version": SITE_VERSION, "identity": identity, "z_dim": int(p.z_dim),
            "components": int(p.components), "weights": [float(w) for w in p.weights],
            "means": [[float(x) for x in m] for m in p.means],
            "cholesky": [[float(x) for x in factor[rows, cols]] for factor in p.cholesky]}


def build(args, dist=None):
    """Check everything, then write the site; the paths written."""
    if args.sliders < 0:
        raise to_onnx.ExportError(f"--sliders {args.sliders}: use 0 or more")
    runtime = runtime_files(dist)
    page = [WEB / name for name in PAGE]
    for path in page:
        if not path.is_file():
            raise to_onnx.ExportError(f"the page's source {path} is missing: use a complete checkout")
    if not MIN_TEMPERATURE <= args.temperature <= MAX_TEMPERATURE:
        raise to_onnx.ExportError(f"--temperature {args.temperature:g}: the page's slider runs from "
                                  f"{MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}")
    models, cfg, identity = to_onnx.build_graphs(args.checkpoint)
    vec_doc = None
    if args.vectors:
        try:  # refuse vectors made for another model before anything is written
            v = attribute_vectors.load(args.vectors, identity=identity, z_dim=cfg.z_dim)
            vec_doc = vectors_document(v, identity, cfg, args.sliders, args.attribute)
        except UserError as e:
            raise to_onnx.ExportError(str(e)) from None
    prior_doc = None
    if args.prior:
        try:  # refuse another checkpoint's prior before anything is written
            prior_doc = prior_document(prior.load(args.prior, identity=identity, z_dim=cfg.z_dim), identity)
        except UserError as e:
            raise to_onnx.ExportError(str(e)) from None
    to_onnx.prepare_folder(args.out)
    out = Path(args.out)
    written = to_onnx.write_graphs(models, str(out))
    model_doc = {"format": SITE_FORMAT, "version": SITE_VERSION, "identity": identity, "z_dim": int(cfg.z_dim),
                 "image_size": int(cfg.image_size), "channels": int(cfg.channels),
                 "vectors": "vectors.json" if vec_doc else None, "prior": "prior.json" if prior_doc else None,
                 "temperature": float(args.temperature),
                 "runtime": {target: source.name for source, target in runtime.items()}}
    docs = {"model.json": model_doc, "vectors.json": vec_doc, "prior.json": prior_doc}
    for name in [name for name, doc in docs.items() if doc is None]:
        del docs[name]
        if (out / name).exists():  # a site rebuilt without vectors or prior must not keep another run's
            (out / name).unlink()
    try:
        for name, doc in docs.items():
            write_bytes(out / name, (json.dumps(doc, separators=(",", ":")) + "\n").encode())
            written.append(str(out / name))
        for path in page:
            write_bytes(out / path.name, path.read_bytes())
            written.append(str(out / path.name))
        (out / "ort").mkdir(exist_ok=True)
        for source, target in runtime.items():
            tmp = out / "ort" / f".{target}.tmp"
            shutil.copyfile(source, tmp)
            os.replace(tmp, out / "ort" / target)
            written.append(str(out / "ort" / target))
    except OSError as e:
        raise to_onnx.ExportError(f"cannot write the site into {out} ({e.strerror or e})") from None
    return written


def main(argv=None):
    args = parse_args(argv)
    try:
        written = build(args)
    except to_onnx.ExportError as e:
        print(f"to_web: error: {e}", file=sys.stderr)
        return 2
    size = sum(os.path.getsize(p) for p in written) / 1e6
    print(f"wrote {len(written)} files ({size:.1f} MB) to {args.out}"
          + ("" if args.vectors else " (no --vectors: the page has no attribute sliders)")
          + (" (faces from the fitted prior)" if args.prior else ""))
    print(f"serve it with: python -m http.server -d {args.out} 8000   (then open http://127.0.0.1:8000/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
