"""python -m scratchvae.face_features: a face feature network of our own, for `evaluate --features`.

Trains the attribute classifier of scratchvae.evaluation.classifier (four convolutions, a hidden
layer) on all the CelebA attribute labels of a folder's training images (the split a training run
with the same --seed, --batch-size, --val-fraction and --limit holds out), reports its held-out
accuracy, and writes it as ONNX (image NHWC in [0, 1] -> the hidden layer's features) with the
accuracy as JSON beside.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from scratchvae import data
from scratchvae.data.prefetch import ImageReader
from scratchvae.evaluation import classifier, classifier_onnx
from scratchvae.kernels import threads
from scratchvae.latent import labels
from scratchvae.run import atomic
from scratchvae.run.errors import UserError, run_command

HIDDEN, FILTERS = 256, (32, 64, 128, 256)
DECAY = 0.1  # the last third of the epochs (epochs // 3 of them) at a tenth of the learning rate
PARITY_IMAGES = 16  # held-out images run through both the package and onnxruntime after export


def build_parser():
    p = argparse.ArgumentParser(prog="python -m scratchvae.face_features", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="CelebA images: a folder, a .zip, or CelebA's folder")
    p.add_argument("--attributes", metavar="PATH", help="list_attr_celeba.txt (default: found beside --data)")
    p.add_argument("--out", required=True, metavar="PATH.onnx", help="the feature network to write; the held-out "
                                                                   "accuracy goes beside it as .json")
    p.add_argument("--image-size", type=int, default=64, help="the network's input size in pixels (default 64)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch; also the least held out, as in "
                                                            "training (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate, a tenth of it for the last third of "
                                                             "the epochs (default 1e-3)")
    p.add_argument("--limit", type=int, help="only the first N images in sorted order")
    p.add_argument("--seed", type=int, default=0, help="the held-out split, initialisation and order (default 0, "
                                                     "training's default)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of images held out (default 0.05, "
                                                                    "training's default)")
    p.add_argument("--threads", type=int, help="threads for Numba and BLAS (default: all cores)")
    p.add_argument("--cache-dir", help="where decoded images are cached (default: the user cache folder)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--force", action="store_true", help="overwrite --out and its .json")
    return p


def json_path(out):
    """The accuracy file beside the network: face-features.onnx -> face-features.json."""
    stem, ext = os.path.splitext(out)
    return (stem if ext.lower() == ".onnx" else out) + ".json"


def check_args(args):
    for name, value, least in (("--image-size", args.image_size, 8), ("--epochs", args.epochs, 1),
                               ("--batch-size", args.batch_size, 2)):
        if value < least:
            raise UserError(f"{name} {value} must be at least {least}")
    if not args.lr > 0:
        raise UserError(f"--lr {args.lr} must be above 0")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction} must be between 0 and 1")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit} must be at least 1")
    for path in (args.out, json_path(args.out)):
        if os.path.exists(path) and not args.force:
            raise UserError(f"{path} exists: pass --force to overwrite it, or choose another --out")
    folder = os.path.dirname(os.path.abspath(args.out))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {folder} ({e.strerror}): choose a folder you can write to") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write into {folder}: choose a folder you can write to")


def load(args):
    """(images uint8 (N, S, S, 3), train indices, held-out indices, labels 0/1 (N, A), attribute names)."""
    path = labels.find(args.data, args.attributes)  # a missing label file fails before decoding
    try:
        found = data.load_images(args.data, args.image_size, crop="center", limit=args.limit,
                                 cache_dir=args.cache_dir, progress=not args.quiet, min_count=2 * args.batch_size)
        train_idx, val_idx = data.split_indices(len(found), args.val_fraction, args.batch_size, args.seed,
                                                found.partition)
    except data.DataError as e:
        raise UserError(str(e)) from None
    table = labels.read(path)
    y = (labels.for_images(table, found.names) > 0).astype(np.float32)
    return found.images, train_idx, val_idx, y, table.attributes


def summary(acc, attributes):
    """Held-out accuracy: the mean over attributes, what always guessing the commoner class scores,
    and each attribute's figures."""
    per = {attributes[j]: s for j, s in acc.items()}
    return {"mean_accuracy": float(np.mean([s["accuracy"] for s in per.values()])),
            "mean_baseline": float(np.mean([s["baseline"] for s in per.values()])), "attributes": per}


def parity(clf, path, x):
    """The largest |difference| between the package's features and onnxruntime's on images x."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    run = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    got = run.run(["features"], {"image": np.asarray(x, np.float32)})[0]
    return float(np.max(np.abs(got.astype(np.float64) - clf.features(x))))


def run(args):
    check_args(args)
    try:
        threads.set_threads(args.threads)
    except ValueError as e:
        raise UserError(f"--threads: {e}") from None
    pixels, train_idx, val_idx, y, attributes = load(args)
    reader = ImageReader(pixels)
    if not args.quiet:
        print(f"{len(train_idx)} training and {len(val_idx)} held-out images at {args.image_size}x{args.image_size}, "
              f"{len(attributes)} attributes", file=sys.stderr, flush=True)
    clf = classifier.Classifier(args.image_size, attributes, FILTERS, seed=args.seed, hidden=HIDDEN)
    x_val = reader.read(val_idx)
    history, started = [], time.perf_counter()
    from tqdm import tqdm
    bar = tqdm(total=args.epochs * (len(train_idx) // args.batch_size) * args.batch_size, unit="img",
               desc="training", disable=args.quiet, leave=False, dynamic_ncols=True)

    def log(epoch, loss):
        acc = summary(classifier.accuracy(clf.probabilities(x_val), y[val_idx]), attributes)["mean_accuracy"]
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch, "loss": loss, "held_out_mean_accuracy": acc, "seconds": seconds})
        if not args.quiet:
            bar.write(f"epoch {epoch}/{args.epochs}: logistic loss {loss:.4f}, held-out mean accuracy {acc:.4f} "
                      f"({seconds:.0f} s)", file=sys.stderr)
    def rate(epoch):
        return args.lr * (DECAY if epoch >= args.epochs - args.epochs // 3 else 1.0)
    classifier.train(clf, reader.read, train_idx, y[train_idx], args.epochs, args.batch_size, rate, args.seed,
                     log=log, step=bar.update)
    bar.close()
    seconds = time.perf_counter() - started
    result = summary(classifier.accuracy(clf.probabilities(x_val), y[val_idx]), attributes)
    ranked = sorted(result["attributes"].items(), key=lambda kv: kv[1]["accuracy"])
    props = {"held_out_mean_accuracy": f"{result['mean_accuracy']:.4f}", "epochs": str(args.epochs),
             "trained_on": f"{len(train_idx)} training images of {os.path.basename(os.path.normpath(args.data))}"}
    atomic.write_bytes(args.out, classifier_onnx.build(clf, props).SerializeToString())
    diff = parity(clf, args.out, x_val[:PARITY_IMAGES])
    record = {"network": os.path.basename(args.out), "note": classifier_onnx.NOTE, "image_size": args.image_size,
              "features": HIDDEN, "filters": list(FILTERS), "data": os.path.basename(os.path.normpath(args.data)),
              "split": {"train": len(train_idx), "held_out": len(val_idx), "seed": args.seed,
                        "val_fraction": args.val_fraction, "batch_size": args.batch_size, "limit": args.limit},
              "epochs": args.epochs, "lr": args.lr, "training_seconds": seconds,
              "onnx_max_abs_difference": diff, "history": history, "held_out": result}
    atomic.write_bytes(json_path(args.out), (json.dumps(record, indent=1) + "\n").encode())
    print(f"held-out accuracy over {len(attributes)} attributes: mean {result['mean_accuracy']:.4f} "
          f"(always the commoner class: {result['mean_baseline']:.4f}); lowest {ranked[0][0]} "
          f"{ranked[0][1]['accuracy']:.3f}, highest {ranked[-1][0]} {ranked[-1][1]['accuracy']:.3f}")
    print(f"trained {args.epochs} epochs in {seconds:.0f} s; wrote {args.out} ({HIDDEN} features; onnxruntime "
          f"agrees to {diff:.1e}) and {json_path(args.out)}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
