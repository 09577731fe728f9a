"""benches/prior_temperature.py on a tiny run of the built-in faces: each temperature's distances are
those of the prior's documented draw at that temperature against the run's own training photographs
(the held-out ones are never read), the lowest FD is named, and bad input is refused in one line."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from scratchvae import train
from scratchvae.data.prefetch import ImageReader
from scratchvae.evaluate import floor_features
from scratchvae.evaluation import distances, measure, source
from scratchvae.evaluation.features import FeatureModel
from scratchvae.latent import mixture, prior
from scratchvae.latent.attributes import load_model
from tests.test_quality import tiny_feature_model
from tests.test_train import TINY

BENCH = Path(__file__).resolve().parents[1] / "benches" / "prior_temperature.py"
_spec = importlib.util.spec_from_file_location("prior_temperature", BENCH)
prior_temperature = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prior_temperature)
N = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior_temperature")
    run = root / "run"
    assert train.main([*TINY, "--out", str(run), "--limit", "96", "--epochs", "1", "--recon", "sigma", "--threads", "1",
                       "--cache-dir", str(root / "cache")]) == 0
    return {"run": run, "features": tiny_feature_model(root / "features.onnx", layout="NHWC")}


def test_each_temperature_is_measured_against_training_photographs_and_the_lowest_is_named(world, tmp_path,
                                                                                           capsys, monkeypatch):
    out = tmp_path / "t.json"
    read = []
    original = ImageReader.read
    monkeypatch.setattr(ImageReader, "read",
                        lambda self, idx: read.append(np.asarray(idx).copy()) or original(self, idx))
    assert prior_temperature.main([str(world["run"]), "--features", str(world["features"]), "--temperatures", "0.5,1,2",
                                   "--n", str(N), "--seed", "3", "--threads", "1", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    vae, meta, identity = load_model(str(world["run"] / "checkpoint.npz"))
    chosen = source.choose(meta, vae.config.image_size, quiet=True)
    assert not set(np.concatenate(read).tolist()) & set(chosen.idx.tolist())  # no held-out photograph read
    model = FeatureModel(str(world["features"]), 1)
    reference = floor_features(model, ImageReader(chosen.pixels), chosen, (N,), 3, 64)[N]
    fitted = prior.load(str(world["run"] / "prior.npz"))
    fds = []
    for row, t in zip(got["rows"], (0.5, 1.0, 2.0)):
        z = mixture.draw(fitted.weights, fitted.means, fitted.cholesky, 3, N, t)
        want = distances.compare(reference, measure.samples(vae, z, 64, model)["features"])
        assert row["temperature"] == t and row["frechet_distance"] == pytest.approx(want["frechet_distance"], rel=1e-9)
        assert row["kid"] == pytest.approx(want["kid"], rel=1e-9, abs=1e-12)
        fds.append(row["frechet_distance"])
    assert len(set(fds)) == 3
    best = (0.5, 1.0, 2.0)[int(np.argmin(fds))]
    assert got["chosen_temperature"] == best and got["reference"] == f"{N} training photographs"
    assert f"lowest FD against {N} training photographs: temperature {best:g}" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [(["--temperatures", "1,0"], "positive"),
                                         (["--temperatures", "1,x"], "numbers separated by commas"),
                                         (["--n", "1"], "--n 1"), (["--seed", "-1"], "--seed -1"),
                                         (["--threads", "0"], "--threads")])
def test_bad_input_is_refused_in_one_line(world, capsys, args, words):
    assert prior_temperature.main([str(world["run"]), "--features", str(world["features"]), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, err


def test_another_prior_file_is_drawn_from_when_named(world, tmp_path):
    other = tmp_path / "one.npz"
    assert prior.main([str(world["run"] / "checkpoint.npz"), "--components", "1", "--out", str(other), "--threads", "1",
                       "--quiet"]) == 0
    out = tmp_path / "t.json"
    assert prior_temperature.main([str(world["run"]), "--features", str(world["features"]), "--prior", str(other),
                                   "--temperatures", "1", "--n", str(N), "--threads", "1", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    vae, meta, _ = load_model(str(world["run"] / "checkpoint.npz"))
    chosen = source.choose(meta, vae.config.image_size, quiet=True)
    model = FeatureModel(str(world["features"]), 1)
    reference = floor_features(model, ImageReader(chosen.pixels), chosen, (N,), 0, 64)[N]
    p = prior.load(str(other))
    z = mixture.draw(p.weights, p.means, p.cholesky, 0, N, 1.0)
    want = distances.frechet_distance_of_features(reference, measure.samples(vae, z, 64, model)["features"])
    assert got["prior"] == str(other) and p.components == 1
    assert got["rows"][0]["frechet_distance"] == pytest.approx(want, rel=1e-9)
