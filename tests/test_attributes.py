"""Attribute vectors end to end on a tiny model and a labelled set the tests make: the mean differences
against a direct computation, the vectors file and the checkpoint identity, attribute rows and morphs
in the Python sampler and through ONNX (the same picture), and one-line refusals of bad input."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from scratchvae import images, latent
from scratchvae import sample as py_sample
from scratchvae.latent import attributes, vectors
from scratchvae.model import VAE, VAEConfig
from scratchvae.run.errors import UserError
from tests.labelled import labelled_faces

EXPORT = Path(__file__).resolve().parents[1] / "export"
if str(EXPORT) not in sys.path:
    sys.path.insert(0, str(EXPORT))
import edits  # noqa: E402
import pictures  # noqa: E402
import sample as onnx_sample  # noqa: E402
import to_onnx  # noqa: E402
from tests.hang import HANG_S

SMALL = VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4)
NAMES = ["Smiling", "Eyeglasses", "Blond_Hair", "Bald"]
N_IMAGES = 40
# The line of column captions (strengths, t) under a strip: its height over one row of 4-pixel tiles.
CAPTION_H = pictures.labelled_rows([np.zeros((1, 4, 4, 3))], columns=["0"]).shape[0] - (4 + 2 * 2)


def tiny_vae(seed):
    vae = VAE(SMALL, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for name, a in vae.state().items():  # BN statistics away from init, so inference mode is not trivial
        a[...] = rng.uniform(0.5, 2.0, a.shape) if name.endswith("variance") else rng.normal(0, 0.3, a.shape)
    return vae


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attributes")
    faces = tmp / "faces"
    files, values = labelled_faces(faces, N_IMAGES, NAMES, seed=5)  # Bald, the last, is nobody's: skipped
    vae = tiny_vae(0)
    ckpt = tmp / "run" / "checkpoint.npz"
    ckpt.parent.mkdir()
    vae.save(ckpt)
    out = tmp / "vectors.npz"
    assert attributes.main([str(ckpt), "--data", str(faces), "--out", str(out), "--min-count", "5",
                            "--method", "mean", "--cache-dir", str(tmp / "cache"), "--quiet"]) == 0
    assert to_onnx.main([str(ckpt), "--out", str(tmp / "onnx")]) == 0
    return {"tmp": tmp, "faces": faces, "files": [str(faces / f) for f in files], "values": values, "vae": vae,
            "ckpt": str(ckpt), "vectors": str(out), "dec": str(tmp / "onnx" / "decoder.onnx"),
            "enc": str(tmp / "onnx" / "encoder.onnx")}


def one_line(capsys, prefix="error:"):
    """The error line; remarks about the data ("note: ...") may come before it."""
    err = "".join(line for line in capsys.readouterr().err.splitlines(True) if not line.startswith("note:"))
    assert err.startswith(prefix) and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_directions_are_mean_differences_with_counts(rng):
    z = rng.standard_normal((30, 5)).astype(np.float32)
    values = np.where(rng.random((30, 3)) < 0.4, 1, -1)
    values[:, 2] = 1
    values[0, 2] = -1  # one image without: below min_count
    v = vectors.directions(z, values, ["a", "b", "c"], "id", min_count=3)
    assert v.names == ["a", "b"] and v.skipped == ["c"]
    for row, a in enumerate((0, 1)):
        pos, neg = values[:, a] > 0, values[:, a] < 0
        direct = z[pos].astype(np.float64).mean(0) - z[neg].astype(np.float64).mean(0)
        np.testing.assert_allclose(v.vectors[row], direct, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(v.unit[row], direct / np.linalg.norm(direct), rtol=1e-6, atol=1e-7)
        assert (v.n_pos[row], v.n_neg[row]) == (pos.sum(), neg.sum())
        assert v.spread[row] == pytest.approx(np.std(z.astype(np.float64) @ (direct / np.linalg.norm(direct))))
    np.testing.assert_allclose(v.ratio(), np.linalg.norm(v.vectors, axis=1) / v.spread, rtol=1e-6)


def test_identity_is_sha256_of_sorted_names_and_bytes(rng):
    arrays = {"state/b.moving_mean": np.arange(3, dtype=np.float32), "param/a.kernel": rng.standard_normal((2, 2)),
              "m.param/a.kernel": np.ones(2)}  # optimizer arrays do not count
    h = hashlib.sha256()
    for name in ("param/a.kernel", "state/b.moving_mean"):
        data = arrays[name].tobytes()
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    assert vectors.checkpoint_identity(arrays) == h.hexdigest()
    arrays["m.param/a.kernel"][0] = 5
    assert vectors.checkpoint_identity(arrays) == h.hexdigest()
    arrays["state/b.moving_mean"][0] = 1e-30
    assert vectors.checkpoint_identity(arrays) != h.hexdigest()


def test_cli_vectors_equal_a_direct_encoding(world, capsys):
    vae = world["vae"]
    x = py_sample.read_images(world["files"], SMALL.image_size, "center")
    z = np.asarray(vae.encode(x)[0], np.float64)
    with np.load(world["vectors"], allow_pickle=False) as f:  # plain NumPy reads it
        got = {k: f[k] for k in f.files}
    assert got["names"].tolist() == NAMES[:3] and got["skipped"].tolist() == ["Bald"]
    for row, name in enumerate(NAMES[:3]):
        pos = world["values"][:, row] > 0
        np.testing.assert_allclose(got["vectors"][row], z[pos].mean(0) - z[~pos].mean(0), rtol=1e-5, atol=1e-6)
        assert (got["n_pos"][row], got["n_neg"][row]) == (pos.sum(), (~pos).sum())
    assert str(got["identity"]) == vectors.model_identity(vae)
    assert str(got["identity"]) == vectors.checkpoint_identity(np.load(world["ckpt"]))


def test_cli_prints_a_ranked_table_and_the_skipped(world, capsys):
    out = world["tmp"] / "again.npz"
    assert attributes.main([world["ckpt"], "--data", str(world["faces"]), "--out", str(out), "--min-count", "5",
                            "--cache-dir", str(world["tmp"] / "cache"), "--quiet"]) == 0
    text = capsys.readouterr().out
    got = vectors.load(str(out))  # the default: joint, every direction calibrated, the fewest side effects measured
    assert got.method == "joint" and got.calibrated == got.names == NAMES[:3]
    assert "every direction calibrated on decoded faces" in text and "calibrated 3 directions in" in text
    ratio = vectors.load(str(out)).ratio()
    ranked = [line.split()[1] for line in text.splitlines() if line[:4].strip().isdigit()]
    assert ranked == [NAMES[i] for i in np.argsort(-ratio)]
    assert "skipped (fewer than 5 images on one side): Bald" in text


@pytest.mark.parametrize("case", ["exists", "no_labels", "unlabelled", "all_skipped", "bad_label_file"])
def test_cli_bad_input_is_one_line(world, tmp_path, capsys, case):
    data, out, extra = world["faces"], tmp_path / "v.npz", ["--min-count", "5"]
    if case == "exists":
        out = Path(world["vectors"])
    elif case == "no_labels":
        data = tmp_path / "plain"
        data.mkdir()
        Image.new("RGB", (16, 16)).save(data / "000001.png")
    elif case == "unlabelled":
        extra += ["--attributes", str(tmp_path / "few.txt")]
        (tmp_path / "few.txt").write_text("1\nSmiling\n000001.png 1\n")
    elif case == "all_skipped":
        extra = ["--min-count", "1000"]
    elif case == "bad_label_file":
        extra += ["--attributes", str(tmp_path / "bad.txt")]
        (tmp_path / "bad.txt").write_text("1\nSmiling\n000001.png 2\n")
    before = out.read_bytes() if out.exists() else None
    assert attributes.main([world["ckpt"], "--data", str(data), "--out", str(out), "--quiet",
                            "--cache-dir", str(tmp_path / "cache")] + extra) == 2
    err = one_line(capsys)
    assert {"exists": "--force", "no_labels": "--attributes PATH", "unlabelled": "no row for 000002.png",
            "all_skipped": "--min-count", "bad_label_file": "line 3"}[case] in err
    assert (out.read_bytes() if out.exists() else None) == before


def test_the_latent_helpers_agree_on_both_sides(rng):
    a, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    t = np.linspace(0, 1, 5)
    np.testing.assert_array_equal(latent.lerp(a, b, t), edits.lerp(a, b, t))
    np.testing.assert_array_equal(latent.slerp(a, b, t), edits.slerp(a, b, t))
    np.testing.assert_array_equal(latent.draw_z(3, 5, 6, 0.7), edits.draw_z(3, 5, 6, 0.7))
    for text in ("-3:3:7", "0,1.5,2", "2:2:1"):
        np.testing.assert_array_equal(latent.parse_strengths(text), edits.parse_strengths(text))
    names = ["Smiling", "Blond_Hair", "Eyeglasses"]
    assert latent.parse_expression("Smiling+Blond_Hair-Eyeglasses", names) == \
        edits.parse_expression("Smiling+Blond_Hair-Eyeglasses", names) == \
        [(1.0, "Smiling"), (1.0, "Blond_Hair"), (-1.0, "Eyeglasses")]
    assert latent.fix_negative_values(["--strengths", "-3:3:7", "--attribute", "-Smiling", "--force"]) == \
        edits.fix_negative_values(["--strengths", "-3:3:7", "--attribute", "-Smiling", "--force"]) == \
        ["--strengths=-3:3:7", "--attribute=-Smiling", "--force"]


def test_slerp_ends_at_the_ends_and_keeps_the_norm_of_equal_norm_ends(rng):
    a = rng.standard_normal(8)
    b = rng.standard_normal(8)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    path = latent.slerp(a.astype(np.float32), b.astype(np.float32), np.linspace(0, 1, 6))
    np.testing.assert_allclose(path[0], a, rtol=1e-6)
    np.testing.assert_allclose(path[-1], b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), np.linalg.norm(a), rtol=1e-5)


@pytest.mark.parametrize("text,words", [("Smilling", "nearest: Smiling"),
                                        ("Blond_Hair+Eyeglases", "nearest: Eyeglasses"),
                                        ("Bald", "skipped"), ("Smiling++Bald", "joined by + or -")])
def test_bad_attribute_names_are_refused_on_both_sides(world, text, words):
    found = vectors.load(world["vectors"])
    for side, error in ((latent, UserError), (edits, edits.EditError)):
        with pytest.raises(error) as e:
            side.parse_expression(text, found.names, found.skipped)
        assert words in str(e.value)


def test_python_and_onnx_attribute_pictures_are_the_same(world, tmp_path):
    common = ["--vectors", world["vectors"], "--attribute", "Smiling", "--attribute", "Eyeglasses-Blond_Hair",
              "--strengths", "-2:2:5"]
    for faces in (["--image"] + world["files"][:2], ["-n", "3", "--seed", "7"]):
        py, ox = tmp_path / f"py{len(faces)}.png", tmp_path / f"onnx{len(faces)}.png"
        assert py_sample.main([world["ckpt"]] + common + faces + ["--out", str(py)]) == 0
        assert onnx_sample.main(["--decoder", world["dec"], "--encoder", world["enc"]] + common + faces
                                + ["--out", str(ox)]) == 0
        a, b = np.asarray(Image.open(py)).astype(int), np.asarray(Image.open(ox)).astype(int)
        rows = 2 * (2 if faces[0] == "--image" else 3)
        assert a.shape == b.shape and a.shape[0] == rows * (SMALL.image_size + 2) + 2 + CAPTION_H
        assert np.max(np.abs(a - b)) <= 1  # float pixels agree to 1e-4; a value may round the other way


def test_python_and_onnx_rows_agree_to_1e4_in_pixels(world):
    vae, found = world["vae"], vectors.load(world["vectors"])
    strengths = latent.parse_strengths("-3:3:4")
    x = py_sample.read_images(world["files"][:3], SMALL.image_size, "center")
    rows, labels = py_sample.attribute_picture(vae, found, ["Smiling+Blond_Hair"], strengths,
                                               np.asarray(vae.encode(x)[0]), x, ["a", "b", "c"])
    enc = ort.InferenceSession(world["enc"], providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(world["dec"], providers=["CPUExecutionProvider"])
    x_onnx = np.stack([pictures.load_image(p, SMALL.image_size, 3) for p in world["files"][:3]])
    np.testing.assert_array_equal(x_onnx, x)
    names, vec, _ = edits.load_vectors(world["vectors"], SMALL.z_dim)
    z = enc.run(["z_mean"], {"image": x_onnx})[0]
    grid = edits.attribute_rows(z, edits.combine([(1.0, "Smiling"), (1.0, "Blond_Hair")], names, vec), strengths)
    decoded = dec.run(["image"], {"z": grid.reshape(-1, SMALL.z_dim)})[0].reshape(3, 4, 16, 16, 3)
    assert labels == ["Smiling+Blond_Hair, a", "Smiling+Blond_Hair, b", "Smiling+Blond_Hair, c"]
    for i in range(3):
        assert np.max(np.abs(rows[i][1:] - decoded[i])) < 1e-4
        np.testing.assert_array_equal(rows[i][0], x[i])


def test_python_and_onnx_morphs_are_the_same(world, tmp_path):
    ends = world["files"][3:5]
    py, ox = tmp_path / "py.png", tmp_path / "onnx.png"
    assert py_sample.main([world["ckpt"], "--morph", *ends, "--steps", "5", "--out", str(py)]) == 0
    assert onnx_sample.main(["--decoder", world["dec"], "--encoder", world["enc"], "--morph", *ends,
                             "--steps", "5", "--out", str(ox)]) == 0
    a, b = np.asarray(Image.open(py)).astype(int), np.asarray(Image.open(ox)).astype(int)
    assert a.shape == b.shape and a.shape[0] == 2 * 18 + 2 + CAPTION_H and np.max(np.abs(a - b)) <= 1


def test_labelled_rows_lay_out_as_save_rows(tmp_path, rng):
    rows = [rng.uniform(0, 1, (4, 9, 9, 3)).astype(np.float32) for _ in range(3)]
    labels = ["Smiling, a.jpg", "x", "Eyeglasses-Blond_Hair, z2"]
    images.save_rows(tmp_path / "rows.png", rows, labels=labels)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "rows.png")), pictures.labelled_rows(rows, labels))


@pytest.mark.parametrize("kind", ["big_jpeg", "rgba_png", "grey16_png", "squash", "exif_6", "exif_5"])
def test_both_samplers_read_an_image_to_the_same_pixels(tmp_path, rng, kind):
    path, crop = tmp_path / ("face.jpg" if kind == "big_jpeg" else "face.png"), "center"
    if kind.startswith("exif"):  # stored sideways, with the tag that turns it upright
        orientation = int(kind.split("_")[1])
        upright = Image.fromarray(rng.integers(0, 256, (90, 40, 3), dtype=np.uint8))
        upright.save(tmp_path / "upright.png")
        stored = upright.transpose({6: Image.Transpose.ROTATE_90, 5: Image.Transpose.TRANSPOSE}[orientation])
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / "face.png"
        stored.save(path, exif=exif)
        np.testing.assert_array_equal(pictures.load_image(str(path), 16, 3, crop),
                                      pictures.load_image(str(tmp_path / "upright.png"), 16, 3, crop))
    elif kind == "big_jpeg":  # big enough for JPEG draft scaling
        Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(path, quality=90)
    elif kind == "rgba_png":
        Image.fromarray(rng.integers(0, 256, (30, 20, 4), dtype=np.uint8), "RGBA").save(path)
    elif kind == "grey16_png":
        Image.fromarray(rng.integers(0, 65536, (21, 25), dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (40, 17, 3), dtype=np.uint8)).save(path)
        crop = "squash"
    np.testing.assert_array_equal(pictures.load_image(str(path), 16, 3, crop),
                                  py_sample.read_images([str(path)], 16, crop)[0])


def other_vectors(tmp_path, z_dim, identity):
    v = vectors.directions(np.random.default_rng(0).standard_normal((10, z_dim)), np.tile([[1], [-1]], (5, 1)),
                           ["Smiling"], identity, min_count=1)
    path = tmp_path / f"other{z_dim}.npz"
    vectors.save(path, v)
    return str(path)


@pytest.mark.parametrize("case", ["other_model", "other_z", "unknown", "bad_image", "not_vectors"])
def test_samplers_refuse_bad_input_in_one_line(world, tmp_path, capsys, case):
    vf, attr, image = world["vectors"], "Smiling", world["files"][0]
    if case == "other_model":
        vf = other_vectors(tmp_path, SMALL.z_dim, vectors.model_identity(tiny_vae(1)))
    elif case == "other_z":
        vf = other_vectors(tmp_path, 6, "x" * 64)
    elif case == "unknown":
        attr = "Smilling"
    elif case == "bad_image":
        image = str(tmp_path / "broken.jpg")
        Path(image).write_bytes(b"not an image")
    else:
        vf = str(tmp_path / "plain.npz")
        np.savez(vf, a=np.ones(3))
    args = ["--vectors", vf, "--attribute", attr, "--image", image, "--out", str(tmp_path / "out.png")]
    words = {"other_model": "another checkpoint", "other_z": "6-dimensional", "unknown": "nearest: Smiling",
             "bad_image": "broken.jpg", "not_vectors": "plain.npz"}[case]
    assert py_sample.main([world["ckpt"]] + args) == 2
    assert words in one_line(capsys)
    # to_onnx.py stamps the checkpoint's identity into both graphs: the ONNX sampler refuses too
    assert onnx_sample.main(["--decoder", world["dec"], "--encoder", world["enc"]] + args) == 2
    assert words in one_line(capsys, "sample: error:")
    assert not (tmp_path / "out.png").exists()


def test_onnx_sampler_checks_an_identity_in_the_model_metadata(world, tmp_path, capsys):
    identity = vectors.model_identity(world["vae"])
    for part in ("enc", "dec"):  # as to_onnx.py wrote it: the checkpoint's identity
        props = {p.key: p.value for p in onnx.load(world[part]).metadata_props}
        assert props[edits.IDENTITY_KEY] == identity
    for stamp, rc in (("0" * 64, 2), (identity, 0)):
        for part in ("encoder", "decoder"):
            model = onnx.load(world[part[:3]])
            props = {p.key: p.value for p in model.metadata_props}
            onnx.helper.set_model_props(model, {**props, edits.IDENTITY_KEY: stamp})
            onnx.save(model, str(tmp_path / f"{part}.onnx"))
        assert onnx_sample.main(["--decoder", str(tmp_path / "decoder.onnx"),
                                 "--encoder", str(tmp_path / "encoder.onnx"), "--vectors", world["vectors"], "--attribute", "Smiling", "-n", "2",
                                 "--out", str(tmp_path / "out.png"), "--force"]) == rc
    assert "another checkpoint" in capsys.readouterr().err


ONNX_ONLY = """
import json, sys
sys.path.insert(0, {export!r})
import sample
rc = sample.main({args!r})
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite", "scratchvae"))
print(json.dumps({{"rc": rc, "bad": bad}}))
"""


def test_onnx_attribute_rows_need_neither_numba_nor_scratchvae(world, tmp_path):
    args = ["--decoder", world["dec"], "--encoder", world["enc"], "--vectors", world["vectors"], "--attribute",
            "Smiling-Eyeglasses", "--image", world["files"][0], "--strengths", "-1:1:3",
            "--out", str(tmp_path / "a.png")]
    proc = subprocess.run([sys.executable, "-c", ONNX_ONLY.format(export=str(EXPORT), args=args)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rc": 0, "bad": []}
    assert Image.open(tmp_path / "a.png").size[1] == 16 + 4 + CAPTION_H
