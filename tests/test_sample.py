"""The two samplers as a new user meets them: the same --seed gives the same faces in both, pictures are
named after what they show beside the model and never replaced without --force, and a checkpoint
written after a list of images is not swallowed by it."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchvae import latent
from scratchvae import sample as py_sample
from scratchvae.model import VAE, VAEConfig

EXPORT = Path(__file__).resolve().parents[1] / "export"
if str(EXPORT) not in sys.path:
    sys.path.insert(0, str(EXPORT))
import sample as onnx_sample  # noqa: E402
import to_onnx  # noqa: E402

SMALL = VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    vae = VAE(SMALL, seed=2)
    ckpt = tmp / "run" / "checkpoint.npz"
    ckpt.parent.mkdir()
    vae.save(ckpt)
    assert to_onnx.main([str(ckpt), "--out", str(tmp / "onnx")]) == 0
    faces = []
    for i in range(2):
        faces.append(str(tmp / f"face{i}.png"))
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(faces[-1])
    return {"vae": vae, "ckpt": str(ckpt), "dec": str(tmp / "onnx" / "decoder.onnx"),
            "enc": str(tmp / "onnx" / "encoder.onnx"), "faces": faces}


def pixels(path):
    return np.asarray(Image.open(path)).astype(int)


@pytest.mark.parametrize("extra", [["-n", "5", "--seed", "3"], ["-n", "4", "--seed", "1", "--temperature", "0.5"],
                                   ["--interpolate", "--steps", "4", "--seed", "9"]])
def test_the_same_seed_gives_the_same_picture_in_both_samplers(model, tmp_path, extra):
    py, ox = tmp_path / "py.png", tmp_path / "onnx.png"
    assert py_sample.main([model["ckpt"], "--out", str(py)] + extra) == 0
    assert onnx_sample.main(["--decoder", model["dec"], "--out", str(ox)] + extra) == 0
    if "--interpolate" in extra:
        py = tmp_path / "py_interpolation.png"
    a, b = pixels(py), pixels(ox)
    assert a.shape == b.shape and np.max(np.abs(a - b)) <= 1


def reference_draw(seed, n, z_dim, temperature):
    """The documented draw written out with Python integers, one value at a time."""
    state, values = seed % 2**64, []
    while len(values) < n * z_dim:
        words = []
        for _ in range(2):
            state = (state + 0x9E3779B97F4A7C15) % 2**64
            x = state
            x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
            x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
            words.append(x ^ (x >> 31))
        u1, u2 = ((words[0] >> 11) + 1) / 2**53, (words[1] >> 11) / 2**53
        r = math.sqrt(-2 * math.log(u1))
        values += [r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)]
    return (temperature * np.array(values[:n * z_dim]).reshape(n, z_dim)).astype(np.float32)


def test_the_draw_is_the_documented_one_and_a_prefix_of_a_bigger_draw():
    assert int(latent.splitmix64(0, 1)[0]) == 0xE220A8397B1DCDAF  # SplitMix64's published first output for 0
    for seed, n, z_dim in ((4, 6, 3), (-1, 3, 5), (2**64 + 7, 2, 7)):
        z = latent.draw_z(seed, n, z_dim, temperature=0.5)
        np.testing.assert_array_equal(z, reference_draw(seed, n, z_dim, 0.5))
        np.testing.assert_array_equal(latent.draw_z(seed, 1, z_dim, 0.5), z[:1])
    z = latent.draw_z(9, 4000, 8)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02  # 32,000 normals: a few standard errors


def test_grid_faces_are_the_decoded_draw(model, tmp_path):
    out = tmp_path / "g.png"
    assert py_sample.main([model["ckpt"], "-n", "3", "--seed", "5", "--out", str(out)]) == 0
    face = pixels(out)[2:18, 2:18]
    want = np.asarray(model["vae"].decode(latent.draw_z(5, 3, SMALL.z_dim)))[0]
    assert np.max(np.abs(face - np.round(want * 255))) <= 1


def test_default_pictures_are_named_beside_the_model_and_kept(model, capsys):
    folder, onnx_folder = Path(model["ckpt"]).parent, Path(model["dec"]).parent
    runs = [(py_sample, [model["ckpt"], "-n", "4", "--seed", "2"], folder / "samples-n4-seed2.png"),
            (py_sample, [model["ckpt"], "--morph", *model["faces"], "--steps", "3"], folder / "morph-face0-face1.png"),
            (onnx_sample, ["--decoder", model["dec"], "--encoder", model["enc"], "--reconstruct", model["faces"][0]],
             onnx_folder / "reconstructions-face0.png"),
            (onnx_sample, ["--decoder", model["dec"], "--interpolate", "--temperature", "0.8"],
             onnx_folder / "interpolation-seed0-t0.8.png")]
    for module, args, path in runs:
        assert module.main(args) == 0 and path.is_file(), path
        before = path.read_bytes()
        assert module.main(args) == 2
        assert "--force" in capsys.readouterr().err
        assert path.read_bytes() == before
        assert module.main(args + ["--force"]) == 0


def test_a_checkpoint_after_a_list_of_images_is_not_swallowed(model, tmp_path, capsys):
    a, b = model["faces"]
    assert py_sample.main(["--out", str(tmp_path / "w.png"), "--interpolate", a, b, model["ckpt"]]) == 0
    assert (tmp_path / "w_interpolation.png").is_file()
    assert py_sample.main(["--out", str(tmp_path / "r.png"), "--reconstruct", a, model["ckpt"]]) == 0
    assert (tmp_path / "r_reconstructions.png").is_file()
    assert py_sample.main([model["ckpt"], "--out", str(tmp_path / "x.png"), "--reconstruct", a, model["ckpt"]]) == 2
    assert "is not an image" in capsys.readouterr().err
    assert py_sample.main(["--out", str(tmp_path / "y.png")]) == 2
    assert "give the checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("args,words", [(["--vectors", "v.npz"], "go together"),
                                        (["--image", "a.png", "-n", "2"], "--image names faces"),
                                        (["--morph", "a.png", "b.png", "--reconstruct", "a.png"], "one at a time"),
                                        (["--strengths", "1:2"], "first:last:count"),
                                        (["--temperature", "0"], "positive")])
def test_option_mistakes_are_one_line(model, tmp_path, capsys, args, words):
    assert py_sample.main([model["ckpt"], "--out", str(tmp_path / "o.png")] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "o.png").exists()
