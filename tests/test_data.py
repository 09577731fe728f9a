"""Tests for scratchvae.data: folders, zips, CelebA's layout, odd files, the cache and splits.

Every image is made here with Pillow in tmp_path; solid colours keep the expected pixels obvious.
"""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchvae import data
from scratchvae.data import DataError, batch_to_float, imagefile, load_images, sources, split_indices


def solid(path, color, size=(20, 20), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def noisy_jpeg_bytes(size=(64, 64), seed=0):
    x = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def load(src, tmp_path, **kw):
    kw.setdefault("image_size", 16)
    return load_images(src, cache_dir=tmp_path / "cache", progress=False, **kw)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    solid(root / "b.png", (0, 0, 255))
    solid(root / "a.jpg", (255, 0, 0))
    solid(root / "sub" / "c.JPG", (0, 255, 0), fmt="JPEG")
    solid(root / "sub" / "d.jpeg", (255, 255, 0), size=(30, 10))
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_is_read_recursively_in_sorted_order(folder, tmp_path):
    s = load(folder, tmp_path)
    assert s.names == ["a.jpg", "b.png", "sub/c.JPG", "sub/d.jpeg"]
    assert s.images.shape == (4, 16, 16, 3) and s.images.dtype == np.uint8
    means = np.asarray(s.images).reshape(4, -1, 3).mean(axis=1)
    assert np.allclose(means, [[255, 0, 0], [0, 0, 255], [0, 255, 0], [255, 255, 0]], atol=6)
    assert s.partition is None and s.skipped == [] and len(s) == 4


def test_zip_loads_the_same_as_the_folder(folder, tmp_path):
    zpath = tmp_path / "imgs.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
        zf.writestr("__MACOSX/._a.jpg", b"resource fork")
    a, b = load(folder, tmp_path), load(zpath, tmp_path)
    assert a.names == b.names
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))


def test_limit_takes_the_first_files(folder, tmp_path):
    s = load(folder, tmp_path, limit=2)
    assert s.names == ["a.jpg", "b.png"] and s.images.shape[0] == 2


def test_center_crop_keeps_the_middle_and_squash_keeps_everything(tmp_path):
    x = np.zeros((20, 60, 3), np.uint8)
    x[:, :20, 0] = 255  # red left third, green middle, blue right third
    x[:, 20:40, 1] = 255
    x[:, 40:, 2] = 255
    (tmp_path / "d").mkdir()
    Image.fromarray(x).save(tmp_path / "d" / "wide.png")
    center = np.asarray(load(tmp_path / "d", tmp_path, crop="center").images)[0]
    squash = np.asarray(load(tmp_path / "d", tmp_path, crop="squash").images)[0]
    assert center.shape == squash.shape == (16, 16, 3)
    assert (center[:, :, 1] > 200).all() and (center[:, :, [0, 2]] < 60).all()
    assert squash[8, 0, 0] > 200 and squash[8, 8, 1] > 200 and squash[8, 15, 2] > 200


def test_second_load_comes_from_the_cache(folder, tmp_path, monkeypatch):
    first = load(folder, tmp_path)
    files = sorted(p.suffix for p in (tmp_path / "cache").iterdir())
    assert files == [".json", ".npy"]  # no temporary files left behind

    def refuse(*args):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(sources, "_decode", refuse)
    second = load(folder, tmp_path)
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable
    assert second.names == first.names
    assert np.array_equal(np.asarray(second.images), np.asarray(first.images))


def test_the_cache_records_are_written_atomically(folder, tmp_path, monkeypatch):
    from scratchvae.run import atomic
    written, real = [], atomic.write_bytes

    def recording(path, data):
        written.append(str(path))
        real(path, data)

    monkeypatch.setattr(atomic, "write_bytes", recording)
    s = load(folder, tmp_path)
    assert [p.rsplit(".", 1)[-1] for p in written] == ["progress", "json"]  # the build's record, the sidecar
    assert written[1] == str(Path(s.images.filename).with_suffix(".json"))
    assert not [p for p in (tmp_path / "cache").iterdir() if atomic.is_temp_name(p.name)]


def test_cache_follows_changes_in_size_and_files(folder, tmp_path):
    assert load(folder, tmp_path).images.shape[0] == 4
    assert load(folder, tmp_path, image_size=8).images.shape == (4, 8, 8, 3)
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.write(folder / "a.jpg", "a.jpg")
    for size in (8, 16, 8):
        assert load(tmp_path / "z.zip", tmp_path, image_size=size).images.shape == (1, size, size, 3)
    assert load(tmp_path / "z.zip", tmp_path, image_size=8, crop="squash").images.shape[0] == 1
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 5
    solid(folder / "e.png", (9, 9, 9))
    assert load(folder, tmp_path).names[-1] == "sub/d.jpeg"
    assert "e.png" in load(folder, tmp_path).names


def make_celeba(root, parts=(0, 0, 1, 1, 2, 0), as_zip=False):
    names = [f"{i + 1:06d}.jpg" for i in range(len(parts))]
    if as_zip:
        root.mkdir(parents=True)
        with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as zf:
            for i, n in enumerate(names):
                zf.writestr(f"img_align_celeba/{n}", noisy_jpeg_bytes(seed=i))
    else:
        for i, n in enumerate(names):
            (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
            (root / "img_align_celeba" / n).write_bytes(noisy_jpeg_bytes(seed=i))
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, parts)))
    return names


@pytest.mark.parametrize("as_zip", [False, True])
def test_celeba_layout_reads_the_partition(tmp_path, as_zip):
    names = make_celeba(tmp_path / "celeba", as_zip=as_zip)
    s = load(tmp_path / "celeba", tmp_path)
    assert s.names == [f"img_align_celeba/{n}" for n in names]
    assert s.partition.dtype == np.int8 and s.partition.tolist() == [0, 0, 1, 1, 2, 0]
    cached = load(tmp_path / "celeba", tmp_path)
    assert cached.partition.tolist() == [0, 0, 1, 1, 2, 0]


def test_celeba_folder_and_zip_agree(tmp_path):
    make_celeba(tmp_path / "f")
    make_celeba(tmp_path / "z", as_zip=True)
    a, b = load(tmp_path / "f", tmp_path), load(tmp_path / "z", tmp_path)
    assert a.names == b.names and np.array_equal(np.asarray(a.images), np.asarray(b.images))


def test_bad_partition_line_is_a_data_error(tmp_path):
    make_celeba(tmp_path / "celeba")
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 7\n")
    with pytest.raises(DataError, match="list_eval_partition.txt"):
        load(tmp_path / "celeba", tmp_path)


def odd_files(root):
    """Write one file of each awkward kind; returns the names expected to be skipped."""
    root.mkdir()
    good = noisy_jpeg_bytes((96, 96))
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("hello, I am not a JPEG\n")
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (255, 0, 0, 255)  # opaque red left half, transparent right half
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    solid(root / "gray.png", 100, mode="L")
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(root / "gray16.png")  # 32896 = 128 * 257
    solid(root / "cmyk.jpg", (0, 255, 255, 0), mode="CMYK")  # no black, full magenta+yellow: red
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    pal.paste(0, (0, 0, 4, 8))
    pal.save(root / "palette.png", transparency=1)  # left blue, right (index 1) transparent
    solid(root / "tiny.png", (10, 200, 30), size=(1, 1))
    solid(root / "huge.png", (0, 0, 0), size=(200, 100))
    return {"truncated.jpg", "zero.jpg", "text.jpg", "huge.png"}


def test_odd_files_are_converted_or_skipped_with_reasons(tmp_path, monkeypatch):
    monkeypatch.setattr(imagefile, "MAX_PIXELS", 10_000)
    bad = odd_files(tmp_path / "odd")
    s = load(tmp_path / "odd", tmp_path, crop="squash")
    assert {name for name, _ in s.skipped} == bad
    assert all(reason and "\n" not in reason for _, reason in s.skipped)
    assert "pixel limit" in dict(s.skipped)["huge.png"]
    img = {n: np.asarray(s.images[i]).astype(int) for i, n in enumerate(s.names)}
    assert sorted(img) == ["alpha.png", "cmyk.jpg", "gray.png", "gray16.png", "palette.png", "tiny.png"]
    assert np.abs(img["alpha.png"][:, 0] - [255, 0, 0]).max() <= 2
    assert (img["alpha.png"][:, -1] >= 253).all()  # transparent became white
    assert np.abs(img["gray.png"] - 100).max() <= 1
    assert np.abs(img["gray16.png"] - 128).max() <= 1  # scaled from 16 bit, not clipped to 255
    assert img["cmyk.jpg"][..., 0].mean() > 200 and img["cmyk.jpg"][..., 1:].mean() < 60
    assert np.abs(img["palette.png"][:, 0] - [0, 0, 255]).max() <= 2
    assert (img["palette.png"][:, -1] >= 253).all()
    assert (img["tiny.png"] == [10, 200, 30]).all()  # a 1x1 image resized up


def test_pillow_bomb_warning_is_a_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    solid(tmp_path / "d" / "big.png", (1, 2, 3), size=(40, 40))
    solid(tmp_path / "d" / "ok.png", (1, 2, 3), size=(10, 10))
    s = load(tmp_path / "d", tmp_path)
    assert s.names == ["ok.png"] and s.skipped[0][0] == "big.png"


def one_line_error(match, *args, **kw):
    with pytest.raises(DataError, match=match) as e:
        load_images(*args, progress=False, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_data_errors_name_the_problem(tmp_path):
    cache = tmp_path / "cache"
    assert str(tmp_path / "nope") in one_line_error("no such file", tmp_path / "nope", cache_dir=cache)
    (tmp_path / "empty").mkdir()
    one_line_error("no .jpg", tmp_path / "empty", cache_dir=cache)
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("readme.txt", "no images")
    one_line_error("no .jpg", tmp_path / "empty.zip", cache_dir=cache)
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    one_line_error("cannot read the zip", tmp_path / "broken.zip", cache_dir=cache)
    (tmp_path / "file.txt").write_text("x")
    one_line_error("not a folder or a .zip", tmp_path / "file.txt", cache_dir=cache)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"")
    (tmp_path / "junk" / "b.png").write_text("text")
    one_line_error("none of the 2 images", tmp_path / "junk", cache_dir=cache)
    assert not any(cache.glob("*tmp*"))
    solid(tmp_path / "ok" / "a.png", (0, 0, 0))
    one_line_error("crop mode", tmp_path / "ok", crop="stretch", cache_dir=cache)
    one_line_error("image size", tmp_path / "ok", image_size=0, cache_dir=cache)
    one_line_error("limit", tmp_path / "ok", limit=0, cache_dir=cache)


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.default_cache_dir() == tmp_path / "scratchvae"


def test_split_holds_out_a_seeded_fraction_of_at_least_a_batch():
    train, val = split_indices(1000, val_fraction=0.05, batch_size=64, seed=0)
    assert train.dtype == val.dtype == np.int64
    assert len(val) == 64 and len(train) == 936  # 5% would be 50, under one batch
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    again, other = split_indices(1000, seed=0), split_indices(1000, seed=1)
    assert np.array_equal(again[1], val) and not np.array_equal(other[1], val)
    assert len(split_indices(10_000, val_fraction=0.1)[1]) == 1000
    t, v = split_indices(128, batch_size=64)
    assert len(t) == 64 and len(v) == 64


def test_split_needs_two_batches():
    with pytest.raises(DataError, match="at least 128"):
        split_indices(127, batch_size=64)


def test_split_follows_celeba_partition():
    part = np.array([0] * 200 + [1] * 70 + [2] * 80, np.int8)
    train, val = split_indices(len(part), batch_size=64, partition=part)
    assert np.array_equal(train, np.arange(200)) and np.array_equal(val, np.arange(200, 270))
    no_val = np.array([0] * 200 + [2] * 80, np.int8)
    assert np.array_equal(split_indices(280, batch_size=64, partition=no_val)[1], np.arange(200, 280))
    too_few = np.array([0] * 300 + [1] * 10, np.int8)  # e.g. --limit kept only training images
    train, val = split_indices(310, batch_size=64, partition=too_few)
    assert len(val) == 64 and len(train) == 246


def test_batch_to_float_maps_to_unit_range():
    x = np.arange(256, dtype=np.uint8).reshape(1, 4, 64, 1)
    y = batch_to_float(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert y.min() == 0.0 and y.max() == 1.0
    assert np.allclose(y, x / 255.0, atol=1e-7)


# exif_transpose's turn for each EXIF orientation; a stored image is the upright one turned back.
_STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_270}


def test_exif_orientation_is_applied_wherever_an_image_is_read(tmp_path):
    """A photo stored sideways with its EXIF orientation tag gives the upright picture to training,
    to `sample`, to `evaluate`'s size note and to decode_image (all go through data/sources.py's reader)."""
    from scratchvae import sample
    from scratchvae.evaluation.source import native_size
    upright = np.random.default_rng(3).integers(0, 256, (12, 20, 3), dtype=np.uint8)  # 20 wide, 12 high
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(upright).save(root / "o0.png")
    for o in range(1, 9):
        stored = Image.fromarray(upright)
        stored = stored.transpose(_STORED[o]) if o in _STORED else stored
        exif = Image.Exif()
        exif[0x0112] = o
        stored.save(root / f"o{o}.png", exif=exif)
    for crop in ("center", "squash"):
        s = data.load_images(root, 8, crop=crop, cache_dir=tmp_path / "c", progress=False)
        want = data.decode_image(root / "o0.png", 8, crop)[0]
        assert s.names == [f"o{o}.png" for o in range(9)] and not s.skipped
        for o in range(1, 9):
            assert np.array_equal(s.images[o], want), (crop, o)
            assert np.array_equal(data.decode_image(root / f"o{o}.png", 8, crop)[0], want), (crop, o)
    x = sample.read_images([str(root / f"o{o}.png") for o in range(9)], 8, "center")
    assert all(np.array_equal(x[o], x[0]) for o in range(1, 9))
    assert {native_size(root, f"o{o}.png") for o in range(9)} == {(20, 12)}
    turned = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    turned.save(root / "plain.png")  # no tag: used as stored
    assert native_size(root, "plain.png") == (12, 20)


def test_a_second_build_of_the_same_cache_waits_and_reads_the_first(folder, tmp_path):
    # Two commands started together on the same images: the second waits for the first's build
    # instead of filling the same partial file, then reads the finished cache.
    import fcntl
    import subprocess
    import sys
    cache_dir = tmp_path / "cache"
    load(folder, tmp_path)  # learn the cache's name, then start again from nothing
    npy = next(cache_dir.glob("*.npy"))
    for p in cache_dir.iterdir():
        p.unlink()
    lock = npy.with_name(npy.stem + ".lock")
    code = ("import sys; from scratchvae.data import load_images; "
            f"s = load_images({str(folder)!r}, image_size=16, cache_dir={str(cache_dir)!r}, progress=True); "
            "print(len(s.names))")
    with open(lock, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        assert "another process is building" in child.stderr.readline()  # it waits on the lock
        src = sources._Source(folder)
        sources._build(src, src.names, sources._Reader(src.root, src.zip_path, 16, "center"),
                       npy.with_suffix(""), False)
        built = npy.stat().st_ino
    out, err = child.communicate(timeout=600)  # a hang fails here; the load itself takes about a second
    assert child.returncode == 0, err
    assert out.split() == ["4"]
    assert npy.stat().st_ino == built  # read, not built again and renamed over it
    assert sorted(p.suffix for p in cache_dir.iterdir()) == [".json", ".npy"]
