"""The training command end to end on tiny configs: outputs, falling loss, exact resume, errors."""

import csv

import numpy as np
import pytest
from PIL import Image

from scratchvae import train
from scratchvae.model import VAE

TINY = ["--image-size", "16", "--filters", "4", "--blocks", "2", "--z-dim", "4", "--batch-size", "16",
        "--lr", "3e-3", "--quiet"]


def run(out, *extra):
    return train.main([*TINY, "--out", str(out), *extra])


def test_outputs_and_falling_loss(tmp_path):
    assert run(tmp_path, "--limit", "160", "--epochs", "4") == 0
    for name in ("checkpoint.npz", "samples.png", "reconstructions.png", "loss.png", "metrics.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train_total"]) < 0.8 * float(rows[0]["train_total"])
    assert float(rows[-1]["val_mse"]) < float(rows[0]["val_mse"])
    with Image.open(tmp_path / "samples.png") as im:
        assert im.size[0] >= 8 * 16 and im.mode == "RGB"
    vae = VAE.load(tmp_path / "checkpoint.npz")
    assert vae.config.image_size == 16 and vae.config.z_dim == 4


def test_training_images_are_measured_as_the_held_out_ones(tmp_path):
    # metrics.csv's train_inference_mse: the held-out measurement (inference mode, the held-out z
    # draws) repeated on as many training images, spread over the training set.
    from scratchvae.data.prefetch import ImageReader
    from scratchvae.training import datasets, evaluation
    from scratchvae.training.settings import Settings
    assert run(tmp_path, "--limit", "96", "--epochs", "2") == 0
    last = list(csv.DictReader(open(tmp_path / "metrics.csv")))[-1]
    vae = VAE.load(tmp_path / "checkpoint.npz")
    s = Settings(image_size=16, batch_size=16, lr=3e-3, limit=96)
    pixels, train_idx, val_idx = datasets.load_data(s, None, True, tmp_path, root=False)
    alike = evaluation.training_alike(train_idx, len(val_idx))
    assert (len(val_idx), len(alike)) == (16, 20)  # a quarter of the 80 training images, more than are held out
    assert len(set(alike.tolist())) == 20 and set(alike) <= set(train_idx)
    reader = ImageReader(pixels)
    assert float(last["val_mse"]) == round(evaluation.held_out(vae, reader, val_idx, s, 1)["mse"], 6)
    assert float(last["train_inference_mse"]) == round(evaluation.held_out(vae, reader, alike, s, 1)["mse"], 6)


def test_a_run_from_before_the_training_images_column_resumes_without_it(tmp_path):
    from scratchvae.run import checkpoint
    assert run(tmp_path, "--limit", "96", "--epochs", "1") == 0
    arrays, meta = checkpoint.load(tmp_path / "checkpoint.npz")
    meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
    meta["history"] = [{k: v for k, v in r.items() if k != "train_inference_mse"} for r in meta["history"]]
    checkpoint.save(tmp_path / "checkpoint.npz", arrays, meta)
    assert run(tmp_path, "--resume", "--epochs", "2") == 0
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith(",seconds") and "train_inference_mse" not in header
    assert run(tmp_path, "--resume", "--epochs", "3") == 0  # its history still passes the resume check


def test_resume_at_epoch_boundary_is_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(straight, "--limit", "96", "--epochs", "3") == 0
    assert run(split, "--limit", "96", "--epochs", "1") == 0
    assert run(split, "--resume", "--epochs", "3") == 0
    a, b = VAE.load(straight / "checkpoint.npz"), VAE.load(split / "checkpoint.npz")
    for d1, d2 in ((a.params(), b.params()), (a.state(), b.state())):
        for k in d1:
            assert np.array_equal(d1[k], d2[k]), k
    rows = list(csv.DictReader(open(split / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # One column order for the life of a run: the resumed history comes back from JSON sorted by key.
    header = (split / "metrics.csv").read_text().splitlines()[0]
    assert header == (straight / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,step,train_total,train_reconstruction,") and header.endswith(",seconds,train_inference_mse")


def test_a_resize_sigma_vae_run_records_its_choices_and_reports_nats(tmp_path):
    assert run(tmp_path, "--limit", "96", "--epochs", "2", "--decoder", "resize", "--recon", "sigma") == 0
    vae, _, meta = VAE.load(tmp_path / "checkpoint.npz", with_extras=True)
    assert (vae.config.decoder, vae.config.recon) == ("resize", "sigma") == (meta["train"]["decoder"],
                                                                           meta["train"]["recon"])
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert "kl_weight" not in rows[0]
    for r in rows:  # held out: D/2 (log(2 pi MSE) + 1) nats per image, one variance for the set
        d, mse = 16 * 16 * 3, float(r["val_mse"])
        # metrics.csv keeps 6 decimals: val_mse's rounding (up to 5e-7) moves the log by up to 5e-7 / mse
        bound = d / 2 * 5e-7 / mse + 1e-6
        assert float(r["val_reconstruction"]) == pytest.approx(d / 2 * (np.log(2 * np.pi * mse) + 1), abs=bound)
        assert float(r["val_total"]) == pytest.approx(float(r["val_reconstruction"]) + float(r["val_kl"]), abs=1e-5)
    assert float(rows[-1]["train_mse"]) < float(rows[0]["train_mse"])


@pytest.mark.parametrize("extra,message", [
    (["--batch-size", "1"], "BatchNorm needs at least 2"),
    (["--epochs", "0"], "--epochs 0 must be at least 1"),
    (["--image-size", "18"], "not divisible by 2^blocks"),
    (["--data", "does/not/exist"], "does/not/exist"),
    (["--resume"], "no checkpoint"),
    (["--limit", "20"], "too few"),
    (["--recon", "sigma", "--beta", "5"], "--beta has no effect with --recon sigma"),
    (["--kl-warmup", "-1"], "--kl-warmup -1 must be zero or more"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, extra, message):
    assert run(tmp_path / "o" / "run", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # no --out folder holding only .lock


def test_resume_rejects_another_configuration(tmp_path, capsys):
    assert run(tmp_path, "--limit", "64", "--epochs", "1") == 0
    assert train.main([*TINY[:-1], "--z-dim", "8", "--out", str(tmp_path), "--resume", "--epochs", "2"]) == 2
    assert "z_dim" in capsys.readouterr().err
    for flag, value in (("--decoder", "resize"), ("--recon", "mse"), ("--kl-warmup", "2"), ("--lr-decay", "0.5")):
        assert train.main([*TINY, "--out", str(tmp_path), "--resume", "--epochs", "2", flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert f"{flag[2:].replace('-', '_')} = " in err and "\n" not in err, err


def test_default_out_never_replaces_an_earlier_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--limit", "64", "--epochs", "1", "--cache-dir", str(tmp_path / "cache")]
    assert train.main(args) == 0
    first = (tmp_path / "runs" / "vae" / "checkpoint.npz").read_bytes()
    assert train.main(args) == 0
    assert "writing to runs/vae-2" in capsys.readouterr().out
    assert (tmp_path / "runs" / "vae-2" / "checkpoint.npz").is_file()
    assert (tmp_path / "runs" / "vae" / "checkpoint.npz").read_bytes() == first
    # the built-in faces were drawn once and cached
    assert len(list((tmp_path / "cache").glob("synthetic-*.npy"))) == 1


def test_sample_command_writes_grid_reconstructions_and_walk(tmp_path):
    from scratchvae import sample
    assert run(tmp_path, "--limit", "64", "--epochs", "1") == 0
    face = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(face)
    out = tmp_path / "s"  # three pictures: --out is their folder
    assert sample.main([str(tmp_path / "checkpoint.npz"), "--grid", "-n", "6", "--out", str(out),
                        "--reconstruct", str(face), str(face), "--interpolate", "--steps", "5"]) == 0
    with Image.open(out / "grid-n6-seed0.png") as grid, Image.open(out / "walk-seed0.png") as walk, \
            Image.open(out / "reconstructions-face-face.png") as rec:
        assert grid.width >= 3 * 16 and walk.width >= 5 * 16 and rec.height >= 2 * 16
    assert sample.main([str(tmp_path / "checkpoint.npz"), "--out", str(tmp_path / "m.png"), "--reconstruct",
                        str(tmp_path / "missing.jpg")]) == 2
    assert not (tmp_path / "m.png").exists()


# ------------------------------------------------------------------ the settings record

def test_settings_take_the_model_defaults_from_vaeconfig():
    from scratchvae.model import VAEConfig
    from scratchvae.training.settings import Settings
    s, cfg = Settings(), VAEConfig()
    assert (s.image_size, s.filters, s.blocks, s.z_dim, s.beta) == \
           (cfg.image_size, cfg.filters, cfg.blocks, cfg.z_dim, cfg.beta)
    assert s.model_config() == cfg
    assert Settings(z_dim=7, image_size=32).model_config() == VAEConfig(z_dim=7, image_size=32)
    assert Settings(decoder="resize", recon="sigma").model_config() == VAEConfig(decoder="resize", recon="sigma")


def test_settings_written_before_the_decoder_options_resume_as_the_seed():
    from scratchvae.training.settings import Settings
    record = {k: v for k, v in Settings().to_record().items() if k not in ("decoder", "recon", "kl_warmup")}
    s = Settings.from_record(record)
    assert (s.decoder, s.recon, s.kl_warmup) == ("transpose", "mse", 0) and s.kl_weight(0, 0, 10) == 1.0
    assert Settings(kl_warmup=2).kl_weight(0, 4, 10) == 0.25 and Settings(kl_warmup=2).kl_weight(3, 0, 10) == 1.0


def test_settings_from_the_command_line_and_from_a_checkpoint():
    from scratchvae.run.errors import UserError
    from scratchvae.training import settings
    from scratchvae.training.cli import build_parser
    fresh = settings.resolve(build_parser().parse_args(["--z-dim", "8"]))
    assert fresh.z_dim == 8 and fresh.batch_size == settings.SYNTHETIC_BATCH and fresh.data is None
    assert settings.resolve(build_parser().parse_args(["--data", "faces"])).batch_size == 64
    assert settings.Settings.from_record(fresh.to_record()) == fresh
    assert settings.resolve(build_parser().parse_args(["--seed", "0"]), fresh) is fresh
    with pytest.raises(UserError, match="trained with z_dim = 8, not 9"):
        settings.resolve(build_parser().parse_args(["--z-dim", "9"]), fresh)
    with pytest.raises(UserError, match="--epochs 0 must be at least 1"):
        settings.epochs(0, fresh)
    assert settings.epochs(None, fresh) == settings.SYNTHETIC_EPOCHS


def test_the_built_in_data_has_its_own_recipe_and_data_keeps_the_seeds():
    from scratchvae.training import settings
    from scratchvae.training.cli import build_parser

    def resolved(*argv):
        return settings.resolve(build_parser().parse_args(list(argv)))
    built_in = resolved()
    assert (built_in.image_size, built_in.recon, built_in.batch_size, built_in.lr_decay) == (64, "sigma", 16, 0.64)
    # 3,072 built-in faces: 2,560 to train on (160 steps an epoch) and 512 held out
    from scratchvae.data import split_indices
    from scratchvae.training import datasets
    train_idx, val_idx = split_indices(datasets.SYNTHETIC_COUNT, built_in.val_fraction, built_in.batch_size, 0)
    assert (len(train_idx), len(val_idx)) == (2560, 512) and settings.epochs(None, built_in) == 5
    seeds = resolved("--data", "faces")
    assert (seeds.image_size, seeds.recon, seeds.batch_size, seeds.beta, seeds.lr_decay) == (128, "mse", 64, 2000.0, 1)
    assert seeds.val_fraction == 0.05 and resolved("--val-fraction", "0.1").val_fraction == 0.1
    assert resolved("--beta", "500").recon == "mse"  # --beta asks for the seed's objective
    assert resolved("--recon", "mse").recon == "mse" and resolved("--image-size", "128").image_size == 128


def test_precise_batchnorm_statistics_measure_at_most_a_quarter_of_the_training_images():
    from scratchvae.training import batchnorm
    assert batchnorm.default_batches(16, 1277) == 20  # 319 images of the built-in data's 1,277
    assert batchnorm.default_batches(32, 7600) == 60  # 1,900 images: a quarter of the CelebA sample
    assert batchnorm.default_batches(64, 202599) == 32  # about 2,000 images of all of CelebA
    assert batchnorm.default_batches(64, 10) == 1
    assert batchnorm.default_batches(32) == 63


@pytest.mark.parametrize("key,value", [("lr", "fast"), ("seed", True), ("limit", 2.5), ("data", 3),
                                       ("image_size", None), ("beta", [1])])
def test_a_damaged_stored_setting_is_refused(key, value):
    from scratchvae.training.settings import Settings
    record = Settings().to_record()
    with pytest.raises(ValueError, match=f"{key} = "):
        Settings.from_record({**record, key: value})
    del record[key]
    with pytest.raises(ValueError, match=f"{key} = None"):
        Settings.from_record(record)


def test_stored_settings_are_checked_like_the_command_line():
    from scratchvae.run.errors import UserError
    from scratchvae.training.settings import Settings
    record = Settings().to_record()
    assert Settings.from_record({**record, "lr": 1, "limit": None}).lr == 1  # JSON may store 1e0 as 1
    for key, value, message in (("crop", "stretch", "not one of center, squash"),
                                ("batch_size", 1, "BatchNorm needs at least 2"),
                                ("image_size", 100, r"not divisible by 2\^blocks")):
        with pytest.raises(UserError, match=message):
            Settings.from_record({**record, key: value})


def test_precise_batchnorm_statistics_change_only_the_statistics(tmp_path):
    """After each epoch the moving statistics are measured exactly (default) or kept as Keras'
    moving averages (--bn-batches 0): the trained weights and Adam state are the same either way."""
    precise, keras = tmp_path / "precise", tmp_path / "keras"
    assert run(precise, "--limit", "96", "--epochs", "2") == 0
    assert run(keras, "--limit", "96", "--epochs", "2", "--bn-batches", "0") == 0
    a, a_arrays, a_meta = VAE.load(precise / "checkpoint.npz", with_extras=True)
    b, b_arrays, b_meta = VAE.load(keras / "checkpoint.npz", with_extras=True)
    for name in a_arrays:
        if not name.startswith("state/"):
            assert np.array_equal(a_arrays[name], b_arrays[name]), name
    assert not np.array_equal(a.state()["decoder.bn_1.moving_mean"], b.state()["decoder.bn_1.moving_mean"])
    assert a_meta["train"]["bn_batches"] is None and b_meta["train"]["bn_batches"] == 0
    rows = list(csv.DictReader(open(precise / "metrics.csv")))
    # the precise statistics make the held-out KL a real code again, near the training one
    assert float(rows[-1]["val_kl"]) > 0.5 * float(rows[-1]["train_kl"])


def test_a_short_run_without_precise_statistics_says_so(tmp_path, capsys):
    assert train.main([*TINY[:-1], "--out", str(tmp_path), "--limit", "48", "--epochs", "1",
                       "--bn-batches", "0"]) == 0
    assert "too few for them to settle" in capsys.readouterr().out
    assert train.main([*TINY[:-1], "--out", str(tmp_path / "b"), "--limit", "48", "--epochs", "1"]) == 0
    assert "settle" not in capsys.readouterr().out


def test_a_checkpoint_from_before_precise_statistics_resumes_as_it_was_trained(tmp_path):
    """tests/fixtures/checkpoint-v0.1.npz (written before --bn-batches existed) resumes with the
    moving averages it was trained with (bn_batches 0), on the data it was trained on."""
    import os
    import shutil
    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "checkpoint-v0.1.npz")
    (tmp_path / "old").mkdir()
    shutil.copy(fixture, tmp_path / "old" / "checkpoint.npz")
    assert train.main(["--out", str(tmp_path / "old"), "--resume", "--epochs", "2", "--quiet"]) == 0
    _, _, meta = VAE.load(tmp_path / "old" / "checkpoint.npz", with_extras=True)
    assert meta["epoch"] == 2 and meta["train"]["bn_batches"] == 0
