"""Data-parallel training over MPI ranks (mpi4py, optional extra `scratchvae[mpi]`).

`Single` is one process and `MPIRanks` a job under mpiexec; both offer the same few calls: sums
across ranks in place, broadcasts from rank 0, agreement on errors, a watchdog against a rank that
stops answering. `DataParallel` drives a VAE through its construction hooks: global BatchNorm
statistics and gradients averaged over the ranks.
"""

import contextlib
import json
import os
import sys
import threading
import time

import numpy as np

from scratchvae import losses
from scratchvae.run.errors import UserError

DEFAULT_TIMEOUT = 300.0  # seconds a rank may wait inside one collective before the job is aborted


class AgreedError(UserError):
    """A user error that every rank raised with the same message: rank 0 reports it, nobody aborts."""

    agreed = True


class Single:
    """One process, no MPI: every collective is the identity."""

    rank, size, local_rank, local_size = 0, 1, 0, 1

    @property
    def is_root(self):
        return self.rank == 0

    def sum_(self, a):
        """Sum `a` over the ranks, in place."""

    def max(self, value):
        """The largest of every rank's number."""
        return value

    def bcast_(self, a):
        """Overwrite `a` with rank 0's copy."""

    def start_sum_(self, a):
        """Begin summing `a` over the ranks in place; returns a request for wait_all."""

    def progress(self, requests):
        """Let started sums advance (MPI moves them only inside its calls)."""

    def wait_all(self, requests):
        """Wait until every started sum is done."""

    def bcast_json(self, obj, root=0):
        """Rank `root`'s JSON-able value, on every rank (never unpickled)."""
        return obj

    def agree(self, fn, *args):
        """fn(*args) on every rank; when it raises a UserError anywhere, every rank raises the
        message of the lowest failing rank (as AgreedError), so no rank is left waiting."""
        try:
            return fn(*args)
        except UserError as e:
            raise AgreedError(str(e)) from None

    def on_root(self, fn, *args):
        """fn(*args) on rank 0 only; its JSON-able result, or its UserError, on every rank."""
        return self.agree(fn, *args)

    @contextlib.contextmanager
    def leader_first(self):
        """The body runs first on each machine's lowest rank, then on the others (a cache that
        the first one builds, the others then read)."""
        yield

    def abort(self, code):
        sys.exit(code)


class MPIRanks(Single):
    """The ranks of `mpiexec -n K`; a watchdog aborts the job when one collective waits longer
    than `timeout` seconds (a rank that hangs; one that dies is caught by mpiexec itself)."""

    def __init__(self, timeout=DEFAULT_TIMEOUT):
        try:
            from mpi4py import MPI
        except ImportError:
            raise UserError("--distributed needs mpi4py: pip install 'scratchvae[mpi]' "
                            "(mpi4py and the MPICH it runs on)") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = self.node.Get_rank(), self.node.Get_size()
        self.timeout = float(timeout)
        self._waiting = None  # (what, since) while inside a collective
        if self.size > 1:
            threading.Thread(target=self._watch, daemon=True, name="mpi-watchdog").start()

    # ------------------------------------------------------------ the collectives
    @contextlib.contextmanager
    def _collective(self, what):
        self._waiting = (what, time.monotonic())
        try:
            yield
        finally:
            self._waiting = None

    def sum_(self, a):
        with self._collective("a sum over the ranks"):
            self.comm.Allreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)

    def start_sum_(self, a):
        return self.comm.Iallreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)

    def progress(self, requests):
        self.MPI.Request.Testall(requests)

    def wait_all(self, requests):
        with self._collective("the sums of the gradients"):
            self.MPI.Request.Waitall(requests)

    def max(self, value):
        buf = np.array([value], np.float64)
        with self._collective("a decision shared by the ranks"):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.MAX)
        return type(value)(buf[0])

    def bcast_(self, a):
        with self._collective("a broadcast from rank 0"):
            self.comm.Bcast(a, root=0)

    def bcast_json(self, obj, root=0):
        data = json.dumps(obj).encode() if self.rank == root else b""
        with self._collective("a broadcast"):
            n = self.comm.bcast(len(data), root=root)
            buf = bytearray(data) if self.rank == root else bytearray(n)
            self.comm.Bcast(buf, root=root)
        return json.loads(bytes(buf).decode())

    def agree(self, fn, *args):
        error = None
        try:
            result = fn(*args)
        except UserError as e:
            result, error = None, str(e)
        failed = np.zeros(self.size, np.float64)
        failed[self.rank] = error is not None
        # No watchdog here: another machine's first rank may still be decoding the data set.
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, failed, op=self.MPI.SUM))
        if failed.any():
            first = int(np.flatnonzero(failed)[0])
            message = self.bcast_json(error, root=first)
            raise AgreedError(message if first == 0 else f"on rank {first}: {message}")
        return result

    def on_root(self, fn, *args):
        outcome = None
        if self.rank == 0:
            try:
                outcome = {"result": fn(*args)}
            except UserError as e:
                outcome = {"error": str(e)}
        outcome = self.bcast_json(outcome)
        if "error" in outcome:
            raise AgreedError(outcome["error"])
        return outcome["result"]

    @contextlib.contextmanager
    def leader_first(self):
        if self.local_rank != 0:
            self._wait(self.node.Ibarrier())
        try:
            yield
        finally:
            if self.local_rank == 0:
                self._wait(self.node.Ibarrier())

    def _wait(self, request):
        """Wait for a request without spinning a core (the leader may be decoding with all of them)."""
        while not request.Test():
            time.sleep(0.05)

    def abort(self, code):
        sys.stderr.flush()
        sys.stdout.flush()
        self.comm.Abort(code)

    # ------------------------------------------------------------ the watchdog
    def _watch(self):
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            waiting = self._waiting
            if waiting is not None and time.monotonic() - waiting[1] > self.timeout:
                message = (f"error: rank {self.rank} waited {self.timeout:g} s in {waiting[0]}: another rank has "
                           f"stopped or hangs; aborting the job (raise --rank-timeout if a rank is only slow)\n")
                os.write(2, message.encode())  # unbuffered: the abort must not race the message
                time.sleep(0.5)
                self.abort(4)


def connect(timeout=DEFAULT_TIMEOUT):
    """The ranks of this job: MPIRanks under mpiexec (mpi4py required). A job of one rank (started
    without mpiexec, most likely) trains correctly as one process, so it is said, not refused:
    scripts that scale a job down to one rank keep working."""
    if not timeout > 0:
        raise UserError(f"--rank-timeout {timeout} must be a positive number of seconds")
    comm = MPIRanks(timeout)
    if comm.size == 1:
        print("note: --distributed with a world size of 1 (started without mpiexec?): training as one process; "
              "for K ranks run: mpiexec -n K python -m scratchvae.train ... --distributed", file=sys.stderr)
    return comm


class DataParallel:
    """A VAE trained as one over the ranks, through the model's own hooks: BatchNorm statistics over
    the global batch (the reducer) and gradients averaged. Each rank computes its loss gradients as
    the mean over its own shard; the shards are equal, so the mean of those gradients is the
    gradient of the global batch's loss.

    The model keeps its gradients in one flat buffer and tells us as soon as a layer's backward is
    done; the sum of that layer's slice over the ranks then starts (non-blocking) while the layers
    before it go on, so the traffic overlaps the rest of the backward pass. `finish_gradients`
    waits for what is left. Build the model with `VAE(..., **sync.model_hooks())`."""

    def __init__(self, comm):
        self.comm = comm
        self.pending = []
        self.waited = 0.0  # seconds spent in finish_gradients waiting for the sums (for benches)

    def model_hooks(self):
        """Constructor arguments for VAE / VAE.load: none for one process."""
        if self.comm.size == 1:
            return {}
        return {"reducer": self.comm.sum_, "on_grads_ready": self._start_sum}

    def _start_sum(self, name, grads):
        self.pending.append(self.comm.start_sum_(grads))
        self.comm.progress(self.pending)

    def broadcast(self, *named):
        """Rank 0's values of every array in the given dicts (parameters, statistics, moments)."""
        if self.comm.size > 1:
            for arrays in named:
                for name in sorted(arrays):
                    self.comm.bcast_(arrays[name])

    def finish_gradients(self, vae):
        """Every rank's gradients become their mean over the ranks."""
        if self.comm.size == 1:
            return
        t = time.perf_counter()
        self.comm.wait_all(self.pending)
        self.waited += time.perf_counter() - t
        self.pending = []
        vae.flat_grads *= vae.flat_grads.dtype.type(1.0 / self.comm.size)

    def mean_terms(self, terms, config):
        """The loss terms of the global batch from each rank's (means over equal shards), with the
        objective of `config` (a VAEConfig: its recon and beta)."""
        if self.comm.size == 1:
            return terms
        buf = np.array([terms["mse"], terms["kl"]], np.float64)
        self.comm.sum_(buf)
        mse, kl = (float(v) for v in buf / self.comm.size)
        return losses.config_terms(mse, kl, config)


def shard(n, comm):
    """The slice of a global batch of n that this rank takes."""
    per = n // comm.size
    return slice(comm.rank * per, (comm.rank + 1) * per)


def default_threads(comm):
    """Cores per rank when --threads is not given: this machine's cores shared by its ranks."""
    from scratchvae.kernels import threads
    return max(1, threads.cpu_count() // comm.local_size)
