"""python -m scratchvae.prior: a Gaussian mixture fitted to the codes (z = z_mean, inference mode) of a
run's training images, to draw faces from instead of N(0, I), and the .npz file that carries it.

The file holds numeric and fixed-width string arrays only, so `np.load(allow_pickle=False)` reads it
anywhere, and it names the checkpoint it belongs to by the identity the attribute vectors carry
(scratchvae.latent.vectors.checkpoint_identity). Draw from it with scratchvae.latent.mixture.draw.
"""

import argparse
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from scratchvae import kernels as K
from scratchvae.kernels import threads
from scratchvae.latent import mixture, vectors
from scratchvae.run import atomic
from scratchvae.run.errors import UserError, run_command

FORMAT, VERSION = "scratchvae-latent-prior", 1
DEFAULT_COMPONENTS = 10
ENCODE_BATCH = 64
PICK_STREAM = 0x9B10  # the seeded choice of images under --limit draws from default_rng([seed, PICK_STREAM])


class Interrupted(Exception):
    """A stop was asked for (a signal during training's fit); nothing was written."""


@dataclass
class Prior:
    weights: np.ndarray  # (K,) float64
    means: np.ndarray  # (K, z_dim) float64
    cholesky: np.ndarray  # (K, z_dim, z_dim) float64 lower-triangular factors of the covariances
    covariance: str  # "full" or "diag"
    loglik_train: float  # mean log-likelihood per code of the codes fitted
    loglik_heldout: float  # mean per code of the 10% held out of the fit, or of auto's check fit (fit_codes)
    loglik_standard: float  # mean per code of all the encoded codes under N(0, I), for comparison
    images: int  # codes fitted
    identity: str  # checkpoint_identity of the model the codes came from (the file's checkpoint_sha256)
    iterations: int = 0  # EM updates of the fit kept
    stopped: str = ""  # why its EM stopped

    @property
    def components(self):
        return len(self.weights)

    @property
    def z_dim(self):
        return self.means.shape[1]


# ------------------------------------------------------------------ fitting

def count(n, noun):
    """`1 component`, `10 components`."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def pick(idx, limit, seed):
    """At most `limit` of the indices: all of them, or a seeded random choice, sorted."""
    idx = np.asarray(idx, np.int64)
    if limit is None or limit >= len(idx):
        return idx
    return np.sort(np.random.default_rng([seed, PICK_STREAM]).choice(idx, limit, replace=False))


def fitted_count(n):
    """How many of n codes a fit with a fixed K is fitted to (the rest are held out)."""
    return n - len(mixture.held_out_split(n, 0)[1]) if n >= 2 else 0


def encode(vae, reader, idx, batch_size=ENCODE_BATCH, quiet=True, stop=None):
    """z_mean of reader.read(idx) in inference mode, (len(idx), z_dim) float32, batch by batch;
    Interrupted as soon as `stop` is truthy."""
    from tqdm import tqdm
    out = np.empty((len(idx), vae.config.z_dim), np.float32)
    with tqdm(total=len(idx), desc="encoding", unit="img", disable=quiet, leave=False, dynamic_ncols=True) as bar:
        for start in range(0, len(idx), batch_size):
            if stop:
                raise Interrupted
            stop_at = min(len(idx), start + batch_size)
            out[start:stop_at] = K.to_host(vae.encode(reader.read(idx[start:stop_at]))[0])
            bar.update(stop_at - start)
    return out


def standard_loglik(codes):
    """Mean log density per code under N(0, I)."""
    z = np.asarray(codes, np.float64)
    return float(np.mean(-0.5 * (z.shape[1] * mixture.LOG_2PI + np.sum(z * z, axis=1))))


def fit_codes(codes, components=DEFAULT_COMPONENTS, covariance="full", seed=0, restarts=3, max_iter=200,
              identity="", quiet=True, stop=None):
    """(Prior, report lines) from codes. With a fixed K the mixture is fitted to a seeded 90% of the
    codes and loglik_heldout is the mean over the other 10% (held out of the fit itself); with
    components="auto", every candidate K is fitted to those 90%, the best on the 10% is refitted to
    all the codes, and loglik_heldout is that K's held-out value (held out of its check fit)."""
    from tqdm import tqdm
    codes = np.asarray(codes, np.float64)
    bar = tqdm(desc="EM", unit="update", disable=quiet, leave=False, dynamic_ncols=True)

    def each(run, it, ll):
        if stop:
            raise Interrupted
        bar.update(1)
        bar.set_postfix_str(f"restart {run + 1}/{restarts} log-lik {ll:.3f}")
    try:
        if components == "auto":
            sel = mixture.select(codes, covariance=covariance, seed=seed, restarts=restarts, max_iter=max_iter,
                                 on_iteration=each)
            mix, heldout, fitted = sel.mixture, sel.heldout, len(codes)
            lines = [f"{'K':>4} {'fitted':>12} {'held out':>12}"]
            lines += [f"{k:>4} {tr:>12.3f} {ho:>12.3f}" + ("  <- chosen" if k == sel.chosen else "")
                      for k, tr, ho in sel.table]
            held = len(codes) - len(mixture.held_out_split(len(codes), seed)[0])
            lines.append(f"chose {count(sel.chosen, 'component')} by the log-likelihood per code of {held} held-out "
                         f"codes, then refitted them to all {len(codes)} codes")
        else:
            fit_idx, held_idx = mixture.held_out_split(len(codes), seed)
            mix = mixture.fit(codes[fit_idx], components, covariance, seed, restarts, max_iter=max_iter,
                              on_iteration=each)
            heldout = float(np.mean(mixture.log_likelihood(mix, codes[held_idx])))
            fitted, lines = len(fit_idx), []
    finally:
        bar.close()
    fitted_prior = Prior(mix.weights, mix.means, mix.cholesky, covariance, float(mix.loglik), heldout,
                         standard_loglik(codes), int(fitted), identity, mix.iterations, mix.stopped)
    dropped = f", {mix.dropped} emptied and removed" if mix.dropped else ""
    lines.append(f"EM: {count(mix.components, 'component')} ({covariance} covariance{dropped}), the best of "
                 f"{count(restarts, 'start')}, {mix.stopped} after {count(mix.iterations, 'update')}")
    lines.append(f"log-likelihood per code: {fitted_prior.loglik_train:.3f} fitted, {heldout:.3f} held out; "
                 f"{fitted_prior.loglik_standard:.3f} under N(0, I)")
    per = fitted / mix.components
    if covariance == "full" and per < codes.shape[1]:
        lines.append(f"note: about {per:.0f} codes per component for {codes.shape[1]} dimensions: each covariance "
                     f"rests on the floor outside its codes' span; --components auto compares fewer on held-out codes")
    return fitted_prior, lines


def fit_or_one_gaussian(codes, components=DEFAULT_COMPONENTS, seed=0, identity="", quiet=True, stop=None):
    """The Prior of fit_codes(codes, components), or of one Gaussian where that has the higher
    log-likelihood on the same held-out codes (few codes per component over-fit). What training fits
    at the end of a run; --components 1 and K repeat the two fits."""
    fitted, _ = fit_codes(codes, components, seed=seed, identity=identity, quiet=quiet, stop=stop)
    if components == 1:
        return fitted
    single, _ = fit_codes(codes, 1, seed=seed, identity=identity, quiet=quiet, stop=stop)
    return single if single.loglik_heldout > fitted.loglik_heldout else fitted


def fit_for_model(vae, reader, idx, batch_size=ENCODE_BATCH, components=DEFAULT_COMPONENTS, covariance="full",
                  seed=0, restarts=3, max_iter=200, identity=None, quiet=True, stop=None):
    """(Prior, report lines): encode reader.read(idx) and fit_codes them. `identity` defaults to the
    model's own (vectors.model_identity); `stop` (truthy to stop) raises Interrupted between batches
    and EM updates."""
    codes = encode(vae, reader, idx, batch_size, quiet, stop)
    identity = vectors.model_identity(vae) if identity is None else identity
    return fit_codes(codes, components, covariance, seed, restarts, max_iter, identity, quiet, stop)


# ------------------------------------------------------------------ the file

def save(path, p):
    """Write the prior file atomically (temporary name, then rename)."""
    buf = io.BytesIO()
    np.savez(buf, format=np.array(FORMAT), version=np.array(VERSION, np.int64),
             weights=np.asarray(p.weights, np.float64), means=np.asarray(p.means, np.float64),
             cholesky=np.asarray(p.cholesky, np.float64), covariance=np.array(p.covariance),
             loglik_train=np.array(p.loglik_train, np.float64), loglik_heldout=np.array(p.loglik_heldout, np.float64),
             loglik_standard=np.array(p.loglik_standard, np.float64), images=np.array(p.images, np.int64),
             checkpoint_sha256=np.array(p.identity), z_dim=np.array(p.z_dim, np.int64),
             iterations=np.array(p.iterations, np.int64), stopped=np.array(p.stopped))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_bytes(path, buf.getvalue())


def load(path, identity=None, z_dim=None):
    """The Prior in a file; with `identity` or `z_dim`, refuse a file made for another model."""
    redo = "fit it again with python -m scratchvae.prior"
    if not os.path.isfile(path):
        raise UserError(f"no prior file at {path}: fit one with python -m scratchvae.prior CHECKPOINT")
    try:
        with np.load(path, allow_pickle=False) as f:
            raw = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - zipfile and the .npy parser raise many kinds on damage
        raise UserError(f"{path} is not a readable prior file ({type(e).__name__}); {redo}") from None
    try:
        if str(raw.get("format", "")) != FORMAT or int(raw.get("version", -1)) != VERSION:
            raise UserError(f"{path} is not a scratchvae latent-prior file (version {VERSION})")
        p = Prior(raw["weights"].astype(np.float64), raw["means"].astype(np.float64),
                  raw["cholesky"].astype(np.float64), str(raw["covariance"]), float(raw["loglik_train"]),
                  float(raw["loglik_heldout"]), float(raw["loglik_standard"]), int(raw["images"]),
                  str(raw["checkpoint_sha256"]), int(raw.get("iterations", 0)), str(raw.get("stopped", "")))
        stored_dim = int(raw["z_dim"])
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path} is a damaged prior file ({type(e).__name__}: {e}); {redo}") from None
    problem = _damage(p, stored_dim)
    if problem:
        raise UserError(f"{path} is a damaged prior file ({problem}); {redo}")
    if z_dim is not None and p.z_dim != z_dim:
        raise UserError(f"{path} holds a prior of {p.z_dim}-dimensional codes but the model's z has {z_dim}: "
                        f"fit a prior for this model with python -m scratchvae.prior")
    if identity is not None and p.identity != identity:
        raise UserError(f"{path} was made for another checkpoint (identity {p.identity[:12]}…, this one "
                        f"{identity[:12]}…): fit a prior for this model with python -m scratchvae.prior")
    return p


def _damage(p, stored_dim):
    """What is wrong with a loaded prior's arrays, or None."""
    k = len(p.weights) if p.weights.ndim == 1 else -1
    if k < 1 or p.means.ndim != 2 or p.means.shape[0] != k or p.cholesky.shape != (k, *p.means.shape[1:2] * 2):
        return f"shapes {p.weights.shape}, {p.means.shape}, {p.cholesky.shape} do not fit together"
    if stored_dim != p.z_dim or p.covariance not in mixture.COVARIANCES:
        return "inconsistent z_dim or covariance"
    if not all(np.all(np.isfinite(a)) for a in (p.weights, p.means, p.cholesky)):
        return "non-finite values"
    if np.any(p.weights < 0) or not p.weights.sum() > 0:
        return "weights must be zero or more with a positive sum"
    diag = np.diagonal(p.cholesky, axis1=1, axis2=2)
    if np.any(np.triu(p.cholesky, 1)) or np.any(diag <= 0):
        return "factors must be lower-triangular with a positive diagonal"
    return None


# ------------------------------------------------------------------ the command

def parse_components(text):
    """--components: a whole number of at least 1, or auto."""
    if str(text) == "auto":
        return "auto"
    try:
        k = int(text)
    except ValueError:
        raise UserError(f"--components {text!r}: give a whole number of components or auto") from None
    if k < 1:
        raise UserError(f"--components {k}: use at least 1 component")
    return k


def build_parser():
    p = argparse.ArgumentParser(prog="python -m scratchvae.prior",
                                description="Fit a Gaussian mixture to the codes of a run's training images: a "
                                            "latent prior to sample faces from instead of N(0, I).")
    p.add_argument("checkpoint", help="a checkpoint.npz written by python -m scratchvae.train")
    p.add_argument("--data", help="the run's images (default: the source the checkpoint was trained on; any "
                                  "other folder or zip is used whole)")
    p.add_argument("--components", default=str(DEFAULT_COMPONENTS),
                   help=f"mixture components, or auto: the best of {', '.join(map(str, mixture.CANDIDATES))} on "
                        f"held-out codes (default {DEFAULT_COMPONENTS})")
    p.add_argument("--covariance", choices=mixture.COVARIANCES, default="full",
                   help="full or diagonal covariance per component (default full)")
    p.add_argument("--limit", type=int, help="encode at most N images, a seeded random choice of the training images")
    p.add_argument("--batch-size", type=int, default=ENCODE_BATCH, help=f"images per batch (default {ENCODE_BATCH})")
    p.add_argument("--seed", type=int, help="seed for the image choice, the held-out codes and EM's starts "
                                            "(default: the run's seed, as training's own fit uses)")
    p.add_argument("--restarts", type=int, default=3, help="EM runs from different starts; the best is kept "
                                                           "(default 3)")
    p.add_argument("--max-iter", type=int, default=200, help="EM updates at most per run (default 200)")
    p.add_argument("--out", help="prior file to write (default: prior.npz beside the checkpoint)")
    p.add_argument("--force", action="store_true", help="replace an existing prior file")
    p.add_argument("--cache-dir", help="where decoded images are cached (default: the user cache folder)")
    p.add_argument("--threads", type=int, help="threads for Numba and BLAS (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def check_out(out, force):
    """Refuse an existing file (without --force) and a folder that cannot take one, before any work."""
    if os.path.isdir(out):
        raise UserError(f"--out {out} is a folder: give a file name such as {os.path.join(out, 'prior.npz')}")
    if os.path.exists(out) and not force:
        raise UserError(f"{out} exists: pass --force to replace it, or choose another --out")
    folder = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(folder):  # the nearest folder that exists must take a file (the rest is made)
        folder = os.path.dirname(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=atomic.TMP_PREFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write {out} ({atomic.why_failed(e, folder)}): choose a writable --out") from None


def run(args):
    if args.batch_size < 1 or args.restarts < 1 or args.max_iter < 1 or (args.limit is not None and args.limit < 1):
        raise UserError("--batch-size, --restarts, --max-iter and --limit must be at least 1")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed {args.seed}: use a whole number of zero or more")
    components = parse_components(args.components)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "prior.npz")
    check_out(out, args.force)
    try:
        threads.set_threads(args.threads)
    except ValueError as e:
        raise UserError(f"--threads: {e}") from None
    from scratchvae.data.prefetch import ImageReader
    from scratchvae.evaluation import source
    from scratchvae.latent.attributes import load_model
    vae, meta, identity = load_model(args.checkpoint)
    settings = meta.get("train") if isinstance(meta.get("train"), dict) else {}
    recorded = settings.get("seed")
    seed = args.seed if args.seed is not None else recorded if isinstance(recorded, int) and not \
        isinstance(recorded, bool) else 0
    chosen = source.choose(meta, vae.config.image_size, args.data, None, None, None, None, args.cache_dir,
                           args.quiet, own_split="train")
    idx = pick(chosen.idx, args.limit, seed)
    usable = len(idx) if components == "auto" else fitted_count(len(idx))
    if components != "auto" and components > usable:
        raise UserError(f"--components {components}: only {usable} of the {len(idx)} codes are fitted (the "
                        f"rest are held out); use fewer components or more images")
    if usable < 2:
        raise UserError(f"{len(idx)} image(s) are too few to fit and check a prior: use more images")
    for note in chosen.notes:
        print(note, file=sys.stderr)
    t0 = time.perf_counter()
    fitted, lines = fit_for_model(vae, ImageReader(chosen.pixels), idx, args.batch_size, components,
                                  args.covariance, seed, args.restarts, args.max_iter, identity, args.quiet)
    try:
        save(out, fitted)
    except OSError as e:
        raise UserError(f"cannot write {out} ({atomic.why_failed(e, os.path.dirname(os.path.abspath(out)))}): "
                        f"choose a writable --out") from None
    print(f"{len(idx)} images ({chosen.split} split of {chosen.source}) encoded, seed {seed}")
    print("\n".join(lines))
    print(f"wrote {out} ({count(fitted.components, 'component')}, checkpoint identity {identity[:12]}…) in "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
