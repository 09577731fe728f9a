"""The command line of `python -m scratchvae.train`: its flags, and exit codes for how a run ended.

0 done; 2 the user's to fix (one line on stderr, no traceback); 3 training diverged; 128 + the
signal number (130 Ctrl-C, 143 SIGTERM) when a signal stopped it. Under MPI, an error that only one
rank raised aborts the whole job.
"""

import argparse
import sys
import traceback

from scratchvae.architecture import DECODERS, RECONS
from scratchvae.run import distributed
from scratchvae.run.errors import TrainingDiverged, UserError
from scratchvae.run.interrupt import sigterm_as_interrupt
from scratchvae.training import loop
from scratchvae.training.outdir import DEFAULT_OUT
from scratchvae.training.settings import (CROPS, DATA_EPOCHS, SYNTHETIC_BATCH, SYNTHETIC_EPOCHS,
                                          SYNTHETIC_IMAGE_SIZE, SYNTHETIC_LR_DECAY, SYNTHETIC_RECON, Settings)

D = Settings()  # the defaults the help text states


def build_parser():
    p = argparse.ArgumentParser(prog="python -m scratchvae.train",
                                description="Train the seed's face VAE from scratch (NumPy + Numba).")
    p.add_argument("--data", help="folder of images, a .zip of them, or CelebA's layout "
                                  "(default: a built-in set of synthetic faces, no download)")
    p.add_argument("--limit", type=int, help="use only the first N images in sorted order (the seed used 2563)")
    p.add_argument("--image-size", type=int, help=f"square model input size, divisible by 2^blocks "
                                                  f"(default {D.image_size}, {SYNTHETIC_IMAGE_SIZE} on the built-in data)")
    p.add_argument("--crop", choices=list(CROPS),
                   help="center: centre-crop to a square then resize (default); squash: resize ignoring aspect")
    p.add_argument("--epochs", type=int, help=f"total epochs to reach (default {DATA_EPOCHS}, "
                                              f"{SYNTHETIC_EPOCHS} on the built-in data)")
    p.add_argument("--batch-size", type=int, help=f"images per step, at least 2 for BatchNorm (default "
                                                  f"{D.batch_size}, {SYNTHETIC_BATCH} on the built-in data)")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {D.lr:g})")
    p.add_argument("--beta", type=float, help=f"weight of the per-pixel MSE against the KL term "
                                              f"(default {D.beta:g}; not with --recon sigma)")
    p.add_argument("--decoder", choices=list(DECODERS),
                   help="how the decoder doubles the image size: transpose (stride-2 Conv2DTranspose, the seed's, "
                        "default) or resize (nearest UpSampling2D then a 3x3 Conv2D: no checkerboard)")
    p.add_argument("--recon", choices=list(RECONS),
                   help=f"reconstruction term: mse (beta * MSE + KL, the seed's; the default with --data or --beta) "
                        f"or sigma (the sigma-VAE: Gaussian likelihood with its variance at the batch MSE, "
                        f"D/2 log(2 pi MSE) + D/2 + KL, no beta; total and reconstruction are then reported in nats "
                        f"per image; {SYNTHETIC_RECON} is the default on the built-in data)")
    p.add_argument("--lr-decay", type=float, metavar="FACTOR",
                   help=f"multiply the learning rate by FACTOR each epoch, smoothly step by step (default 1: "
                        f"constant; {SYNTHETIC_LR_DECAY:g} on the built-in data)")
    p.add_argument("--kl-warmup", type=int, metavar="EPOCHS",
                   help="raise the KL weight linearly from 0 to 1 over the first EPOCHS epochs, step by step "
                        "(default 0: weight 1 throughout); the reported terms stay unweighted")
    p.add_argument("--z-dim", type=int, help=f"latent dimensions (default {D.z_dim})")
    p.add_argument("--filters", type=int, help=f"channels of every convolution block (default {D.filters})")
    p.add_argument("--blocks", type=int, help=f"stride-2 blocks in encoder and decoder (default {D.blocks})")
    p.add_argument("--seed", type=int, help=f"seed for weights, data order and noise (default {D.seed})")
    p.add_argument("--val-fraction", type=float, help=f"held-out fraction when the data has no partition "
                                                      f"file (default {D.val_fraction:g}, at least one batch)")
    p.add_argument("--bn-batches", type=int,
                   help="after each epoch, measure every BatchNorm's exact mean and variance over this many "
                        "training batches and use them for inference (default: about 2,000 images, at most a quarter "
                        "of the training images; 0 keeps Keras' moving averages only)")
    p.add_argument("--out", help=f"output folder (default {DEFAULT_OUT}, or {DEFAULT_OUT}-2, -3, ... when it "
                                 f"already holds a run)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.npz")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even though --out holds a checkpoint (it is replaced after the first epoch)")
    p.add_argument("--no-prior", action="store_true",
                   help="after the last epoch, do not fit the latent prior (a Gaussian mixture of the training "
                        "images' codes: prior.npz and samples-prior.png; python -m scratchvae.prior fits one later)")
    p.add_argument("--threads", type=int, help="threads for Numba and BLAS (default: all cores)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu (Numba kernels, default) or cuda (numba.cuda kernels; needs scratchvae[cuda] "
                        "and an NVIDIA GPU); weights, activations and Adam state then stay on the GPU")
    p.add_argument("--cache-dir", help="where preprocessed images are cached (default: the user cache folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or model summary")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of mpiexec -n K (needs scratchvae[mpi]); --batch-size "
                        "is the global batch, --threads the cores of each rank (default: a machine's cores "
                        "shared by its ranks)")
    p.add_argument("--rank-timeout", type=float, default=distributed.DEFAULT_TIMEOUT,
                   help=f"with --distributed: abort the job when a rank waits this many seconds for the others "
                        f"(default {distributed.DEFAULT_TIMEOUT:g})")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    comm = distributed.Single()
    try:
        with sigterm_as_interrupt():
            if args.distributed:
                comm = distributed.connect(args.rank_timeout)
            return loop.run(args, comm)
    except KeyboardInterrupt:
        return _fail(comm, "\ninterrupted outside the training loop; no checkpoint was written or changed", 130,
                     agreed=False)
    except UserError as e:
        return _fail(comm, f"error: {e}", 2, getattr(e, "agreed", False))
    except TrainingDiverged as e:
        return _fail(comm, f"error: {e}", 3, getattr(e, "agreed", False))
    except BaseException:
        if comm.size > 1:  # a bug on one rank: show it, and do not leave the others waiting
            traceback.print_exc()
            comm.abort(1)
        raise


def _fail(comm, message, code, agreed):
    """Report an error and return its exit code. Under MPI an error that every rank raised alike is
    printed by rank 0; one that only this rank raised is printed here and aborts the whole job."""
    if comm.size == 1 or agreed:
        if comm.is_root:
            print(message, file=sys.stderr)
        return code
    if comm.is_root or code != 130:
        print(message if comm.is_root else message.replace("error: ", f"error on rank {comm.rank}: ", 1),
              file=sys.stderr)
    comm.abort(code)
