"""The run folder (--out): its default name, the lock that keeps a second run out of it, the proof
that it is writable, and the temporary files an interrupted write left in it.

Only rank 0 touches the folder. Every file in it is written atomically (scratchvae.atomic).
"""

import contextlib
import os

from scratchvae import atomic
from scratchvae.errors import UserError

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
        raise UserError(f"cannot write to --out {out} ({e.strerror}): choose a folder you can write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"another training run is writing into {out}: let it finish, or choose another --out") \
            from None
    return fd


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
        raise UserError(f"cannot write to --out {out} ({e.strerror}): choose a folder you can write to") from None
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
    """A failed write (disk full, folder removed) is the environment's problem: one line, exit 2."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write into {out} ({e.strerror or e}): free some space or fix the folder; "
                        f"files already written there are intact") from None
