"""The settings that fix a run's trajectory: one typed record, checked where it is made, saved in
the checkpoint and taken from it on --resume.

The model's fields default from VAEConfig. A record read back from a checkpoint is type-checked
field by field against the annotations below before it becomes Settings.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing

from scratchvae.architecture import DECODERS, RECONS
from scratchvae.model import VAEConfig
from scratchvae.run.errors import UserError

_MODEL = VAEConfig()
CROPS = ("center", "squash")
# The built-in data set's run, chosen so that a first run convinces within minutes on 2 cores: the
# cartoons at 64 px (a quarter of the seed's pixels per step), the sigma-VAE objective (the seed's
# 2000 * MSE is a likelihood with a large noise variance, so its reconstructions stay blurred; the
# sigma-VAE returns each cartoon with its eyes and mouth) and the fitted prior for its samples,
# batches of 16, 5 epochs of 160 steps over 2,560 faces with 512 more held out, and a learning rate
# that decays by 0.64 an epoch (0.8 per 80 steps). Each face is seen 5 times: 1,277 faces seen 10 times
# over-fitted (held-out MSE 9-17% above the same measure on training faces at the end, 3-11% after the
# first epoch), and 512 held-out faces, not 67, make that comparison precise to a few per cent.
# Runs with --data keep the seed's recipe.
SYNTHETIC_BATCH = 16
SYNTHETIC_VAL_FRACTION = 1 / 6
SYNTHETIC_EPOCHS = 5
SYNTHETIC_IMAGE_SIZE = 64
SYNTHETIC_RECON = "sigma"
SYNTHETIC_LR_DECAY = 0.64  # per epoch: the last epochs settle instead of ending on a noisy step
DATA_EPOCHS = 10


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every value that decides which weights a run ends with (epochs only say when it stops)."""

    data: str | None = None  # absolute path of a folder, zip or CelebA layout; None: built-in faces
    limit: int | None = None  # the first N images in sorted order
    image_size: int = _MODEL.image_size
    crop: str = "center"
    batch_size: int = 64  # the global batch over all ranks
    lr: float = 1e-3
    beta: float = _MODEL.beta
    z_dim: int = _MODEL.z_dim
    filters: int = _MODEL.filters
    blocks: int = _MODEL.blocks
    seed: int = 0
    val_fraction: float = 0.05
    # Training batches whose exact BatchNorm statistics replace the moving averages after each
    # epoch; None: enough for about 2,000 images; 0: Keras' moving averages only.
    bn_batches: int | None = None
    decoder: str = _MODEL.decoder  # "transpose" (the seed's) or "resize"
    recon: str = _MODEL.recon  # "mse" (beta * MSE, the seed's) or "sigma" (the sigma-VAE; beta unused)
    kl_warmup: int = 0  # epochs over which the KL weight rises linearly from 0 to 1; 0: always 1
    lr_decay: float = 1.0  # the learning rate's factor per epoch, applied smoothly step by step; 1: constant

    def __post_init__(self):
        if self.batch_size < 2:
            raise UserError(f"--batch-size {self.batch_size} is too small: BatchNorm needs at least 2 images "
                            f"per batch")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise UserError(f"--lr {self.lr} must be a positive number")
        if self.beta < 0 or not math.isfinite(self.beta):
            raise UserError(f"--beta {self.beta} must be zero or positive")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit {self.limit} must be at least 1")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction {self.val_fraction} must be between 0 and 1")
        if self.bn_batches is not None and self.bn_batches < 0:
            raise UserError(f"--bn-batches {self.bn_batches} must be zero or more")
        if self.crop not in CROPS:
            raise UserError(f"--crop {self.crop!r} is not one of {', '.join(CROPS)}")
        if self.decoder not in DECODERS:
            raise UserError(f"--decoder {self.decoder!r} is not one of {', '.join(DECODERS)}")
        if self.recon not in RECONS:
            raise UserError(f"--recon {self.recon!r} is not one of {', '.join(RECONS)}")
        if self.kl_warmup < 0:
            raise UserError(f"--kl-warmup {self.kl_warmup} must be zero or more epochs")
        if not 0 < self.lr_decay <= 1:
            raise UserError(f"--lr-decay {self.lr_decay} must be above 0 and at most 1 (1 keeps the rate constant)")
        self.model_config()

    def model_config(self) -> VAEConfig:
        """The model these settings train (VAEConfig's own checks give the one-line error)."""
        try:
            return VAEConfig(image_size=self.image_size, filters=self.filters, blocks=self.blocks,
                             z_dim=self.z_dim, beta=self.beta, decoder=self.decoder, recon=self.recon)
        except ValueError as e:
            raise UserError(str(e)) from None

    def kl_weight(self, epoch: int, step: int, steps: int) -> float:
        """The KL weight of step `step` (0-based) of `steps` in epoch `epoch`: min(1, (epoch +
        (step + 1) / steps) / kl_warmup), a pure function of the step, so a resumed run repeats it;
        exactly 1.0 without warm-up (the plain objective, bit for bit)."""
        if self.kl_warmup == 0:
            return 1.0
        return min(1.0, (epoch + (step + 1) / steps) / self.kl_warmup)

    def lr_at(self, epoch: int, step: int, steps: int) -> float:
        """The learning rate of step `step` (0-based) of `steps` in epoch `epoch`: lr * lr_decay ** (epoch +
        step / steps), a pure function of the step, so a resumed run repeats it; exactly lr without decay."""
        if self.lr_decay == 1:
            return self.lr
        return self.lr * self.lr_decay ** (epoch + step / steps)

    def precise_bn_batches(self, train_images: int | None = None) -> int:
        """How many training batches the BatchNorm statistics are measured on after each epoch (by
        default at most a quarter of the run's `train_images`)."""
        from scratchvae.training.batchnorm import default_batches
        return default_batches(self.batch_size, train_images) if self.bn_batches is None else self.bn_batches

    def to_record(self) -> dict:
        """The JSON-able form a checkpoint stores (and rank 0 sends to the other ranks)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> Settings:
        """Settings from a stored record; ValueError naming the first field that is missing or of
        the wrong type (its value checks then run as for the command line)."""
        hints = typing.get_type_hints(cls)
        record = {**LEGACY, **record}
        for f in dataclasses.fields(cls):
            value = record.get(f.name)
            if f.name not in record or not _is_a(value, hints[f.name]):
                raise ValueError(f"{f.name} = {value!r}")
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls)})


# Fields that checkpoints written before them lack, with the value that reproduces those runs.
LEGACY = {"bn_batches": 0, "decoder": "transpose", "recon": "mse", "kl_warmup": 0, "lr_decay": 1.0}


def _is_a(value, hint) -> bool:
    """isinstance against an annotation such as `int | None`; a float field takes an int, and no
    field takes a bool (JSON's true is not the number 1 here)."""
    kinds = typing.get_args(hint) or (hint,)
    if float in kinds:
        kinds += (int,)
    return not isinstance(value, bool) and isinstance(value, kinds)


def resolve(args, saved: Settings | None = None) -> Settings:
    """The run's settings: the command line over the defaults, or a resumed checkpoint's settings
    (a command-line value that differs from the checkpoint's is refused)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
             if getattr(args, f.name, None) is not None}
    if "data" in given:
        given["data"] = os.path.abspath(given["data"])
    if "beta" in given and given.get("recon", saved.recon if saved else _MODEL.recon) == "sigma":
        raise UserError("--beta has no effect with --recon sigma (the sigma-VAE weighs its reconstruction "
                        "itself): drop --beta")
    if saved is None:
        if "data" not in given:
            given.setdefault("batch_size", SYNTHETIC_BATCH)
            given.setdefault("image_size", SYNTHETIC_IMAGE_SIZE)
            given.setdefault("lr_decay", SYNTHETIC_LR_DECAY)
            given.setdefault("val_fraction", SYNTHETIC_VAL_FRACTION)
            if "beta" not in given:  # --beta asks for the seed's objective
                given.setdefault("recon", SYNTHETIC_RECON)
        return Settings(**given)
    for key, value in given.items():
        if getattr(saved, key) != value:
            raise UserError(f"--resume: the checkpoint was trained with {key} = {getattr(saved, key)!r}, not "
                            f"{value!r}; drop --{key.replace('_', '-')} or train into a new --out")
    return saved


def epochs(given: int | None, s: Settings) -> int:
    """The epoch count to reach: --epochs, or the default for the data."""
    n = given if given is not None else (SYNTHETIC_EPOCHS if s.data is None else DATA_EPOCHS)
    if n < 1:
        raise UserError(f"--epochs {n} must be at least 1")
    return n
