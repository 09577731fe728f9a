"""Building the preprocessed image cache: uint8 (N, S, S, 3) rows in a .npy, decoded in parallel.

Worker processes decode chunks of images and write them straight into the memory-mapped array
(row i is image i); a progress record lists the finished chunks, so an interrupted build continues
where it stopped. The finished cache carries a checksum: sha256 over the sha256 of each chunk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from scratchvae import atomic

CHUNK = 256  # images per unit of work, of progress and of the checksum
PARALLEL_MIN = 2048  # fewer images than this are decoded in this process: starting workers costs ~1 s
CHECKSUM = "sha256-of-chunk-sha256"


def partial_files(npy: Path) -> tuple[Path, Path]:
    """The array being built and its progress record, beside the finished cache's name."""
    return npy.with_name(npy.stem + ".partial.npy"), npy.with_name(npy.stem + ".progress")


def build(npy: Path, names: list[str], decode, shape: tuple, progress: bool = True, desc: str = "decoding",
          workers: int | None = None) -> tuple[list[int], list[tuple[int, str]], str]:
    """Decode every name into row i of a new .npy at `npy` (resuming an interrupted build).

    decode(name) -> ((S, S, 3) uint8, "") or (None, why); it must pickle for worker processes.
    Returns (indices kept, [(index, why)] skipped, checksum); `compact` then removes the skipped
    rows and `install` moves the array into place.
    """
    part, record = partial_files(npy)
    n, shape = len(names), tuple(int(d) for d in shape)
    header = {"count": n, "shape": list(shape), "chunk": CHUNK}
    done = _resume(part, record, header)
    if done is None:
        rows = np.lib.format.open_memmap(part, mode="w+", dtype=np.uint8, shape=(n, *shape))
        del rows
        if hasattr(os, "posix_fallocate"):
            # Claim the disk space now: a full disk met later, through the map, is a SIGBUS crash.
            with open(part, "r+b") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, os.path.getsize(part))
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        remove(part)
                        raise
        atomic.write_bytes(record, (json.dumps(header) + "\n").encode())
        done = {}
    chunks = [k for k in range(-(-n // CHUNK)) if k not in done]
    todo = sum(min(n, (k + 1) * CHUNK) - k * CHUNK for k in chunks)
    workers = max(1, min(workers or _cpu_count(), len(chunks)))
    try:
        with open(record, "a") as log, tqdm(total=n, initial=n - todo, desc=desc, unit="img",
                                            disable=not progress, dynamic_ncols=True) as bar:
            def finished(k, skipped, digest):
                done[k] = (skipped, digest)
                log.write(json.dumps({"chunk": k, "skipped": skipped, "sha256": digest}) + "\n")
                log.flush()
                bar.update(min(n, (k + 1) * CHUNK) - k * CHUNK)

            if workers > 1 and todo >= PARALLEL_MIN:
                try:
                    _in_processes(part, names, decode, chunks, workers, finished)
                except BrokenProcessPool as e:
                    # e.g. a script without `if __name__ == "__main__":`, which spawned workers re-run
                    sys.stderr.write(f"\nworker processes failed ({e}); decoding the rest in this process\n")
            _Chunks(part, decode).attach()
            try:
                for k in [k for k in chunks if k not in done]:
                    finished(*_decode_chunk(k, names[k * CHUNK:(k + 1) * CHUNK]))
            finally:
                _Chunks.current = None
    except BaseException:
        if done:
            count = sum(min(n, (k + 1) * CHUNK) - k * CHUNK for k in done)
            sys.stderr.write(f"\nstopped after decoding {count:,} of {n:,} images; they are kept in {part}, "
                             f"and the same command continues from there\n")
        else:
            remove(part, record)
        raise
    skipped = sorted((i, why) for k in done for i, why in done[k][0])
    lost = {i for i, _ in skipped}
    kept = [i for i in range(n) if i not in lost]
    checksum = _combine(done[k][1] for k in sorted(done))
    return kept, skipped, checksum


def compact(npy: Path, kept: list[int], checksum: str) -> str:
    """Drop the rows of skipped images from the array being built (when any were skipped);
    returns the checksum of what remains."""
    part, _ = partial_files(npy)
    full = np.load(part, mmap_mode="r")
    if len(kept) == full.shape[0]:
        return checksum
    small = part.with_name(part.stem + ".compact.npy")
    out = np.lib.format.open_memmap(small, mode="w+", dtype=np.uint8, shape=(len(kept), *full.shape[1:]))
    for i in range(0, len(kept), 4096):
        out[i:i + 4096] = full[kept[i:i + 4096]]
    out.flush()
    del out, full
    os.replace(small, part)
    return checksum_of(part)


def install(npy: Path) -> None:
    """Move the finished array into place and forget its progress record."""
    part, record = partial_files(npy)
    os.replace(part, npy)
    remove(record)


def checksum_of(npy: Path) -> str:
    """sha256 over the sha256 of each CHUNK rows of the .npy's data, read from the file."""
    a = np.load(npy, mmap_mode="r")
    digests = []
    with open(npy, "rb") as f:
        row = int(np.prod(a.shape[1:]))
        f.seek(a.offset)
        for lo in range(0, a.shape[0], CHUNK):
            digests.append(hashlib.sha256(f.read(row * (min(a.shape[0], lo + CHUNK) - lo))).hexdigest())
    return _combine(digests)


def remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------ the work

class _Chunks:
    """The array being built and the decoder, in the process that decodes (a worker, or this one)."""

    current = None

    def __init__(self, part, decode):
        self.part, self.decode = part, decode

    def attach(self):
        self.rows = np.load(self.part, mmap_mode="r+")
        _Chunks.current = self


def _decode_chunk(k, names):
    """Decode one chunk into its rows: (k, [(index, why)] skipped, sha256 of the chunk's rows)."""
    c = _Chunks.current
    lo, skipped = k * CHUNK, []
    # Pillow's own bomb warning (for images past Image.MAX_IMAGE_PIXELS) becomes an exception that
    # skips the file; warning filters are process-wide, so this holds in the worker threads of
    # Pillow too.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for i, name in enumerate(names, lo):
            img, why = c.decode(name)
            if img is None:
                skipped.append((i, why))
            else:
                c.rows[i] = img
    return k, skipped, hashlib.sha256(np.ascontiguousarray(c.rows[lo:lo + len(names)]).data).hexdigest()


def _worker_init(part, decode):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _Chunks(part, decode).attach()


def _in_processes(part, names, decode, chunks, workers, finished):
    # Spawned, not forked: the parent may hold MPI, OpenMP or BLAS threads that a fork would copy.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(str(part), decode))
    try:
        pending = {pool.submit(_decode_chunk, k, names[k * CHUNK:(k + 1) * CHUNK]) for k in chunks}
        while pending:
            ready, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in ready:
                finished(*future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _resume(part: Path, record: Path, header: dict):
    """{chunk: (skipped, digest)} of an interrupted build of the same array, or None to start afresh."""
    if not (part.exists() and record.exists()):
        remove(part, record)
        return None
    try:
        lines = record.read_text().splitlines()
        if json.loads(lines[0]) != header or np.load(part, mmap_mode="r").shape != (header["count"],
                                                                                     *header["shape"]):
            raise ValueError("another build")
        done = {}
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except ValueError:
                break  # the last line of a killed build may be cut short
            done[int(entry["chunk"])] = ([tuple(s) for s in entry["skipped"]], str(entry["sha256"]))
        return done
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        remove(part, record)
        return None


def _combine(digests) -> str:
    return f"{CHECKSUM}:{hashlib.sha256(''.join(digests).encode()).hexdigest()}"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
