"""python -m scratchvae.evaluate: how good is a checkpoint? A recipe over scratchvae.evaluation.

Load the checkpoint, choose the images (the run's held-out split when --data is its source), measure
the reconstructions in inference mode and samples of z ~ N(0, I) (or of a fitted --prior), print a
table; --features adds the Fréchet distance and KID of samples, reconstructions and the floor (training
photographs) against the images; --json writes every number, --report a folder with report.md and
pictures. Definitions: docs/EVALUATE.md.
"""

import argparse
import functools
import os
import shlex
import sys

import numpy as np

from scratchvae.data.prefetch import ImageReader
from scratchvae.evaluation import distances, measure, report, source
from scratchvae.evaluation.features import FeatureModel
from scratchvae.kernels import threads
from scratchvae.run.errors import UserError, run_command
from scratchvae.training import batchnorm

FEATURE_SAMPLES = 2000  # the Fréchet distance is biased upward at small counts: a fixed, ample count


def build_parser():
    p = argparse.ArgumentParser(prog="python -m scratchvae.evaluate",
                                description="Measure a scratchvae checkpoint: reconstructions, samples, "
                                            "and optionally Fréchet distance and KID.")
    p.add_argument("checkpoint", help="a checkpoint.npz written by python -m scratchvae.train")
    p.add_argument("--data", help="folder of images, a .zip of them, or CelebA's layout (default: the "
                                   "source the checkpoint was trained on, or its built-in synthetic faces)")
    p.add_argument("--limit", type=int, help="with --split all: only the first N images in sorted order")
    p.add_argument("--crop", choices=list(source.data.CROPS),
                   help="how images are fitted to the checkpoint's size (default: the run's, else center)")
    p.add_argument("--split", choices=list(source.SPLITS),
                   help="held-out: the run's held-out images (default on its own data); all: every image "
                        "(default on other data)")
    p.add_argument("--n", type=int, help="evaluate at most the first N images of the split")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed for eps and the samples' z (default 0)")
    p.add_argument("--features", metavar="MODEL.onnx",
                   help="an ONNX network mapping images to feature vectors (python -m scratchvae.face_features "
                        "makes one; Inception-v3 pool3 gives FID): adds the Fréchet distance and KID of samples, "
                        "reconstructions and the floor against the evaluated images (see docs/EVALUATE.md)")
    p.add_argument("--n-samples", type=int, help=f"samples to decode (default: {FEATURE_SAMPLES} with --features, "
                                                 f"else as many as evaluated images)")
    p.add_argument("--sample-seeds", metavar="S,S,...", help="with --features: the samples' distances for each of "
                                                             "these seeds, with their median and range")
    p.add_argument("--prior", metavar="PRIOR.npz", help="draw the samples' z from this fitted latent prior of the "
                                                        "checkpoint instead of N(0, I)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scale of the samples' spread around the prior's means (default 1)")
    p.add_argument("--json", metavar="PATH", help="write every number as JSON")
    p.add_argument("--report", metavar="DIR", help="write report.md and pictures into DIR")
    p.add_argument("--cache-dir", help="where decoded images are cached (default: the user cache folder)")
    p.add_argument("--threads", type=int, help="threads for Numba, BLAS and onnxruntime (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--bn-batches", type=int, default=0,
                   help="first measure every BatchNorm's exact statistics over this many batches of the run's "
                        "training images (on its own data), as training does after each epoch; for checkpoints "
                        "trained with Keras' moving averages only (default 0: use the checkpoint's statistics)")
    return p


def load_model(path):
    """(vae, meta) from a checkpoint; one clear UserError for anything wrong with the file."""
    vae, _, meta = source.load_checkpoint(path)
    return vae, meta


def sample_codes(args, vae):
    """(what the codes are in words, draw(seed, n) -> float32 (n, z_dim)): N(0, T^2 I), or --prior's mixture."""
    if not args.temperature > 0:
        raise UserError(f"--temperature {args.temperature} must be above 0")
    t = args.temperature
    at = "" if t == 1.0 else f" at temperature {t:g}"
    if args.prior is None:
        return "z ~ N(0, I)" + at, lambda seed, n: measure.normal_codes(n, vae.config.z_dim, seed, t)
    from scratchvae.latent import mixture, prior, vectors
    fitted = prior.load(args.prior, identity=vectors.model_identity(vae), z_dim=vae.config.z_dim)

    def draw(seed, n):
        return np.asarray(mixture.draw(fitted.weights, fitted.means, fitted.cholesky, seed, n, t), np.float32)
    return f"z ~ the prior {os.path.basename(args.prior)}" + at, draw


def parse_seeds(text):
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--sample-seeds {text!r}: give whole numbers separated by commas, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--sample-seeds {text!r}: give one or more different seeds, e.g. 0,1,2")
    return seeds


def training_order(chosen, seed):
    """The run's training images in one seeded shuffle (the floor's), or None off its own data."""
    if chosen.train_idx is None or chosen.split != "held-out":
        return None
    return np.random.default_rng([seed, measure.FLOOR_STREAM]).permutation(chosen.train_idx)


def floor_features(model, reader, chosen, counts, seed, batch_size):
    """{count: features of that many training photographs} for each count, all drawn from one seeded
    shuffle of the run's training images (so the smaller set is part of the larger), or None off its
    own data. A count above the training images takes all of them."""
    order = training_order(chosen, seed)
    if order is None:
        return None
    pick = np.sort(order[:min(max(counts), len(order))])
    f = np.concatenate([model(reader.read(pick[i:i + batch_size])) for i in range(0, len(pick), batch_size)])
    f_of = dict(zip(pick.tolist(), f))
    return {c: np.stack([f_of[i] for i in order[:min(c, len(order))].tolist()]) for c in counts}


def decoded_training_features(vae, model, reader, chosen, count, seed, batch_size):
    """Features of `count` of the run's training photographs decoded from their mean codes (the floor's
    seeded shuffle, so the same photographs as the floor's at that count), or None off its own data.
    These are the samples of a prior that drew exactly the training codes: the best a prior fitted to
    those codes can do with this decoder."""
    order = training_order(chosen, seed)
    if order is None:
        return None
    pick = np.sort(order[:min(count, len(order))])
    feats = []
    for i in range(0, len(pick), batch_size):
        z = vae.encode(reader.read(pick[i:i + batch_size]))[0]
        feats.append(model(np.asarray(vae.decode(z))))
    return np.concatenate(feats)


def feature_record(model, chosen, rec, gen, floor, by_seed, decoded=None):
    """features in the JSON: the network, the reference images, and each set's distances from them."""
    real = rec["features"]
    if len(real) <= real.shape[1]:
        print(f"note: {len(real)} images for {real.shape[1]} feature dimensions: the Fréchet distance is biased "
              f"upward at small counts, compare runs only at equal counts (KID is unbiased)", file=sys.stderr)
    what = "held-out photographs" if chosen.split == "held-out" else "evaluated images"
    out = {"model": model.path, "layout": model.layout, "input_size": model.size, "dims": int(real.shape[1]),
           "reference": {"images": len(real), "what": what},
           "samples": distances.compare(real, gen["features"]),
           "reconstructions": distances.compare(real, rec["features_z_mean"]),
           "floor": None, "training_reconstructions": None, "sample_seeds": None}
    if decoded is not None:
        out["training_reconstructions"] = distances.compare(real, decoded)
    if floor is not None:
        out["floor"] = {key: distances.compare(real, floor[count])
                        for key, count in (("at_sample_count", len(gen["features"])), ("at_reference_count", len(real)))}
    if by_seed is not None:
        rows = {seed: distances.compare(real, f) for seed, f in by_seed.items()}
        out["sample_seeds"] = {"seeds": list(rows), **{k: [r[k] for r in rows.values()] for k in ("frechet_distance", "kid")},
                               **{f"{k}_spread": distances.spread([r[k] for r in rows.values()])
                                  for k in ("frechet_distance", "kid")}}
    return out


def precise_statistics(vae, meta, chosen, reader, n_batches, quiet):
    """Replace the checkpoint's BatchNorm statistics by exact ones over the run's training images."""
    if n_batches < 0:
        raise UserError(f"--bn-batches {n_batches} must be zero or more")
    if chosen.train_idx is None:
        raise UserError("--bn-batches measures on the run's own training images: evaluate its held-out split "
                        "(its own --data)")
    s = meta["train"]
    seen = batchnorm.measure(vae, reader, chosen.train_idx, s["seed"], int(meta.get("epoch", 1)) - 1,
                             s["batch_size"], n_batches, progress=not quiet)
    print(f"BatchNorm statistics measured on {seen} training images", file=sys.stderr)


def check_writable(args):
    """Create the output folders and prove they take files before any long work starts."""
    folders = [f for f in (args.report, args.json and os.path.dirname(os.path.abspath(args.json))) if f]
    for folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {folder} ({e.strerror}): choose a folder you can write to") from None
        if not os.access(folder, os.W_OK):
            raise UserError(f"cannot write into {folder}: choose a folder you can write to")


def run(args):
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    check_writable(args)
    try:
        n_threads = threads.set_threads(args.threads)
    except ValueError as e:
        raise UserError(f"--threads: {e}") from None
    vae, meta = load_model(args.checkpoint)
    size = vae.config.image_size
    features = FeatureModel(args.features, n_threads) if args.features else None  # fail before long work
    seeds = parse_seeds(args.sample_seeds) if args.sample_seeds else None
    if seeds and features is None:
        raise UserError("--sample-seeds compares the samples' feature distances: add --features MODEL.onnx")
    if args.n_samples is not None and args.n_samples < (2 if features else 1):
        raise UserError(f"--n-samples {args.n_samples} must be at least {2 if features else 1}")
    codes, draw = sample_codes(args, vae)  # before --bn-batches changes the weights the prior is tied to
    chosen = source.choose(meta, size, args.data, args.split, args.limit, args.crop, args.n, args.cache_dir,
                           args.quiet)
    for note in chosen.notes:
        print(note, file=sys.stderr)
    n = len(chosen.idx)
    if features is not None and n < 2:
        raise UserError("--features needs at least 2 images to fit a Gaussian; raise --n or add images")
    n_samples = args.n_samples or (FEATURE_SAMPLES if features else n)
    reader = ImageReader(chosen.pixels)
    if args.bn_batches:
        precise_statistics(vae, meta, chosen, reader, args.bn_batches, args.quiet)

    def read(start, stop):
        return reader.read(chosen.idx[start:stop])

    from tqdm import tqdm
    bar = functools.partial(tqdm, disable=args.quiet, leave=False, dynamic_ncols=True)
    by_seed = floor = decoded = None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        rec = measure.reconstructions(vae, read, n, args.batch_size, args.seed, features, bar)
        gen = measure.samples(vae, draw(args.seed, n_samples), args.batch_size, features, bar)
        if features is not None:
            floor = floor_features(features, reader, chosen, (n_samples, n), args.seed, args.batch_size)
            decoded = decoded_training_features(vae, features, reader, chosen, n_samples, args.seed, args.batch_size)
        if seeds:
            by_seed = {s: gen["features"] if s == args.seed else
                       measure.samples(vae, draw(s, n_samples), args.batch_size, features, bar)["features"]
                       for s in seeds}
    record = {"checkpoint": str(args.checkpoint), "data": chosen.source, "split": chosen.split, "crop": chosen.crop,
              "images": n, "image_size": size, "beta": vae.config.beta,
              "recon": vae.config.recon, "decoder": vae.config.decoder, "seed": args.seed,
              "z_sampled": rec["z_sampled"], "z_mean": rec["z_mean"],
              "samples": {"count": n_samples, "codes": codes, "prior": args.prior, "temperature": args.temperature,
                          **{k: {"samples": gen[k], "real": rec["real"][k], "ratio": report.ratio(gen[k], rec["real"][k])}
                             for k in ("blur", "checkerboard", "grid")}},
              "features": feature_record(features, chosen, rec, gen, floor, by_seed, decoded) if features else None}
    print(report.console_table(record))
    try:
        if args.json:
            report.write_json(args.json, record)
        if args.report:
            command = "python -m scratchvae.evaluate " + " ".join(shlex.quote(a) for a in args.argv)
            report.write_report(args.report, record, rec, gen, command)
    except OSError as e:
        raise UserError(f"cannot write the results ({e.strerror or e}: {e.filename or ''}); "
                        f"choose a folder you can write to") from None
    written = [p for p in (args.json, args.report and f"{args.report}/report.md") if p]
    if written and not args.quiet:
        print("wrote " + ", ".join(written))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for the command line in report.md
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
