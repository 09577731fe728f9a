"""Side by side: trained models sampled from N(0, I) and from their fitted latent prior (prior.npz).
One Markdown table of held-out measures and face distances (from two `python -m scratchvae.evaluate`
JSON files per run, one per sampler) and one picture with a row of the same draws per model and sampler.

    python benches/compare_priors.py runs/seed runs/sigma --labels "seed's objective,--recon sigma"
        --table priors.md --figure priors.png [--n 16] [--seed 0] [--json priors.json] \\
        [--also eval-prior-T1.4.json]

Each run folder holds checkpoint.npz, metrics.csv, prior.npz and the two evaluate records:
    python -m scratchvae.evaluate RUN/checkpoint.npz --features FEATURES.onnx --sample-seeds 0,1,2 \\
        --json RUN/eval-normal.json
    python -m scratchvae.evaluate RUN/checkpoint.npz --prior RUN/prior.npz --features FEATURES.onnx \\
        --sample-seeds 0,1,2 --json RUN/eval-prior.json
The picture's rows decode the samplers' documented draws for --seed: latent.draw_z for N(0, I) and
mixture.draw for the prior, so each row of a sampler holds the same draws from one model to the next.
"""

import argparse
import csv
import json
import os
import statistics
import sys

import numpy as np

from scratchvae import images, latent
from scratchvae.evaluation import source
from scratchvae.latent import mixture, prior, vectors
from scratchvae.run import atomic
from scratchvae.run.errors import UserError

FILES = ("checkpoint.npz", "metrics.csv", "prior.npz", "eval-normal.json", "eval-prior.json")
SAMPLERS = (("N(0, I)", "eval-normal.json"), ("fitted prior", "eval-prior.json"))
COLUMNS = ("model, sampler", "held-out PSNR dB (z = mu)", "SSIM (z = mu)", "FD of samples, median (range)",
           "KID of samples, median", "FD of reconstructions", "samples' FD / reconstructions'",
           "FD of training reconstructions (any prior's best)",
           "sample blur / real", "s per epoch, median (range)")


def how_to_make(folder, name):
    """The command that makes a run folder's file."""
    ckpt = os.path.join(folder, "checkpoint.npz")
    evaluate = f"python -m scratchvae.evaluate {ckpt} --features FEATURES.onnx --sample-seeds 0,1,2"
    return {"checkpoint.npz": f"train with python -m scratchvae.train --out {folder}",
            "metrics.csv": f"train with python -m scratchvae.train --out {folder}",
            "prior.npz": f"fit it with python -m scratchvae.prior {ckpt}",
            "eval-normal.json": f"make it with {evaluate} --json {os.path.join(folder, name)}",
            "eval-prior.json": f"make it with {evaluate} --prior {os.path.join(folder, 'prior.npz')} "
                               f"--json {os.path.join(folder, name)}"}[name]


def check_folder(folder):
    if not os.path.isdir(folder):
        raise UserError(f"{folder} is not a folder: give run folders holding {', '.join(FILES)}")
    for name in FILES:
        if not os.path.isfile(os.path.join(folder, name)):
            raise UserError(f"{folder} lacks {name}: {how_to_make(folder, name)}")


def get(record, key):
    """record's value at a dotted key, or None where any step is missing or null."""
    for part in key.split("."):
        if not isinstance(record, dict) or record.get(part) is None:
            return None
        record = record[part]
    return record


def read_record(folder, name, sampler):
    """An evaluate JSON, checked to hold samples of the sampler its name says."""
    path = os.path.join(folder, name)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable JSON file ({type(e).__name__}): {how_to_make(folder, name)}") \
            from None
    if not isinstance(record, dict) or not isinstance(record.get("z_mean"), dict) \
            or not isinstance(record.get("samples"), dict):
        raise UserError(f"{path} is not a python -m scratchvae.evaluate record (no z_mean or samples): "
                        f"{how_to_make(folder, name)}")
    drawn = get(record, "samples.prior")
    if (sampler == "N(0, I)") != (drawn is None):
        what = f"the prior {drawn}" if drawn else "N(0, I)"
        raise UserError(f"{path} holds samples of {what}, not of the {sampler}: {how_to_make(folder, name)}")
    return path, record


def seconds_per_epoch(folder):
    """Median, lowest and highest seconds per epoch in the run's metrics.csv, and the epochs counted."""
    path = os.path.join(folder, "metrics.csv")
    try:
        with open(path, newline="") as f:
            values = [float(row["seconds"]) for row in csv.DictReader(f) if row.get("seconds")]
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{path} has no usable seconds column ({type(e).__name__}): is it a training run's "
                        f"metrics.csv?") from None
    if not values:
        raise UserError(f"{path} records no epoch yet: let the run finish an epoch")
    return {"median": statistics.median(values), "range": [min(values), max(values)], "epochs": len(values)}


def numbers(record):
    """A row's numbers from one evaluate record, and the key each came from. The samples' distances are
    the median over --sample-seeds where the record has them, else the one seed's."""
    seeds = get(record, "features.sample_seeds")
    if seeds:
        fd_key, kid_key = "features.sample_seeds.frechet_distance_spread", "features.sample_seeds.kid_spread.median"
        fd = get(record, fd_key + ".median")
        fd_range = get(record, fd_key + ".range")
        seed_list = seeds.get("seeds")
    else:
        fd_key = "features.samples.frechet_distance"
        kid_key = "features.samples.kid"
        fd, fd_range, seed_list = get(record, fd_key), None, None
    recon = get(record, "features.reconstructions.frechet_distance")
    keys = {"psnr": "z_mean.psnr", "ssim": "z_mean.ssim", "fd_samples": fd_key, "kid_samples": kid_key,
            "fd_reconstructions": "features.reconstructions.frechet_distance", "blur_ratio": "samples.blur.ratio",
            "fd_best_prior": "features.training_reconstructions.frechet_distance"}
    row = {"psnr": get(record, "z_mean.psnr"), "ssim": get(record, "z_mean.ssim"),
           "fd_samples": {"median": fd, "range": fd_range, "seeds": seed_list,
                          "count": get(record, "features.samples.count")},
           "kid_samples": get(record, kid_key), "fd_reconstructions": recon,
           "fd_ratio": fd / recon if fd is not None and recon else None,
           "blur_ratio": get(record, "samples.blur.ratio"),
           "fd_best_prior": get(record, "features.training_reconstructions.frechet_distance")}
    return row, keys


def sig(v):
    """Three significant digits without an exponent: 74.2, 7.80, 0.00123, 1234."""
    if v is None:
        return "n/a"
    if v == 0 or not np.isfinite(v):
        return f"{v:g}"
    digits = 2 - int(np.floor(np.log10(abs(v))))
    return f"{v:.{max(0, digits)}f}"


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def cells(row):
    fd = row["fd_samples"]
    spread = f" ({sig(fd['range'][0])}–{sig(fd['range'][1])})" if fd["range"] and fd["median"] is not None else ""
    sec = row["seconds_per_epoch"]
    return [row["label"], fmt(row["psnr"], ".2f"), fmt(row["ssim"], ".3f"), sig(fd["median"]) + spread,
            sig(row["kid_samples"]), sig(row["fd_reconstructions"]), fmt(row["fd_ratio"], ".2f"),
            sig(row["fd_best_prior"]), sig(row["blur_ratio"]),
            f"{sig(sec['median'])} ({sig(sec['range'][0])}–{sig(sec['range'][1])}, {sec['epochs']} epochs)"]


def floor_text(record):
    """The floor in words (training photographs against the held-out ones), or None."""
    floor = get(record, "features.floor")
    if not floor:
        return None
    parts = [f"FD {sig(d['frechet_distance'])} (KID {sig(d['kid'])}) at {d['count']:,} photographs"
             for d in (floor.get("at_sample_count"), floor.get("at_reference_count")) if d]
    ref = get(record, "features.reference") or {}
    against = f"the {ref['images']:,} {ref['what']}" if ref.get("images") else "the held-out ones"
    return f"training photographs against {against}: " + ", ".join(dict.fromkeys(parts))


def notes_line(runs):
    """The line under the table: the floor and the feature network, once where every record agrees."""
    floors = {}
    for run in runs:
        for sampler in run["samplers"]:
            text = floor_text(sampler["record"])
            if text:
                floors.setdefault(text, []).append(run["label"])
    if not floors:
        floor = "Floor: n/a (the records have no floor)."
    elif len(floors) == 1:
        floor = f"Floor, {next(iter(floors))}."
    else:
        floor = "Floor, " + "; ".join(f"{', '.join(dict.fromkeys(who))}: {text}" for text, who in floors.items()) + "."
    models = {os.path.basename(m) for run in runs for s in run["samplers"]
              if (m := get(s["record"], "features.model"))}
    if not models:
        return floor + " No feature network recorded."
    if len(models) == 1:
        return floor + f" Feature network: {models.pop()} (its distances compare only with the same file)."
    return floor + f" Feature networks differ ({', '.join(sorted(models))}): their distances do not compare."


def sampler_label(name, record):
    t = get(record, "samples.temperature")
    return name if t in (None, 1.0) else f"{name} at temperature {t:g}"


def collect(folders, labels, also=()):
    """Every run's records and rows; every file is checked before any model is loaded. `also`: more
    evaluate records of the fitted prior (e.g. at another temperature), by file name, taken from the
    runs that have them."""
    for folder in folders:
        check_folder(folder)
    runs = []
    for folder, label in zip(folders, labels):
        seconds = seconds_per_epoch(folder)
        samplers = []
        extra = [("fitted prior", name) for name in also if os.path.isfile(os.path.join(folder, name))]
        for sampler, name in SAMPLERS + tuple(extra):
            path, record = read_record(folder, name, sampler)
            row, keys = numbers(record)
            row.update(label=f"{label}, {sampler_label(sampler, record)}", run=label, sampler=sampler,
                       source=path, seconds_per_epoch=seconds,
                       temperature=float(get(record, "samples.temperature") or 1.0))
            samplers.append({"record": record, "row": row, "keys": keys})
        psnr = [s["row"]["psnr"] for s in samplers if s["row"]["psnr"] is not None]
        if psnr and max(psnr) - min(psnr) > 1e-3:
            print(f"note: {folder}'s records disagree on the held-out PSNR ({min(psnr):.3f} to {max(psnr):.3f} dB): "
                  f"were they made from the same checkpoint and images?", file=sys.stderr)
        runs.append({"folder": folder, "label": label, "samplers": samplers})
    return runs


def figure_rows(runs, n, seed):
    """(rows, labels): per run, n decodes of latent.draw_z(seed) and n of mixture.draw(the prior, seed),
    at each record's temperature. Generated pixels only."""
    rows, labels = [], []
    for run in runs:
        vae, _, _ = source.load_checkpoint(os.path.join(run["folder"], "checkpoint.npz"))
        d = vae.config.z_dim
        fitted = prior.load(os.path.join(run["folder"], "prior.npz"), identity=vectors.model_identity(vae), z_dim=d)
        for s in run["samplers"]:
            t = s["row"]["temperature"]
            if s["row"]["sampler"] == "N(0, I)":
                z = latent.draw_z(seed, n, d, t)
            else:
                z = mixture.draw(fitted.weights, fitted.means, fitted.cholesky, seed, n, t)
            rows.append(np.clip(np.asarray(vae.decode(z, training=False)), 0, 1))
            labels.append(s["row"]["label"])
    return rows, labels


def markdown(runs):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(s["row"])) + " |" for run in runs for s in run["samplers"]]
    return "\n".join(lines) + "\n\n" + notes_line(runs) + "\n"


def sources_text(runs):
    """Which file and key each number of the table came from."""
    lines = ["numbers from:"]
    for run in runs:
        for s in run["samplers"]:
            keys = ", ".join(dict.fromkeys(s["keys"].values()))
            lines.append(f"  {s['row']['label']}: {s['row']['source']} ({keys}); "
                         f"{os.path.join(run['folder'], 'metrics.csv')} (seconds)")
    floors = [s["row"]["source"] for run in runs for s in run["samplers"] if get(s["record"], "features.floor")]
    lines.append(f"  floor: features.floor of {', '.join(floors) if floors else 'none of the records'}")
    return "\n".join(lines)


def write_text(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_bytes(path, text.encode("utf-8"))


def run(args):
    labels = args.labels.split(",") if args.labels else [os.path.basename(os.path.normpath(r)) for r in args.runs]
    if len(labels) != len(args.runs):
        raise UserError(f"--labels names {len(labels)} runs; {len(args.runs)} were given")
    if args.n < 1:
        raise UserError(f"--n {args.n}: show at least 1 sample per row")
    also = [a for a in (args.also or "").split(",") if a]
    if any(os.path.basename(a) != a or not a.endswith(".json") for a in also):
        raise UserError(f"--also {args.also!r}: give JSON file names inside the run folders, e.g. eval-prior-T1.4.json")
    runs = collect(args.runs, labels, also)
    table = markdown(runs)
    fig = figure_rows(runs, args.n, args.seed) if args.figure else None
    print(table)
    print(sources_text(runs))
    try:
        if args.table:
            write_text(args.table, table)
        if args.json:
            record = {"rows": [{**s["row"], "keys": s["keys"]} for run in runs for s in run["samplers"]],
                      "note": notes_line(runs),
                      "floor": {run["label"]: get(run["samplers"][0]["record"], "features.floor") for run in runs},
                      "feature_model": {run["label"]: get(run["samplers"][0]["record"], "features.model")
                                        for run in runs}}
            write_text(args.json, json.dumps(record, indent=2, allow_nan=False) + "\n")
        if fig is not None:
            os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
            images.save_rows(args.figure, *fig)
    except OSError as e:
        raise UserError(f"cannot write the results ({e.strerror or e}: {e.filename or ''}); choose a folder you "
                        f"can write to") from None
    written = [p for p in (args.table, args.json, args.figure) if p]
    if written:
        print("wrote " + ", ".join(written))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help=f"run folders ({', '.join(FILES)})")
    p.add_argument("--labels", help="comma-separated names for the runs (default: the folder names)")
    p.add_argument("--table", metavar="MD", help="write the Markdown table and its note to this file")
    p.add_argument("--figure", metavar="PNG", help="write the rows of samples, one per run and sampler, to this PNG")
    p.add_argument("--json", metavar="PATH", help="write the table's numbers, with the file and key of each, as JSON")
    p.add_argument("--also", metavar="NAMES",
                   help="comma-separated further evaluate records of the fitted prior in the run folders "
                        "(e.g. eval-prior-T1.4.json), a row each where present")
    p.add_argument("--n", type=int, default=16, help="samples per row in the figure (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the figure's draws (default 0)")
    args = p.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
