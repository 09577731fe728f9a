"""What a faithful edit would show to the judge: the side effects that real faces carry.

edit_rates judges an edit by how much every other attribute's share moves. Part of that move can
belong to the judge and the decoder rather than to the direction: a network that has seen few blond
men may call a real blond man "male" less often than a dark-haired one. This bench measures that
part on real faces. For an edited attribute a and every other attribute b it compares the judge's
calls of b on faces with a and on faces without a *whose true label b is the same*, so that the
labels' co-occurrence (blond hair is commoner among women) drops out and only the judge's reading
stays:

    R(a, b) = sum over t in {b absent, b present} of w_t * (P(called b | a, b = t) - P(called b | not a, b = t))

with w_t the share of b = t among the faces without a (the faces a +v edit is applied to). A
stratum with fewer than --min-count faces on either side is left out and the weights renormalised.
It is measured on the model's reconstructions (z = mu, decoded: what edits are judged on) and on the
photographs, over the run's training split by default (more faces in the rare strata).

    python benches/real_side_effects.py runs/celeba-sigma/checkpoint.npz --features face-features.onnx \\
        [--edit Smiling,Eyeglasses,Blond_Hair,Male] [--split train] [--limit N] [--min-count 10] \\
        [--json out.json] [--table out.md]
"""

import argparse
import json
import os
import sys

import numpy as np

from scratchvae.evaluation import edit_rates
from scratchvae.kernels import threads
from scratchvae.latent import vectors
from scratchvae.latent.attributes import load_model
from scratchvae.run import atomic
from scratchvae.run.errors import UserError, run_command

DEFAULT_EDIT = "Smiling,Eyeglasses,Blond_Hair,Male"
DEFAULT_MIN_COUNT = 10
BATCH = 64


def reference(called, truth, a, min_count=DEFAULT_MIN_COUNT, strata=None):
    """R(a, b) for every column b of called/truth ((n, B) bool: the judge's calls and the true labels),
    NaN for b = a and where no stratum has min_count faces on both sides; with the faces each R rests on.
    A dict passed as `strata` receives, per b, each stratum's faces and share called b on both sides."""
    called, truth = np.asarray(called, bool), np.asarray(truth, bool)
    has_a = truth[:, a]
    r = np.full(truth.shape[1], np.nan)
    used = np.zeros(truth.shape[1], np.int64)
    for b in range(truth.shape[1]):
        if b == a:
            continue
        total, weight, parts = 0.0, 0.0, []
        for t in (False, True):
            with_a, without_a = has_a & (truth[:, b] == t), ~has_a & (truth[:, b] == t)
            part = {"true": bool(t), "with": int(with_a.sum()), "without": int(without_a.sum())}
            parts.append(part)
            if with_a.sum() < min_count or without_a.sum() < min_count:
                continue
            w = without_a.sum() / max(1, (~has_a).sum())
            part.update(called_with=float(called[with_a, b].mean()), called_without=float(called[without_a, b].mean()),
                        weight=float(w))
            total += w * (part["called_with"] - part["called_without"])
            weight += w
            used[b] += with_a.sum() + without_a.sum()
        if weight > 0:
            r[b] = total / weight
        if strata is not None:
            strata[b] = parts
    return r, used


def summary(r, names, a, watched="Male"):
    """The largest |R| among the other attributes (name, value) and the watched attribute's R."""
    others = [b for b in range(len(names)) if b != a and np.isfinite(r[b])]
    big = max(others, key=lambda b: abs(r[b]), default=None)
    w = names.index(watched) if watched in names else None
    return ({"attribute": names[big], "change": float(r[big])} if big is not None else None,
            None if w is None or w == a or not np.isfinite(r[w]) else float(r[w]))


def markdown(rows, split, count, judge, min_count):
    lines = [f"Judge: {judge}; {count} faces of the {split} split; strata of fewer than {min_count} faces on a side "
             "left out.", "",
             "| attribute a | faces with a | largest R, reconstructions | Male, reconstructions | "
             "largest R, photographs | Male, photographs |", "| --- | ---: | --- | ---: | --- | ---: |"]

    def cell(big):
        return "–" if big is None else f"{big['attribute']} {big['change']:+.2f}"

    def num(x):
        return "–" if x is None else f"{x:+.2f}"
    for row in rows:
        rec, pho = row["reconstructions"], row["photographs"]
        lines.append(f"| {row['attribute']} | {row['with']} | {cell(rec['largest'])} | {num(rec['Male'])} | "
                     f"{cell(pho['largest'])} | {num(pho['Male'])} |")
    return "\n".join(lines) + "\n"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint.npz written by python -m scratchvae.train")
    p.add_argument("--features", required=True, help="the judge: an ONNX network with a logits output "
                                                     "(python -m scratchvae.face_features)")
    p.add_argument("--edit", default=DEFAULT_EDIT, help=f"attributes a, comma-separated (default {DEFAULT_EDIT})")
    p.add_argument("--split", choices=("train", "held-out"), default="train", help="the run's faces to use (train)")
    p.add_argument("--limit", type=int, help="use at most the first N faces of the split")
    p.add_argument("--min-count", type=int, default=DEFAULT_MIN_COUNT,
                   help=f"faces needed on each side of a stratum (default {DEFAULT_MIN_COUNT})")
    p.add_argument("--data", help="the run's labelled images (default: the source it was trained on)")
    p.add_argument("--attributes", metavar="PATH", help="list_attr_celeba.txt (default: found beside --data)")
    p.add_argument("--cache-dir", help="where decoded images are cached")
    p.add_argument("--threads", type=int, default=None, help="threads for Numba and BLAS (default: all cores)")
    p.add_argument("--json", help="write every R as JSON here")
    p.add_argument("--table", help="write the summary as a markdown table here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args):
    if args.min_count < 1 or (args.limit is not None and args.limit < 1):
        raise UserError("--min-count and --limit must be at least 1")
    try:
        threads.set_threads(args.threads)
    except ValueError as e:
        raise UserError(f"--threads: {e}") from None
    vae, meta, _ = load_model(args.checkpoint)
    reader, idx, values, attributes, _ = edit_rates.labelled(meta, vae, args, args.split)
    edit = [n.strip() for n in args.edit.split(",") if n.strip()]
    missing = [n for n in edit if n not in attributes]
    if not edit or missing:
        raise UserError(f"--edit {args.edit[:60]!r}: the label file has no attribute "
                        f"{missing[0] if missing else '(none given)'}")
    if args.limit:
        idx, values = idx[:args.limit], values[:args.limit]
    judge = edit_rates.LogitsJudge(args.features, attributes, args.threads)
    judge.select([n for n in attributes if n in judge.known])
    names = judge.attributes
    truth = edit_rates.columns(values, attributes, names) > 0.5
    z = vectors.encode_all(vae, reader, idx, BATCH, args.quiet)
    calls = {"reconstructions": judge.probabilities(edit_rates.decode_all(vae, z, BATCH)) > 0.5,
             "photographs": np.concatenate([judge.probabilities(reader.read(idx[i:i + BATCH]))
                                            for i in range(0, len(idx), BATCH)]) > 0.5}
    rows = []
    for name in edit:
        if name not in names:
            raise UserError(f"--features {args.features} has no logit for {name}")
        a = names.index(name)
        row = {"attribute": name, "with": int(truth[:, a].sum()), "without": int((~truth[:, a]).sum())}
        for kind, called in calls.items():
            parts = {}
            r, used = reference(called, truth, a, args.min_count, parts)
            big, male = summary(r, names, a)
            row[kind] = {"largest": big, "Male": male,
                         "R": {n: (None if not np.isfinite(r[j]) else float(r[j])) for j, n in enumerate(names)},
                         "faces_used": {n: int(used[j]) for j, n in enumerate(names)},
                         "strata": {names[j]: p for j, p in parts.items()}}
        rows.append(row)
    how = f"ONNX network {os.path.basename(args.features)} (its logits)"
    table = markdown(rows, args.split, len(idx), how, args.min_count)
    print(table, end="")
    if args.table:
        atomic.write_bytes(args.table, table.encode())
    if args.json:
        record = {"checkpoint": args.checkpoint, "judge": args.features, "split": args.split, "faces": len(idx),
                  "min_count": args.min_count, "edits": rows}
        atomic.write_bytes(args.json, (json.dumps(record, indent=1) + "\n").encode())
    return 0


def main(argv=None):
    return run_command(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
