"""python -m scratchvae.evaluation.edit_rates: do attribute vectors edit what they say?

Trains (or loads) the attribute classifier on the run's training images and labels, reports its
accuracy on the held-out images, then for held-out faces without an attribute compares the share the
classifier calls positive before (the decoded code z) and after adding s*v (default s = 2), and the
reverse (-s*v) for faces with it; every classified attribute is reported, so side effects show.
"""

import argparse
import json
import sys

import numpy as np

from scratchvae import atomic, checkpoint, labels, threads, vectors
from scratchvae.attributes import encode_all, load_model
from scratchvae.errors import UserError
from scratchvae.evaluation import classifier, source
from scratchvae.prefetch import ImageReader

DEFAULT_NAMES = "Smiling,Eyeglasses,Blond_Hair,Male"


def build_parser():
    p = argparse.ArgumentParser(prog="python -m scratchvae.evaluation.edit_rates", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint.npz written by python -m scratchvae.train")
    p.add_argument("--vectors", required=True, help="vectors file from python -m scratchvae.attributes")
    p.add_argument("--data", help="the run's labelled images (default: the source it was trained on)")
    p.add_argument("--attributes", metavar="PATH", help="list_attr_celeba.txt (default: found beside --data)")
    p.add_argument("--names", default=DEFAULT_NAMES, help=f"attributes to classify (default {DEFAULT_NAMES})")
    p.add_argument("--edit", help="attributes to edit (default: those of --names that have a vector)")
    p.add_argument("--classifier", metavar="PATH", help="load the classifier from PATH when it exists, else train "
                                                       "it and save it there")
    p.add_argument("--epochs", type=int, default=8, help="classifier training epochs (default 8)")
    p.add_argument("--strength", type=float, default=2.0, help="s in z + s*v (default 2)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--seed", type=int, default=0, help="classifier initialisation and order (default 0)")
    p.add_argument("--json", metavar="PATH", help="write every number as JSON")
    p.add_argument("--cache-dir", help="where decoded images are cached")
    p.add_argument("--threads", type=int, help="threads for Numba and BLAS (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def labelled(meta, vae, args, split, names):
    """(reader, sorted indices, labels 0/1 (n, len(names))) of one split of the run's data."""
    chosen = source.choose(meta, vae.config.image_size, args.data, split, cache_dir=args.cache_dir, quiet=args.quiet)
    if chosen.names is None:
        raise UserError("the built-in synthetic faces have no labels: pass --data a labelled CelebA folder")
    found = labels.read(labels.find(chosen.source, args.attributes))
    missing = [n for n in names if n not in found.attributes]
    if missing:
        raise UserError(f"{found.path} has no attribute {missing[0]}")
    values = labels.for_images(found, [chosen.names[i] for i in chosen.idx])
    cols = [found.attributes.index(n) for n in names]
    return ImageReader(chosen.pixels), chosen.idx, (values[:, cols] > 0).astype(np.float32)


def get_classifier(args, vae, names, meta):
    size = vae.config.image_size
    if args.classifier:
        try:
            clf, _ = classifier.Classifier.load(args.classifier)
            if clf.attributes != names or clf.image_size != size:
                raise UserError(f"{args.classifier} classifies {clf.attributes} at {clf.image_size} px, not {names} "
                                f"at {size} px: give another --classifier path to train a new one")
            return clf, "loaded"
        except checkpoint.CheckpointError as e:
            if "no checkpoint at" not in str(e):
                raise UserError(str(e)) from None
    reader, idx, y = labelled(meta, vae, args, "train", names)
    clf = classifier.Classifier(size, names, seed=args.seed)

    def log(epoch, loss):
        if not args.quiet:
            print(f"classifier epoch {epoch}/{args.epochs}: logistic loss {loss:.4f}", file=sys.stderr, flush=True)
    classifier.train(clf, reader.read, idx, y, args.epochs, args.batch_size, seed=args.seed, log=log)
    if args.classifier:
        clf.save(args.classifier, meta={"trained_on": f"{len(idx)} training images", "epochs": args.epochs})
    return clf, f"trained on {len(idx)} images, {args.epochs} epochs"


def decode_all(vae, z, batch_size):
    return np.concatenate([np.asarray(vae.decode(z[i:i + batch_size])) for i in range(0, len(z), batch_size)])


def edit_rates(vae, clf, p_real, z, y, vec, edit, strength, batch_size):
    """For each edited attribute: held-out faces without it (+s v) and with it (-s v); the share of each
    classified attribute called positive on the real images, the decoded codes and the edited codes."""
    out = {}
    called = {"real": p_real > 0.5, "before": clf.probabilities(decode_all(vae, z, batch_size)) > 0.5}
    for name in edit:
        a, v = clf.attributes.index(name), vec.vectors[vec.names.index(name)]
        for group, sign in (("without", 1.0), ("with", -1.0)):
            rows = np.flatnonzero((y[:, a] > 0.5) == (group == "with"))
            if not len(rows):
                continue
            z_edit = (z[rows] + np.float32(sign * strength) * v).astype(np.float32)
            shares = {"real": called["real"][rows], "before": called["before"][rows],
                      "after": clf.probabilities(decode_all(vae, z_edit, batch_size)) > 0.5}
            out[f"{name} {group}"] = {"faces": int(len(rows)), "edit": f"{'+' if sign > 0 else '-'}{strength:g}*v",
                                      "shares": {attr: {k: float(s[:, j].mean()) for k, s in shares.items()}
                                                 for j, attr in enumerate(clf.attributes)}}
    return out


def report(accuracy, rates, names):
    lines = ["classifier on held-out real images:",
             f"  {'attribute':<12} {'accuracy':>8} {'baseline':>8} {'TPR':>6} {'TNR':>6} {'pos':>5} {'neg':>5}"]
    for j, name in enumerate(names):
        s = accuracy[j]
        lines.append(f"  {name:<12} {s['accuracy']:>8.3f} {s['baseline']:>8.3f} {s['true_positive_rate'] or 0:>6.3f} "
                     f"{s['true_negative_rate'] or 0:>6.3f} {s['positives']:>5} {s['negatives']:>5}")
    lines.append("share called positive, real -> decoded z -> decoded edited z:")
    for key, r in rates.items():
        cells = "  ".join(f"{attr} {c['real']:.2f}->{c['before']:.2f}->{c['after']:.2f}"
                          for attr, c in r["shares"].items())
        lines.append(f"  {key:<22} n={r['faces']:<4} {r['edit']:<6} {cells}")
    return "\n".join(lines)


def run(args):
    try:
        threads.set_threads(args.threads)
    except ValueError as e:
        raise UserError(f"--threads: {e}") from None
    names = [n for n in args.names.split(",") if n]
    vae, meta, identity = load_model(args.checkpoint)
    vec = vectors.load(args.vectors, identity, vae.config.z_dim)
    edit = args.edit.split(",") if args.edit else [n for n in names if n in vec.names]
    bad = [n for n in edit if n not in names or n not in vec.names]
    if bad:
        raise UserError(f"--edit {bad[0]}: needs a vector and a place in --names")
    clf, how = get_classifier(args, vae, names, meta)
    reader, idx, y = labelled(meta, vae, args, "held-out", names)
    p_real = clf.probabilities(reader.read(idx))
    accuracy = classifier.accuracy(p_real, y)
    z = encode_all(vae, reader, idx, args.batch_size)
    rates = edit_rates(vae, clf, p_real, z, y, vec, edit, args.strength, args.batch_size)
    print(f"classifier {how}; {len(idx)} held-out images")
    print(report(accuracy, rates, names))
    if args.json:
        record = {"checkpoint": args.checkpoint, "vectors": args.vectors, "classifier": how, "strength": args.strength,
                  "held_out": len(idx), "accuracy": {names[j]: s for j, s in accuracy.items()}, "edits": rates}
        atomic.write_bytes(args.json, (json.dumps(record, indent=1) + "\n").encode())
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
