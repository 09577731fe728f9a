"""python -m scratchvae.evaluation.edit_rates: do attribute vectors edit what they say, and nothing else?

A classifier (the project's own, trained on the run's training images or loaded; or the `logits` of
an ONNX network via --features) judges held-out decodes: faces without an attribute before and after
z + s*v (s = 2), faces with it before and after z - s*v, every classified attribute each time, so side
effects show. Several vectors files (one per method) are measured on the same faces and summarised as
JSON and a markdown table; --picture instead draws the same faces edited by each file, side by side.
"""

import argparse
import json
import os
import sys

import numpy as np

from scratchvae import images, latent
from scratchvae.data.prefetch import ImageReader
from scratchvae.evaluation import classifier, source
from scratchvae.kernels import threads
from scratchvae.latent import labels, vectors
from scratchvae.run import atomic
from scratchvae.run.errors import UserError, run_command

DEFAULT_NAMES = "Smiling,Eyeglasses,Blond_Hair,Male"
WATCHED = "Male"  # the side effect the table always shows: the labels' strongest correlate


def build_parser():
    p = argparse.ArgumentParser(prog="python -m scratchvae.evaluation.edit_rates", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint.npz written by python -m scratchvae.train")
    p.add_argument("--vectors", required=True, nargs="+", metavar="VECTORS",
                   help="one or more vectors files from python -m scratchvae.attributes (e.g. one per --method), "
                        "all measured on the same faces")
    p.add_argument("--data", help="the run's labelled images (default: the source it was trained on)")
    p.add_argument("--attributes", metavar="PATH", help="list_attr_celeba.txt (default: found beside --data)")
    p.add_argument("--names", default=DEFAULT_NAMES,
                   help=f"attributes to classify, comma-separated, or all (default {DEFAULT_NAMES})")
    p.add_argument("--edit", help="attributes to edit (default: those of the default names that have a vector)")
    p.add_argument("--classifier", metavar="PATH", help="load the classifier from PATH when it exists, else train "
                                                       "it and save it there")
    p.add_argument("--features", metavar="ONNX",
                   help="judge with this ONNX network's `logits` output (one logit per attribute, named by its "
                        "`attributes` metadata, else in the label file's order) instead of the trained classifier")
    p.add_argument("--epochs", type=int, default=8, help="classifier training epochs (default 8)")
    p.add_argument("--strength", type=float, default=2.0, help="s in z + s*v (default 2)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--seed", type=int, default=0, help="classifier initialisation and order (default 0)")
    p.add_argument("--json", metavar="PATH", help="write every number as JSON")
    p.add_argument("--table", metavar="PATH", help="write the summary as a markdown table")
    p.add_argument("--picture", metavar="PNG",
                   help="instead of measuring: the first --faces held-out faces edited by each vectors file, one "
                        "row per attribute x face x file, one column per strength")
    p.add_argument("--faces", type=int, default=4, help="--picture: how many held-out faces (default 4)")
    p.add_argument("--strengths", default="-3:3:7", help="--picture: first:last:count or a list (default -3:3:7)")
    p.add_argument("--force", action="store_true", help="--picture: replace an existing picture")
    p.add_argument("--cache-dir", help="where decoded images are cached")
    p.add_argument("--threads", type=int, help="threads for Numba and BLAS (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def labelled(meta, vae, args, split):
    """(reader, sorted indices, labels +-1 (n, attributes), attribute names, image names) of one split."""
    chosen = source.choose(meta, vae.config.image_size, args.data, split, cache_dir=args.cache_dir, quiet=args.quiet)
    if chosen.names is None:
        raise UserError("the built-in synthetic faces have no labels: pass --data a labelled CelebA folder")
    found = labels.read(labels.find(chosen.source, args.attributes))
    names = [chosen.names[i] for i in chosen.idx]
    return ImageReader(chosen.pixels), chosen.idx, labels.for_images(found, names), found.attributes, names


def columns(values, attributes, names):
    """Labels 0/1 (n, len(names)) of the named attributes; one line for a name the file lacks."""
    missing = [n for n in names if n not in attributes]
    if missing:
        raise UserError(f"the label file has no attribute {missing[0]}")
    return (values[:, [attributes.index(n) for n in names]] > 0).astype(np.float32)


def get_classifier(args, vae, names, meta):
    def log(epoch, loss):
        if not args.quiet:
            print(f"classifier epoch {epoch}/{args.epochs}: logistic loss {loss:.4f}", file=sys.stderr, flush=True)
    if args.classifier and os.path.exists(args.classifier):
        return classifier.load_or_train(args.classifier, vae.config.image_size, names, None, None, None)
    reader, idx, values, attributes, _ = labelled(meta, vae, args, "train")
    return classifier.load_or_train(args.classifier, vae.config.image_size, names, reader.read, idx,
                                    columns(values, attributes, names), args.epochs, args.batch_size, args.seed, log)


class LogitsJudge:
    """An ONNX network's `logits` output as the classifier: probabilities() is the sigmoid of the
    columns of `attributes` (set by select). Its columns are named by the model's `attributes`
    metadata (a JSON list, as scratchvae.face_features writes it), else taken in the label file's order."""

    def __init__(self, path, label_attributes, threads=None):
        import onnx

        from scratchvae.evaluation.features import FeatureModel
        self.model = FeatureModel(path, threads)  # its one-line checks of the file and its image input
        graph = onnx.load(path, load_external_data=False)
        outputs = {o.name: [d.dim_value or None for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
        if "logits" not in outputs:
            raise UserError(f"--features {path} has no output named logits (it has {', '.join(outputs)}): give a "
                            f"network with one logit per attribute")
        self.model.output = "logits"
        width = outputs["logits"][-1] if outputs["logits"] else None
        meta = {p.key: p.value for p in graph.metadata_props}
        try:
            known = json.loads(meta["attributes"]) if "attributes" in meta else list(label_attributes)
            if not isinstance(known, list) or not all(isinstance(n, str) for n in known):
                raise ValueError
        except ValueError:
            raise UserError(f"--features {path}: its `attributes` metadata is not a JSON list of names") from None
        if isinstance(width, int) and width != len(known):
            raise UserError(f"--features {path} gives {width} logits for {len(known)} attribute names; name its "
                            f"columns in an `attributes` metadata entry")
        self.path, self.known, self.attributes, self.cols = path, known, list(known), list(range(len(known)))

    def select(self, names):
        missing = [n for n in names if n not in self.known]
        if missing:
            raise UserError(f"--features {self.path} has no logit for {missing[0]}")
        self.attributes, self.cols = list(names), [self.known.index(n) for n in names]

    def probabilities(self, x, batch_size=128):
        logits = np.concatenate([self.model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        if logits.shape[1] != len(self.known):
            raise UserError(f"--features {self.path} gives {logits.shape[1]} logits for {len(self.known)} names")
        return classifier.sigmoid(logits[:, self.cols])


def decode_all(vae, z, batch_size):
    return np.concatenate([np.asarray(vae.decode(z[i:i + batch_size])) for i in range(0, len(z), batch_size)])


def edit_rates(vae, clf, p_real, z, y, vec, edit, strength, batch_size, before=None):
    """For each edited attribute: held-out faces without it (+s v) and with it (-s v); the share of each
    classified attribute called positive on the real images, the decoded codes and the edited codes, and
    the share of faces whose call of it the edit flipped. `before`: the decoded codes' probabilities,
    when already known (they are the same for every vectors file)."""
    out = {}
    if before is None:
        before = clf.probabilities(decode_all(vae, z, batch_size))
    called = {"real": p_real > 0.5, "before": before > 0.5}
    for name in edit:
        a, v = clf.attributes.index(name), vec.vectors[vec.names.index(name)]
        for group, sign in (("without", 1.0), ("with", -1.0)):
            rows = np.flatnonzero((y[:, a] > 0.5) == (group == "with"))
            if not len(rows):
                continue
            z_edit = (z[rows] + np.float32(sign * strength) * v).astype(np.float32)
            shares = {"real": called["real"][rows], "before": called["before"][rows],
                      "after": clf.probabilities(decode_all(vae, z_edit, batch_size)) > 0.5}
            out[f"{name} {group}"] = {"faces": len(rows), "edit": f"{'+' if sign > 0 else '-'}{strength:g}*v",
                                      "shares": {attr: {k: float(s[:, j].mean()) for k, s in shares.items()}
                                                 for j, attr in enumerate(clf.attributes)},
                                      "flipped": {attr: float(np.mean(shares["after"][:, j] != shares["before"][:, j]))
                                                  for j, attr in enumerate(clf.attributes)}}
    return out


def summarise(rates, watched=WATCHED):
    """Per edit of edit_rates' output: the share of faces in the asked state (called positive after +s v,
    negative after -s v) before and after, and the side effects: for every other classified attribute the
    change in the share called positive (after - before), the largest in size, their mean size, and the
    watched one's."""
    rows = []
    for key, r in rates.items():
        name, group = key.rsplit(" ", 1)
        own = r["shares"][name]
        asked = ({k: own[k] for k in ("before", "after")} if group == "without"
                 else {k: 1.0 - own[k] for k in ("before", "after")})
        side = {attr: c["after"] - c["before"] for attr, c in r["shares"].items() if attr != name}
        largest = max(side, key=lambda attr: abs(side[attr]), default=None)
        rows.append({"attribute": name, "group": group, "edit": r["edit"], "faces": r["faces"], "asked": asked,
                     "side_effects": side, "flipped": {k: f for k, f in r["flipped"].items() if k != name},
                     "largest": None if largest is None else {"attribute": largest, "change": side[largest]},
                     "mean_abs": float(np.mean(np.abs(list(side.values())))) if side else None,
                     "watched": side.get(watched)})
    return rows


def markdown(summaries, accuracy, names, how, strength, held_out, watched=WATCHED):
    """The summary tables: the classifier's held-out accuracy, then per edit and vectors file the share
    changed as asked and the side effects (share points, after - before on the same faces)."""
    lines = [f"Classifier: {how}; {held_out} held-out images; edits of strength {strength:g}.", "",
             "| attribute | held-out accuracy | share of the commoner class | true positive rate | true negative rate |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for j, name in enumerate(names):
        s = accuracy[j]
        rates = [f"{s[k]:.2f}" if s[k] is not None else "–" for k in ("true_positive_rate", "true_negative_rate")]
        lines.append(f"| {name} | {s['accuracy']:.3f} | {s['baseline']:.3f} | {rates[0]} | {rates[1]} |")
    header = (f"| edit | faces | method | as asked: before → after | largest side effect | {watched} | "
              f"mean size of the {len(names) - 1} others |")
    lines += ["", header, "| --- | ---: | --- | --- | --- | ---: | ---: |"]
    order = {}
    for label, rows in summaries.items():
        for r in rows:
            order.setdefault((r["attribute"], r["group"]), []).append((label, r))
    for (name, group), entries in order.items():
        for label, r in entries:
            sign = "+" if group == "without" else "−"
            big = "–" if r["largest"] is None else f"{r['largest']['attribute']} {r['largest']['change']:+.2f}"
            male = "–" if r["watched"] is None else f"{r['watched']:+.2f}"
            size = "–" if r["mean_abs"] is None else f"{r['mean_abs']:.3f}"
            lines.append(f"| {name} {sign}{strength:g}v | {r['faces']} | {label} | {r['asked']['before']:.2f} → "
                         f"**{r['asked']['after']:.2f}** | {big} | {male} | {size} |")
    return "\n".join(lines) + "\n"


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


def picture_rows(vae, z, face_names, files, edit, strengths, batch_size):
    """Rows (each (len(strengths), S, S, 3)) and their labels: for each edited attribute, each face and
    each (label, Vectors) of files, the decodes of z + s v for s in strengths."""
    rows, row_labels = [], []
    for name in edit:
        for i, face in enumerate(face_names):
            for label, vec in files:
                v = vec.vectors[vec.names.index(name)]
                z_row = (z[i] + strengths[:, None].astype(np.float32) * v).astype(np.float32)
                rows.append(decode_all(vae, z_row, batch_size))
                row_labels.append(f"{name} {label}, {face}")
    return rows, row_labels


def file_label(v):
    """A vectors file's method, with the labels it held fixed when it names a few for every attribute
    ("joint (Male,Young)"); every other label, or each attribute's own most correlated ones, add nothing;
    and the labels whose readouts it keeps ("joint, Male's readout kept"), and whether directions were
    calibrated on decoded faces ("joint, calibrated")."""
    kept = (f", {','.join(v.hold)}'s readout kept" if v.hold else "") + (", calibrated" if v.calibrated else "")
    sets = [set(c.split(",")) - {""} for c in v.controls]
    union = set().union(*sets) if sets else set()
    if v.method == "mean" or "all" in union or not union or len(union) > vectors.MAX_MATCHED:
        return v.method + kept
    if all(s == union - {name} for s, name in zip(sets, v.names)):
        order = next((c for c, s in zip(v.controls, sets) if s == union), ",".join(sorted(union)))
        return f"{v.method} ({order}){kept}"
    return v.method + kept


def file_labels(paths, found):
    """A short label per vectors file (file_label), the file name added where two would share one."""
    tags = [file_label(v) for v in found]
    tags = [t if tags.count(t) == 1 else f"{t}: {os.path.splitext(os.path.basename(p))[0]}"
            for p, t in zip(paths, tags)]
    return [t if tags.count(t) == 1 else f"{t} ({i + 1})" for i, t in enumerate(tags)]


def run(args):
    try:
        threads.set_threads(args.threads)
    except ValueError as e:
        raise UserError(f"--threads: {e}") from None
    if args.picture and os.path.exists(args.picture) and not args.force:
        raise UserError(f"{args.picture} exists: pass --force to replace it, or choose another --picture")
    if args.faces < 1 or args.batch_size < 1:
        raise UserError("--faces and --batch-size must be at least 1")
    strengths = latent.parse_strengths(args.strengths)
    vae, arrays, meta = source.load_checkpoint(args.checkpoint)
    identity = vectors.checkpoint_identity(arrays)
    found = [vectors.load(path, identity, vae.config.z_dim) for path in args.vectors]
    tags = file_labels(args.vectors, found)
    reader, idx, values, attributes, face_names = labelled(meta, vae, args, "held-out")
    judge = LogitsJudge(args.features, attributes, args.threads) if args.features else None
    if args.names == "all":
        names = [n for n in (judge.known if judge else attributes) if n in attributes]
    else:
        names = [n for n in args.names.split(",") if n]
    edit = args.edit.split(",") if args.edit else [n for n in DEFAULT_NAMES.split(",")
                                                   if n in names and all(n in v.names for v in found)]
    bad = [n for n in edit if n not in names or not all(n in v.names for v in found)]
    if bad or not edit:
        raise UserError(f"--edit {bad[0] if bad else '(none)'}: each edited attribute needs a vector in every "
                        f"--vectors file and a place in --names")
    if args.picture:
        z = vectors.encode_all(vae, reader, idx[:args.faces], args.batch_size)
        rows, row_labels = picture_rows(vae, z, face_names[:args.faces], list(zip(tags, found)), edit, strengths,
                                        args.batch_size)
        images.save_rows(args.picture, rows, labels=row_labels)
        print(f"wrote {args.picture}: {len(rows)} rows ({', '.join(edit)} x {len(z)} held-out faces x "
              f"{', '.join(tags)}), strengths {', '.join(f'{s:g}' for s in strengths)}")
        return 0
    y = columns(values, attributes, names)
    if judge is not None:
        judge.select(names)
        clf, how = judge, f"ONNX network {os.path.basename(args.features)} (its logits)"
    else:
        clf, how = get_classifier(args, vae, names, meta)
    p_real = clf.probabilities(reader.read(idx))
    accuracy = classifier.accuracy(p_real, y)
    z = vectors.encode_all(vae, reader, idx, args.batch_size)
    before = clf.probabilities(decode_all(vae, z, args.batch_size))
    methods, summaries = {}, {}
    for path, tag, vec in zip(args.vectors, tags, found):
        rates = edit_rates(vae, clf, p_real, z, y, vec, edit, args.strength, args.batch_size, before)
        methods[tag] = {"vectors": path, "method": vec.method, "edits": rates}
        summaries[tag] = summarise(rates)
        print(f"== {tag} ({path})")
        print(report(accuracy, rates, names))
    table = markdown(summaries, accuracy, names, how, args.strength, len(idx))
    print(table, end="")
    if args.table:
        atomic.write_bytes(args.table, table.encode())
    if args.json:
        record = {"checkpoint": args.checkpoint, "classifier": how, "strength": args.strength, "held_out": len(idx),
                  "names": names, "accuracy": {names[j]: s for j, s in accuracy.items()}, "methods": methods,
                  "summary": summaries}
        atomic.write_bytes(args.json, (json.dumps(record, indent=1) + "\n").encode())
    return 0


def main(argv=None):
    argv = latent.fix_negative_values(sys.argv[1:] if argv is None else list(argv), options=("--strengths",))
    args = build_parser().parse_args(argv)
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
