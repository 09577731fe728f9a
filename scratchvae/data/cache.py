"""The preprocessed image cache on disk: uint8 (N, S, S, 3) rows in a .npy, decoded in parallel,
with a CRC-32 per CHUNK rows that is checked when the cache is opened and repairs what it finds.

Worker processes decode chunks of images straight into the memory-mapped array (row i is image i).
A chunk counts as done only once its rows are fsynced and its checksum is appended (and fsynced) to
the progress record, so an interrupted build, even one killed or cut by a power loss, continues from
the chunks whose rows still match. The finished array is fsynced, its sidecar written, the folder
fsynced, and only then is the array renamed into place.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import warnings
import zlib
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from scratchvae.run import atomic

CHUNK = 256  # images per unit of work, of progress and of the checksum
PARALLEL_MIN = 2048  # fewer images than this are decoded in this process: starting workers costs ~1 s
CHECKSUM = "crc32-per-256-rows"  # the sidecar's name for what its "chunks" list holds


def partial_files(npy: Path) -> tuple[Path, Path]:
    """The array being built and its progress record, beside the finished cache's name."""
    return npy.with_name(npy.stem + ".partial.npy"), npy.with_name(npy.stem + ".progress")


def build(npy: Path, names: list[str], decode, shape: tuple, progress: bool = True, desc: str = "decoding",
          workers: int | None = None) -> tuple[list[int], list[tuple[int, str]]]:
    """Decode every name into row i of a new .npy beside `npy` (resuming an interrupted build).

    decode(name) -> ((S, S, 3) uint8, "") or (None, why); it must pickle for worker processes.
    Returns (indices kept, [(index, why)] skipped); `finish` then drops the skipped rows and
    returns the chunk checksums, and `install` moves the array into place.
    """
    part, record = partial_files(npy)
    n, shape = len(names), tuple(int(d) for d in shape)
    header = {"count": n, "shape": list(shape), "chunk": CHUNK, "checksum": CHECKSUM}
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
                    if e.errno in atomic.FULL_OR_READ_ONLY:
                        remove(part)
                        raise
        atomic.write_bytes(record, (json.dumps(header) + "\n").encode())
        done = {}
    chunks = [k for k in range(-(-n // CHUNK)) if k not in done]
    todo = sum(min(n, (k + 1) * CHUNK) - k * CHUNK for k in chunks)
    workers = max(1, min(workers or _cpu_count(), len(chunks)))
    try:
        with open(record, "a") as log, open(part, "r+b") as data, \
                tqdm(total=n, initial=n - todo, desc=desc, unit="img", disable=not progress,
                     dynamic_ncols=True) as bar:
            def finished(k, skipped, digest):
                os.fsync(data.fileno())  # the chunk's rows (written through a map) reach the disk first
                log.write(json.dumps({"chunk": k, "skipped": skipped, "crc32": digest}) + "\n")
                log.flush()
                os.fsync(log.fileno())
                done[k] = (skipped, digest)
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
    except BaseException as e:
        if done and not (isinstance(e, OSError) and e.errno in atomic.FULL_OR_READ_ONLY):
            count = sum(min(n, (k + 1) * CHUNK) - k * CHUNK for k in done)
            sys.stderr.write(f"\nstopped after decoding {count:,} of {n:,} images; they are kept in {part}, "
                             f"and the same command continues from there\n")
        else:
            remove(part, record)  # nothing worth keeping, or a full disk: give the space back
        raise
    skipped = sorted((i, why) for k in done for i, why in done[k][0])
    lost = {i for i, _ in skipped}
    return [i for i in range(n) if i not in lost], skipped


def finish(npy: Path, kept: list[int]) -> list[int]:
    """Drop the rows of skipped images from the array being built (when any were skipped), fsync
    it, and return the CRC-32 of each CHUNK rows of what remains (for the sidecar)."""
    part, _ = partial_files(npy)
    full = np.load(part, mmap_mode="r")
    if len(kept) < full.shape[0]:
        small = part.with_name(part.stem + ".compact.npy")
        out = np.lib.format.open_memmap(small, mode="w+", dtype=np.uint8, shape=(len(kept), *full.shape[1:]))
        for i in range(0, len(kept), 4096):
            out[i:i + 4096] = full[kept[i:i + 4096]]
        out.flush()
        del out
        _fsync(small)
        os.replace(small, part)
    else:
        _fsync(part)
    del full
    return chunk_digests(part)


def install(npy: Path) -> None:
    """Move the finished array into place (its sidecar is already written) and forget its progress record."""
    part, record = partial_files(npy)
    _fsync_dir(npy.parent)  # the sidecar's rename is on disk before the array's
    os.replace(part, npy)
    _fsync_dir(npy.parent)
    remove(record)


def chunk_digests(npy: Path, chunks=None) -> list[int]:
    """CRC-32 of each CHUNK rows of the .npy's data (or of the chunks listed), read from the file
    by a few threads (zlib and file reads release the GIL)."""
    a = np.load(npy, mmap_mode="r")
    row, n, offset = int(np.prod(a.shape[1:])), a.shape[0], a.offset
    del a
    chunks = list(range(-(-n // CHUNK))) if chunks is None else list(chunks)
    fd = os.open(npy, os.O_RDONLY)
    try:
        def one(k):
            want = row * (min(n, (k + 1) * CHUNK) - k * CHUNK)
            return zlib.crc32(os.pread(fd, want, offset + k * CHUNK * row))

        with ThreadPoolExecutor(min(4, _cpu_count())) as pool:
            return list(pool.map(one, chunks))
    finally:
        os.close(fd)


def damaged_chunks(npy: Path, count: int, shape: tuple, digests: list[int]) -> list[int]:
    """The chunks of a finished cache whose rows do not match their recorded CRC-32.

    A damaged .npy header is rewritten and a truncated file extended with zeros first (both are
    known from count and shape), so damage anywhere becomes chunks to rebuild; that needs write
    access (an OSError otherwise)."""
    header = _npy_header(count, shape)
    size = len(header) + count * int(np.prod(shape))
    with open(npy, "rb") as f:
        head, have = f.read(len(header)), os.fstat(f.fileno()).st_size
    if head != header or have != size:
        with open(npy, "r+b") as f:
            if head != header:
                f.write(header)
            if have != size:
                f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
    if len(digests) != -(-count // CHUNK):
        return list(range(-(-count // CHUNK)))
    return [k for k, (got, want) in enumerate(zip(chunk_digests(npy), digests)) if got != want]


def rewrite_chunks(npy: Path, chunks: list[int], rows_of_chunk) -> list[int]:
    """Write rows_of_chunk(k) ((rows, S, S, 3) uint8) over chunk k of a finished cache for each k,
    fsync, and return the new CRC-32 of those chunks read back from the file."""
    rows = np.load(npy, mmap_mode="r+")
    for k in chunks:
        rows[k * CHUNK:(k + 1) * CHUNK] = rows_of_chunk(k)
    rows.flush()
    del rows
    _fsync(npy)
    return chunk_digests(npy, chunks)


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
    """Decode one chunk into its rows: (k, [(index, why)] skipped, CRC-32 of the chunk's rows)."""
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
                c.rows[i] = 0  # a resumed build may find anything in a row it never finished
            else:
                c.rows[i] = img
    return k, skipped, zlib.crc32(np.ascontiguousarray(c.rows[lo:lo + len(names)]).data)


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
    """{chunk: (skipped, digest)} of an interrupted build of the same array whose rows still match
    their recorded CRC-32 (the others are decoded again), or None to start afresh."""
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
            done[int(entry["chunk"])] = ([tuple(s) for s in entry["skipped"]], int(entry["crc32"]))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        remove(part, record)
        return None
    ks = sorted(done)
    return {k: done[k] for k, got in zip(ks, chunk_digests(part, ks)) if got == done[k][1]}


def _npy_header(count: int, shape: tuple) -> bytes:
    """The exact header NumPy writes for a C-order uint8 array of (count, *shape)."""
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False,
                                               "shape": (int(count), *(int(d) for d in shape))})
    return buf.getvalue()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
