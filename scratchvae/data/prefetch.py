"""Training batches read from the image cache by a background thread, ahead of the step that uses them.

The cache is a .npy of uint8 (N, S, S, 3) images. Rows are read with positioned file reads, not
through the memory map: pages of a map stay in the process's resident memory once touched, reads
into a fresh buffer do not. Memory so holds the batches in flight, whatever the data set's size.
"""

import os
import queue
import threading
import time

import numpy as np

from scratchvae.data.sources import batch_to_float


class ImageReader:
    """Rows of a uint8 image array by index, as float32 in [0, 1]: from the file behind a
    memory-mapped .npy, or from an array in memory."""

    def __init__(self, images):
        self.shape = tuple(images.shape)
        self.images, self.path = images, None
        if isinstance(images, np.memmap) and images.filename and images.flags.c_contiguous:
            self.path, self.offset = images.filename, images.offset
            self.row_bytes = int(np.prod(self.shape[1:])) * images.dtype.itemsize
            self._fd, self._lock = None, threading.Lock()

    def __len__(self):
        return self.shape[0]

    def read_uint8(self, idx):
        """(len(idx), S, S, C) uint8 rows; idx sorted ascending reads runs of rows in one call each."""
        idx = np.asarray(idx, np.int64)
        if self.path is None:
            return np.asarray(self.images[idx])
        out = np.empty((len(idx), *self.shape[1:]), np.uint8)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"image index out of range 0..{self.shape[0] - 1}")
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(idx)]):
            self._read_into(memoryview(out[lo:hi]).cast("B"), self.offset + int(idx[lo]) * self.row_bytes)
        return out

    def read(self, idx):
        return batch_to_float(self.read_uint8(idx))

    def _read_into(self, view, offset):
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            done = 0
            while done < len(view):
                if hasattr(os, "preadv"):
                    n = os.preadv(self._fd, [view[done:]], offset + done)
                else:
                    os.lseek(self._fd, offset + done, os.SEEK_SET)
                    n = os.readv(self._fd, [view[done:]])
                if n == 0:
                    raise OSError(f"{self.path} ended early: the image cache is truncated; delete it to rebuild")
                done += n

    def close(self):
        if self.path is not None and self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Prefetcher:
    """Iterates over read(idx) for each idx in `batches`, assembled `depth` ahead by a thread.

    `waited` is the time the consumer spent blocked on a batch that was not ready yet."""

    def __init__(self, read, batches, depth=2):
        self._read, self._batches = read, batches
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True, name="prefetch")
        self.waited = 0.0
        self._thread.start()

    def _fill(self):
        try:
            for idx in self._batches:
                if self._stop.is_set():
                    return
                self._put(("batch", self._read(idx)))
            self._put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(("error", e))

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        kind, value = self._queue.get()
        self.waited += time.perf_counter() - t
        if kind == "batch":
            return value
        self._queue.put((kind, value))  # later calls see the same end or error
        if kind == "error":
            raise value
        raise StopIteration

    def close(self):
        self._stop.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
