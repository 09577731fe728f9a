"""The full-size data path on generated images: a cache decoded by worker processes, resumed after an
interruption and checked by its checksum; batches read ahead by a thread; memory bounded by the
batches in flight, not by the size of the set."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchvae import data, train
from scratchvae.data import CELEBA_PARTITION, cache, sources
from scratchvae.data.prefetch import ImageReader, Prefetcher
from scratchvae.run import atomic
from tests.hang import HANG_S

N = 3000
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """3000 random 8x8 PNGs (lossless, so the cache must hold exactly these pixels)."""
    root = tmp_path_factory.mktemp("many") / "imgs"
    root.mkdir()
    pixels = np.random.default_rng(7).integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(root / f"{i:05d}.png", compress_level=0)
    return root, pixels


def test_worker_processes_build_a_verified_cache(many, tmp_path):
    root, pixels = many
    s = data.load_images(root, 8, cache_dir=tmp_path, progress=False, workers=2)
    assert np.array_equal(np.asarray(s.images), pixels)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npy"]
    info = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert info["count"] == N and info["checksum"] == cache.CHECKSUM
    assert info["chunks"] == [zlib.crc32(pixels[lo:lo + cache.CHUNK].tobytes()) for lo in range(0, N, cache.CHUNK)]
    data.verify_cache(s.images)
    with open(s.images.filename, "r+b") as f:  # one flipped byte in the last image
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(data.DataError, match=f"checksum mismatch in chunk {N // cache.CHUNK}"):
        data.verify_cache(s.images)


def test_an_interrupted_build_continues_where_it_stopped(many, tmp_path, monkeypatch, capsys):
    root, pixels = many
    real, calls = sources._decode, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) > 600:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(sources, "_decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.load_images(root, 8, cache_dir=tmp_path, progress=False, workers=1)
    assert "stopped after decoding 512 of 3,000 images" in capsys.readouterr().err
    part = next(tmp_path.glob("*.partial.npy"))
    record = part.with_name(part.name.replace(".partial.npy", ".progress"))
    assert len(record.read_text().splitlines()) == 1 + 2  # the header, then two finished chunks
    # Spoil the first 512 files, keeping their size and time (the cache's key): a build that
    # continues never reads them again, one that started over would skip them.
    for i in range(512):
        f = root / f"{i:05d}.png"
        st = f.stat()
        f.write_bytes(b"x" * st.st_size)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        monkeypatch.setattr(sources, "_decode", real)
        s = data.load_images(root, 8, cache_dir=tmp_path, progress=False, workers=2)  # the rest in processes
    finally:
        for i in range(512):
            f = root / f"{i:05d}.png"
            st = f.stat()
            Image.fromarray(pixels[i]).save(f, compress_level=0)
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert np.array_equal(np.asarray(s.images), pixels) and not s.skipped
    assert not part.exists() and not record.exists()
    data.verify_cache(s.images)


def test_reader_and_prefetcher_give_the_batches_in_order(many, tmp_path):
    root, pixels = many
    s = data.load_images(root, 8, cache_dir=tmp_path, progress=False, workers=1)
    reader = ImageReader(s.images)
    assert reader.path is not None  # read from the file, not through the map
    batches = [np.array([0, 1, 2, 9]), np.array([5]), np.array([2998, 2999]), np.arange(100, 164)]
    with Prefetcher(reader.read, iter(batches)) as feed:
        got = list(feed)
    assert len(got) == len(batches)
    for idx, x in zip(batches, got):
        assert x.dtype == np.float32 and np.array_equal(x, data.batch_to_float(pixels[idx]))
    assert np.array_equal(ImageReader(pixels).read_uint8(batches[0]), pixels[batches[0]])

    def failing(idx):
        if idx[0] == 2998:
            raise OSError("disk gone")
        return reader.read(idx)

    with Prefetcher(failing, iter(batches)) as feed:
        assert len(next(feed)) == 4 and len(next(feed)) == 1
        with pytest.raises(OSError, match="disk gone"):
            next(feed)
    with Prefetcher(reader.read, iter(batches * 100), depth=2) as feed:
        next(feed)  # leaving early: close() must not wait for the rest


BOUNDED = """
import json, resource, sys
import numpy as np
from scratchvae.data.prefetch import ImageReader, Prefetcher

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

images = np.load(sys.argv[1], mmap_mode="r")
size = images.size
# Address space for what is mapped now plus 192 MB: the cache (400 MB) cannot be loaded or mapped whole.
limit = status("VmSize:") + (192 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
start = status("VmRSS:")
order = np.random.default_rng(0).permutation(len(images))
batches = (np.sort(order[i:i + 128]) for i in range(0, len(images), 128))
reader, total, seen = ImageReader(images), 0.0, 0
with Prefetcher(reader.read, batches) as feed:
    for x in feed:
        total += float(x.sum(dtype=np.float64))
        seen += len(x)
print(json.dumps({"seen": seen, "total": total, "growth": status("VmHWM:") - start, "bytes": size}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_reading_every_batch_keeps_memory_bounded(tmp_path):
    """A 400 MB cache read batch by batch under an address-space limit of 192 MB more than the
    process had: peak resident memory grows by a few batches, not by the cache."""
    path = tmp_path / "big.npy"
    n = 400 * 1024 * 1024 // (64 * 64 * 3)
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 64, 64, 3))
    for i in range(0, n, 4096):
        rows[i:i + 4096] = (np.arange(i, min(n, i + 4096)) % 251).astype(np.uint8)[:, None, None, None]
    rows.flush()
    del rows
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(BOUNDED), str(path)], capture_output=True,
                          text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    expected = float(((np.arange(n) % 251).astype(np.float64) / 255).sum() * 64 * 64 * 3)
    assert result["seen"] == n and result["total"] == pytest.approx(expected, rel=1e-6)
    assert result["growth"] < 64 << 20, result  # a batch is 6 MB as float32; the cache 400 MB


# ------------------------------------------------------------------ a damaged cache

M = 600  # three chunks: 256, 256 and 88 images


@pytest.fixture(scope="module")
def few(tmp_path_factory):
    """600 random 8x8 PNGs, decoded in this process (fewer than cache.PARALLEL_MIN)."""
    root = tmp_path_factory.mktemp("few") / "imgs"
    root.mkdir()
    pixels = np.random.default_rng(8).integers(0, 256, (M, 8, 8, 3), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(root / f"{i:05d}.png", compress_level=0)
    return root, pixels


def counting(monkeypatch):
    """Replace the decoder with one that counts the images it decodes."""
    real, calls = sources._decode, []

    def count(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(sources, "_decode", count)
    return calls


def zero_chunk(path, row_bytes):
    a = np.load(path, mmap_mode="r+")
    a[cache.CHUNK:2 * cache.CHUNK] = 0
    a.flush()


def flip_byte(path, row_bytes):
    with open(path, "r+b") as f:
        f.seek(-row_bytes * 10, 2)  # inside the last chunk
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))


def truncate(path, row_bytes):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - row_bytes * 100)  # the last chunk and 12 rows of the middle one


def zero_header(path, row_bytes):
    with open(path, "r+b") as f:
        f.write(b"\0" * (128 + row_bytes))  # the .npy header (128 bytes here) and the first row


@pytest.mark.parametrize("damage, rebuilt", [(zero_chunk, [1]), (flip_byte, [2]), (truncate, [1, 2]),
                                             (zero_header, [0])])
def test_damaged_chunks_are_rebuilt_and_only_they(few, tmp_path, monkeypatch, capsys, damage, rebuilt):
    root, pixels = few
    s = data.load_images(root, 8, cache_dir=tmp_path, progress=False)
    path = s.images.filename
    del s
    damage(path, 8 * 8 * 3)
    calls = counting(monkeypatch)
    s = data.load_images(root, 8, cache_dir=tmp_path, progress=False)
    assert np.array_equal(np.asarray(s.images), pixels)
    assert len(calls) == sum(min(M, (k + 1) * cache.CHUNK) - k * cache.CHUNK for k in rebuilt)
    err = capsys.readouterr().err
    assert f"{path}: {len(rebuilt)} chunk(s)" in err and f"chunk {', '.join(map(str, rebuilt))})" in err
    data.verify_cache(s.images)


def test_a_deleted_sidecar_rebuilds_the_cache(few, tmp_path, monkeypatch):
    root, pixels = few
    s = data.load_images(root, 8, cache_dir=tmp_path, progress=False)
    Path(s.images.filename).with_suffix(".json").unlink()
    calls = counting(monkeypatch)
    s = data.load_images(root, 8, cache_dir=tmp_path, progress=False)
    assert len(calls) == M and np.array_equal(np.asarray(s.images), pixels)
    data.verify_cache(s.images)


def test_a_chunk_that_cannot_be_rebuilt_is_exit_2(few, tmp_path, capsys):
    root, pixels = few
    work = tmp_path / "imgs"
    shutil.copytree(root, work)
    s = data.load_images(work, 8, cache_dir=tmp_path / "c", progress=False)
    zero_chunk(s.images.filename, 0)
    victim = work / f"{cache.CHUNK + 3:05d}.png"  # in the damaged chunk; same size and time: same cache key
    st = victim.stat()
    victim.write_bytes(b"x" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(data.DataError, match=f"chunk 1 is damaged and cannot be rebuilt, {victim.name}"):
        data.load_images(work, 8, cache_dir=tmp_path / "c", progress=False)
    args = ["--image-size", "8", "--filters", "4", "--blocks", "2", "--z-dim", "4", "--batch-size", "16",
            "--quiet", "--epochs", "1", "--data", str(work), "--cache-dir", str(tmp_path / "c"),
            "--out", str(tmp_path / "o")]
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "cannot be rebuilt" in err[-1]
    assert not (tmp_path / "o" / "checkpoint.npz").exists()


KILLED = """
import sys, time
from scratchvae.data import sources
real = sources._decode
def slow(*a):
    time.sleep(0.004)
    return real(*a)
sources._decode = slow
sources.load_images(sys.argv[1], 8, cache_dir=sys.argv[2], progress=False, workers=1)
"""


def test_a_builder_killed_mid_chunk_continues_from_the_chunks_that_match(few, tmp_path, monkeypatch):
    """SIGKILL while a chunk is being decoded, then (as a power loss could) a recorded chunk's rows
    lost: the next build keeps the recorded chunks that still match and decodes the rest."""
    root, pixels = few
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(root), str(tmp_path)], cwd=ROOT)
    try:
        deadline = time.monotonic() + HANG_S
        while True:
            # the record, not the temporary file it is written through (renamed away at any moment)
            record = next((p for p in tmp_path.glob("*.progress") if not atomic.is_temp_name(p.name)), None)
            if record is not None and len(record.read_text().splitlines()) >= 3:  # header and two chunks
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the builder never finished two chunks"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    part = next(tmp_path.glob("*.partial.npy"))
    recorded = len(record.read_text().splitlines()) - 1
    assert 2 <= recorded < 3, "killed after the whole build"
    rows = np.load(part, mmap_mode="r+")
    rows[:cache.CHUNK] = 0  # chunk 0's rows never reached the disk
    rows.flush()
    del rows
    calls = counting(monkeypatch)
    s = data.load_images(root, 8, cache_dir=tmp_path, progress=False, workers=1)
    assert np.array_equal(np.asarray(s.images), pixels)
    assert len(calls) == M - cache.CHUNK  # chunk 1 kept; chunks 0 and 2 decoded
    data.verify_cache(s.images)


def test_a_cache_serves_any_smaller_limit_as_a_cache_built_for_it(few, tmp_path, monkeypatch):
    root, pixels = few
    work = tmp_path / "imgs"
    shutil.copytree(root, work)
    (work / "00010.png").write_bytes(b"not an image")  # skipped, inside every limit below
    (work / "00400.png").write_bytes(b"")  # skipped beyond limit 300
    (work / CELEBA_PARTITION).write_text("".join(f"{i:05d}.png {int(i >= 280) + int(i >= 450)}\n"
                                                 for i in range(M)))
    whole = data.load_images(work, 8, cache_dir=tmp_path / "shared", progress=False)
    assert len(whole) == M - 2
    for limit in (300, 256, 11, M):
        own = data.load_images(work, 8, cache_dir=tmp_path / f"own{limit}", progress=False, limit=limit)
        monkeypatch.setattr(sources, "_decode", None)  # the shared cache must not decode anything
        got = data.load_images(work, 8, cache_dir=tmp_path / "shared", progress=False, limit=limit)
        monkeypatch.undo()
        assert np.array_equal(np.asarray(got.images), np.asarray(own.images)) and got.names == own.names
        assert got.skipped == own.skipped and len(got) == len(own)
        assert np.array_equal(got.partition, own.partition) if own.partition is not None else got.partition is None
        assert isinstance(got.images, np.memmap) and ImageReader(got.images).path is not None
    assert len(list((tmp_path / "shared").iterdir())) == 2  # one .npy and its .json
