"""Reliability: bad data, bad arguments, faults during training, untrusted files.

Each guarantee in docs/RELIABILITY.md names the test here that checks it. Real signals are sent
to real `python -m scratchvae.train` processes; everything else runs in-process on tiny configs.
"""

import csv
import errno
import fcntl
import io
import json
import os
import queue
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from scratchvae import data, sample, train
from scratchvae.data import sources
from scratchvae.data.synthetic import synthetic_faces
from scratchvae.model import VAE, VAEConfig
from scratchvae.run import atomic, checkpoint
from scratchvae.run.checkpoint import CheckpointError
from scratchvae.run.errors import TrainingDiverged
from scratchvae.training import datasets, loop, outdir, resume
from scratchvae.training.settings import Settings
from tests.hang import HANG_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The seed's objective (the built-in data would default to the sigma-VAE): these tests were written for it.
# The held-out fraction is pinned too, at the 5% these tests were written for (the built-in data's own is a sixth).
MODEL = ["--image-size", "16", "--filters", "4", "--blocks", "2", "--z-dim", "4", "--lr", "3e-3", "--recon", "mse",
         "--val-fraction", "0.05", "--quiet"]
TINY = [*MODEL, "--batch-size", "16"]
# The resume-exactness runs: 2 epochs of 22 steps (91 training images in batches of 4).
EXACT = [*MODEL, "--batch-size", "4", "--limit", "96", "--epochs", "2"]
FUZZ = settings(max_examples=60, deadline=60_000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def jpeg_bytes(x, **kw):
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def png_claiming(width, height):
    """A PNG whose header claims width x height but holds a few bytes of pixels: a bomb's shape."""
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def bad_folder(root, n_good=40):
    """n_good synthetic faces plus one of every awkward file; returns the names that must be skipped."""
    root.mkdir(parents=True)
    for i, face in enumerate(synthetic_faces(n_good, 32, seed=7)):
        (root / f"face_{i:03d}.jpg").write_bytes(jpeg_bytes(face, quality=90))
    good = jpeg_bytes(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8))
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is a text file, not a JPEG\n")
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = (200, 30, 30, 255)
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    Image.new("L", (24, 24), 90).save(root / "gray.jpg", format="JPEG")
    Image.fromarray(np.full((12, 12), 40000, np.uint16)).save(root / "gray16.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(root / "cmyk.jpg", format="JPEG")
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    pal.save(root / "palette.png")
    Image.new("RGB", (1, 1), (10, 200, 30)).save(root / "one_pixel.png")
    large = Image.new("RGB", (6000, 4000), (220, 20, 20))
    large.paste((20, 20, 220), (3000, 0, 6000, 4000))  # right half blue: the centre crop shows both
    large.save(root / "large.jpg", format="JPEG", quality=80)
    Image.new("RGB", (30, 30), (20, 180, 20)).save(root / "UPPER.JPG", format="JPEG")
    return {"truncated.jpg", "zero.jpg", "text.jpg"}


def zip_of(folder, path):
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    return path


def load(src, cache, **kw):
    return data.load_images(src, 16, cache_dir=cache, progress=False, **kw)


# ------------------------------------------------------------------ bad data

def test_bad_files_are_converted_or_skipped_alike_in_folder_and_zip(tmp_path):
    must_skip = bad_folder(tmp_path / "mixed")
    a = load(tmp_path / "mixed", tmp_path / "cache")
    b = load(zip_of(tmp_path / "mixed", tmp_path / "mixed.zip"), tmp_path / "cache")
    assert {n for n, _ in a.skipped} == must_skip
    assert a.names == b.names and a.skipped == b.skipped
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    reasons = dict(a.skipped)
    assert "empty" in reasons["zero.jpg"] and "not a JPEG" in reasons["text.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    img = {n: np.asarray(a.images[i]).astype(int) for i, n in enumerate(a.names)}
    for name in ("alpha.png", "gray.jpg", "gray16.png", "cmyk.jpg", "palette.png", "one_pixel.png",
                 "large.jpg", "UPPER.JPG"):
        assert img[name].shape == (16, 16, 3), name
    assert img["large.jpg"][8, 1, 0] > 180 and img["large.jpg"][8, 14, 2] > 180  # decoded, crop centred
    assert np.abs(img["gray16.png"] - 155).max() <= 1  # 40000 / 257, scaled rather than clipped
    assert img["cmyk.jpg"][..., 0].mean() > 200 and img["UPPER.JPG"][..., 1].mean() > 150


def test_train_reports_the_skipped_files_with_reasons(tmp_path, capsys):
    bad_folder(tmp_path / "mixed")
    assert train.main([*TINY, "--data", str(tmp_path / "mixed"), "--epochs", "1", "--out", str(tmp_path / "o"),
                       "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "data: 48 images" in out and "; skipped 3 file(s) that could not be used:\n" in out
    assert "  text.jpg: not a JPEG, PNG, WebP, BMP or GIF image" in out and "  zero.jpg: empty file" in out
    settings_ = Settings(data=str(tmp_path / "mixed"), image_size=16, batch_size=16)
    datasets.load_data(settings_, str(tmp_path / "cache"), True, str(tmp_path / "o"))  # now from the cache
    assert "; skipped 3 file(s)" in capsys.readouterr().out


def test_long_skip_lists_name_the_first_few_and_save_all(tmp_path, capsys):
    skipped = [(f"bad_{i}.jpg", "empty file (0 bytes)") for i in range(8)]
    datasets.report_skipped(skipped, str(tmp_path))
    out = capsys.readouterr().out
    assert out.count("bad_") == datasets.SHOW_SKIPPED and "... and 3 more" in out
    assert (tmp_path / "skipped.txt").read_text().count("\n") == 8


def test_bombs_are_refused_before_decoding(tmp_path, monkeypatch):
    def never(self, *a):
        raise AssertionError("decoded a refused image")

    monkeypatch.setattr(Image.Image, "load", never)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "huge.png").write_bytes(png_claiming(100_000, 100_000))  # past Pillow's own limit
    (tmp_path / "d" / "big.png").write_bytes(png_claiming(8100, 8000))  # 64.8 MP: past ours only
    assert "decompression bomb" in data.decode_image(tmp_path / "d" / "huge.png", 16)[1]
    assert "pixel limit" in data.decode_image(tmp_path / "d" / "big.png", 16)[1]
    monkeypatch.setattr(sources, "MAX_FILE_BYTES", 1000)  # a zip member is refused by its unpacked size
    with zipfile.ZipFile(tmp_path / "z.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.png", b"\0" * 5000)
    with pytest.raises(data.DataError, match="over the 1,000 byte limit"):
        load(tmp_path / "z.zip", tmp_path / "cache")


def test_only_raster_formats_are_tried(tmp_path):
    (tmp_path / "eps.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "webp.jpg", format="WEBP")
    assert data.decode_image(tmp_path / "eps.jpg", 16) == (None, "not a JPEG, PNG, WebP, BMP or GIF image")
    pixels, why = data.decode_image(tmp_path / "webp.jpg", 16)
    assert why == "" and pixels[..., 2].mean() > 200


# ------------------------------------------------------------------ bad arguments and environments

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch tiny run: (out folder, checkpoint bytes). Copy it before changing anything."""
    out = tmp_path_factory.mktemp("trained")
    assert train.main([*TINY, "--limit", "64", "--epochs", "1", "--out", str(out)]) == 0
    return out, (out / "checkpoint.npz").read_bytes()


def copy_run(trained, dest):
    shutil.copytree(trained[0], dest)
    return dest


def one_line_error(capsys, code=2):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case,message", [
    ("empty folder", "no .jpg, .jpeg or .png images found"),
    ("zip without images", "no .jpg, .jpeg or .png images found"),
    ("negative epochs", "--epochs -1 must be at least 1"),
    ("fewer images than a batch", "7 image files are too few, at least 32 are needed"),
    ("out below a file", "cannot write to --out"),
    ("out holds a checkpoint", "already holds a checkpoint: pass --resume"),
    ("out in use by another run", "another training run is writing into"),
    ("resume a model without training state", "holds a model but no training state"),
    ("resume a corrupt checkpoint", "truncated, or not an .npz archive"),
    ("resume a damaged training state", "damaged training state (lr = 'fast')"),
    ("resume another configuration", "trained with z_dim = 4, not 8"),
])
def test_bad_arguments_fail_fast_with_one_line(tmp_path, capsys, monkeypatch, trained, case, message):
    def never(*a):
        raise AssertionError("decoding started before the arguments were checked")

    monkeypatch.setattr(sources, "_decode", never)
    out, extra = tmp_path / "out", ["--epochs", "2"]
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        extra += ["--data", str(tmp_path / "empty")]
    elif case == "zip without images":
        with zipfile.ZipFile(tmp_path / "docs.zip", "w") as zf:
            zf.writestr("readme.txt", "no images here")
        extra += ["--data", str(tmp_path / "docs.zip")]
    elif case == "negative epochs":
        extra = ["--epochs", "-1"]
    elif case == "fewer images than a batch":
        (tmp_path / "few").mkdir()
        for i in range(7):
            Image.new("RGB", (8, 8)).save(tmp_path / "few" / f"{i}.png")
        extra += ["--data", str(tmp_path / "few")]
    elif case == "out below a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    elif case == "out holds a checkpoint":
        out = copy_run(trained, out)
    elif case == "out in use by another run":
        out.mkdir()
        other = os.open(out / outdir.LOCK_NAME, os.O_RDWR | os.O_CREAT)  # what a live run holds
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        monkeypatch.setattr(datasets, "load_data", never)  # stopped before any data is read
    elif case == "resume a model without training state":
        out.mkdir()
        VAE(VAEConfig(image_size=16, filters=4, blocks=2, z_dim=4)).save(out / "checkpoint.npz")
        extra += ["--resume"]
    elif case == "resume a corrupt checkpoint":
        out = copy_run(trained, out)
        (out / "checkpoint.npz").write_bytes(trained[1][:-100])
        extra += ["--resume"]
    elif case == "resume a damaged training state":
        out = copy_run(trained, out)
        path = out / "checkpoint.npz"
        _with(lambda a, m: m["train"].update(lr="fast"))(path, path)
        extra += ["--resume"]
    elif case == "resume another configuration":
        out = copy_run(trained, out)
        extra += ["--resume", "--z-dim", "8"]
    assert train.main([*TINY, "--out", str(out), *extra]) == 2
    assert message in one_line_error(capsys)
    if case == "out in use by another run":
        os.close(other)
    elif (out / outdir.LOCK_NAME).exists():  # a run that stopped after taking the lock gave it back
        mine = os.open(out / outdir.LOCK_NAME, os.O_RDWR)
        fcntl.flock(mine, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(mine)


def run_cli(*args, timeout=HANG_S):
    return subprocess.run([sys.executable, "-m", "scratchvae.train", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_cli_errors_exit_2_without_traceback(tmp_path):
    (tmp_path / "file").write_text("x")
    for args, message in ((["--data", str(tmp_path / "missing")], "no such file or folder"),
                          (["--out", str(tmp_path / "file" / "run")], "Not a directory"),
                          (["--image-size", "18"], "not divisible by 2^blocks"),
                          (["--batch-size", "1"], "BatchNorm needs at least 2"),
                          (["--resume", "--out", str(tmp_path / "nothing")], "no checkpoint")):
        done = run_cli(*TINY, "--out", str(tmp_path / "o"), *args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


# ------------------------------------------------------------------ faults during training

@pytest.mark.parametrize("fault", ["loss", "gradient"])
def test_non_finite_step_stops_with_exit_3_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch, trained,
                                                                    fault):
    out = copy_run(trained, tmp_path / "run")
    metrics = (out / "metrics.csv").read_bytes()
    real, calls = VAE.forward_backward, []

    def poisoned(self, x, eps, *kl_weight):
        terms = real(self, x, eps, *kl_weight)
        calls.append(1)
        if len(calls) == 2:
            if fault == "loss":
                terms = {**terms, "total": float("nan")}
            else:
                self.grads()["decoder.dense.kernel"][0, 0] = np.inf
        return terms

    monkeypatch.setattr(VAE, "forward_backward", poisoned)
    assert train.main([*TINY, "--out", str(out), "--resume", "--epochs", "2"]) == 3
    err = one_line_error(capsys)
    assert "at epoch 2, step 2" in err and "--lr 0.003" in err and "--beta" in err
    assert ("loss became nan" if fault == "loss" else "gradient became non-finite") in err
    assert "checkpoint.npz is unchanged" in err
    assert (out / "checkpoint.npz").read_bytes() == trained[1]
    assert (out / "metrics.csv").read_bytes() == metrics


def test_huge_learning_rate_diverges_at_the_same_step_every_time(tmp_path, capsys):
    for attempt in range(2):
        assert train.main([*TINY, "--limit", "64", "--epochs", "1", "--lr", "1e30",
                           "--out", str(tmp_path / str(attempt))]) == 3
        err = one_line_error(capsys)
        assert "the loss became nan at epoch 1, step 2" in err and "no checkpoint was written" in err
        assert not (tmp_path / str(attempt) / "checkpoint.npz").exists()


class FailingFile:
    """A file whose write puts half the bytes down and then fails as a full or read-only disk does."""

    def __init__(self, f, err):
        self.f, self.err = f, err

    def write(self, data):
        self.f.write(bytes(data)[:len(data) // 2])
        raise OSError(self.err, os.strerror(self.err))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False


def fail_writes_to(monkeypatch, suffix, err):
    """Make every atomic write to a file whose name ends with `suffix` fail with errno `err`."""
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        return FailingFile(f, err) if os.readlink(f"/proc/self/fd/{fd}").endswith(suffix) else f

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)


def assert_full_disk_line(capsys, folder, err):
    line = one_line_error(capsys)
    assert f"into {folder} ({os.strerror(err)}, " in line and f"MB free in {folder})" in line, line


@pytest.mark.parametrize("target,err", [("checkpoint.npz", errno.ENOSPC), ("samples.png", errno.EDQUOT),
                                        ("metrics.csv", errno.EROFS), ("checkpoint.npz", errno.EROFS)])
def test_a_full_or_read_only_disk_is_one_line_and_keeps_the_files(tmp_path, capsys, monkeypatch, trained,
                                                                   target, err):
    out = copy_run(trained, tmp_path / "run")
    before = (out / target).read_bytes()
    fail_writes_to(monkeypatch, target, err)
    assert train.main([*TINY, "--out", str(out), "--resume", "--epochs", "2"]) == 2
    assert_full_disk_line(capsys, out, err)
    assert (out / target).read_bytes() == before  # the previous good file
    assert not [p for p in os.listdir(out) if atomic.is_temp_name(p)]  # its temporary file removed
    VAE.load(out / "checkpoint.npz")


def test_a_full_disk_while_caching_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    bad_folder(tmp_path / "mixed", n_good=40)
    fail_writes_to(monkeypatch, ".json", errno.EDQUOT)  # the cache's sidecar, its last write
    cache_dir = tmp_path / "cache"
    assert train.main([*TINY, "--data", str(tmp_path / "mixed"), "--out", str(tmp_path / "o"), "--cache-dir",
                       str(cache_dir)]) == 2
    line = one_line_error(capsys)
    assert f"cannot write the image cache beside {cache_dir}" in line and os.strerror(errno.EDQUOT) in line
    assert f"MB free in {cache_dir})" in line
    assert not list(cache_dir.iterdir()) and not (tmp_path / "o").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB tmpfs, mounted for the test (root, as in CI's containers)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:  # CI and the development machines run as root; elsewhere say so, never skip
        pytest.fail("mounting a 1 MB tmpfs for the real full-disk tests needs root: run the tests as root, as CI does")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    assert mounted.returncode == 0, f"root could not mount a tmpfs: {mounted.stderr.decode()}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(folder):
    """Write into `folder` until the disk is full."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_a_really_full_disk_keeps_the_checkpoint(small_disk, capsys, trained):
    out = copy_run(trained, small_disk / "run")
    fill(small_disk)
    # Not a byte free: refused before training, by the probe write into --out.
    assert train.main([*TINY, "--out", str(out), "--resume", "--epochs", "2"]) == 2
    assert f"cannot write to --out {out} (No space left on device, 0.0 MB free" in one_line_error(capsys)
    # Two pages free: the run starts, and its first checkpoint (tens of kB) does not fit.
    os.truncate(small_disk / "filler", os.path.getsize(small_disk / "filler") - 8192)
    assert train.main([*TINY, "--out", str(out), "--resume", "--epochs", "2"]) == 2
    assert_full_disk_line(capsys, out, errno.ENOSPC)
    assert (out / "checkpoint.npz").read_bytes() == trained[1]
    assert not [p for p in os.listdir(out) if atomic.is_temp_name(p)]


def test_a_really_full_disk_while_caching_leaves_nothing(small_disk, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(400):  # 400 images of 32x32x3: 1.2 MB, more than the disk
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(folder / f"{i:03d}.png")
    assert train.main([*MODEL, "--image-size", "32", "--batch-size", "16", "--data", str(folder),
                       "--out", str(tmp_path / "o"), "--cache-dir", str(small_disk / "cache")]) == 2
    line = one_line_error(capsys)
    assert "cannot write the image cache" in line and "No space left on device" in line and "MB free" in line
    assert not list((small_disk / "cache").iterdir())


def test_a_read_only_out_is_refused_before_training(small_disk, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert train.main([*TINY, "--out", str(small_disk / "run")]) == 2
    line = one_line_error(capsys)
    assert f"cannot write to --out {small_disk / 'run'} (Read-only file system, " in line and "MB free" in line


def test_an_interrupt_while_preparing_leaves_no_half_built_cache(tmp_path, capsys, monkeypatch):
    bad_folder(tmp_path / "mixed", n_good=32)

    def interrupted(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "_decode", interrupted)
    assert train.main([*TINY, "--data", str(tmp_path / "mixed"), "--out", str(tmp_path / "o"),
                       "--cache-dir", str(tmp_path / "cache")]) == 130
    assert "interrupted outside the training loop" in capsys.readouterr().err
    assert not list((tmp_path / "cache").iterdir())


def test_a_non_finite_checkpoint_is_never_written(tmp_path, trained):
    path = copy_run(trained, tmp_path / "run") / "checkpoint.npz"
    vae, arrays, meta = VAE.load(path, with_extras=True)
    vae.state()["decoder.bn_0.moving_variance"][3] = np.nan
    from scratchvae.optim import Adam
    with pytest.raises(TrainingDiverged, match="moving_variance is not finite"):
        resume.save(vae, Adam(), str(path.parent), Settings.from_record(meta["train"]),
                    resume.Progress(epoch=1, step=3, images=64))
    assert path.read_bytes() == trained[1]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference run of EXACT."""
    out = tmp_path_factory.mktemp("straight")
    assert train.main([*EXACT, "--out", str(out)]) == 0
    return out


def assert_same_run(a_dir, b_dir):
    """Parameters, BatchNorm statistics, Adam state and the loss history all bit for bit equal."""
    a, a_arrays, a_meta = VAE.load(a_dir / "checkpoint.npz", with_extras=True)
    b, b_arrays, b_meta = VAE.load(b_dir / "checkpoint.npz", with_extras=True)
    assert sorted(a_arrays) == sorted(b_arrays)
    for name in a_arrays:
        assert np.array_equal(a_arrays[name], b_arrays[name]), name
    for d1, d2 in ((a.params(), b.params()), (a.state(), b.state())):
        assert all(np.array_equal(d1[k], d2[k]) for k in d1)
    timing = ("images_per_s", "seconds")
    assert [{k: v for k, v in r.items() if k not in timing} for r in a_meta["history"]] == \
           [{k: v for k, v in r.items() if k not in timing} for r in b_meta["history"]]


class StopAfter:
    """Stands in for StopRequest: 'a signal arrived' once `n` steps have run in this process."""

    def __init__(self, n, counter):
        self.n, self.counter = n, counter
        self.signal_name, self.exit_code = "SIGINT", 130

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __bool__(self):
        return len(self.counter) >= self.n


@pytest.mark.parametrize("stop_after", [1, 22, 31])  # first step; last step of epoch 1; mid epoch 2
def test_resume_after_a_stop_at_any_step_is_exact(tmp_path, monkeypatch, straight, stop_after):
    real, counter = VAE.forward_backward, []

    def counted(self, x, eps, *kl_weight):
        counter.append(1)
        return real(self, x, eps, *kl_weight)

    monkeypatch.setattr(VAE, "forward_backward", counted)
    monkeypatch.setattr(loop, "StopRequest", lambda **kw: StopAfter(stop_after, counter))
    assert train.main([*EXACT, "--out", str(tmp_path)]) == 130
    meta = checkpoint.load(tmp_path / "checkpoint.npz")[1]
    assert meta["step"] == stop_after and (meta["partial"] is None) == (stop_after == 22)
    monkeypatch.setattr(loop, "StopRequest", lambda **kw: StopAfter(10**9, counter))
    assert train.main([*EXACT, "--out", str(tmp_path), "--resume"]) == 0
    assert len(counter) == 2 * 22
    assert_same_run(straight, tmp_path)


def test_resume_mid_kl_warm_up_is_exact(tmp_path, monkeypatch):
    """--kl-warmup 3: step s of epoch e trains with KL weight min(1, (e + (s + 1) / 22) / 3), a run
    stopped mid-epoch during the warm-up resumes to the uninterrupted run bit for bit, and
    metrics.csv logs each epoch's mean weight."""
    warm = [*EXACT, "--kl-warmup", "3", "--decoder", "resize", "--recon", "sigma"]
    real, weights = VAE.forward_backward, []

    def recorded(self, x, eps, kl_weight=1.0):
        weights.append(kl_weight)
        return real(self, x, eps, kl_weight)

    monkeypatch.setattr(VAE, "forward_backward", recorded)
    assert train.main([*warm, "--out", str(tmp_path / "straight")]) == 0
    assert weights == [min(1.0, (e + (s + 1) / 22) / 3) for e in range(2) for s in range(22)]
    rows = list(csv.DictReader(open(tmp_path / "straight" / "metrics.csv")))
    assert list(rows[0])[:3] == ["epoch", "step", "kl_weight"]
    assert [float(r["kl_weight"]) for r in rows] == [round((e + 23 / 44) / 3, 6) for e in range(2)]
    weights.clear()
    monkeypatch.setattr(loop, "StopRequest", lambda **kw: StopAfter(31, weights))
    assert train.main([*warm, "--out", str(tmp_path / "split")]) == 130
    monkeypatch.setattr(loop, "StopRequest", lambda **kw: StopAfter(10**9, weights))
    assert train.main([*warm, "--out", str(tmp_path / "split"), "--resume"]) == 0
    assert len(weights) == 2 * 22
    assert_same_run(tmp_path / "straight", tmp_path / "split")


def watch(stream):
    """A queue of the stream's lines (split at \\n and at progress bars' \\r), fed by a thread."""
    lines = queue.Queue()

    def pump():
        held = ""
        for chunk in iter(lambda: os.read(stream.fileno(), 4096), b""):
            *done, held = re.split(r"[\r\n]", held + chunk.decode(errors="replace"))
            for line in done:
                lines.put(line)
        lines.put(held)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for(lines, pattern, timeout):
    """The first match of the regex pattern in a line from watch(); fails on timeout or EOF."""
    end, seen = time.monotonic() + timeout, []
    while time.monotonic() < end:
        try:
            line = lines.get(timeout=end - time.monotonic())
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"never saw {pattern!r}; output was {seen[-20:]!r}")


def drain(lines, timeout=HANG_S):
    """Every line left, once the process has closed the stream."""
    out = []
    while (line := lines.get(timeout=timeout)) is not None:
        out.append(line)
    return out


def train_in_a_process(out, *extra):
    """python -m scratchvae.train with EXACT in a child process; its exit code."""
    return subprocess.run([sys.executable, "-m", "scratchvae.train", *EXACT, "--out", str(out), *extra], cwd=ROOT,
                          capture_output=True, timeout=HANG_S).returncode


def test_the_same_command_gives_the_same_bits_whatever_ran_before(tmp_path):
    """One machine, one thread count: a run whose process compiles the Numba kernels and decodes the
    images, the same run with both caches warm, and a run stopped after its first epoch in a
    compiling process and resumed in a process that loads the kernels from the cache, all end with
    the same bits."""
    def run(out, numba_cache, *extra):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(numba_cache))
        return subprocess.run([sys.executable, "-m", "scratchvae.train", *EXACT, "--out", str(out),
                               "--cache-dir", str(tmp_path / "images"), *extra], cwd=ROOT, env=env,
                              capture_output=True, text=True)

    assert not (tmp_path / "images").exists() and not (tmp_path / "numba-a").exists()
    cold = run(tmp_path / "cold", tmp_path / "numba-a")
    assert cold.returncode == 0, cold.stderr
    assert any((tmp_path / "images").iterdir()) and any((tmp_path / "numba-a").rglob("*.nbi"))
    warm = run(tmp_path / "warm", tmp_path / "numba-a")
    assert warm.returncode == 0, warm.stderr
    first = run(tmp_path / "resumed", tmp_path / "numba-b", "--epochs", "1")
    assert first.returncode == 0, first.stderr
    rest = run(tmp_path / "resumed", tmp_path / "numba-b", "--resume")
    assert rest.returncode == 0, rest.stderr
    assert_same_run(tmp_path / "cold", tmp_path / "warm")
    assert_same_run(tmp_path / "cold", tmp_path / "resumed")


def test_sigint_mid_epoch_saves_and_resume_is_exact(tmp_path):
    straight = tmp_path / "straight"
    assert train_in_a_process(straight) == 0
    out = tmp_path / "run"
    loud = [a for a in EXACT if a != "--quiet"]  # the progress bar on stderr shows which step is running
    proc = subprocess.Popen([sys.executable, "-u", "-m", "scratchvae.train", *loud, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = watch(proc.stdout), watch(proc.stderr)
    try:
        wait_for(stderr, r"epoch 1/2:.*?\|\s*[1-9]\d*/22", timeout=HANG_S)  # training is under way
        proc.send_signal(signal.SIGINT)
        stopped = wait_for(stdout, r"stopped by SIGINT (?:at epoch (\d), step (\d+) of 22|after epoch 1); "
                                   r"checkpoint saved\. Resume with: python -m scratchvae\.train --out \S+ "
                                   r"--resume --epochs 2$", timeout=HANG_S)
        assert proc.wait(timeout=HANG_S) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    rest = drain(stderr)
    assert any(line.startswith("SIGINT: finishing this step") for line in rest)
    assert not any("Traceback" in line for line in rest)
    meta = checkpoint.load(out / "checkpoint.npz")[1]
    if stopped[1]:  # the usual case: mid-epoch, a step or two after the one the progress bar showed
        assert (meta["epoch"], meta["step_in_epoch"]) == (int(stopped[1]) - 1, int(stopped[2]))
    else:  # a machine so busy that epoch 1 ended before the signal was handled
        assert (meta["epoch"], meta["step_in_epoch"]) == (1, 0)
    assert 0 < meta["step"] < 2 * 22
    assert train_in_a_process(out, "--resume") == 0
    assert_same_run(straight, out)


SIGNAL_HELPER = """
import time
from scratchvae.run.interrupt import StopRequest
with StopRequest() as stop:
    print("ready", flush=True)
    while not stop:
        time.sleep(0.01)
    print("stopping", flush=True)
    time.sleep(7200)  # a step longer than the test waits (HANG_S): the second signal must not wait for it
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_exits_at_once(sig):
    proc = subprocess.Popen([sys.executable, "-u", "-c", SIGNAL_HELPER], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = watch(proc.stdout)
    try:
        wait_for(lines, "ready", timeout=HANG_S)
        proc.send_signal(sig)
        wait_for(lines, "stopping", timeout=HANG_S)
        proc.send_signal(sig)
        assert proc.wait(timeout=HANG_S) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"{sig.name} again: exiting now" in proc.stderr.read()


KILL_HELPER = """
import os, sys, time
from scratchvae.run import atomic

class HalfThenHang:
    # The file object atomic.write_bytes writes through: half the bytes reach the disk, then we hang.
    def __init__(self, f):
        self.f = f
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)
    def write(self, b):
        self.f.write(b[:len(b) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        print("half written", flush=True)
        time.sleep(120)
    def flush(self):
        self.f.flush()
    def fileno(self):
        return self.f.fileno()

real_fdopen = os.fdopen
os.fdopen = lambda fd, mode: HalfThenHang(real_fdopen(fd, mode))
atomic.write_bytes(sys.argv[1], b"N" * 2_000_000)
"""


def test_sigkill_while_writing_leaves_the_previous_checkpoint(tmp_path, trained):
    out = copy_run(trained, tmp_path / "run")
    path = out / "checkpoint.npz"
    proc = subprocess.Popen([sys.executable, "-u", "-c", KILL_HELPER, str(path)], cwd=ROOT, stdout=subprocess.PIPE)
    lines = watch(proc.stdout)
    try:
        wait_for(lines, "half written", timeout=HANG_S)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=HANG_S) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert path.read_bytes() == trained[1]
    stale = [p for p in out.iterdir() if p.name.startswith(atomic.TMP_PREFIX)]
    assert len(stale) == 1 and stale[0].stat().st_size == 1_000_000  # killed mid-write, not before
    VAE.load(path)  # the stale temporary file does not disturb loading
    outdir.prepare_out(str(out))  # and the next run into --out removes it
    assert not any(p.name.startswith(atomic.TMP_PREFIX) for p in out.iterdir())
    atomic.write_bytes(str(out / "again.bin"), b"ok")
    assert (out / "again.bin").read_bytes() == b"ok"


def test_a_failed_write_keeps_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic.write_bytes(str(path), b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["metrics.csv"]


def test_every_file_of_a_run_goes_through_the_atomic_helper(tmp_path, monkeypatch):
    """Checkpoint, pictures, metrics, skipped.txt and the prior: one helper, so one temporary-name
    pattern that prepare_out knows; it leaves a user's own files alone."""
    from scratchvae import images
    from scratchvae.latent import prior
    from scratchvae.training import evaluation
    written, real = [], atomic.write_bytes

    def recording(path, data):
        written.append(os.path.basename(path))
        real(path, data)

    monkeypatch.setattr(atomic, "write_bytes", recording)
    VAE(VAEConfig(image_size=16, filters=4, blocks=2, z_dim=4)).save(tmp_path / "checkpoint.npz")
    images.save_grid(tmp_path / "samples.png", np.zeros((2, 4, 4, 3)))
    images.plot_curves(tmp_path / "loss.png", {"loss": [2.0, 1.0]})
    evaluation.write_metrics(str(tmp_path / "metrics.csv"), [{"epoch": 1, "train_total": 1.0}])
    datasets.report_skipped([(f"{i}.jpg", "empty") for i in range(9)], str(tmp_path))
    prior.save(str(tmp_path / "prior.npz"), prior.Prior(np.ones(1), np.zeros((1, 2)), np.eye(2)[None], "full",
                                                        0.0, 0.0, 0.0, 1, "0" * 64))
    assert written == ["checkpoint.npz", "samples.png", "loss.png", "metrics.csv", "skipped.txt", "prior.npz"]
    for name in written:  # what a write killed before its rename leaves
        fd, leftover = tempfile.mkstemp(prefix=atomic.TMP_PREFIX, suffix=name, dir=tmp_path)
        os.close(fd)
        assert atomic.is_temp_name(os.path.basename(leftover)), leftover
    mine = [".tmp-notes.txt", ".tmp-", "notes.txt", ".lock", "tmp-abcdefghcheckpoint.npz"]
    for name in mine:
        (tmp_path / name).write_text("keep")
    outdir.prepare_out(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted([*written, *mine])


# ------------------------------------------------------------------ untrusted files

@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.npz"
    VAE(VAEConfig(image_size=16, filters=4, blocks=2, z_dim=4), seed=3).save(path)
    return path


def _savez(path, meta, arrays):
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    path.write_bytes(buf.getvalue())


def _with(change):
    def write(src, dst):
        arrays, meta = checkpoint.load(src)
        change(arrays, meta)
        _savez(dst, meta, arrays)
    return write


def _flip(offset_from_middle):
    def write(src, dst):
        b = bytearray(src.read_bytes())
        b[len(b) // 2 + offset_from_middle] ^= 0x10
        dst.write_bytes(bytes(b))
    return write


def _object_array(src, dst):
    arrays, meta = checkpoint.load(src)
    arrays["param/decoder.dense.bias"] = np.array([{"evil": 1}] * 4, dtype=object)
    _savez(dst, meta, arrays)


def _lying_header(src, dst):
    """A member whose .npy header claims a far bigger shape than the bytes it holds."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**10,)})
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as zf:
        for info in old.infolist():
            raw = old.read(info)
            if info.filename == "param/decoder.dense.bias.npy":
                raw = header.getvalue() + np.zeros(64, np.float32).tobytes()
            zf.writestr(info.filename, raw)


def _bomb(src, dst):
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__meta__.npy", b"\0" * 50_000_000)


def _deep_meta(src, dst):
    arrays, meta = checkpoint.load(src)
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(b"[" * 100_000 + b"]" * 100_000, np.uint8), **arrays)
    dst.write_bytes(buf.getvalue())


@pytest.mark.parametrize("damage,message", [
    (_object_array, "dtype object; only numeric arrays"),
    (lambda s, d: d.write_bytes(s.read_bytes()[: len(s.read_bytes()) // 2]), "truncated, or not an .npz archive"),
    (_flip(0), "corrupt"),
    (_flip(-5000), "corrupt"),
    (_with(lambda a, m: a.pop("param/encoder.conv_2.bias")), "missing tensor param/encoder.conv_2.bias"),
    (_with(lambda a, m: a.update({"param/encoder.extra": np.zeros(3, np.float32)})),
     "unexpected tensor param/encoder.extra"),
    (_with(lambda a, m: a.update({"param/encoder.conv_1.bias": np.zeros(5, np.float32)})),
     "param/encoder.conv_1.bias has shape (5,), expected (4,)"),
    (_with(lambda a, m: a.update({"param/encoder.conv_1.bias": np.zeros(4, np.float64)})),
     "has dtype float64, expected float32"),
    (_with(lambda a, m: m["config"].update(z_dim=8)), "encoder.z_mean.kernel has shape (64, 4), expected (64, 8)"),
    (_with(lambda a, m: m["config"].update(wings=2)), "unusable config: unknown VAEConfig field(s): wings"),
    # 50,000 filters would mean ~22 billion numbers; refused before anything is allocated
    (_with(lambda a, m: m["config"].update(filters=50_000)), "the config does not belong to these weights"),
    (_with(lambda a, m: m.update(format="something else")), "not a scratchvae checkpoint"),
    (lambda s, d: d.write_bytes(b"\x80\x04K\x01."), "truncated, or not an .npz archive"),  # a pickle
    (_lying_header, "claims shape (10000000000,)"),
    (_bomb, "possibly a zip bomb"),
    (_deep_meta, "damaged metadata record"),
])
def test_damaged_checkpoints_are_rejected_by_name(tmp_path, good_checkpoint, damage, message):
    bad = tmp_path / "bad.npz"
    damage(good_checkpoint, bad)
    with pytest.raises(CheckpointError) as e:
        VAE.load(bad)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_sampling_refuses_non_finite_weights(tmp_path, good_checkpoint, capsys):
    bad = tmp_path / "nan.npz"
    _with(lambda a, m: a["param/decoder.dense.kernel"].__setitem__((0, 0), np.nan))(good_checkpoint, bad)
    assert sample.main([str(bad), "--out", str(tmp_path / "s.png")]) == 2
    assert "non-finite values in decoder.dense.kernel" in one_line_error(capsys)
    assert not (tmp_path / "s.png").exists()


def mutations(original):
    """Random bytes, or the original with a few bytes changed and perhaps cut short."""
    n = len(original)
    edits = st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=1, max_size=4)

    def apply(args):
        flips, cut = args
        b = bytearray(original)
        for i, x in flips:
            b[i] ^= x
        return bytes(b[:cut])

    return st.one_of(st.binary(max_size=3000), st.tuples(edits, st.integers(0, n)).map(apply))


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield d


def test_fuzzed_checkpoints_load_or_fail_cleanly(good_checkpoint, scratch):
    path = os.path.join(scratch, "fuzz.npz")

    @FUZZ
    @given(mutations(good_checkpoint.read_bytes()))
    def check(blob):
        with open(path, "wb") as f:
            f.write(blob)
        try:
            VAE.load(path)
        except CheckpointError as e:
            assert str(e) and "\n" not in str(e)

    check()


def image_seeds():
    x = synthetic_faces(1, 24, seed=5)[0]
    png = io.BytesIO()
    Image.fromarray(x).save(png, format="PNG")
    return jpeg_bytes(x), png.getvalue()


def test_fuzzed_images_decode_or_skip_cleanly(scratch):
    jpeg, png = image_seeds()
    path = os.path.join(scratch, "fuzz.jpg")

    @FUZZ
    @given(st.one_of(mutations(jpeg), mutations(png)))
    def check(blob):
        with open(path, "wb") as f:
            f.write(blob)
        pixels, why = data.decode_image(path, 16)
        if pixels is None:
            assert why and "\n" not in why
        else:
            assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8 and why == ""

    check()


def test_fuzzed_folders_and_zips_load_cleanly(scratch):
    jpeg, png = image_seeds()
    counter = iter(range(10**6))

    @settings(FUZZ, max_examples=30)
    @given(st.one_of(mutations(jpeg), mutations(png)), st.booleans())
    def check(blob, as_zip):
        root = os.path.join(scratch, f"set{next(counter)}")
        os.makedirs(root)
        files = {"fuzz.jpg": blob, "good.png": png}
        if as_zip:
            src = root + ".zip"
            with zipfile.ZipFile(src, "w") as zf:
                for name, b in files.items():
                    zf.writestr(name, b)
        else:
            src = root
            for name, b in files.items():
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b)
        s = data.load_images(src, 16, cache_dir=os.path.join(scratch, "cache"), progress=False)
        assert "good.png" in s.names and len(s.names) + len(s.skipped) == 2
        assert s.images.shape == (len(s.names), 16, 16, 3)

    check()
