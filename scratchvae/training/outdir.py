"""The run folder (--out): its default name, the lock that keeps a second run out of it, the proof
that it is writable, the temporary files an interrupted write left in it, and its removal when a
run stopped before writing anything.

Only rank 0 touches the folder. Every file in it is written atomically (scratchvae.run.atomic).
"""

import contextlib
import os

from scratchvae.run import atomic
from scratchvae.run.errors import UserError

DEFAULT_OUT = os.path.join("runs", "vae")
CHECKPOINT = "checkpoint.npz"
LOCK_NAME = ".lock"  # held (flock) by the run writing into --out; the kernel releases it when the run ends


def default_out(resume):
    """runs/vae, or the first runs/vae-N without a checkpoint: a fresh default run never replaces one."""
    if resume or not os.path.isfile(os.path.join(DEFAULT_OUT, CHECKPOINT)):
        return DEFAULT_OUT
    n = 2
    while os.path.isfile(os.path.join(f"{DEFAULT_OUT}-{n}", CHECKPOINT)):
        n += 1
    print(f"{DEFAULT_OUT} holds an earlier run (continue it with --resume); writing to {DEFAULT_OUT}-{n}")
    return f"{DEFAULT_OUT}-{n}"


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
        raise UserError(f"cannot write to --out {out} ({atomic.why_failed(e, _existing(out))}): choose a folder "
                        f"you can write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"another training run is writing into {out}: let it finish, or choose another --out") \
            from None
    return fd


def first_missing(out):
    """The outermost folder of `out` that does not exist yet (None when `out` exists): what a run
    that fails before writing anything removes again."""
    out, missing = os.path.abspath(out), None
    while not os.path.exists(out):
        out, missing = os.path.dirname(out), out
    return missing


def remove_if_unused(created, out):
    """Remove the folders a run created (`created`, from first_missing) when `out` holds nothing but
    the lock: a run stopped by an argument check leaves no trace."""
    if created is None or not os.path.isdir(out) or set(os.listdir(out)) - {LOCK_NAME}:
        return
    try:
        if os.path.exists(os.path.join(out, LOCK_NAME)):
            os.unlink(os.path.join(out, LOCK_NAME))
        path = os.path.abspath(out)
        while True:
            os.rmdir(path)  # only empty folders: anything else written meanwhile stays
            if path == created:
                break
            path = os.path.dirname(path)
    except OSError:
        pass


def _existing(path):
    """The nearest folder of `path` that exists (for the free space of a folder not made yet)."""
    path = os.path.abspath(path)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def prepare_out(out):
    """Create --out, prove it is writable before any long work starts, and remove the temporary
    files of writes that a killed run left there."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-test")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to --out {out} ({atomic.why_failed(e, _existing(out))}): choose a folder "
                        f"you can write to") from None
    stale = [name for name in os.listdir(out) if atomic.is_temp_name(name)]
    for name in stale:
        try:
            os.unlink(os.path.join(out, name))
        except OSError:
            pass
    if stale:
        print(f"removed {len(stale)} temporary file(s) left in {out} by an interrupted write")


@contextlib.contextmanager
def writing(out):
    """A failed write (disk full or read-only, folder removed) is the environment's problem: one line
    naming the folder and its free space, exit 2. The write left the previous file in place."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write into {out} ({atomic.why_failed(e, _existing(out))}): free some space or "
                        f"fix the folder; the files already there, the last checkpoint included, are intact") \
            from None
