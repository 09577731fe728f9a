"""python -m scratchvae.attributes: attribute vectors of a checkpoint from CelebA's labels.

Encodes the labelled images in inference mode (z = z_mean), takes per attribute the change of the
code from without it to with it by --method (mean, joint or matched: scratchvae/latent/vectors.py), writes
them with the checkpoint's identity and the method, and prints the attributes ranked by how far their
direction moves a face relative to the codes' spread.
"""

import argparse
import os
import sys
import time

import numpy as np

from scratchvae.data.prefetch import ImageReader
from scratchvae.evaluation import source
from scratchvae.kernels import threads
from scratchvae.latent import calibrate, labels, vectors
from scratchvae.run.errors import UserError, run_command

SPLIT_CHOICES = ("train", "held-out", "all")
CLASSIFIER_FILE = "labels-classifier.npz"  # --calibrate's classifier of every label, beside the checkpoint
CLASSIFIER_EPOCHS = 8
METHODS = ("calibrated",) + vectors.METHODS  # calibrated: joint, then every direction calibrated on decoded faces


def build_parser():
    p = argparse.ArgumentParser(prog="python -m scratchvae.attributes",
                                description="Attribute vectors (the change of the code from faces without an "
                                            "attribute to faces with it) from CelebA's list_attr_celeba.txt.")
    p.add_argument("checkpoint", help="a checkpoint.npz written by python -m scratchvae.train")
    p.add_argument("--data", help="the labelled images: a folder, a .zip or CelebA's layout (default: the "
                                  "source the checkpoint was trained on)")
    p.add_argument("--attributes", metavar="PATH",
                   help="list_attr_celeba.txt (default: found in or beside --data, or in an Anno/ folder)")
    p.add_argument("--out", help="vectors file to write (default: vectors.npz beside the checkpoint)")
    p.add_argument("--force", action="store_true", help="replace an existing vectors file")
    p.add_argument("--split", choices=SPLIT_CHOICES,
                   help="train: the run's training images (default on its own data); held-out: its held-out "
                        "images; all: every image (default on other data)")
    p.add_argument("--limit", type=int, help="encode at most the first N images of the split")
    p.add_argument("--method", default="calibrated", metavar="|".join(METHODS),
                   help="calibrated (default): joint, then every direction corrected on decoded faces as "
                        "--calibrate all does, the fewest side effects measured (docs/ATTRIBUTES.md; minutes); "
                        "joint: one ridge regression of the codes on all labels, each direction with the other "
                        "labels held fixed (seconds); mean: mean code with the attribute minus without, which carries "
                        "the labels' correlations; matched: mean differences inside strata of the labels most "
                        "correlated with the attribute")
    p.add_argument("--ridge", type=float, default=vectors.DEFAULT_RIDGE,
                   help=f"joint: the ridge on the label coefficients, labels coded +-1 (default {vectors.DEFAULT_RIDGE:g})")
    p.add_argument("--controls", metavar="all|others|N|NAMES",
                   help="the labels joint and matched hold fixed: all (joint's default); others: all but the "
                        f"attribute's own facets, the labels correlated with it at |phi| >= {vectors.FACET:g} "
                        "(joint); the N most correlated with each attribute (matched's default 2); or a comma list "
                        "such as Male,Young")
    p.add_argument("--hold", metavar="NAMES",
                   help="after any method, keep the linear readout of these labels from the code fixed along every "
                        "direction (e.g. Male: a blond edit then feminises less; docs/ATTRIBUTES.md measures it)")
    p.add_argument("--calibrate", metavar="NAMES",
                   help="then correct these attributes' directions (a comma list, or all) on decoded training faces: "
                        "add the other directions that keep a classifier's calls of every other label where they "
                        "were (--method calibrated: all, unless named here); about 25 s per direction on two "
                        "cores (docs/ATTRIBUTES.md)")
    p.add_argument("--classifier", metavar="PATH",
                   help="calibration: a classifier of every label to judge the decoded faces, loaded when PATH "
                        "exists, else trained on the split's images and saved there (default: "
                        f"{CLASSIFIER_FILE} beside the checkpoint)")
    p.add_argument("--calibrate-faces", type=int, default=calibrate.DEFAULT_FACES, metavar="N",
                   help=f"calibration: training faces per side, without and with the attribute (default "
                        f"{calibrate.DEFAULT_FACES}; {calibrate.SLOPE_FACES} of them give the first slopes)")
    p.add_argument("--calibrate-length", type=float, default=calibrate.LENGTH, metavar="W",
                   help=f"calibration: how much a longer direction (in the codes' own spread) costs against the side "
                        f"effects; 0 lets it grow freely (default {calibrate.LENGTH:g})")
    p.add_argument("--min-count", type=int, default=vectors.DEFAULT_MIN_COUNT,
                   help=f"skip an attribute with fewer images on either side (default {vectors.DEFAULT_MIN_COUNT})")
    p.add_argument("--crop", choices=list(source.data.CROPS),
                   help="how images are fitted to the checkpoint's size (default: the run's, else center)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--cache-dir", help="where decoded images are cached (default: the user cache folder)")
    p.add_argument("--threads", type=int, help="threads for Numba and BLAS (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def load_model(path):
    """(vae, meta, identity); one clear UserError for anything wrong with the file."""
    vae, arrays, meta = source.load_checkpoint(path)
    return vae, meta, vectors.checkpoint_identity(arrays)


def parse_controls(text, method):
    """--controls as directions() takes it: None (the method's default), "all", a count or a list of names."""
    if text is None:
        return None
    if method == "mean":
        raise UserError("--controls: the mean method holds no labels fixed; use it with --method joint or matched")
    text = text.strip()
    controls = text if text in ("all", "others") else int(text) if text.isdigit() else \
        [n for n in text.split(",") if n]
    if controls in ("all", "others") and method == "matched":
        raise UserError(f"--controls {controls}: matched makes a stratum per combination of labels; name at most "
                        f"{vectors.MAX_MATCHED} (e.g. Male,Young) or a count")
    if controls not in ("all", "others") and (not controls or method == "matched" and
                              (controls if isinstance(controls, int) else len(controls)) > vectors.MAX_MATCHED):
        raise UserError(f"--controls {text[:60]!r}: give all, others, a count from 1 (matched: to {vectors.MAX_MATCHED}) or "
                        f"label names such as Male,Young")
    return controls


def describe(v):
    """One line naming the method and what it held fixed."""
    held = v.controls[0] if v.controls and len(set(v.controls)) == 1 else None
    what = ("every other label" if held == "all" else held.replace(",", ", ") if held
            else "the labels of the last column")
    held_readouts = f"; the linear readouts of {', '.join(v.hold)} kept fixed" if v.hold else ""
    if v.calibrated:
        which = "every direction" if sorted(v.calibrated) == sorted(v.names) else ", ".join(v.calibrated)
        held_readouts += f"; {which} calibrated on decoded faces ({v.calibration})"
    if v.method == "joint":
        return f"method joint: each direction with {what} held fixed (ridge {v.ridge:g}){held_readouts}"
    if v.method == "matched":
        return (f"method matched: mean differences within strata of {what}, weighted by n+ n- / (n+ + n-)"
                f"{held_readouts}")
    return f"method mean: mean code with the attribute minus mean code without it{held_readouts}"


def table(v):
    """The ranked table: attributes by length of their direction over the codes' spread along it, the
    images each estimate rests on and, where they differ by attribute, the labels held fixed."""
    ratio, length = v.ratio(), np.linalg.norm(v.vectors.astype(np.float64), axis=1)
    more = v.method != "mean" and len(set(v.controls)) > 1  # a list per attribute; one shared list is in describe()
    lines = [f"{'rank':>4}  {'attribute':<20} {'with':>6} {'without':>7} {'|v|':>7} {'spread':>7} {'|v|/spread':>10}"
             f" {'rests on':>8}" + ("  held fixed" if more else "")]
    for rank, i in enumerate(v.ranking(), 1):
        lines.append(f"{rank:>4}  {v.names[i]:<20} {int(v.n_pos[i]):>6} {int(v.n_neg[i]):>7} {length[i]:>7.3f} "
                     f"{v.spread[i]:>7.3f} {ratio[i]:>10.2f} {int(v.n_used[i]):>8}"
                     + (f"  {v.controls[i]}" if more else ""))
    return "\n".join(lines)


def calibration_names(text, attributes, where):
    """--calibrate as a list of label names: [] when not given, every label for "all"; one line for a
    name the label file lacks or an empty list."""
    if text is None:
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(attributes)
    if not names:
        raise UserError(f"--calibrate {text!r}: name one or more labels, e.g. Smiling,Eyeglasses, or all")
    unknown = [n for n in names if n not in attributes]
    if unknown:
        raise UserError(f"--calibrate {unknown[0][:40]}: {where} has no such label")
    return list(dict.fromkeys(names))


def calibrate_directions(v, wanted, vae, z, values, attributes, reader, idx, args):
    """v with the directions of `wanted` (those that have one) corrected by calibrate.calibrate on decoded
    codes of the split's faces, judged by a classifier of every label (--classifier, loaded or trained);
    each correction is built from the other directions as made, so the order does not matter."""
    from tqdm import tqdm

    from scratchvae.evaluation import classifier
    from scratchvae.evaluation.edit_rates import decode_all
    missing = [n for n in wanted if n not in v.names]
    if missing and wanted != list(attributes):
        raise UserError(f"--calibrate {missing[0]}: it has no direction (fewer than {v.min_count} images on one "
                        f"side): lower --min-count or calibrate others")
    wanted = [n for n in wanted if n in v.names]
    path = args.classifier or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), CLASSIFIER_FILE)
    pos = np.asarray(values) > 0

    def log(epoch, loss):
        if not args.quiet:
            print(f"classifier epoch {epoch}/{CLASSIFIER_EPOCHS}: logistic loss {loss:.4f}", file=sys.stderr,
                  flush=True)
    clf, how = classifier.load_or_train(path, vae.config.image_size, attributes, reader.read, idx,
                                        pos.astype(np.float32), CLASSIFIER_EPOCHS, args.batch_size, log=log)
    print(f"classifier of {len(attributes)} labels {how} ({path})")
    basis = v.vectors.astype(np.float64)
    picks = {}  # per name: the faces without and with it, and the few of each the slopes decode
    for name in wanted:
        sides = calibrate.pick_faces(pos, attributes.index(name), args.calibrate_faces)
        picks[name] = sides, [calibrate.slope_faces(side) for side in sides]
    steps = calibrate.DEFAULT_STEPS
    total = sum(calibrate.decodes(sum(map(len, sides)), sum(map(len, few)), len(basis) - 1, steps)
                for sides, few in picks.values())
    bar = tqdm(total=total, desc="calibrating", unit="face", disable=args.quiet, leave=False, dynamic_ncols=True)

    def judge(codes):
        bar.update(len(codes))
        return clf.probabilities(decode_all(vae, codes, args.batch_size))
    start = time.perf_counter()
    vec, male = basis.copy(), attributes.index("Male") if "Male" in attributes else None
    metric = calibrate.code_metric(z)
    for name in wanted:
        row, a = v.names.index(name), attributes.index(name)
        (without, with_), (few_without, few_with) = picks[name]
        probe = calibrate.Probe(judge, [(z[without], 1.0), (z[with_], -1.0)])
        slopes = calibrate.Probe(judge, [(z[few_without], 1.0), (z[few_with], -1.0)])
        others = [i for i in range(len(basis)) if i != row]
        free = calibrate.exclusive(pos, a)
        vec[row], history = calibrate.calibrate(basis[row], basis[others], probe, a, free, steps=steps,
                                                metric=metric, length=args.calibrate_length, slopes=slopes)
        bar.clear()
        print(calibrate.summary(name, history, attributes, a, male))
        if free.any():
            print(f"  left free (almost never labelled together with {name}): "
                  f"{', '.join(attributes[b] for b in np.flatnonzero(free))}")
    bar.close()
    print(f"calibrated {len(wanted)} direction{'s' if len(wanted) != 1 else ''} in {time.perf_counter() - start:.0f} s")
    how = (f"classifier {os.path.basename(path)} ({len(attributes)} labels), strength {calibrate.STRENGTH:g}, "
           f"{args.calibrate_faces} faces per side, slopes from {calibrate.SLOPE_FACES}, {steps} steps, "
           f"length weight {args.calibrate_length:g}")
    return vectors.with_directions(v, vec, z, wanted, how)


def run(args):
    if args.method not in METHODS:
        raise UserError(f"--method {args.method[:40]!r}: use {', '.join(METHODS)}")
    calibrating = args.method == "calibrated" or args.calibrate is not None
    method = "joint" if args.method == "calibrated" else args.method
    if args.batch_size < 1 or args.min_count < 1 or args.calibrate_faces < 1:
        raise UserError("--batch-size, --min-count and --calibrate-faces must be at least 1")
    if not (np.isfinite(args.calibrate_length) and args.calibrate_length >= 0):
        raise UserError(f"--calibrate-length {args.calibrate_length}: give 0 or a positive number")
    if not calibrating and args.classifier is not None:
        raise UserError(f"--classifier judges the faces calibration edits: --method {args.method} calibrates "
                        f"nothing; give --calibrate NAMES as well")
    if not (np.isfinite(args.ridge) and args.ridge > 0):
        raise UserError(f"--ridge {args.ridge}: give a positive number")
    controls = parse_controls(args.controls, method)
    hold = [n.strip() for n in (args.hold or "").split(",") if n.strip()]
    if args.hold is not None and not hold:
        raise UserError(f"--hold {args.hold!r}: name one or more labels, e.g. Male")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "vectors.npz")
    if os.path.exists(out) and not args.force:
        raise UserError(f"{out} exists: pass --force to replace it, or choose another --out")
    try:
        threads.set_threads(args.threads)
    except ValueError as e:
        raise UserError(f"--threads: {e}") from None
    vae, meta, identity = load_model(args.checkpoint)
    chosen = source.choose(meta, vae.config.image_size, args.data, args.split, None, args.crop, args.limit,
                           args.cache_dir, args.quiet, own_split="train")
    for note in chosen.notes:
        print(note, file=sys.stderr)
    if chosen.names is None:
        raise UserError("the built-in synthetic faces have no labels: pass --data a labelled CelebA folder")
    found = labels.read(labels.find(chosen.source, args.attributes))
    values = labels.for_images(found, [chosen.names[i] for i in chosen.idx])
    unknown = [n for n in (controls if isinstance(controls, list) else []) if n not in found.attributes]
    if unknown:
        raise UserError(f"--controls {unknown[0]}: {found.path} has no such label")
    unknown = [n for n in hold if n not in found.attributes]
    if unknown:
        raise UserError(f"--hold {unknown[0]}: {found.path} has no such label")
    wanted = calibration_names(args.calibrate or ("all" if calibrating else None), found.attributes, found.path)
    reader = ImageReader(chosen.pixels)
    z = vectors.encode_all(vae, reader, chosen.idx, args.batch_size, args.quiet)
    result = vectors.directions(z, values, found.attributes, identity, args.min_count, method, args.ridge,
                                controls, hold)
    if not result.names:
        raise UserError(f"every attribute has fewer than {args.min_count} of the {len(z)} images on one side: "
                        f"use more images or a lower --min-count")
    if wanted:
        result = calibrate_directions(result, wanted, vae, z, values, found.attributes, reader, chosen.idx, args)
    try:
        vectors.save(out, result)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e}): choose a writable --out") from None
    print(f"{len(z)} images ({chosen.split} split of {chosen.source}), labels from {found.path}")
    print(describe(result))
    print(table(result))
    if result.skipped:
        why = " or no stratum with both" if method == "matched" else ""
        print(f"skipped (fewer than {args.min_count} images on one side{why}): {', '.join(result.skipped)}")
    print(f"wrote {out} ({len(result.names)} attributes, checkpoint identity {identity[:12]}…)")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
