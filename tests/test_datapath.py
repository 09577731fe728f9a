"""The full-size data path on generated images: a cache decoded by worker processes, resumed after an
interruption and checked by its checksum; batches read ahead by a thread; memory bounded by the
batches in flight, not by the size of the set."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from scratchvae import cache, data
from scratchvae.prefetch import ImageReader, Prefetcher

N = 3000


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
    assert info["count"] == N and info["checksum"].startswith(cache.CHECKSUM + ":")
    data.verify_cache(s.images)
    with open(s.images.filename, "r+b") as f:  # one flipped byte in the last image
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(data.DataError, match="checksum mismatch"):
        data.verify_cache(s.images)


def test_an_interrupted_build_continues_where_it_stopped(many, tmp_path, monkeypatch, capsys):
    root, pixels = many
    real, calls = data._decode, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) > 600:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(data, "_decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.load_images(root, 8, cache_dir=tmp_path, progress=False, workers=1)
    assert "stopped after decoding 512 of 3,000 images" in capsys.readouterr().err
    part = next(tmp_path.glob("*.partial.npy"))
    record = part.with_name(part.name.replace(".partial.npy", ".progress"))
    assert len(record.read_text().splitlines()) == 1 + 2  # the header, then two finished chunks
    # Mark the finished rows: a build that continues keeps them, one that started over would not.
    rows = np.load(part, mmap_mode="r+")
    rows[:512] = 7
    del rows
    monkeypatch.setattr(data, "_decode", real)
    s = data.load_images(root, 8, cache_dir=tmp_path, progress=False, workers=2)  # the rest in processes
    images = np.asarray(s.images)
    assert (images[:512] == 7).all() and np.array_equal(images[512:], pixels[512:])
    assert not part.exists() and not record.exists()
    # The checksum holds what was decoded, so it also catches the rows changed behind its back.
    with pytest.raises(data.DataError, match="checksum mismatch"):
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
from scratchvae.prefetch import ImageReader, Prefetcher

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
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    expected = float(((np.arange(n) % 251).astype(np.float64) / 255).sum() * 64 * 64 * 3)
    assert result["seen"] == n and result["total"] == pytest.approx(expected, rel=1e-6)
    assert result["growth"] < 64 << 20, result  # a batch is 6 MB as float32; the cache 400 MB
