"""The training recipe: start, build (threads, model, optimizer, data), then per epoch the steps,
the end of the epoch (evaluate, save) and a stop when a signal asked for one; after the last epoch,
the latent prior fitted to the training codes.

Every rank runs this; rank 0 alone writes. `run` is the recipe; each of its parts is one function
below, in the order it runs.
"""

import dataclasses
import os
import shlex
import time

import numpy as np
from tqdm import tqdm

from scratchvae import kernels as K
from scratchvae.data.prefetch import ImageReader, Prefetcher
from scratchvae.kernels import threads
from scratchvae.latent import prior, vectors
from scratchvae.model import VAE
from scratchvae.optim import Adam
from scratchvae.run import device, distributed
from scratchvae.run.errors import TrainingDiverged, UserError
from scratchvae.run.interrupt import StopRequest
from scratchvae.training import batchnorm, datasets, draws, evaluation, outdir, resume, start
from scratchvae.training.settings import Settings

PRIOR_IMAGES = 20_000  # codes encoded for the prior at the end: a few minutes, a small part of a CelebA epoch
PRIOR_FILE = "prior.npz"


@dataclasses.dataclass
class Job:
    """What the steps of one run share: fixed once built, except `progress`."""

    s: Settings
    epochs: int
    out: str
    quiet: bool
    comm: object
    vae: VAE
    opt: Adam
    sync: distributed.DataParallel
    reader: ImageReader
    train_idx: np.ndarray
    val_idx: np.ndarray
    steps: int  # per epoch
    progress: resume.Progress

    @property
    def say(self):
        return print if self.comm.is_root else datasets.silent

    @property
    def mine(self):
        """This rank's rows of every global batch."""
        return distributed.shard(self.s.batch_size, self.comm)

    @property
    def resume_command(self):
        cmd = f"python -m scratchvae.train --out {shlex.quote(self.out)} --resume --epochs {self.epochs}"
        return f"mpiexec -n {self.comm.size} {cmd} --distributed" if self.comm.size > 1 else cmd


def run(args, comm=None):
    """The recipe on the chosen device; 0 when training is complete, else the exit code of the
    signal that stopped it. The kernel backend is restored and --out unlocked afterwards."""
    comm = comm or distributed.Single()
    previous, held = K.active_name(), {}
    try:
        if args.device != "cpu":
            if comm.size > 1:
                raise UserError(f"--device {args.device} with --distributed is not supported yet: use one of them")
            device.use(args.device)  # before any model is built or loaded, so its arrays live there
        sync = distributed.DataParallel(comm)
        held["hooks"] = sync.model_hooks()  # the model takes them at construction
        plan = comm.on_root(start.prepare, args, comm, held)
        job = build(args, comm, plan, held, sync)
        with StopRequest(announce=comm.is_root) as stop:
            for epoch in range(job.progress.epoch, job.epochs):
                code, trained = train_epoch(job, epoch, stop)
                if code:
                    return code  # stopped mid-epoch; the checkpoint holds the partial epoch
                end_epoch(job, epoch, *trained)
                code = stop_code(job, stop)
                if code:
                    return stopped_after_epoch(job, epoch, stop, code)
            fitted = False
            if not getattr(args, "no_prior", False) and job.comm.is_root:
                fitted = fit_prior(job, stop)
                if not fitted:
                    return stopped_fitting_prior(job, stop)
        with_prior = f" samples-prior.png, {PRIOR_FILE}," if fitted else ""
        job.say(f"done: {job.out}/checkpoint.npz, samples.png,{with_prior} reconstructions.png, loss.png, metrics.csv")
        return 0
    except BaseException:
        if comm.is_root:
            outdir.remove_if_unused(held.get("created"), held.get("out"))  # stopped before writing anything
        raise
    finally:
        if held.get("lock") is not None:
            os.close(held["lock"])  # releases the lock on --out
        K.use(previous)


# ------------------------------------------------------------------ build

def build(args, comm, plan, held, sync):
    """Threads, model, optimizer (every rank from rank 0's weights) and data: the Job to train."""
    s, out, progress = Settings(**plan["s"]), plan["out"], plan["progress"]
    n_threads = comm.agree(use_threads, args, comm)
    vae, opt = model_and_optimizer(s, comm, held, plan["adam_t"])
    sync.broadcast(vae.params(), vae.state(), opt.m, opt.v)  # every rank starts from rank 0's weights

    def data_for_this_rank():
        with comm.leader_first():  # one rank per machine decodes into the cache, the others then read it
            return datasets.load_data(s, args.cache_dir, args.quiet or not comm.is_root, out, root=comm.is_root)
    pixels, train_idx, val_idx = comm.agree(data_for_this_rank)
    job = Job(s, plan["epochs"], out, args.quiet, comm, vae, opt, sync, ImageReader(pixels), train_idx, val_idx,
              len(train_idx) // s.batch_size, resume.Progress(**progress) if progress else resume.Progress())
    if progress:
        check_resumed_data(job, len(pixels))
    elif not args.quiet:
        job.say(vae.summary())
    job.progress.images = len(pixels)
    ranks = f" on each of {comm.size} ranks" if comm.size > 1 else ""
    job.say(f"training: {len(train_idx)} images, {len(val_idx)} held out, {job.steps} steps per epoch, "
            f"batch {s.batch_size}, {n_threads} thread{'s' if n_threads != 1 else ''}{ranks}; outputs in {out}")
    note = batchnorm.unsettled_warning(s.precise_bn_batches(len(train_idx)), job.steps * job.epochs,
                                       vae.config.bn_momentum)
    if note:
        job.say(note)
    return job


def use_threads(args, comm):
    """Set the threads of Numba and BLAS; returns how many."""
    try:
        return threads.set_threads(args.threads if args.threads is not None or comm.size == 1
                                   else distributed.default_threads(comm))
    except ValueError as e:
        raise UserError(f"--threads: {e}") from None


def model_and_optimizer(s, comm, held, adam_t):
    """A fresh model and Adam; on a resumed run, rank 0's loaded ones, and on the other ranks
    buffers of the right shapes for the broadcast of rank 0's values that follows."""
    if "vae" in held:
        return held["vae"], held["opt"]
    vae, opt = VAE(s.model_config(), seed=s.seed, **held["hooks"]), Adam(lr=s.lr)
    if adam_t:
        opt.t = adam_t
        opt.m = {k: np.zeros_like(p) for k, p in vae.params().items()}
        opt.v = {k: np.zeros_like(p) for k, p in vae.params().items()}
    return vae, opt


def check_resumed_data(job, n_images):
    """The data must still give the step the checkpoint stopped at; a changed count is only noted."""
    def check_steps():
        if job.progress.step_in_epoch >= job.steps:
            raise UserError(f"--resume: the checkpoint stopped at step {job.progress.step_in_epoch} of an epoch, "
                            f"but the data now gives {job.steps} steps per epoch; train into a new --out")
    job.comm.agree(check_steps)
    if job.progress.images is not None and job.progress.images != n_images:
        job.say(f"note: the data now holds {n_images} images, the checkpoint was trained on "
                f"{job.progress.images}; the resumed run will not repeat an uninterrupted one exactly")


# ------------------------------------------------------------------ one epoch

def train_epoch(job, epoch, stop):
    """The epoch's remaining steps: (0, (sums, images, seconds)) when it ran to its end, or
    (exit code, None) when a signal stopped it (the partial epoch is then saved)."""
    s, p, first = job.s, job.progress, job.progress.step_in_epoch
    order = draws.epoch_order(s.seed, epoch, job.train_idx)
    batches = (np.sort(order[step * s.batch_size:(step + 1) * s.batch_size])[job.mine]
               for step in range(first, job.steps))
    sums = dict(p.partial["sums"]) if p.partial else {}
    t0, seen = time.perf_counter(), 0
    bar = tqdm(total=job.steps, initial=first, desc=f"epoch {epoch + 1}/{job.epochs}", unit="step",
               disable=job.quiet or not job.comm.is_root, dynamic_ncols=True, leave=False)
    with Prefetcher(job.reader.read, batches) as feed:
        for step, x in zip(range(first, job.steps), feed):
            weight = s.kl_weight(epoch, step, job.steps)
            terms = train_step(job, x, epoch, step, weight)
            p.step, p.step_in_epoch = p.step + 1, step + 1
            seen += s.batch_size
            if s.kl_warmup:  # its mean over the epoch becomes metrics.csv's kl_weight column
                terms = {**terms, "kl_weight": weight}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            sums["steps"] = sums.get("steps", 0) + 1
            bar.update(1)
            bar.set_postfix_str(f"loss {terms['total']:.1f} kl {terms['kl']:.1f} "
                                f"{seen / (time.perf_counter() - t0):.1f} img/s")
            code = stop_code(job, stop)
            if code and step + 1 < job.steps:
                bar.close()
                stopped_mid_epoch(job, epoch, sums, stop)
                return code, None
    bar.close()
    return 0, (sums, seen, time.perf_counter() - t0)


def train_step(job, x, epoch, step, kl_weight=1.0):
    """One optimizer step on this rank's shard `x` of the global batch, the KL term weighted by
    `kl_weight` (a warm-up); the batch's (unweighted) loss terms."""
    s = job.s
    eps = draws.step_noise(s.seed, epoch, step, (s.batch_size, job.vae.config.z_dim))[job.mine]
    # Overflow is detected below and reported once, not as NumPy warnings per layer.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        terms = job.vae.forward_backward(x, eps, kl_weight)
        job.sync.finish_gradients(job.vae)
        terms = job.sync.mean_terms(terms, job.vae.config)
        if not np.isfinite(terms["total"]):
            raise diverged(job, f"the loss became {terms['total']}", epoch, step)
        job.opt.lr = s.lr_at(epoch, step, job.steps)
        try:
            job.opt.step(job.vae.params(), job.vae.grads())
        except FloatingPointError:
            raise diverged(job, "a gradient became non-finite", epoch, step) from None
    return terms


def diverged(job, what, epoch, step):
    """The error of a non-finite step; every rank raises it at the same step (it comes from shared
    values), so it is marked as agreed and no rank aborts the others."""
    hint = resume.divergence_hint(job.s, os.path.join(job.out, outdir.CHECKPOINT))
    error = TrainingDiverged(f"{what} at epoch {epoch + 1}, step {step + 1}: {hint}")
    error.agreed = True
    return error


def end_epoch(job, epoch, sums, seen, elapsed):
    """After the last step of an epoch: held-out terms, the metrics row, checkpoint and pictures."""
    p = job.progress
    n_steps = sums.pop("steps")
    train = {k: v / n_steps for k, v in sums.items()}
    kl_weight = train.pop("kl_weight", None)  # only with --kl-warmup: a run keeps one column order
    # Exact BatchNorm statistics (after every epoch, the last one included), so that held-out
    # evaluation, the pictures, the checkpoint and everything made from it use them.
    batchnorm.measure(job.vae, job.reader, job.train_idx, job.s.seed, epoch, job.s.batch_size,
                      job.s.precise_bn_batches(len(job.train_idx)), job.mine,
                      progress=not job.quiet and job.comm.is_root)
    val = evaluation.held_out(job.vae, job.reader, job.val_idx, job.s, epoch, job.comm)
    alike = None  # a run resumed from a checkpoint written before this column keeps its columns
    if not p.history or "train_inference_mse" in p.history[0]:
        alike = evaluation.held_out(job.vae, job.reader, evaluation.training_alike(job.train_idx, len(job.val_idx)),
                                    job.s, epoch, job.comm)["mse"]
    p.history.append(evaluation.metrics_row(epoch + 1, p.step, train, val, seen, elapsed, kl_weight, alike))
    p.epoch, p.step_in_epoch, p.partial = epoch + 1, 0, None
    if job.comm.is_root:
        with outdir.writing(job.out):
            resume.save(job.vae, job.opt, job.out, job.s, p)
            evaluation.save_pictures(job.vae, job.reader, job.val_idx, job.s, p.history, job.out)
    job.say(f"epoch {epoch + 1}/{job.epochs}  train {evaluation.format_terms(train)} | "
            f"held-out {evaluation.format_terms(val)}"
            + ("" if alike is None else f" (training images alike: mse {alike:.4f})")
            + f" | {seen / elapsed:.1f} img/s, {elapsed:.0f} s")


# ------------------------------------------------------------------ the end of the run

def fit_prior(job, stop):
    """Rank 0, after the last epoch: a Gaussian mixture fitted to the codes of (at most PRIOR_IMAGES
    of) the training images, written as prior.npz, and samples-prior.png drawn from it; its own
    seeded draws, so training is untouched. python -m scratchvae.prior CHECKPOINT --limit
    PRIOR_IMAGES repeats it. False when a signal stopped it (nothing is written then)."""
    t0 = time.perf_counter()
    idx = prior.pick(job.train_idx, PRIOR_IMAGES, job.s.seed)
    components = min(prior.DEFAULT_COMPONENTS, prior.fitted_count(len(idx)))
    try:
        codes = prior.encode(job.vae, job.reader, idx, quiet=job.quiet, stop=stop)
        fitted = prior.fit_or_one_gaussian(codes, components, job.s.seed, vectors.model_identity(job.vae),
                                           job.quiet, stop)
    except prior.Interrupted:
        return False
    with outdir.writing(job.out):
        prior.save(os.path.join(job.out, PRIOR_FILE), fitted)
        evaluation.save_prior_samples(job.vae, fitted, job.s, job.out)
    job.say(f"prior: {prior.count(fitted.components, 'component')} fitted to the codes of {fitted.images} training "
            f"images ({fitted.stopped}), log-likelihood per held-out code {fitted.loglik_heldout:.1f} against "
            f"{fitted.loglik_standard:.1f} under N(0, I); {PRIOR_FILE}, samples-prior.png in "
            f"{time.perf_counter() - t0:.0f} s")
    return True


# ------------------------------------------------------------------ stopping

def stop_code(job, stop):
    """0, or the exit code once any rank got a signal: every rank stops at the same step."""
    return job.comm.max(stop.exit_code if stop else 0)


def stopped_mid_epoch(job, epoch, sums, stop):
    """Save the partial epoch (its step count and running sums) and say how to resume."""
    p = job.progress
    p.partial = {"sums": sums}
    if job.comm.is_root:
        with outdir.writing(job.out):
            resume.save(job.vae, job.opt, job.out, job.s, p)
    job.say(f"stopped by {stop.signal_name or 'a signal'} at epoch {epoch + 1}, step {p.step_in_epoch} "
            f"of {job.steps}; checkpoint saved. Resume with: {job.resume_command}")


def stopped_fitting_prior(job, stop):
    """The signal came after the last epoch was saved, while the prior was fitted: it was dropped."""
    job.say(f"stopped by {stop.signal_name or 'a signal'} while fitting the latent prior; training is complete "
            f"and saved in {job.out}. Fit the prior with: python -m scratchvae.prior "
            f"{shlex.quote(os.path.join(job.out, outdir.CHECKPOINT))} --limit {PRIOR_IMAGES}")
    return stop.exit_code


def stopped_after_epoch(job, epoch, stop, code):
    """The signal came during the epoch's last step or its saving: everything is saved already."""
    if epoch + 1 < job.epochs:
        job.say(f"stopped by {stop.signal_name or 'a signal'} after epoch {epoch + 1}; checkpoint saved. "
                f"Resume with: {job.resume_command}")
    else:
        job.say(f"stopped by {stop.signal_name or 'a signal'} after the last epoch; training is complete "
                f"and everything is saved in {job.out}")
    return code

