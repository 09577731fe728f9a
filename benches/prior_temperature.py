"""Which temperature to draw a fitted prior at, chosen without the held-out photographs.

Draws the same seeded codes from RUN/prior.npz (or --prior) at each temperature, decodes them and
measures their face distance (FD and KID) against the run's own training photographs, then names the
temperature with the lowest FD. The held-out photographs are not read, so `python -m scratchvae.evaluate --prior
--temperature T` on them afterwards is a fair measure of the choice.

    python benches/prior_temperature.py runs/celeba-sigma --features face-features.onnx \\
        [--prior PRIOR.npz] [--temperatures 1,1.1,1.2,1.3,1.4,1.5,1.6] [--n 2000] [--seed 0] \\
        [--json out.json]
"""

import argparse
import json
import os
import sys

import numpy as np

from scratchvae.data.prefetch import ImageReader
from scratchvae.evaluate import floor_features
from scratchvae.evaluation import distances, measure, source
from scratchvae.evaluation.features import FeatureModel
from scratchvae.kernels import threads
from scratchvae.latent import mixture, prior
from scratchvae.latent.attributes import load_model
from scratchvae.run import atomic
from scratchvae.run.errors import UserError, run_command

DEFAULT_TEMPERATURES = "1,1.1,1.2,1.3,1.4,1.5,1.6"
BATCH = 64


def parse_temperatures(text):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--temperatures {text!r}: give numbers separated by commas, e.g. 1,1.2,1.4") from None
    if not values or any(not t > 0 for t in values) or len(set(values)) != len(values):
        raise UserError(f"--temperatures {text!r}: give one or more different positive numbers")
    return values


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder holding checkpoint.npz and prior.npz")
    p.add_argument("--prior", help="the prior file to draw from (default: RUN/prior.npz)")
    p.add_argument("--features", required=True, help="the face network (python -m scratchvae.face_features)")
    p.add_argument("--temperatures", default=DEFAULT_TEMPERATURES, help=f"default {DEFAULT_TEMPERATURES}")
    p.add_argument("--n", type=int, default=2000, help="samples per temperature and training photographs (2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws and of the photographs' choice (0)")
    p.add_argument("--threads", type=int, default=None, help="threads for Numba and BLAS (default: all cores)")
    p.add_argument("--json", help="also write the table here")
    return p


def run(args):
    temps = parse_temperatures(args.temperatures)
    if args.seed < 0:
        raise UserError(f"--seed {args.seed}: use a whole number of zero or more")
    if args.n < 2:
        raise UserError(f"--n {args.n} must be at least 2")
    try:
        n_threads = threads.set_threads(args.threads)
    except ValueError as e:
        raise UserError(f"--threads: {e}") from None
    ckpt = os.path.join(args.run, "checkpoint.npz")
    prior_path = args.prior or os.path.join(args.run, "prior.npz")
    vae, meta, identity = load_model(ckpt)
    fitted = prior.load(prior_path, identity=identity, z_dim=vae.config.z_dim)
    model = FeatureModel(args.features, n_threads)
    chosen = source.choose(meta, vae.config.image_size, quiet=True)
    if chosen.train_idx is None:
        raise UserError(f"{ckpt} was not trained on a held-out split of its own data: nothing to choose on")
    reference = floor_features(model, ImageReader(chosen.pixels), chosen, (args.n,), args.seed, BATCH)[args.n]
    rows = []
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in temps:
            z = mixture.draw(fitted.weights, fitted.means, fitted.cholesky, args.seed, args.n, t)
            f = measure.samples(vae, z, BATCH, model)["features"]
            rows.append({"temperature": t, **distances.compare(reference, f)})
            print(f"T = {t:<5g} FD {rows[-1]['frechet_distance']:7.2f}  KID {rows[-1]['kid']:6.3f}", flush=True)
    best = min(rows, key=lambda r: r["frechet_distance"])
    print(f"lowest FD against {len(reference)} training photographs: temperature {best['temperature']:g}")
    if args.json:
        record = {"run": args.run, "prior": prior_path, "features": args.features,
                  "reference": f"{len(reference)} training photographs",
                  "seed": args.seed, "prior_components": fitted.components, "rows": rows,
                  "chosen_temperature": best["temperature"]}
        atomic.write_bytes(args.json, (json.dumps(record, indent=1) + "\n").encode())
        print(f"wrote {args.json}")
    return 0


def main(argv=None):
    return run_command(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
