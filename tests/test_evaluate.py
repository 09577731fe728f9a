"""python -m scratchvae.evaluate end to end on tiny checkpoints and images the tests make: the run's
held-out split, other folders, the JSON numbers against a direct computation, the report, errors."""

import json

import numpy as np
import pytest
from PIL import Image

from scratchvae import data, evaluate, images
from scratchvae.data.synthetic import synthetic_faces
from scratchvae.evaluation import distances, measure, pixels
from scratchvae.model import VAE, VAEConfig
from tests.test_quality import expected_features, tiny_feature_model

CFG = VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4)
RUN = {"limit": None, "image_size": 16, "crop": "center", "batch_size": 8, "lr": 1e-3, "beta": CFG.beta, "z_dim": 4,
       "filters": 8, "blocks": 2, "seed": 3, "val_fraction": 0.25}


def make_images(folder, n, size=(20, 24), seed=0):
    """n smooth random RGB images of size (width, height) as PNGs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    for i in range(n):
        a = rng.random((3, 3))
        img = np.stack([a[c, 0] + a[c, 1] * np.sin(6 * xx + 3 * a[c, 2]) * np.cos(5 * yy) for c in range(3)], -1)
        Image.fromarray(np.uint8(np.clip(img / 2, 0, 1) * 255)).save(folder / f"img{i:03d}.png")
    return folder


def make_checkpoint(path, data_path, n_images, **changes):
    vae = VAE(CFG, seed=1)
    for name, a in vae.state().items():  # moving statistics away from (0, 1), as after training
        a[...] = np.float32(0.2) if name.endswith("moving_mean") else np.float32(1.5)
    vae.save(path, meta={"train": {**RUN, "data": data_path, **changes}, "images": n_images, "epoch": 1})
    return vae


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A folder of 40 images 20x24, a checkpoint 'trained' on it, and a helper that evaluates."""
    root = tmp_path_factory.mktemp("evaluate")
    faces = make_images(root / "faces", 40)
    vae = make_checkpoint(root / "checkpoint.npz", str(faces), 40)

    def evaluate_(*args, name="out.json"):
        out = root / name
        code = evaluate.main([str(root / "checkpoint.npz"), "--json", str(out), "--cache-dir", str(root / "cache"),
                              "--threads", "1", "--quiet", *map(str, args)])
        return code, (json.loads(out.read_text()) if code == 0 else None)
    return {"root": root, "faces": faces, "vae": vae, "evaluate": evaluate_}


def direct_terms(vae, x, seed):
    """The reconstruction measures computed here from the definitions, for comparison."""
    z_mean, z_log_var = (np.asarray(a, np.float64) for a in vae.encode(x))
    eps = np.random.default_rng([seed, measure.EPS_STREAM]).standard_normal(z_mean.shape, dtype=np.float32)
    z = z_mean + np.exp(0.5 * z_log_var) * eps
    kl = -0.5 * np.sum(1 + z_log_var - z_mean ** 2 - np.exp(z_log_var)) / len(x)
    out = {}
    for mode, code in (("z_mean", z_mean), ("z_sampled", z)):
        x_hat = np.asarray(vae.decode(code.astype(np.float32)), np.float64)
        mse = np.mean((x - x_hat) ** 2)
        out[mode] = {"mse": mse, "kl": kl, "total": CFG.beta * mse + kl, "psnr": 10 * np.log10(1 / mse),
                     "ssim": pixels.ssim(x, x_hat).mean()}
    return out


def held_out_images(faces, cache):
    found = data.load_images(faces, 16, crop="center", cache_dir=cache, progress=False)
    _, val = data.split_indices(len(found), RUN["val_fraction"], RUN["batch_size"], RUN["seed"], found.partition)
    return found.images[val].astype(np.float32) / 255


def test_own_data_gives_the_runs_held_out_split_and_the_defined_numbers(run, capsys):
    code, record = run["evaluate"]("--data", run["faces"], "--seed", 5)
    assert code == 0
    assert record["split"] == "held-out" and record["data"] == str(run["faces"]) and record["images"] == 10
    assert "note: the images are 20x24" in capsys.readouterr().err  # decoded at the checkpoint's 16x16
    x = held_out_images(run["faces"], run["root"] / "cache")
    expected = direct_terms(run["vae"], x, seed=5)
    for mode in ("z_mean", "z_sampled"):
        for key, value in expected[mode].items():
            assert record[mode][key] == pytest.approx(value, rel=1e-4), (mode, key)
        assert record[mode]["reconstruction"] == pytest.approx(CFG.beta * record[mode]["mse"], rel=1e-12)
    assert record["z_sampled"]["mse"] != record["z_mean"]["mse"]
    blur, checker = record["samples"]["blur"], record["samples"]["checkerboard"]
    assert blur["real"] == pytest.approx(pixels.laplacian_variance(x).mean(), rel=1e-6)
    assert checker["real"] == pytest.approx(pixels.nyquist_share(x).mean(), rel=1e-6)
    z = np.random.default_rng([5, measure.SAMPLE_STREAM]).standard_normal((10, 4), dtype=np.float32)
    fake = np.asarray(run["vae"].decode(z))
    assert blur["samples"] == pytest.approx(pixels.laplacian_variance(fake).mean(), rel=1e-5)
    assert blur["ratio"] == pytest.approx(blur["samples"] / blur["real"], rel=1e-12)
    assert checker["ratio"] == pytest.approx(checker["samples"] / checker["real"], rel=1e-12)
    grid = record["samples"]["grid"]
    assert measure.grid_period(run["vae"].config) == 4  # 2 blocks: the decoder's grid repeats every 4 px
    assert grid["real"] == pytest.approx(pixels.grid_peak_ratio(x, 4).mean(), rel=1e-6)
    assert grid["samples"] == pytest.approx(pixels.grid_peak_ratio(fake, 4).mean(), rel=1e-5)
    assert grid["ratio"] == pytest.approx(grid["samples"] / grid["real"], rel=1e-12)
    assert record["features"] is None


def test_without_data_the_recorded_source_is_used_and_a_link_to_it_is_the_same_source(run):
    code, record = run["evaluate"]()
    assert code == 0 and record["split"] == "held-out" and record["images"] == 10
    link = run["root"] / "link"
    if not link.exists():
        link.symlink_to(run["faces"], target_is_directory=True)
    code, record = run["evaluate"]("--data", link)
    assert code == 0 and record["split"] == "held-out" and record["images"] == 10


def test_numbers_do_not_depend_on_the_batch_size(run):
    _, a = run["evaluate"]("--data", run["faces"], name="a.json")
    _, b = run["evaluate"]("--data", run["faces"], "--batch-size", 3, name="b.json")
    for mode in ("z_mean", "z_sampled"):
        for key in a[mode]:
            assert b[mode][key] == pytest.approx(a[mode][key], rel=1e-5)
    assert b["samples"]["blur"]["samples"] == pytest.approx(a["samples"]["blur"]["samples"], rel=1e-5)


def test_split_all_limit_and_n(run):
    assert run["evaluate"]("--data", run["faces"], "--split", "all")[1]["images"] == 40
    assert run["evaluate"]("--data", run["faces"], "--split", "all", "--limit", 30)[1]["images"] == 30
    assert run["evaluate"]("--data", run["faces"], "--split", "all", "--limit", 30, "--n", 7)[1]["images"] == 7
    code, record = run["evaluate"]("--data", run["faces"], "--n", 4)
    assert code == 0 and record["split"] == "held-out" and record["images"] == 4


def test_another_folder_is_evaluated_whole(run, capsys):
    other = make_images(run["root"] / "other", 12, size=(16, 16), seed=9)
    code, record = run["evaluate"]("--data", other)
    assert code == 0 and record["split"] == "all" and record["images"] == 12
    assert "note:" not in capsys.readouterr().err  # already at the checkpoint's size
    x = data.load_images(other, 16, cache_dir=run["root"] / "cache", progress=False).images.astype(np.float32) / 255
    assert record["z_mean"]["mse"] == pytest.approx(direct_terms(run["vae"], x, seed=0)["z_mean"]["mse"], rel=1e-4)


def test_built_in_synthetic_data_gives_its_held_out_split(tmp_path):
    vae = make_checkpoint(tmp_path / "checkpoint.npz", None, 40)
    out = tmp_path / "out.json"
    assert evaluate.main([str(tmp_path / "checkpoint.npz"), "--json", str(out), "--threads", "1", "--quiet"]) == 0
    record = json.loads(out.read_text())
    _, val = data.split_indices(40, RUN["val_fraction"], RUN["batch_size"], RUN["seed"])
    x = synthetic_faces(40, 16, seed=RUN["seed"])[val].astype(np.float32) / 255
    assert record["split"] == "held-out" and record["data"] == "built-in synthetic faces"
    assert record["images"] == len(val)
    assert record["z_mean"]["mse"] == pytest.approx(direct_terms(vae, x, seed=0)["z_mean"]["mse"], rel=1e-4)


def test_features_give_frechet_distance_and_kid_of_samples_reconstructions_and_the_floor(run, capsys):
    model = tiny_feature_model(run["root"] / "features.onnx", layout="NHWC")
    code, record = run["evaluate"]("--data", run["faces"], "--features", model, "--n-samples", 40)
    assert code == 0
    f = record["features"]
    x = held_out_images(run["faces"], run["root"] / "cache")
    z = np.random.default_rng([0, measure.SAMPLE_STREAM]).standard_normal((40, 4), dtype=np.float32)
    real, fake = expected_features(x), expected_features(np.asarray(run["vae"].decode(z)))
    recon = expected_features(np.asarray(run["vae"].decode(run["vae"].encode(x)[0])))
    assert f["dims"] == 4 and f["layout"] == "NHWC" and f["reference"] == {"images": 10, "what": "held-out photographs"}
    assert record["samples"]["count"] == 40 and record["samples"]["codes"] == "z ~ N(0, I)"
    s, r = f["samples"], f["reconstructions"]
    assert s["count"] == 40 and r["count"] == 10
    assert s["frechet_distance"] == pytest.approx(distances.frechet_distance_of_features(real, fake), rel=1e-4)
    assert s["kid"] == pytest.approx(distances.kid(real, fake)[0], rel=1e-4, abs=1e-6)
    assert s["kid_subsets"] == distances.KID_SUBSETS and s["kid_subset_size"] == 10
    assert r["frechet_distance"] == pytest.approx(distances.frechet_distance_of_features(real, recon), rel=1e-4)
    assert r["kid"] == pytest.approx(distances.mmd2_unbiased(real, recon), rel=1e-4, abs=1e-6)
    assert r["kid_subsets"] == 1 and r["kid_subset_size"] == 10
    # The floor: training photographs from one seeded shuffle of the run's training split, as many as
    # the samples (capped by the 30 there are) and as many as the held-out images.
    found = data.load_images(run["faces"], 16, crop="center", cache_dir=run["root"] / "cache", progress=False)
    train, _ = data.split_indices(len(found), RUN["val_fraction"], RUN["batch_size"], RUN["seed"], found.partition)
    order = np.random.default_rng([0, measure.FLOOR_STREAM]).permutation(train)
    photos = expected_features(found.images[order].astype(np.float32) / 255)
    floor = f["floor"]
    assert floor["at_sample_count"]["count"] == 30 and floor["at_reference_count"]["count"] == 10
    for key, count in (("at_sample_count", 30), ("at_reference_count", 10)):
        assert floor[key]["frechet_distance"] == pytest.approx(
            distances.frechet_distance_of_features(real, photos[:count]), rel=1e-4)
    assert floor["at_reference_count"]["kid"] == pytest.approx(distances.mmd2_unbiased(real, photos[:10]), rel=1e-4,
                                                               abs=1e-6)
    # The best any prior fitted to the training codes can do: the floor's photographs at the samples'
    # count, decoded from their mean codes.
    train_x = found.images[np.sort(order[:30])].astype(np.float32) / 255
    decoded = expected_features(np.asarray(run["vae"].decode(run["vae"].encode(train_x)[0])))
    assert f["training_reconstructions"]["count"] == 30
    assert f["training_reconstructions"]["frechet_distance"] == pytest.approx(
        distances.frechet_distance_of_features(real, decoded), rel=1e-4)
    assert f["sample_seeds"] is None
    out = capsys.readouterr().out
    assert "reconstructions (z = mu)" in out and "floor: training photographs" in out
    assert "training reconstructions (z = mu): any prior's best" in out
    assert "the reference is the 10 held-out photographs, all there are" in out


def test_sample_seeds_give_each_seeds_distances_with_median_and_range(run):
    model = tiny_feature_model(run["root"] / "features.onnx", layout="NHWC")
    code, record = run["evaluate"]("--data", run["faces"], "--features", model, "--n-samples", 12,
                                   "--sample-seeds", "0,4,7", "--seed", 4, "--report", run["root"] / "seeds")
    assert code == 0
    md = (run["root"] / "seeds" / "report.md").read_text()
    assert "| floor: training photographs | 12 |" in md and "samples over seeds 0,4,7" in md
    seeds = record["features"]["sample_seeds"]
    x = held_out_images(run["faces"], run["root"] / "cache")
    real = expected_features(x)
    expected = []
    for seed in (0, 4, 7):
        z = np.random.default_rng([seed, measure.SAMPLE_STREAM]).standard_normal((12, 4), dtype=np.float32)
        expected.append(distances.frechet_distance_of_features(real, expected_features(np.asarray(run["vae"].decode(z)))))
    assert seeds["seeds"] == [0, 4, 7]
    assert seeds["frechet_distance"] == pytest.approx(expected, rel=1e-4)
    assert seeds["frechet_distance"][1] == record["features"]["samples"]["frechet_distance"]  # --seed 4's samples
    assert seeds["frechet_distance_spread"]["median"] == pytest.approx(np.median(expected), rel=1e-4)
    assert seeds["frechet_distance_spread"]["range"] == pytest.approx([min(expected), max(expected)], rel=1e-4)
    assert seeds["kid_spread"]["median"] == np.median(seeds["kid"])
    assert len(set(expected)) == 3


def test_another_folder_has_no_floor(run, capsys):
    other = make_images(run["root"] / "floorless", 6, size=(16, 16), seed=4)
    model = tiny_feature_model(run["root"] / "features.onnx", layout="NHWC")
    code, record = run["evaluate"]("--data", other, "--features", model)
    assert code == 0
    f = record["features"]
    assert f["floor"] is None and f["reference"] == {"images": 6, "what": "evaluated images"}
    assert f["samples"]["count"] == evaluate.FEATURE_SAMPLES == record["samples"]["count"]
    assert "no floor" in capsys.readouterr().out


def test_report_folder_holds_markdown_and_pictures(run, capsys):
    folder = run["root"] / "report"
    code, record = run["evaluate"]("--data", run["faces"], "--report", folder)
    assert code == 0
    md = (folder / "report.md").read_text()
    assert "| SSIM |" in md and "![reconstructions](reconstructions.png)" in md and "latents.png" in md
    assert f"{record['z_mean']['mse']:.5f}" in md
    with Image.open(folder / "reconstructions.png") as im:
        assert im.size[1] == 3 * (16 + 2) + 2  # held-out, z = mu, z sampled
    with Image.open(folder / "samples.png") as im:
        assert im.size == (8 * 18 + 2, 2 * 18 + 2)  # 10 samples, 8 a row
    with Image.open(folder / "latents.png") as im:
        assert im.mode == "RGB" and im.size[0] >= 4 * 200  # one panel per latent dimension (z_dim 4)
        colors = {tuple(c) for c in np.asarray(im).reshape(-1, 3).tolist()}
        assert images.COLORS[0] in colors and images.COLORS[1] in colors  # histogram bars and the N(0, 1) curve
    out = capsys.readouterr().out
    assert "z sampled" in out and "checkerboard" in out


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


def test_bad_inputs_exit_2_with_one_line(run, tmp_path, capsys):
    root = run["root"]
    ckpt = str(root / "checkpoint.npz")
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(open(ckpt, "rb").read()[:3000])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not onnx")
    no_input = tiny_feature_model(tmp_path / "no_input.onnx", size=(3, 3))
    feats = tiny_feature_model(tmp_path / "feats.onnx", layout="NHWC")
    other = make_images(tmp_path / "other", 4, size=(16, 16))
    bare = tmp_path / "bare.npz"
    VAE(CFG).save(bare)  # no training record: there is no own data to fall back on
    broken = tmp_path / "broken.npz"
    vae = VAE(CFG)
    vae.params()["decoder.dense.kernel"][0, 0] = np.nan
    vae.save(broken)
    cases = [([str(tmp_path / "missing.npz"), "--data", str(run["faces"])], "no checkpoint"),
             ([str(bare)], "records no training data"),
             ([str(broken), "--data", str(run["faces"])], "non-finite values in decoder.dense.kernel"),
             ([str(damaged), "--data", str(run["faces"])], "corrupt"),
             ([ckpt, "--data", str(run["faces"]), "--features", str(garbage)], "does not load"),
             ([ckpt, "--data", str(run["faces"]), "--features", str(no_input)], "no usable image input"),
             ([ckpt, "--data", str(other), "--split", "held-out"], "not the data this checkpoint was trained on"),
             ([ckpt, "--data", str(run["faces"]), "--limit", "30"], "--split all"),
             ([ckpt, "--data", str(tmp_path / "nowhere")], "no such file or folder"),
             ([ckpt, "--data", str(run["faces"]), "--batch-size", "0"], "--batch-size"),
             ([ckpt, "--sample-seeds", "0,1"], "add --features"),
             ([ckpt, "--features", str(feats), "--sample-seeds", "0,x"], "--sample-seeds"),
             ([ckpt, "--features", str(feats), "--sample-seeds", "1,1"], "different seeds"),
             ([ckpt, "--temperature", "0"], "--temperature"),
             ([ckpt, "--features", str(feats), "--n-samples", "1"], "--n-samples")]
    for argv, message in cases:
        assert evaluate.main([*argv, "--quiet", "--threads", "1", "--cache-dir", str(root / "cache")]) == 2, argv
        assert message in _one_line_error(capsys), argv


def test_images_smaller_than_the_ssim_window_report_no_ssim(tmp_path, capsys):
    VAE(VAEConfig(image_size=8, filters=4, blocks=2, z_dim=4)).save(tmp_path / "small.npz")
    faces = make_images(tmp_path / "faces", 6, size=(8, 8))
    out = tmp_path / "out.json"
    assert evaluate.main([str(tmp_path / "small.npz"), "--data", str(faces), "--json", str(out), "--quiet",
                          "--threads", "1", "--cache-dir", str(tmp_path / "cache")]) == 0
    record = json.loads(out.read_text())
    assert record["split"] == "all" and record["images"] == 6
    assert record["z_mean"]["ssim"] is None and record["z_mean"]["mse"] > 0
    ssim_rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("SSIM")]
    assert ssim_rows == [["SSIM", "n/a", "n/a"]]


def test_images_smaller_than_two_grid_periods_report_no_grid_measure(tmp_path, capsys):
    VAE(VAEConfig(image_size=8, filters=4, blocks=3, z_dim=4)).save(tmp_path / "small.npz")  # period 8 px
    faces = make_images(tmp_path / "faces", 4, size=(8, 8))
    out = tmp_path / "out.json"
    assert evaluate.main([str(tmp_path / "small.npz"), "--data", str(faces), "--json", str(out), "--quiet",
                          "--threads", "1", "--cache-dir", str(tmp_path / "cache")]) == 0
    grid = json.loads(out.read_text())["samples"]["grid"]
    assert grid == {"samples": None, "real": None, "ratio": None}
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("upsampling grid")]
    assert len(rows) == 1 and rows[0].split()[-3:] == ["n/a", "n/a", "n/a"]


def test_json_is_strict_and_output_folders_are_made(run, tmp_path, capsys):
    from scratchvae.evaluation import report
    report.write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": 2}})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [1.5, None], "c": {"d": 2}}
    out, folder = tmp_path / "new" / "deeper" / "e.json", tmp_path / "new" / "report"
    assert evaluate.main([str(run["root"] / "checkpoint.npz"), "--data", str(run["faces"]), "--n", "3", "--quiet",
                          "--threads", "1", "--cache-dir", str(run["root"] / "cache"), "--json", str(out),
                          "--report", str(folder)]) == 0
    assert json.loads(out.read_text())["images"] == 3 and (folder / "report.md").is_file()
    capsys.readouterr()
    blocked = tmp_path / "file"
    blocked.write_text("x")
    assert evaluate.main([str(run["root"] / "checkpoint.npz"), "--report", str(blocked / "sub"), "--quiet"]) == 2
    assert "cannot create" in _one_line_error(capsys)


def test_bn_batches_measures_the_statistics_training_would_have(tmp_path):
    """A run trained with Keras' moving averages only, evaluated with --bn-batches N, gives exactly
    the numbers of the same run trained with N precise batches after its last epoch: the same
    weights, and the same training batches and noise for the measurement."""
    from scratchvae import train
    tiny = ["--image-size", "16", "--filters", "4", "--blocks", "2", "--z-dim", "4", "--batch-size", "8",
            "--limit", "64", "--epochs", "2", "--quiet"]
    assert train.main([*tiny, "--bn-batches", "0", "--out", str(tmp_path / "keras")]) == 0
    assert train.main([*tiny, "--bn-batches", "3", "--out", str(tmp_path / "precise")]) == 0
    common = ["--quiet", "--cache-dir", str(tmp_path / "cache")]
    results = {}
    for name, extra in (("keras", []), ("keras+bn", ["--bn-batches", "3"]), ("precise", [])):
        path = tmp_path / f"{name}.json"
        ckpt = tmp_path / name.split("+")[0] / "checkpoint.npz"
        assert evaluate.main([str(ckpt), *common, *extra, "--json", str(path)]) == 0
        results[name] = json.loads(path.read_text())
    assert results["keras+bn"]["z_sampled"] == results["precise"]["z_sampled"]
    assert results["keras+bn"]["z_mean"] == results["precise"]["z_mean"]
    assert results["keras"]["z_mean"] != results["precise"]["z_mean"]


def test_bn_batches_needs_the_runs_own_training_images(run, tmp_path, capsys):
    other = tmp_path / "other"
    make_images(other, 6)
    code = evaluate.main([str(run["root"] / "checkpoint.npz"), "--data", str(other), "--bn-batches", "2", "--quiet",
                          "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: --bn-batches") and "training images" in err[-1]


def test_a_sigma_vae_with_the_resize_decoder_reports_its_total_in_nats(tmp_path, capsys):
    """recon "sigma": total = D/2 (log(2 pi MSE) + 1) + KL over the evaluated images, labelled so;
    the MSE, PSNR and KL are measured as for every model."""
    cfg = VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4, decoder="resize", recon="sigma")
    vae = VAE(cfg, seed=1)
    vae.save(tmp_path / "checkpoint.npz", meta={"train": {**RUN, "data": None, "decoder": "resize",
                                                          "recon": "sigma"}, "images": 40, "epoch": 1})
    out = tmp_path / "out.json"
    assert evaluate.main([str(tmp_path / "checkpoint.npz"), "--json", str(out), "--threads", "1", "--quiet"]) == 0
    record = json.loads(out.read_text())
    assert (record["recon"], record["decoder"]) == ("sigma", "resize")
    assert "total (sigma-VAE, nats per image)" in capsys.readouterr().out
    _, val = data.split_indices(40, RUN["val_fraction"], RUN["batch_size"], RUN["seed"])
    x = synthetic_faces(40, 16, seed=RUN["seed"])[val].astype(np.float32) / 255
    x_hat = np.asarray(vae.decode(vae.encode(x)[0]), np.float64)
    mse = np.mean((x - x_hat) ** 2)
    terms = record["z_mean"]
    assert terms["mse"] == pytest.approx(mse, rel=1e-4)
    assert terms["reconstruction"] == pytest.approx(16 * 16 * 3 / 2 * (np.log(2 * np.pi * mse) + 1), rel=1e-4)
    assert terms["total"] == pytest.approx(terms["reconstruction"] + terms["kl"], rel=1e-12)


def _two_bump_prior(vae, path, identity=None):
    """A prior file for `vae`: two components at -2 and +2 on z[0], narrow, weights 0.3 / 0.7."""
    from scratchvae.latent import prior, vectors
    d = vae.config.z_dim
    means = np.zeros((2, d))
    means[:, 0] = [-2.0, 2.0]
    fitted = prior.Prior(np.array([0.3, 0.7]), means, np.repeat(np.eye(d)[None] * 0.2, 2, axis=0), "full",
                         0.0, 0.0, 0.0, 10, identity or vectors.model_identity(vae))
    prior.save(path, fitted)
    return fitted


def test_prior_draws_the_samples_from_the_fitted_mixture(run, capsys):
    from scratchvae.latent import mixture
    fitted = _two_bump_prior(run["vae"], run["root"] / "prior.npz")
    model = tiny_feature_model(run["root"] / "features.onnx", layout="NHWC")
    code, record = run["evaluate"]("--data", run["faces"], "--features", model, "--n-samples", 30,
                                   "--prior", run["root"] / "prior.npz", "--temperature", 0.5, "--seed", 3)
    assert code == 0
    s = record["samples"]
    assert s["codes"] == "z ~ the prior prior.npz at temperature 0.5" and s["temperature"] == 0.5 and s["count"] == 30
    z = mixture.draw(fitted.weights, fitted.means, fitted.cholesky, 3, 30, 0.5)
    fake = np.asarray(run["vae"].decode(z))
    assert s["blur"]["samples"] == pytest.approx(pixels.laplacian_variance(fake).mean(), rel=1e-5)
    real = expected_features(held_out_images(run["faces"], run["root"] / "cache"))
    assert record["features"]["samples"]["frechet_distance"] == pytest.approx(
        distances.frechet_distance_of_features(real, expected_features(fake)), rel=1e-4)
    assert "30 samples of z ~ the prior prior.npz at temperature 0.5" in capsys.readouterr().out
    _, plain = run["evaluate"]("--data", run["faces"], "--features", model, "--n-samples", 30, "--seed", 3,
                               name="plain.json")
    assert plain["samples"]["codes"] == "z ~ N(0, I)"
    assert plain["samples"]["blur"]["samples"] != s["blur"]["samples"]


def test_a_prior_of_another_checkpoint_is_refused_in_one_line(run, tmp_path, capsys):
    _two_bump_prior(run["vae"], tmp_path / "other.npz", identity="0" * 64)
    code = evaluate.main([str(run["root"] / "checkpoint.npz"), "--prior", str(tmp_path / "other.npz"), "--quiet",
                          "--threads", "1", "--cache-dir", str(run["root"] / "cache")])
    assert code == 2 and "another checkpoint" in _one_line_error(capsys)
