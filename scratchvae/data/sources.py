"""Image folders, zips and CelebA's layout turned into uint8 NHWC arrays, cached as .npy.

Each image is decoded once with Pillow (EXIF rotation applied, to RGB, square crop, resize), in
worker processes for big sets (see scratchvae/data/cache.py); later runs check the cache's chunk
checksums, rebuild damaged chunks, and memory-map it. A cache of N images serves any --limit up to
N. Batches become float32 in [0, 1] only when they are used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scratchvae.data import cache, imagefile
from scratchvae.run import atomic
from scratchvae.run.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CROPS = ("center", "squash")
MAX_FILE_BYTES = 512 << 20  # zip members are read whole; a bigger one is skipped unread
# Content formats Pillow may use, whatever the suffix says (a downloaded ".jpg" is often WebP).
# Others (EPS runs Ghostscript, exotic scientific formats) are never tried on untrusted files.
FORMATS = imagefile.FORMATS
FORMAT_VERSION = 3  # bump when decoding changes, so old caches are not reused (2: only FORMATS, 3: EXIF)
CELEBA_DIR, CELEBA_ZIP = "img_align_celeba", "img_align_celeba.zip"
CELEBA_PARTITION = "list_eval_partition.txt"


class DataError(UserError):
    """A problem with the user's data; str() is one line naming it and what to do."""


@dataclass
class ImageSet:
    images: np.ndarray  # (N, S, S, 3) uint8, often a read-only memory map
    names: list[str]  # path of each image inside the source, '/'-separated
    partition: np.ndarray | None  # int8 per image: CelebA's 0 train, 1 val, 2 test
    skipped: list[tuple[str, str]]  # (name, reason) of files that could not be used

    def __len__(self) -> int:
        return len(self.names)


def load_images(source, image_size: int = 128, crop: str = "center", limit: int | None = None,
                cache_dir=None, progress: bool = True, min_count: int = 1, workers: int | None = None) -> ImageSet:
    """Decode every image of source (folder, .zip or CelebA's folder) to (N, S, S, 3) uint8, cached.

    min_count: fail before decoding anything when fewer image files than this are found.
    workers: decoding processes for a big set (default: one per core).
    """
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise DataError(f"image size {image_size!r} is not a positive whole number; pass e.g. 64 or 128")
    if crop not in CROPS:
        raise DataError(f"crop mode {crop!r} is not supported; use 'center' or 'squash'")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise DataError(f"limit {limit!r} is not a positive whole number; pass e.g. 1000 or leave it out")
    src = _Source(Path(source))
    names = src.names[:limit] if limit else src.names
    if len(names) < min_count:
        raise DataError(f"{src.path}: {len(names)} image files are too few, at least {min_count} are needed; "
                        f"add images" + (" or raise the limit" if limit else "") + " or lower the batch size")
    # One cache per source, size and crop: a --limit takes its first rows (see _read_cache).
    key = hashlib.sha256(json.dumps(
        [FORMAT_VERSION, str(src.path), src.fingerprint, int(image_size), crop]).encode()).hexdigest()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = folder / f"{_safe(src.path.name)}-{image_size}px-{crop}-{key[:16]}"
    reader = _Reader(src.root, src.zip_path, int(image_size), crop)
    cached = _read_cache(stem, src, names, reader)
    if cached is not None:
        return cached
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create cache folder {folder} ({e.strerror}); "
                        f"pass cache_dir= a writable folder") from e
    with _build_lock(stem, progress):
        cached = _read_cache(stem, src, names, reader)  # another process may have built it meanwhile
        if cached is not None:
            return cached
        return _build(src, names, reader, stem, progress, workers)


@contextlib.contextmanager
def _build_lock(stem: Path, progress: bool):
    """Hold an exclusive lock on the cache's `.lock` file while it is built: two commands started
    together on the same images would otherwise fill one partial file and rename it under each other.
    The second waits (and says so), then reads the cache the first made. Without fcntl (Windows) no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = stem.with_name(stem.name + ".lock")
    try:
        f = open(lock, "a")
    except OSError:  # a read-only folder: _build reports it
        yield
        return
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                sys.stderr.write(f"another process is building {stem.name}; waiting for it\n")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:  # removed while still held: a waiter then finds the finished cache and leaves
            cache.remove(lock)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/scratchvae, else ~/.cache/scratchvae."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scratchvae"


def split_indices(n: int, val_fraction: float = 0.05, batch_size: int = 64, seed: int = 0,
                  partition: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 (train, val) indices: CelebA's partition when it gives a batch of each, else a
    seeded fixed fraction with at least one batch held out and one batch left to train on."""
    if n < 2 * batch_size:
        raise DataError(f"{n} images are too few to hold out a batch of {batch_size} and train on "
                        f"another; need at least {2 * batch_size} images or a smaller batch size")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"held-out fraction {val_fraction} is outside [0, 1); pass e.g. 0.05")
    if partition is not None:
        part = np.asarray(partition)
        if part.shape != (n,):
            raise DataError(f"partition has {part.size} entries for {n} images; pass one per image")
        # CelebA's val set is held out; test stays untouched. Without val, hold out val+test.
        val = np.flatnonzero(part == 1) if (part == 1).any() else np.flatnonzero(part != 0)
        train = np.flatnonzero(part == 0)
        if len(val) >= batch_size and len(train) >= batch_size:
            return train.astype(np.int64), val.astype(np.int64)
    n_val = min(max(batch_size, int(round(n * val_fraction))), n - batch_size)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)


def batch_to_float(batch_uint8: np.ndarray) -> np.ndarray:
    """uint8 images to float32 in [0, 1]."""
    x = np.asarray(batch_uint8).astype(np.float32)
    x *= np.float32(1.0 / 255.0)  # in place: one batch-sized buffer, not two
    return x


class _Source:
    """The image files of a folder, a zip, or CelebA's folder, in sorted order, and a fingerprint."""

    def __init__(self, path: Path):
        path = path.expanduser().absolute()
        if not path.exists():
            raise DataError(f"{path}: no such file or folder; pass a folder of images, a .zip of "
                            f"images, or CelebA's folder")
        self.path, self.zip_path, self.root = path, None, None
        stats = []
        if path.is_dir():
            if (path / CELEBA_DIR).is_dir():
                self.root = path
                files = _image_files(path / CELEBA_DIR)
            elif (path / CELEBA_ZIP).is_file():
                self.zip_path = path / CELEBA_ZIP
            else:
                self.root = path
                files = _image_files(path)
            if self.root is not None:
                self.names = sorted(f.relative_to(path).as_posix() for f in files)
                stats = [(n, *_stat(path / n)) for n in self.names]
            partition_file = path / CELEBA_PARTITION
        elif path.suffix.lower() == ".zip":
            self.zip_path = path
            partition_file = path.parent / CELEBA_PARTITION
        else:
            raise DataError(f"{path}: not a folder or a .zip; pass a folder of images, a .zip of "
                            f"images, or CelebA's folder")
        if self.zip_path is not None:
            try:
                with zipfile.ZipFile(self.zip_path) as zf:
                    self.names = sorted(i.filename for i in zf.infolist()
                                        if not i.is_dir() and _is_image_name(i.filename))
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"{self.zip_path}: cannot read the zip ({e}); download it again") from e
            stats = [("zip", *_stat(self.zip_path))]
        if not self.names:
            raise DataError(f"{path}: no .jpg, .jpeg or .png images found (searched recursively); "
                            f"point to the folder or zip that holds them")
        self.partition_map = _read_partition(partition_file)
        if self.partition_map is not None:
            stats.append(("partition", *_stat(partition_file)))
        self.fingerprint = hashlib.sha256(json.dumps(stats).encode()).hexdigest()

    def partition(self, names: list[str]) -> np.ndarray | None:
        """CelebA split per name (matched by file name; unlisted ones train), or None if none match."""
        if self.partition_map is None:
            return None
        found = [self.partition_map.get(n.rsplit("/", 1)[-1]) for n in names]
        if all(f is None for f in found):
            return None
        return np.array([0 if f is None else f for f in found], np.int8)


def _image_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if _is_image_name(p.name) and p.is_file()]


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.lower().endswith(IMAGE_SUFFIXES) and not base.startswith("._")  # macOS resource forks


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40] or "images"


def _cache_files(stem: Path) -> tuple[Path, Path]:
    """The cached array and its JSON sidecar (the stem has no suffix of its own to replace)."""
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")


def _read_partition(path: Path) -> dict[str, int] | None:
    """list_eval_partition.txt: lines of '000001.jpg 0' (0 train, 1 val, 2 test)."""
    if not path.is_file():
        return None
    out = {}
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts or (i == 1 and not parts[-1].isdigit()):
            continue  # blank line, or a CSV-style header
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{path}: line {i} is {line.strip()!r}, expected 'name.jpg 0|1|2'; fix or "
                            f"remove the file")
        out[parts[0]] = int(parts[1])
    return out


def _read_cache(stem: Path, src: _Source, names: list[str], reader) -> ImageSet | None:
    """The cached ImageSet of `names` (the first len(names) of the source's), its damaged chunks
    decoded again first; None when there is no usable cache of at least these names."""
    npy, meta = _cache_files(stem)
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        kept, count, shape = info["names"], info["count"], tuple(info["shape"])
        if (info.get("version") != FORMAT_VERSION or info.get("checksum") != cache.CHECKSUM
                or len(kept) != count or info["covers"] < len(names)):
            return None
        bad = cache.damaged_chunks(npy, count, shape, info["chunks"])
        if bad and not _repair(npy, info, bad, reader):
            return None
        images = np.load(npy, mmap_mode="r", allow_pickle=False)
    except OSError as e:
        raise DataError(f"cannot check the image cache {npy} ({atomic.why_failed(e, npy.parent)}); pass cache_dir= a "
                        f"writable folder, or delete the cache") from None
    except (ValueError, KeyError, TypeError):
        return None
    # The first rows are the images among the first len(names) files: the kept names keep their order.
    wanted = set(names)
    n = count if len(names) == info["covers"] else sum(1 for name in kept if name in wanted)
    skipped = [tuple(s) for s in info["skipped"] if s[0] in wanted]
    return ImageSet(images if n == count else images[:n], kept[:n], src.partition(kept[:n]), skipped)


def _repair(npy: Path, info: dict, bad: list[int], reader) -> bool:
    """Decode the damaged chunks again from the source into the cache; False when they then differ
    from what was cached (the source changed: build afresh). A file that cannot be read now is a
    DataError: the chunk cannot be rebuilt."""
    sys.stderr.write(f"{npy}: {len(bad)} chunk(s) of {cache.CHUNK} images do not match their checksum "
                     f"(chunk {', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}); "
                     f"decoding them again from {info['source']}\n")

    def rows_of_chunk(k):
        rows = []
        for name in info["names"][k * cache.CHUNK:(k + 1) * cache.CHUNK]:
            img, why = reader(name)
            if img is None:
                raise DataError(f"{npy}: chunk {k} is damaged and cannot be rebuilt, {name} is unreadable now "
                                f"({why}); restore the images or delete the cache to build it from what is left")
            rows.append(img)
        return np.stack(rows)

    got = cache.rewrite_chunks(npy, bad, rows_of_chunk)
    if got == [info["chunks"][k] for k in bad]:
        return True
    sys.stderr.write(f"{npy}: the images decode differently from when the cache was built; building it again\n")
    return False


def _build(src: _Source, names: list[str], reader, stem: Path, progress: bool,
           workers: int | None = None) -> ImageSet:
    """Decode names into the cache (in worker processes, resuming an interrupted build), then
    write its sidecar and move the array into place."""
    npy, meta = _cache_files(stem)
    shape = (reader.size, reader.size, 3)
    try:
        kept_idx, skipped_idx = cache.build(npy, names, reader, shape, progress, f"decoding {src.path.name}",
                                            workers)
        skipped = [(names[i], why) for i, why in skipped_idx]
        if not kept_idx:
            cache.remove(*cache.partial_files(npy))
            first = f"{skipped[0][0]}: {skipped[0][1]}"
            raise DataError(f"{src.path}: none of the {len(names)} images could be read (first: {first}); "
                            f"check the files")
        kept = [names[i] for i in kept_idx]
        chunks = cache.finish(npy, kept_idx)
        partition = src.partition(kept)
        info = {"version": FORMAT_VERSION, "source": str(src.path), "image_size": reader.size, "crop": reader.crop,
                "covers": len(names), "count": len(kept), "shape": list(shape), "checksum": cache.CHECKSUM,
                "chunks": chunks, "names": kept, "skipped": skipped,
                "partition": None if partition is None else partition.tolist()}
        atomic.write_bytes(meta, json.dumps(info).encode())
        cache.install(npy)
    except OSError as e:
        if e.errno in atomic.FULL_OR_READ_ONLY:
            cache.remove(*cache.partial_files(npy))
        raise DataError(f"cannot write the image cache beside {npy} ({atomic.why_failed(e, npy.parent)}); pass cache_dir= a "
                        f"writable folder with room for {len(names) * reader.size ** 2 * 3:,} bytes") from None
    return ImageSet(np.load(npy, mmap_mode="r", allow_pickle=False), kept, partition, skipped)


def verify_cache(images: np.ndarray) -> None:
    """Check a cached array against the count and chunk checksums recorded beside it, without
    repairing anything; DataError if they differ."""
    path = Path(getattr(images, "filename", "") or "")
    meta = path.with_suffix(".json")
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{meta}: cannot read the cache's record ({e}); delete the cache to rebuild it") from None
    if np.load(path, mmap_mode="r").shape[0] != info.get("count"):
        raise DataError(f"{path}: holds another number of images than its record's {info.get('count')}; "
                        f"delete it to rebuild")
    bad = [k for k, (a, b) in enumerate(zip(cache.chunk_digests(path), info["chunks"])) if a != b]
    if bad:
        raise DataError(f"{path}: checksum mismatch in chunk {bad[0]}, the file changed since it was written; "
                        f"loading it again rebuilds the damaged chunks")


class _Reader:
    """Decodes a name of one source (folder or zip); pickles for worker processes, each of which
    opens the zip once for itself."""

    def __init__(self, root, zip_path, size, crop):
        self.root, self.zip_path, self.size, self.crop = root, zip_path, size, crop
        self._zf = None

    def __getstate__(self):
        return {**self.__dict__, "_zf": None}

    def __call__(self, name):
        if self.zip_path is None:
            return _decode(self.root / name, self.size, self.crop)
        if self._zf is None:
            self._zf = zipfile.ZipFile(self.zip_path)
        return _decode(_member(self._zf, name), self.size, self.crop)


class _Refused(Exception):
    """A file refused before reading; str() is the skip reason."""


def _member(zf: zipfile.ZipFile, name: str) -> bytes | Exception:
    """A zip member's bytes, or the error (a bad CRC, say) that skips just this file."""
    size = zf.getinfo(name).file_size
    if size > MAX_FILE_BYTES:
        return _Refused(f"{size:,} bytes unpacked is over the {MAX_FILE_BYTES:,} byte limit")
    try:
        return zf.read(name)
    except Exception as e:  # noqa: BLE001 - reported as the file's skip reason
        return e


def _decode(data, size: int, crop: str) -> tuple[np.ndarray | None, str]:
    """One image (a path, bytes, or the error that kept a zip member from being read) to
    (size, size, 3) uint8, or (None, why it was skipped)."""
    if isinstance(data, Exception):
        if isinstance(data, _Refused):
            return None, str(data)
        return None, f"cannot read it from the zip ({type(data).__name__}: {data})"[:160]
    return imagefile.decode(data, size, crop)


def decode_image(path, image_size: int, crop: str = "center") -> tuple[np.ndarray | None, str]:
    """One image file to (S, S, 3) uint8 the way training sees it, or (None, why it cannot be used)."""
    if crop not in CROPS:
        raise DataError(f"crop mode {crop!r} is not supported; use 'center' or 'squash'")
    return _decode(str(path), int(image_size), crop)


def upright_size(fp) -> tuple[int, int]:
    """(width, height) of an image as it is shown (see scratchvae/data/imagefile.py)."""
    return imagefile.upright_size(fp)
