"""The start of a run, on rank 0: which --out, a fresh run or a resumed one, the settings and the
epoch count, all checked before any long work begins.

The result is JSON-able, for the other ranks; a resumed model and optimizer stay on rank 0 in `held`.
"""

import dataclasses
import os

from scratchvae.run.errors import UserError
from scratchvae.training import outdir, resume, settings


def prepare(args, comm, held):
    """{"out", "s" (a Settings record), "epochs", "progress" (None for a fresh run), "adam_t"}; the
    lock on --out goes into held["lock"], a resumed model and optimizer into held["vae"], held["opt"]
    (built with the data-parallel hooks in held["hooks"])."""
    check_data(args.data)  # before an output folder is chosen or named: a typo leaves nothing behind
    out = args.out if args.out is not None else outdir.default_out(args.resume)
    ckpt_path = os.path.join(out, outdir.CHECKPOINT)
    if args.resume and not os.path.isfile(ckpt_path):
        raise UserError(f"--resume: no checkpoint at {ckpt_path}; run without --resume to start training")
    if not args.resume and os.path.isfile(ckpt_path) and not args.overwrite:
        raise UserError(f"{ckpt_path} already holds a checkpoint: pass --resume to continue it, --overwrite to "
                        f"start again, or choose another --out")
    if not args.resume:
        check(settings.resolve(args), args, comm)  # before --out is created: a bad flag leaves nothing
    held["out"], held["created"] = out, outdir.first_missing(out)
    held["lock"] = outdir.lock_out(out)  # kept open (and locked) until the run ends
    saved = progress = None
    if args.resume:
        saved, progress, vae, arrays = resume.load(ckpt_path, held.get("hooks"))
    s = settings.resolve(args, saved)
    epochs = check(s, args, comm)
    outdir.prepare_out(out)
    adam_t = 0
    if args.resume:
        if vae.config != s.model_config():
            raise UserError(f"--resume: {ckpt_path} has another model configuration; train into a new --out")
        opt = resume.restore_optimizer(vae, arrays, s.lr, ckpt_path)
        if progress.epoch >= epochs:
            raise UserError(f"--resume: the checkpoint already has {progress.epoch} epochs; "
                            f"pass --epochs above that")
        held["vae"], held["opt"], adam_t = vae, opt, opt.t
    return {"out": out, "s": s.to_record(), "epochs": epochs, "adam_t": adam_t,
            "progress": None if progress is None else dataclasses.asdict(progress)}


def check(s, args, comm):
    """The checks of the settings that need no file: the epoch count to reach."""
    epochs = settings.epochs(args.epochs, s)
    if s.batch_size % comm.size:
        raise UserError(f"--batch-size {s.batch_size} does not split evenly over {comm.size} ranks: "
                        f"use a multiple of {comm.size}")
    check_data(s.data)
    return epochs


def check_data(data):
    """Refuse a --data that does not exist, in one line."""
    if data is not None and not os.path.exists(data):
        raise UserError(f"{data}: no such file or folder; pass --data a folder of images, a .zip of images, "
                        f"or CelebA's folder")
