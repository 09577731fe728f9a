"""A run's checkpoint as training state: what it records beside the weights (settings, counters,
history, the partial epoch), how it is written, and the checks before it is resumed.

The checkpoint is a file from disk, so a damaged or foreign one gives a one-line UserError, never
a traceback mid-run; a checkpoint holding a NaN or an infinity is never written.
"""

from __future__ import annotations

import dataclasses
import os

from scratchvae import kernels as K
from scratchvae.model import VAE
from scratchvae.optim import Adam
from scratchvae.run import checkpoint
from scratchvae.run.errors import TrainingDiverged, UserError
from scratchvae.training.settings import Settings

HISTORY_KEYS = {"epoch", "train_total", "val_total", "val_reconstruction", "val_kl"}  # read by loss.png


@dataclasses.dataclass
class Progress:
    """Where a run stands: the counters and history its checkpoint records (JSON-able)."""

    epoch: int = 0  # finished epochs
    step_in_epoch: int = 0  # finished steps of the epoch under way
    step: int = 0  # steps since the run began
    history: list = dataclasses.field(default_factory=list)  # one metrics row per finished epoch
    partial: dict | None = None  # {"sums": ...} of the epoch under way, when stopped mid-epoch
    images: int | None = None  # images in the data set trained on


def save(vae, opt, out, s, progress):
    """Write the resumable checkpoint; never one holding a NaN or an infinity."""
    path = os.path.join(out, "checkpoint.npz")
    adam = {f"adam/{k}": v for k, v in opt.state_dict().items()}
    bad = checkpoint.non_finite({**{k: K.to_host(v) for k, v in {**vae.params(), **vae.state()}.items()}, **adam})
    if bad is not None:
        raise TrainingDiverged(f"{bad} is not finite after {progress.step} steps: {divergence_hint(s, path)}")
    vae.save(path, extra_arrays=adam, meta={"train": s.to_record(), **dataclasses.asdict(progress)})


def divergence_hint(s, path):
    """The likely cause of a non-finite loss, and what became of the checkpoint."""
    kept = f"the last checkpoint {path} is unchanged" if os.path.isfile(path) else "no checkpoint was written"
    cause = f"the learning rate (--lr {s.lr:g})" + ("" if s.recon == "sigma" else f" or --beta ({s.beta:g})")
    return f"{cause} is likely too high; start a new run with a lower one ({kept})"


def load(path, hooks=None):
    """(Settings, Progress, model, optimizer arrays) of the checkpoint at `path`, checked; `hooks`
    (the data-parallel reducer and callback) go to the model."""
    try:
        vae, arrays, meta = VAE.load(path, with_extras=True, **(hooks or {}))
    except (checkpoint.CheckpointError, ValueError, MemoryError) as e:
        raise UserError(f"--resume: {e}") from None
    s, progress = check_resumable(meta, arrays, path)
    return s, progress, vae, arrays


def check_resumable(meta, arrays, path):
    """(Settings, Progress) of a checkpoint about to be resumed, checked field by field."""
    record = meta.get("train")
    if not isinstance(record, dict):
        raise UserError(f"--resume: {path} holds a model but no training state; train into a new --out")
    try:
        s = Settings.from_record(record)
    except ValueError as e:
        raise UserError(f"--resume: {path} has a damaged training state ({e}); train into a new --out") from None
    except UserError as e:
        raise UserError(f"--resume: {path} holds settings that cannot be used ({e}); train into a new --out") \
            from None
    counters = [meta.get(k) for k in ("epoch", "step_in_epoch", "step")]
    history, partial = meta.get("history"), meta.get("partial")
    rows_ok = isinstance(history, list) and len(history) == meta.get("epoch") and all(
        isinstance(r, dict) and set(r) == set(history[0]) and HISTORY_KEYS <= set(r)
        and all(_is_number(v) for v in r.values()) for r in history)
    partial_ok = partial is None or (isinstance(partial, dict) and isinstance(partial.get("sums"), dict)
                                     and all(_is_number(v) for v in partial["sums"].values()))
    if not (all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counters)
            and rows_ok and partial_ok and (partial is None) == (meta["step_in_epoch"] == 0)):
        raise UserError(f"--resume: {path} has a damaged training state (counters, history or partial epoch); "
                        f"train into a new --out")
    bad = checkpoint.non_finite(arrays)
    if bad is not None:
        raise UserError(f"--resume: {path} holds non-finite values in {bad}; it cannot be resumed, "
                        f"train into a new --out")
    images = meta.get("images")
    return s, Progress(*counters, history, partial, images if _is_number(images) else None)


def restore_optimizer(vae, arrays, lr, path):
    """Adam with the checkpoint's moments and step count, checked against the model's parameters."""
    opt = Adam(lr=lr)
    try:
        opt.load_state_dict({k[5:]: v for k, v in arrays.items() if k.startswith("adam/")}, vae.params())
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"--resume: optimizer state in {path} is unusable ({e}); train into a new --out") from None
    return opt


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)
