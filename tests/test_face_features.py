"""python -m scratchvae.face_features end to end on a tiny CelebA-like folder the test writes (two
visible attributes and one coin toss), the exported ONNX against the package's own forward, and
the network in evaluate's feature loader."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from scratchvae import data, face_features
from scratchvae.evaluation import classifier, classifier_onnx
from scratchvae.evaluation.features import FeatureModel

NAMES = ["Bright_Top", "Red", "Coin"]


def celeba_like(folder, n, seed=0):
    """n JPEGs 20x24 named as CelebA names them, and a list_attr_celeba.txt beside them: Bright_Top
    lightens the top half, Red tints the face, Coin is a label with nothing to see."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    values = np.where(rng.random((n, len(NAMES))) < 0.5, 1, -1)
    files = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name, row in zip(files, values):
        x = rng.uniform(0.1, 0.5, (24, 20, 3))
        if row[0] > 0:
            x[:12] += 0.45
        if row[1] > 0:
            x[..., 0] += 0.4
        Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255)).save(folder / name, quality=95)
    lines = [str(n), " ".join(NAMES)] + [f"{f} " + " ".join(f"{v:2d}" for v in row) for f, row in zip(files, values)]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    return values


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("face_features")
    celeba_like(root / "faces", 160)
    out = root / "net" / "faces.onnx"
    argv = ["--data", str(root / "faces"), "--out", str(out), "--image-size", "16", "--epochs", "12",
            "--batch-size", "16", "--val-fraction", "0.2", "--seed", "2", "--threads", "1", "--quiet",
            "--cache-dir", str(root / "cache")]
    assert face_features.main(argv) == 0
    return {"root": root, "out": out, "argv": argv}


def test_trains_on_the_training_split_and_reports_held_out_accuracy(trained, capsys):
    record = json.loads((trained["root"] / "net" / "faces.json").read_text())
    found = data.load_images(trained["root"] / "faces", 16, cache_dir=trained["root"] / "cache", progress=False)
    train, val = data.split_indices(len(found), 0.2, 16, 2, found.partition)  # what training holds out
    assert record["split"] == {"train": len(train), "held_out": len(val), "seed": 2, "val_fraction": 0.2,
                               "batch_size": 16, "limit": None}
    assert (len(train), len(val)) == (128, 32)
    acc = record["held_out"]["attributes"]
    assert list(acc) == NAMES and all(a["positives"] + a["negatives"] == 32 for a in acc.values())
    assert acc["Bright_Top"]["accuracy"] > 0.9 and acc["Red"]["accuracy"] > 0.9
    assert record["held_out"]["mean_accuracy"] == pytest.approx(np.mean([a["accuracy"] for a in acc.values()]))
    assert record["features"] == 256 and record["image_size"] == 16 and len(record["history"]) == 12
    assert record["history"][-1]["loss"] < record["history"][0]["loss"]
    assert record["onnx_max_abs_difference"] < 1e-4
    assert "Not Inception" in record["note"]


def test_the_network_loads_in_evaluates_feature_loader(trained):
    model = FeatureModel(trained["out"])
    assert model.layout == "NHWC" and model.size == (16, 16) and model.output == "features"
    x = np.random.default_rng(0).uniform(0, 1, (5, 16, 16, 3)).astype(np.float32)
    f = model(x)
    assert f.shape == (5, 256) and f.min() >= 0
    bigger = model(np.repeat(np.repeat(x, 2, axis=1), 2, axis=2))  # 32x32 input is resized to 16x16 first
    assert bigger.shape == (5, 256)
    props = {p.key: p.value for p in onnx.load(str(trained["out"])).metadata_props}
    assert props["image_size"] == "16" and props["features"] == "256" and "Not Inception" in props["note"]
    assert json.loads(props["attributes"]) == NAMES


@pytest.mark.parametrize("size", [16, 9])
def test_onnx_matches_the_packages_forward(tmp_path, rng, size):
    clf = classifier.Classifier(size, ["a", "b", "c"], filters=(4, 6, 8), seed=1, hidden=12)
    for p in clf.params().values():
        p[...] = rng.standard_normal(p.shape) * 0.3  # nonzero biases: both sides of every ReLU
    path = tmp_path / "f.onnx"
    path.write_bytes(classifier_onnx.build(clf).SerializeToString())
    x = rng.uniform(0, 1, (7, size, size, 3)).astype(np.float32)
    run = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    features, logits = run.run(["features", "logits"], {"image": x})
    assert features.shape == (7, 12) and (features == 0).any() and (features > 0).any()
    np.testing.assert_allclose(features, clf.features(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, clf.logits(x), rtol=1e-4, atol=1e-4)


def test_a_network_without_a_hidden_layer_is_not_exported():
    with pytest.raises(ValueError, match="hidden"):
        classifier_onnx.build(classifier.Classifier(8, ["a"], filters=(2,)))


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


def test_bad_inputs_exit_2_with_one_line(trained, tmp_path, capsys):
    argv, root = trained["argv"], trained["root"]
    stray = tmp_path / "stray"
    stray.mkdir()
    Image.new("RGB", (20, 24)).save(stray / "000001.jpg")
    cases = [(argv, "exists: pass --force"),
             ([*argv, "--force", "--attributes", str(tmp_path / "none.txt")], "no such file"),
             (["--data", str(root / "faces"), "--out", str(tmp_path / "a.onnx"), "--epochs", "0"], "--epochs"),
             (["--data", str(root / "faces"), "--out", str(tmp_path / "a.onnx"), "--val-fraction", "1"],
              "--val-fraction"),
             (["--data", str(stray), "--out", str(tmp_path / "a.onnx"), "--batch-size", "16"], "no list_attr_celeba"),
             (["--data", str(root / "faces"), "--out", str(tmp_path / "b.onnx"), "--limit", "8",
               "--batch-size", "16"], "too few")]
    for case, message in cases:
        assert face_features.main([*case, "--quiet", "--threads", "1", "--cache-dir", str(root / "cache")]) == 2, case
        assert message in _one_line_error(capsys), case
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
