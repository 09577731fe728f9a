"""What the side-by-side benches share to stay fair: each contender's child process starts from the
environment the user launched the bench with, plus one explicit thread count, and results are the
median and range over interleaved rounds. (Only scratchvae's own child imports scratchvae from
here: scratchvae_first.) OpenBLAS picks its own kernels for the processor in every
child, as on a user's machine, unless the bench is told to keep a kernel override it was launched
with (BLAS_OVERRIDE_VARS: some build machines force older kernels for older OpenBLAS builds; on an
AVX-512 processor that halves NumPy's matrix products, and only scratchvae's, since PyTorch and
onnxruntime bring their own). Import this before anything imports scratchvae (which
sets OMP_WAIT_POLICY for its own process on import); it never imports scratchvae itself, but puts
its own tree's on the path.
"""

import json
import math
import os
import resource
import statistics
import subprocess
import sys
from typing import NamedTuple

SNAPSHOT = dict(os.environ)  # the environment before any scratchvae import (see the docstring)

# The scratchvae a bench (and each of its children, which run the same script) imports is the one of
# the tree the bench lives in, or one that PYTHONPATH names: this tree's root goes on the path right
# after PYTHONPATH's entries, ahead of an installed scratchvae. (An editable install otherwise
# answers for every tree, so timing an older tree's benches timed the installed code.)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(1 + len([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]), ROOT)

# Set explicitly in every child to the bench's thread count (torch and OpenBLAS read these at load).
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Removed from every child: how idle OpenMP and OpenBLAS threads wait (OMP_WAIT_POLICY comes back
# only when the bench chooses it; scratchvae sets its own on import, as OPENBLAS_THREAD_TIMEOUT),
# and Numba's pool size (scratchvae.kernels.threads sets the count it uses).
CLEARED_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "NUMBA_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT")
WAIT_POLICIES = {"unset": None, "passive": "PASSIVE"}
# OpenBLAS's kernel override (OPENBLAS_CORETYPE) and the cache size that goes with it: removed from
# every child unless keep_blas_override; the children report the kernels they ran.
BLAS_OVERRIDE_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def scratchvae_first(argv=None):
    """In scratchvae's own child (`--child ours`), import scratchvae before anything loads NumPy, so
    the settings it makes for its process on import (OMP_WAIT_POLICY, OPENBLAS_THREAD_TIMEOUT)
    apply as under `python -m scratchvae.<job>`. Every other child and the parent are left alone."""
    argv = sys.argv if argv is None else argv
    if "--child" in argv and argv[argv.index("--child") + 1:][:1] == ["ours"]:
        import scratchvae  # noqa: F401
        return True
    return False


def cores():
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


KEEP_BLAS_OVERRIDE = False  # the benches' --keep-blas-override sets it


def blas_override():
    """'NAME=value ...' of the BLAS_OVERRIDE_VARS the bench was launched with ('' when none)."""
    return " ".join(f"{k}={SNAPSHOT[k]}" for k in BLAS_OVERRIDE_VARS if k in SNAPSHOT)


def child_env(threads, wait_policy="unset", base=None, extra=None):
    """The environment for one contender's child: `base` (default: the snapshot taken before
    scratchvae was imported) without any thread or wait setting, and without OpenBLAS's kernel
    override unless KEEP_BLAS_OVERRIDE, then the thread variables set to `threads`,
    OMP_WAIT_POLICY only when `wait_policy` names one ("passive"), then `extra`."""
    if threads < 1:
        raise ValueError("give an explicit thread count of at least 1")
    env = dict(SNAPSHOT if base is None else base)
    for name in THREAD_VARS + CLEARED_VARS + (() if KEEP_BLAS_OVERRIDE else BLAS_OVERRIDE_VARS):
        env.pop(name, None)
    env.update({name: str(threads) for name in THREAD_VARS})
    if WAIT_POLICIES[wait_policy] is not None:
        env["OMP_WAIT_POLICY"] = WAIT_POLICIES[wait_policy]
    env.update(extra or {})
    return env


def run_without_blas_override():
    """For a bench that times in its own process (the profiles): unless --keep-blas-override is on
    the command line, start this script again without the OpenBLAS kernel override it was launched
    with, as the side-by-side benches' children run. Call it before scratchvae or NumPy is imported."""
    if "--keep-blas-override" not in sys.argv and any(v in os.environ for v in BLAS_OVERRIDE_VARS):
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {k: v for k, v in os.environ.items() if k not in BLAS_OVERRIDE_VARS})


def add_profile_options(parser):
    """--threads and --keep-blas-override, as the in-process profiles take them."""
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keep-blas-override", action="store_true",
                        help="keep OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE as launched (default: run without them)")


def add_blas_override_option(parser):
    parser.add_argument("--keep-blas-override", action="store_true",
                        help="keep OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE as launched in every child (default: "
                             "removed, so OpenBLAS picks its kernels for this processor)")


def apply_blas_override_option(args):
    """Sets KEEP_BLAS_OVERRIDE from the parsed options; returns a line for the report."""
    global KEEP_BLAS_OVERRIDE
    KEEP_BLAS_OVERRIDE = args.keep_blas_override
    launched = blas_override()
    if not launched:
        return "OpenBLAS kernel override: none in the environment"
    return f"OpenBLAS kernel override as launched: {launched}; " + \
        ("kept in every child" if KEEP_BLAS_OVERRIDE else "removed in every child (--keep-blas-override keeps it)")


def launched_wait_policy():
    """OMP_WAIT_POLICY as this process was launched (the snapshot), as a WAIT_POLICIES key."""
    value = SNAPSHOT.get("OMP_WAIT_POLICY")
    return next((k for k, v in WAIT_POLICIES.items() if v == value), value)


def seen_wait_policy():
    """This process's OMP_WAIT_POLICY now, as a WAIT_POLICIES key ("unset" when absent)."""
    value = os.environ.get("OMP_WAIT_POLICY")
    return next((k for k, v in WAIT_POLICIES.items() if v == value), value)


class Spread(NamedTuple):
    median: float
    low: float
    high: float
    count: int


def spread(values):
    """Median, min and max of the finite numbers among `values` (None where there are none)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return None
    return Spread(statistics.median(kept), min(kept), max(kept), len(kept))


def show(s, fmt=".2f"):
    """'median' and 'low-high' cells of a Spread (or 'n/a', '')."""
    if s is None:
        return "n/a", ""
    return format(s.median, fmt), f"{s.low:{fmt}}–{s.high:{fmt}}"


def ratio(a, b):
    """a / b of two Spreads' medians, or None."""
    return a.median / b.median if a is not None and b is not None and b.median > 0 else None


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_json_child(cmd, env):
    """Runs a child that prints one JSON object as its last stdout line; {"error": ...} otherwise."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    err = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return {"error": err}


def table(head, rows, markdown=False):
    """Lines of a table: markdown, or aligned columns (first column left, the others right)."""
    if markdown:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
               ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    cells = [list(map(str, head))] + [list(map(str, row)) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in cells]
