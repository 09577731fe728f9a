"""python -m scratchvae.train: the main job, written as a recipe.

Load (or synthesise) faces, build the seed's VAE, train it with Adam, and after every epoch write
the checkpoint, reconstructions, samples, metrics and loss curves into --out. Every random draw
derives from (seed, epoch, step), so a resumed run repeats an uninterrupted one exactly. Under
`mpiexec -n K ... --distributed` each rank takes its shard of every global batch; rank 0 writes.
"""

import argparse
import contextlib
import csv
import io
import os
import shlex
import sys
import time
import traceback

import numpy as np

from scratchvae import atomic, checkpoint, device, distributed, images, threads
from scratchvae import kernels as K
from scratchvae.errors import TrainingDiverged, UserError
from scratchvae.interrupt import StopRequest, sigterm_as_interrupt
from scratchvae.model import VAE, VAEConfig
from scratchvae.optim import Adam
from scratchvae.prefetch import ImageReader, Prefetcher

# The built-in data set: sized so the no-argument run finishes within 10 minutes on 2 cores.
SYNTHETIC_COUNT = 1344
SYNTHETIC_EPOCHS = 4
# and with batches of 16 rather than the seed's 64: a 10-minute run then takes ~320 steps instead
# of ~80, enough for Keras' slow BatchNorm moving averages (momentum 0.99) to settle, so the
# inference-mode samples look like faces instead of grey blobs.
SYNTHETIC_BATCH = 16
DATA_EPOCHS = 10
N_SAMPLES, N_RECON = 64, 8
SHOW_SKIPPED = 5  # skipped files named on the console; all of them go to --out/skipped.txt
LOCK_NAME = ".lock"  # held (flock) by the run writing into --out; the kernel releases it when the run ends
# Settings that fix the trajectory: a resumed run must use the checkpoint's values.
TRAJECTORY = ("data", "limit", "image_size", "crop", "batch_size", "lr", "beta", "z_dim", "filters",
              "blocks", "seed", "val_fraction")
DEFAULTS = {"data": None, "limit": None, "image_size": 128, "crop": "center", "batch_size": 64, "lr": 1e-3,
            "beta": 2000.0, "z_dim": 200, "filters": 128, "blocks": 4, "seed": 0, "val_fraction": 0.05}


DEFAULT_OUT = os.path.join("runs", "vae")


def default_out(resume):
    """runs/vae, or the first runs/vae-N without a checkpoint: a fresh default run never replaces one."""
    if resume or not os.path.isfile(os.path.join(DEFAULT_OUT, "checkpoint.npz")):
        return DEFAULT_OUT
    n = 2
    while os.path.isfile(os.path.join(f"{DEFAULT_OUT}-{n}", "checkpoint.npz")):
        n += 1
    print(f"{DEFAULT_OUT} holds an earlier run (continue it with --resume); writing to {DEFAULT_OUT}-{n}")
    return f"{DEFAULT_OUT}-{n}"


def build_parser():
    p = argparse.ArgumentParser(prog="python -m scratchvae.train",
                                description="Train the seed's face VAE from scratch (NumPy + Numba).")
    p.add_argument("--data", help="folder of images, a .zip of them, or CelebA's layout "
                                  "(default: a built-in set of synthetic faces, no download)")
    p.add_argument("--limit", type=int, help="use only the first N images in sorted order (the seed used 2563)")
    p.add_argument("--image-size", type=int, help="square model input size, divisible by 2^blocks (default 128)")
    p.add_argument("--crop", choices=["center", "squash"],
                   help="center: centre-crop to a square then resize (default); squash: resize ignoring aspect")
    p.add_argument("--epochs", type=int, help=f"total epochs to reach (default {DATA_EPOCHS}, "
                                              f"{SYNTHETIC_EPOCHS} on the built-in data)")
    p.add_argument("--batch-size", type=int, help=f"images per step, at least 2 for BatchNorm (default 64, "
                                                  f"{SYNTHETIC_BATCH} on the built-in data)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--beta", type=float, help="weight of the per-pixel MSE against the KL term (default 2000)")
    p.add_argument("--z-dim", type=int, help="latent dimensions (default 200)")
    p.add_argument("--filters", type=int, help="channels of every convolution block (default 128)")
    p.add_argument("--blocks", type=int, help="stride-2 blocks in encoder and decoder (default 4)")
    p.add_argument("--seed", type=int, help="seed for weights, data order and noise (default 0)")
    p.add_argument("--val-fraction", type=float, help="held-out fraction when the data has no partition "
                                                      "file (default 0.05, at least one batch)")
    p.add_argument("--out", help=f"output folder (default {DEFAULT_OUT}, or {DEFAULT_OUT}-2, -3, ... when it "
                                 f"already holds a run)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.npz")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even though --out holds a checkpoint (it is replaced after the first epoch)")
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


# ------------------------------------------------------------------ settings and checks

def resolve_settings(args, saved=None):
    """Merge command-line values with the defaults, or with a resumed checkpoint's settings."""
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    if saved is None:
        settings = {**DEFAULTS, **given}
        if settings["data"] is None and "batch_size" not in given:
            settings["batch_size"] = SYNTHETIC_BATCH
        if settings["data"] is not None:
            settings["data"] = os.path.abspath(settings["data"])
        return settings
    for key, value in given.items():
        if key == "data":
            value = os.path.abspath(value)
        if saved.get(key) != value:
            raise UserError(f"--resume: the checkpoint was trained with {key} = {saved.get(key)!r}, not {value!r}; "
                            f"drop --{key.replace('_', '-')} or train into a new --out")
    return dict(saved)


def check_settings(s, epochs):
    if s["batch_size"] < 2:
        raise UserError(f"--batch-size {s['batch_size']} is too small: BatchNorm needs at least 2 images per batch")
    if epochs < 1:
        raise UserError(f"--epochs {epochs} must be at least 1")
    if s["lr"] <= 0 or not np.isfinite(s["lr"]):
        raise UserError(f"--lr {s['lr']} must be a positive number")
    if s["beta"] < 0 or not np.isfinite(s["beta"]):
        raise UserError(f"--beta {s['beta']} must be zero or positive")
    if s["limit"] is not None and s["limit"] < 1:
        raise UserError(f"--limit {s['limit']} must be at least 1")
    if not 0 < s["val_fraction"] < 1:
        raise UserError(f"--val-fraction {s['val_fraction']} must be between 0 and 1")
    try:
        return VAEConfig(image_size=s["image_size"], filters=s["filters"], blocks=s["blocks"], z_dim=s["z_dim"],
                         beta=s["beta"])
    except ValueError as e:
        raise UserError(str(e)) from None


def lock_out(out):
    """An exclusive lock on --out for this run (an open file descriptor to keep): a second run into
    the same folder stops at once instead of interleaving checkpoints. Released however we end."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock, as before
        return None
    try:
        os.makedirs(out, exist_ok=True)
        fd = os.open(os.path.join(out, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"cannot write to --out {out} ({e.strerror}): choose a folder you can write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"another training run is writing into {out}: let it finish, or choose another --out") \
            from None
    return fd


def prepare_out(out):
    """Create --out and prove it is writable before any long work starts."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-test")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to --out {out} ({e.strerror}): choose a folder you can write to") from None
    stale = [f for f in os.listdir(out) if atomic.is_temp_name(f)]
    for name in stale:
        try:
            os.unlink(os.path.join(out, name))
        except OSError:
            pass
    if stale:
        print(f"removed {len(stale)} temporary file(s) left in {out} by an interrupted write")


def check_resumable(meta, arrays, path):
    """The training state of a checkpoint about to be resumed, checked field by field: it is a file
    from disk, so a damaged or foreign one must give a clear error, not a traceback mid-run."""
    s = meta.get("train")
    if not isinstance(s, dict):
        raise UserError(f"--resume: {path} holds a model but no training state; train into a new --out")
    number, whole = (int, float), int
    kinds = {"data": (str, type(None)), "limit": (whole, type(None)), "image_size": whole, "crop": str,
             "batch_size": whole, "lr": number, "beta": number, "z_dim": whole, "filters": whole, "blocks": whole,
             "seed": whole, "val_fraction": number}
    for key, kind in kinds.items():
        if key not in s or isinstance(s[key], bool) or not isinstance(s[key], kind):
            raise UserError(f"--resume: {path} has a damaged training state ({key} = {s.get(key)!r}); "
                            f"train into a new --out")
    if s["crop"] not in ("center", "squash"):
        raise UserError(f"--resume: {path} has an unknown crop mode {s['crop']!r}; train into a new --out")
    counters = [meta.get(k) for k in ("epoch", "step_in_epoch", "step")]
    history, partial = meta.get("history"), meta.get("partial")
    rows_ok = isinstance(history, list) and len(history) == meta.get("epoch") and all(
        isinstance(r, dict) and set(r) == set(history[0]) and {"epoch", "train_total", "val_total",
                                                               "val_reconstruction", "val_kl"} <= set(r)
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
    return {k: s[k] for k in kinds}


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ------------------------------------------------------------------ data

def synthetic_data(n, size, seed, cache_dir):
    """The built-in faces, drawn once and then memory-mapped from the cache (a fast second start)."""
    from scratchvae import data
    from scratchvae.synthetic import SYNTHETIC_VERSION, synthetic_faces
    folder = cache_dir or data.default_cache_dir()
    path = os.path.join(folder, f"synthetic-v{SYNTHETIC_VERSION}-{n}x{size}px-seed{seed}.npy")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        pass
    pixels = synthetic_faces(n, size, seed=seed)
    try:
        os.makedirs(folder, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, pixels)
        atomic.write_bytes(path, buf.getvalue())
    except OSError:
        pass  # no cache folder: draw them again next time
    return pixels


def load_data(s, cache_dir, quiet, out, root=True):
    """(uint8 images (N,S,S,3), train indices, held-out indices); only the root rank reports."""
    from scratchvae import data
    say = print if root else _silent
    if s["data"] is None:
        n = SYNTHETIC_COUNT if s["limit"] is None else min(s["limit"], SYNTHETIC_COUNT)
        pixels, partition = synthetic_data(n, s["image_size"], s["seed"], cache_dir), None
        say(f"data: {n} built-in synthetic faces at {s['image_size']}x{s['image_size']} (pass --data for real ones)")
    else:
        try:
            found = data.load_images(s["data"], s["image_size"], crop=s["crop"], limit=s["limit"],
                                     cache_dir=cache_dir, progress=not quiet, min_count=2 * s["batch_size"])
        except data.DataError as e:
            raise UserError(str(e)) from None
        pixels, partition = found.images, found.partition
        say(f"data: {len(pixels)} images from {s['data']} at {s['image_size']}x{s['image_size']}"
              + (f"; skipped {len(found.skipped)} file(s) that could not be used:" if found.skipped else ""))
        if root:
            report_skipped(found.skipped, out)
    try:
        train_idx, val_idx = data.split_indices(len(pixels), s["val_fraction"], s["batch_size"], s["seed"], partition)
    except data.DataError as e:
        raise UserError(str(e)) from None
    if len(train_idx) < s["batch_size"]:
        raise UserError(f"only {len(train_idx)} training images for --batch-size {s['batch_size']}: "
                        f"lower the batch size or add images")
    return pixels, train_idx, val_idx


def report_skipped(skipped, out):
    """Name the first few files that could not be used, with the reason; list all in --out/skipped.txt."""
    for name, why in skipped[:SHOW_SKIPPED]:
        print(f"  {name}: {why}")
    if len(skipped) > SHOW_SKIPPED:
        path = os.path.join(out, "skipped.txt")
        atomic.write_bytes(path, "".join(f"{n}\t{w}\n" for n, w in skipped).encode())
        print(f"  ... and {len(skipped) - SHOW_SKIPPED} more, all listed in {path}")


def _silent(*args, **kwargs):
    pass


# ------------------------------------------------------------------ one epoch

def step_noise(seed, epoch, step, shape):
    """The reparameterisation noise of one step: a pure function of (seed, epoch, step)."""
    return np.random.default_rng([seed, epoch, step]).standard_normal(shape, dtype=np.float32)


def epoch_order(seed, epoch, train_idx):
    return np.random.default_rng([seed, epoch, 1 << 30]).permutation(train_idx)


TERMS = ("total", "reconstruction", "kl", "mse", "psnr")


def held_out(vae, reader, val_idx, s, epoch, comm=None):
    """Inference-mode loss terms on the held-out images, z sampled as in training; under MPI each
    rank takes every K-th batch and the sums are shared."""
    comm = comm or distributed.Single()
    sums = np.zeros(len(TERMS) + 1)  # the terms times their image counts, then the count
    for j, start in enumerate(range(0, len(val_idx), s["batch_size"])):
        if j % comm.size != comm.rank:
            continue
        idx = val_idx[start:start + s["batch_size"]]
        eps = step_noise(s["seed"], epoch, (1 << 20) + start, (len(idx), s["z_dim"]))
        terms = vae.evaluate(reader.read(idx), eps, training=False)
        for i, k in enumerate(TERMS):
            sums[i] += terms[k] * len(idx)
        sums[-1] += len(idx)
    comm.sum_(sums)
    result = {k: float(sums[i] / sums[-1]) for i, k in enumerate(TERMS)}
    result["psnr"] = float(10 * np.log10(1 / max(result["mse"], 1e-12)))
    return result


def save_pictures(vae, reader, val_idx, s, history, out):
    shown = reader.read(val_idx[:N_RECON])
    z_mean, _ = vae.encode(shown)
    images.save_rows(os.path.join(out, "reconstructions.png"), [shown, K.to_host(vae.decode(z_mean))],
                     labels=["held-out", "reconstructed"])
    z = np.random.default_rng([s["seed"], 424242]).standard_normal((N_SAMPLES, s["z_dim"]), dtype=np.float32)
    images.save_grid(os.path.join(out, "samples.png"), K.to_host(vae.decode(z)), ncols=8)
    epochs = [h["epoch"] for h in history]
    images.plot_curves(os.path.join(out, "loss.png"),
                       {"train total": [h["train_total"] for h in history],
                        "held-out total": [h["val_total"] for h in history],
                        "held-out reconstruction": [h["val_reconstruction"] for h in history],
                        "held-out KL": [h["val_kl"] for h in history]},
                       title="loss per epoch", log_y=True, x=epochs)
    write_metrics(os.path.join(out, "metrics.csv"), history)


def write_metrics(path, history):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic.write_bytes(path, buf.getvalue().encode())


def save_checkpoint(vae, opt, out, s, epoch, step, global_step, history, partial, n_images):
    """Write the resumable checkpoint; never one holding a NaN or an infinity."""
    path = os.path.join(out, "checkpoint.npz")
    adam = {f"adam/{k}": v for k, v in opt.state_dict().items()}
    bad = checkpoint.non_finite({**{k: K.to_host(v) for k, v in {**vae.params(), **vae.state()}.items()}, **adam})
    if bad is not None:
        raise TrainingDiverged(f"{bad} is not finite after {global_step} steps: {_cause(s, path)}")
    vae.save(path, extra_arrays=adam,
             meta={"epoch": epoch, "step_in_epoch": step, "step": global_step, "train": s,
                   "history": history, "partial": partial, "images": n_images})


def _cause(s, path):
    kept = f"the last checkpoint {path} is unchanged" if os.path.isfile(path) else "no checkpoint was written"
    return (f"the learning rate (--lr {s['lr']:g}) or --beta ({s['beta']:g}) is likely too high; "
            f"start a new run with a lower one ({kept})")


def format_terms(t):
    return f"total {t['total']:.1f} rec {t['reconstruction']:.1f} kl {t['kl']:.1f} mse {t['mse']:.4f} " \
           f"psnr {t['psnr']:.1f}"


# ------------------------------------------------------------------ the recipe

def prepare(args, comm, held):
    """Rank 0's part of the start: the output folder, the checkpoint to resume and the settings.
    Returns what every rank needs (JSON-able); the loaded model and optimizer go into `held`."""
    out = args.out if args.out is not None else default_out(args.resume)
    saved_meta = None
    ckpt_path = os.path.join(out, "checkpoint.npz")
    if args.resume and not os.path.isfile(ckpt_path):
        raise UserError(f"--resume: no checkpoint at {ckpt_path}; run without --resume to start training")
    if not args.resume and os.path.isfile(ckpt_path) and not args.overwrite:
        raise UserError(f"{ckpt_path} already holds a checkpoint: pass --resume to continue it, --overwrite to "
                        f"start again, or choose another --out")
    held["lock"] = lock_out(out)  # kept open (and locked) until this process ends
    if args.resume:
        try:
            vae, arrays, saved_meta = VAE.load(ckpt_path, with_extras=True)
        except (checkpoint.CheckpointError, ValueError, MemoryError) as e:
            raise UserError(f"--resume: {e}") from None
        saved_meta["train"] = check_resumable(saved_meta, arrays, ckpt_path)
    s = resolve_settings(args, saved_meta["train"] if saved_meta else None)
    epochs = args.epochs if args.epochs is not None else (SYNTHETIC_EPOCHS if s["data"] is None else DATA_EPOCHS)
    config = check_settings(s, epochs)
    if s["batch_size"] % comm.size:
        raise UserError(f"--batch-size {s['batch_size']} does not split evenly over {comm.size} ranks: "
                        f"use a multiple of {comm.size}")
    prepare_out(out)
    adam_t = 0
    if saved_meta:
        if vae.config != config:
            raise UserError(f"--resume: {ckpt_path} has another model configuration; train into a new --out")
        opt = Adam(lr=s["lr"])
        try:
            opt.load_state_dict({k[5:]: v for k, v in arrays.items() if k.startswith("adam/")}, vae.params())
        except (KeyError, ValueError, TypeError) as e:
            raise UserError(f"--resume: optimizer state in {ckpt_path} is unusable ({e}); "
                            f"train into a new --out") from None
        if saved_meta["epoch"] >= epochs:
            raise UserError(f"--resume: the checkpoint already has {saved_meta['epoch']} epochs; "
                            f"pass --epochs above that")
        held["vae"], held["opt"], adam_t = vae, opt, opt.t
    meta = None if saved_meta is None else {k: saved_meta.get(k) for k in
                                            ("epoch", "step_in_epoch", "step", "history", "partial", "images")}
    return {"out": out, "s": s, "epochs": epochs, "meta": meta, "adam_t": adam_t}


def run(args, comm=None):
    """The recipe on the chosen device; the kernel backend is restored afterwards."""
    comm = comm or distributed.Single()
    previous = K.active_name()
    try:
        if args.device != "cpu":
            if comm.size > 1:
                raise UserError(f"--device {args.device} with --distributed is not supported yet: use one of them")
            device.use(args.device)  # before any model is built or loaded, so its arrays live there
        return _run(args, comm)
    finally:
        K.use(previous)


def _run(args, comm):
    held = {}
    try:
        return _run_holding(args, comm, held)
    finally:
        if held.get("lock") is not None:
            os.close(held["lock"])  # releases the lock on --out


def _run_holding(args, comm, held):
    say = print if comm.is_root else _silent
    plan = comm.on_root(prepare, args, comm, held)
    out, s, epochs, saved_meta = plan["out"], plan["s"], plan["epochs"], plan["meta"]
    config = check_settings(s, epochs)
    ckpt_path = os.path.join(out, "checkpoint.npz")

    def use_threads():
        try:
            return threads.set_threads(args.threads if args.threads is not None or comm.size == 1
                                       else distributed.default_threads(comm))
        except ValueError as e:
            raise UserError(f"--threads: {e}") from None
    n_threads = comm.agree(use_threads)

    if saved_meta:
        vae, opt = held.get("vae") or VAE(config, seed=s["seed"]), held.get("opt") or Adam(lr=s["lr"])
        if not comm.is_root and plan["adam_t"]:
            opt.t = plan["adam_t"]
            opt.m = {k: np.zeros_like(p) for k, p in vae.params().items()}
            opt.v = {k: np.zeros_like(p) for k, p in vae.params().items()}
        start_epoch, start_step = saved_meta["epoch"], saved_meta["step_in_epoch"]
        global_step, history, partial = saved_meta["step"], saved_meta["history"], saved_meta["partial"]
    else:
        vae, opt = VAE(config, seed=s["seed"]), Adam(lr=s["lr"])
        start_epoch, start_step, global_step, history, partial = 0, 0, 0, [], None
    sync = distributed.DataParallel(vae, comm)
    sync.broadcast(vae.params(), vae.state(), opt.m, opt.v)  # every rank starts from rank 0's weights

    def data_for_this_rank():
        with comm.leader_first():  # one rank per machine decodes into the cache, the others then read it
            return load_data(s, args.cache_dir, args.quiet or not comm.is_root, out, root=comm.is_root)
    pixels, train_idx, val_idx = comm.agree(data_for_this_rank)
    if not args.quiet and not saved_meta:
        say(vae.summary())
    steps = len(train_idx) // s["batch_size"]
    if saved_meta:
        def check_steps():
            if start_step >= steps:
                raise UserError(f"--resume: the checkpoint stopped at step {start_step} of an epoch, but the data "
                                f"now gives {steps} steps per epoch; train into a new --out")
        comm.agree(check_steps)
        if saved_meta.get("images", len(pixels)) != len(pixels):
            say(f"note: the data now holds {len(pixels)} images, the checkpoint was trained on "
                f"{saved_meta['images']}; the resumed run will not repeat an uninterrupted one exactly")
    ranks = f" on each of {comm.size} ranks" if comm.size > 1 else ""
    say(f"training: {len(train_idx)} images, {len(val_idx)} held out, {steps} steps per epoch, "
        f"batch {s['batch_size']}, {n_threads} threads{ranks}; outputs in {out}")

    from tqdm import tqdm
    resume_cmd = f"python -m scratchvae.train --out {shlex.quote(out)} --resume --epochs {epochs}"
    if comm.size > 1:
        resume_cmd = f"mpiexec -n {comm.size} {resume_cmd} --distributed"
    reader = ImageReader(pixels)
    mine = distributed.shard(s["batch_size"], comm)  # this rank's rows of every global batch
    with StopRequest(announce=comm.is_root) as stop:
        def stopping():
            """0, or the exit code once any rank got a signal: every rank stops at the same step."""
            return comm.max(stop.exit_code if stop else 0)

        for epoch in range(start_epoch, epochs):
            order = epoch_order(s["seed"], epoch, train_idx)
            batches = (np.sort(order[step * s["batch_size"]:(step + 1) * s["batch_size"]])[mine]
                       for step in range(start_step, steps))
            sums = dict(partial["sums"]) if partial else {}
            t0, seen = time.perf_counter(), 0
            bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                       disable=args.quiet or not comm.is_root, dynamic_ncols=True, leave=False)
            with Prefetcher(reader.read, batches) as feed:
                for step, x in zip(range(start_step, steps), feed):
                    eps = step_noise(s["seed"], epoch, step, (s["batch_size"], s["z_dim"]))[mine]
                    # Overflow is detected below and reported once, not as NumPy warnings per layer.
                    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                        terms = vae.forward_backward(x, eps)
                        sync.finish_gradients()
                        terms = sync.mean_terms(terms, s["beta"])
                        if not np.isfinite(terms["total"]):
                            raise _everywhere(TrainingDiverged(
                                f"the loss became {terms['total']} at epoch {epoch + 1}, step {step + 1}: "
                                f"{_cause(s, ckpt_path)}"))
                        try:
                            opt.step(vae.params(), vae.grads())
                        except FloatingPointError:
                            raise _everywhere(TrainingDiverged(
                                f"a gradient became non-finite at epoch {epoch + 1}, step {step + 1}: "
                                f"{_cause(s, ckpt_path)}")) from None
                    global_step += 1
                    seen += s["batch_size"]
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + v
                    sums["steps"] = sums.get("steps", 0) + 1
                    bar.update(1)
                    bar.set_postfix_str(f"loss {terms['total']:.1f} kl {terms['kl']:.1f} "
                                        f"{seen / (time.perf_counter() - t0):.1f} img/s")
                    code = stopping()
                    if code and step + 1 < steps:
                        bar.close()
                        if comm.is_root:
                            with _writing(out):
                                save_checkpoint(vae, opt, out, s, epoch, step + 1, global_step, history,
                                                {"sums": sums}, len(pixels))
                        say(f"stopped by {stop.signal_name or 'a signal'} at epoch {epoch + 1}, step {step + 1} "
                            f"of {steps}; checkpoint saved. Resume with: {resume_cmd}")
                        return code
            bar.close()
            elapsed = time.perf_counter() - t0
            n_steps = sums.pop("steps")
            train = {k: v / n_steps for k, v in sums.items()}
            val = held_out(vae, reader, val_idx, s, epoch, comm)
            row = {"epoch": epoch + 1, "step": global_step,
                   **{f"train_{k}": round(v, 6) for k, v in train.items()},
                   **{f"val_{k}": round(v, 6) for k, v in val.items()},
                   "images_per_s": round(seen / elapsed, 2), "seconds": round(elapsed, 1)}
            history.append(row)
            if comm.is_root:
                with _writing(out):
                    save_checkpoint(vae, opt, out, s, epoch + 1, 0, global_step, history, None, len(pixels))
                    save_pictures(vae, reader, val_idx, s, history, out)
            say(f"epoch {epoch + 1}/{epochs}  train {format_terms(train)} | held-out {format_terms(val)} | "
                f"{seen / elapsed:.1f} img/s, {elapsed:.0f} s")
            start_step, partial = 0, None
            code = stopping()
            if code:
                if epoch + 1 < epochs:
                    say(f"stopped by {stop.signal_name or 'a signal'} after epoch {epoch + 1}; checkpoint saved. "
                        f"Resume with: {resume_cmd}")
                else:
                    say(f"stopped by {stop.signal_name or 'a signal'} after the last epoch; training is complete "
                        f"and everything is saved in {out}")
                return code
    say(f"done: {out}/checkpoint.npz, samples.png, reconstructions.png, loss.png, metrics.csv")
    return 0


def _everywhere(error):
    """Mark an error that every rank raises at the same point (it comes from shared values)."""
    error.agreed = True
    return error


@contextlib.contextmanager
def _writing(out):
    """A failed write (disk full, folder removed) is the environment's problem: one line, exit 2."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write into {out} ({e.strerror or e}): free some space or fix the folder; "
                        f"files already written there are intact") from None


def main(argv=None):
    args = build_parser().parse_args(argv)
    comm = distributed.Single()
    try:
        with sigterm_as_interrupt():
            if args.distributed:
                comm = distributed.connect(args.rank_timeout)
            return run(args, comm)
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


if __name__ == "__main__":
    sys.exit(main())
