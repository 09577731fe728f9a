"""The two samplers as a new user meets them: the same --seed gives the same faces in both, the same
command writes the same files in both (one picture per mode; --out a file for one picture, a folder
for several), pictures are named after what they show beside the model and never replaced without
--force, bad input of any kind leaves no file behind and does not block the corrected command,
attribute names are read as the page writes them, and strips say what their columns show."""

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchvae import images, latent
from scratchvae import sample as py_sample
from scratchvae.latent import vectors
from scratchvae.model import VAE, VAEConfig
from scratchvae.run.errors import UserError

EXPORT = Path(__file__).resolve().parents[1] / "export"
if str(EXPORT) not in sys.path:
    sys.path.insert(0, str(EXPORT))
import edits  # noqa: E402
import pictures  # noqa: E402
import sample as onnx_sample  # noqa: E402
import to_onnx  # noqa: E402

SMALL = VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4)
NAMES = ["Smiling", "Blond_Hair", "Eyeglasses"]


def make_vectors(path, vae, names=NAMES, seed=0):
    """A vectors file for vae's identity, from random codes and labels (no encoding needed)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((30, vae.config.z_dim))
    values = np.where(rng.random((30, len(names))) < 0.5, 1, -1)
    vectors.save(path, vectors.directions(z, values, names, vectors.model_identity(vae), min_count=2))
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    vae = VAE(SMALL, seed=2)
    ckpt = tmp / "run" / "checkpoint.npz"
    ckpt.parent.mkdir()
    vae.save(ckpt)
    assert to_onnx.main([str(ckpt), "--out", str(tmp / "onnx")]) == 0
    other = VAE(SMALL, seed=3)
    other.save(tmp / "other.npz")
    assert to_onnx.main([str(tmp / "other.npz"), "--out", str(tmp / "other")]) == 0
    faces = []
    for i in range(2):
        faces.append(str(tmp / f"face{i}.png"))
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 18, 3), dtype=np.uint8)).save(faces[-1])
    (tmp / "broken.jpg").write_bytes(b"not an image")
    (tmp / "a-file").write_text("a file, not a folder")
    return {"tmp": tmp, "vae": vae, "ckpt": str(ckpt), "dec": str(tmp / "onnx" / "decoder.onnx"),
            "enc": str(tmp / "onnx" / "encoder.onnx"), "faces": faces,
            "vectors": make_vectors(tmp / "vectors.npz", vae),
            "other_vectors": make_vectors(tmp / "other-vectors.npz", other),
            "other_enc": str(tmp / "other" / "encoder.onnx")}


def pixels(path):
    return np.asarray(Image.open(path)).astype(int)


def both(model, args):
    """The same command for each sampler: (module, argv) pairs."""
    return [(py_sample, [model["ckpt"]] + args),
            (onnx_sample, ["--decoder", model["dec"], "--encoder", model["enc"]] + args)]


def files_under(*folders):
    return {str(p) for folder in folders for p in Path(folder).rglob("*")}


@pytest.mark.parametrize("extra", [["-n", "5", "--seed", "3"], ["-n", "4", "--seed", "1", "--temperature", "0.5"],
                                   ["--interpolate", "--steps", "4", "--seed", "9"]])
def test_the_same_seed_gives_the_same_picture_in_both_samplers(model, tmp_path, extra):
    py, ox = tmp_path / "py.png", tmp_path / "onnx.png"
    assert py_sample.main([model["ckpt"], "--out", str(py)] + extra) == 0
    assert onnx_sample.main(["--decoder", model["dec"], "--out", str(ox)] + extra) == 0
    a, b = pixels(py), pixels(ox)
    assert a.shape == b.shape and np.max(np.abs(a - b)) <= 1
    assert sorted(os.listdir(tmp_path)) == ["onnx.png", "py.png"]  # one picture each, at --out


COMMANDS = [
    ["-n", "6"],
    ["--reconstruct", "{face0}", "{face1}"],
    ["--interpolate", "{face0}", "{face1}", "--steps", "3"],
    ["--interpolate", "--seed", "4"],
    ["--morph", "{face0}", "{face1}", "--steps", "3"],
    ["--vectors", "{vectors}", "--attribute", "Smiling", "--attribute", "Blond Hair-eyeglasses", "-n", "2",
     "--strengths", "-1:1:3"],
    ["--vectors", "{vectors}", "--attribute", "Smiling", "--image", "{face1}", "--strengths", "0,1.5"],
    ["--grid", "-n", "4", "--reconstruct", "{face0}", "--interpolate", "--morph", "{face0}", "{face1}",
     "--vectors", "{vectors}", "--attribute", "Eyeglasses", "--image", "{face0}"],
]


def fill(args, model):
    return [a.format(face0=model["faces"][0], face1=model["faces"][1], vectors=model["vectors"]) for a in args]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "_".join(a for a in c if a.startswith("-"))[:60])
def test_the_same_command_writes_the_same_files_in_both_samplers(model, tmp_path, command):
    args = fill(command, model)
    several = sum(flag in args for flag in ("--reconstruct", "--interpolate", "--morph", "--vectors", "--grid")) > 1
    written = {}
    for (module, argv), side in zip(both(model, args), ("py", "onnx")):
        out = tmp_path / side
        assert module.main(argv + ["--out", str(out) + ("" if several else ".png")]) == 0
        if several:
            written[side] = {p.name: pixels(p) for p in out.iterdir()}
        else:
            assert out.with_suffix(".png").is_file() and not out.exists()
            written[side] = {"": pixels(out.with_suffix(".png"))}
    assert written["py"].keys() == written["onnx"].keys()
    for name, a in written["py"].items():
        b = written["onnx"][name]
        assert a.shape == b.shape and np.max(np.abs(a - b)) <= 1, name
    if several:  # --out is a folder of pictures named after what they show, one per mode
        assert len(written["py"]) == 5 and {n.split("-")[0] for n in written["py"]} == \
            {"grid", "reconstructions", "walk", "edits", "morph"}


def test_default_pictures_are_named_beside_the_model_and_kept(model, capsys):
    folder, onnx_folder = Path(model["ckpt"]).parent, Path(model["dec"]).parent
    a, b = model["faces"]
    runs = [(py_sample, [model["ckpt"], "-n", "4", "--seed", "2"], folder / "grid-n4-seed2.png"),
            (py_sample, [model["ckpt"], "--morph", a, b, "--steps", "3"], folder / "morph-face0-face1.png"),
            (py_sample, [model["ckpt"], "--vectors", model["vectors"], "--attribute", "blond hair", "-n", "2"],
             folder / "edits-Blond_Hair-n2-seed0.png"),
            (onnx_sample, ["--decoder", model["dec"], "--encoder", model["enc"], "--reconstruct", a],
             onnx_folder / "reconstructions-face0.png"),
            (onnx_sample, ["--decoder", model["dec"], "--interpolate", "--temperature", "0.8"],
             onnx_folder / "walk-seed0-t0.8.png")]
    for module, args, path in runs:
        before_files = files_under(folder, onnx_folder)
        assert module.main(args) == 0 and path.is_file(), path
        assert files_under(folder, onnx_folder) - before_files == {str(path)}  # that picture and nothing else
        before = path.read_bytes()
        assert module.main(args) == 2
        assert "--force" in capsys.readouterr().err
        assert path.read_bytes() == before
        assert module.main(args + ["--force"]) == 0
        path.unlink()


def test_out_is_a_file_for_one_picture_and_a_folder_for_several(model, tmp_path, capsys):
    a, b = model["faces"]
    for module, argv in both(model, ["--reconstruct", a, "--interpolate", a, b, "--out", str(tmp_path / "x.png")]):
        assert module.main(argv) == 2
        err = capsys.readouterr().err
        assert "names one file" in err and "give --out a folder" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
    for module, argv in both(model, ["--reconstruct", a, "--out", str(tmp_path / "one") + "/"]):
        assert module.main(argv + ["--force"]) == 0  # a trailing / makes --out a folder for one picture too
    assert os.listdir(tmp_path / "one") == ["reconstructions-face0.png"]


# Bad input of every kind: (the bad arguments, the corrected ones); {out} is a folder inside tmp_path.
BAD = {
    "missing photo, walk": (["--interpolate", "{face0}", "{missing}"], ["--interpolate", "{face0}", "{face1}"]),
    "missing photo, out file": (["--reconstruct", "{missing}", "--out", "{out}/m.png"],
                                ["--reconstruct", "{face0}", "--out", "{out}/m.png"]),
    "broken photo, morph": (["--morph", "{face0}", "{broken}"], ["--morph", "{face0}", "{face1}"]),
    "broken photo to edit": (["--vectors", "{vectors}", "--attribute", "Smiling", "--image", "{face0}", "{broken}"],
                             ["--vectors", "{vectors}", "--attribute", "Smiling", "--image", "{face0}"]),
    "missing photo among several pictures": (["--grid", "--reconstruct", "{face0}", "{missing}", "--out", "{out}"],
                                             ["--grid", "--reconstruct", "{face0}", "--out", "{out}"]),
    "vectors of another checkpoint": (["--vectors", "{other_vectors}", "--attribute", "Smiling", "-n", "2"],
                                      ["--vectors", "{vectors}", "--attribute", "Smiling", "-n", "2"]),
    "unknown attribute": (["--vectors", "{vectors}", "--attribute", "Smiling+Blond", "-n", "2"],
                          ["--vectors", "{vectors}", "--attribute", "Smiling+Blond Hair", "-n", "2"]),
    "missing vectors": (["--vectors", "{missing}", "--attribute", "Smiling"],
                        ["--vectors", "{vectors}", "--attribute", "Smiling"]),
    "output under a file": (["-n", "2", "--out", "{a_file}/sub/x.png"], ["-n", "2", "--out", "{out}/sub/x.png"]),
    "one file for several pictures": (["--grid", "--interpolate", "--out", "{out}/two.png"],
                                      ["--grid", "--interpolate", "--out", "{out}/two"]),
    "-n without a grid": (["-n", "3", "--interpolate", "--out", "{out}"], ["-n", "3", "--interpolate", "--grid",
                                                                         "--out", "{out}"]),
}
ONNX_BAD = {
    "encoder of another checkpoint": (["--encoder", "{other_enc}", "--reconstruct", "{face0}"],
                                      ["--encoder", "{enc}", "--reconstruct", "{face0}"]),
    "missing encoder": (["--encoder", "{missing}", "--morph", "{face0}", "{face1}"],
                        ["--encoder", "{enc}", "--morph", "{face0}", "{face1}"]),
    "no encoder for photographs": (["--interpolate", "{face0}", "{face1}"],
                                   ["--encoder", "{enc}", "--interpolate", "{face0}", "{face1}"]),
}


def fill_case(args, model, out):
    values = {"face0": model["faces"][0], "face1": model["faces"][1], "vectors": model["vectors"],
              "missing": str(out) + "-no.png", "broken": str(model["tmp"] / "broken.jpg"),
              "other_vectors": model["other_vectors"], "a_file": str(model["tmp"] / "a-file"), "out": str(out),
              "other_enc": model["other_enc"], "enc": model["enc"]}
    return [a.format(**values) for a in args]


# The package's sampler reads one checkpoint: the graphs' cases are the ONNX sampler's alone.
@pytest.mark.parametrize("sampler,case", [("python", c) for c in BAD] + [("onnx", c) for c in [*BAD, *ONNX_BAD]])
def test_bad_input_leaves_no_file_and_the_corrected_command_runs(model, tmp_path, capsys, sampler, case):
    bad, good = (BAD.get(case) or ONNX_BAD[case])
    out = tmp_path / "out"
    watched = [tmp_path, Path(model["ckpt"]).parent, Path(model["dec"]).parent, model["tmp"]]
    before = files_under(*watched)

    def command(args):
        args = fill_case(args, model, out)
        if sampler == "python":
            return py_sample, [model["ckpt"]] + args
        if "--encoder" not in args and case not in ONNX_BAD:
            args = ["--encoder", model["enc"]] + args
        return onnx_sample, ["--decoder", model["dec"]] + args

    module, argv = command(bad)
    assert module.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:" if sampler == "python" else "sample: error:") and err.count("\n") == 1, err
    assert files_under(*watched) == before, case  # nothing written, no folder made
    module, argv = command(good)
    assert module.main(argv) == 0, capsys.readouterr().err
    new = files_under(*watched) - before
    assert new and all(p.endswith(".png") or os.path.isdir(p) for p in new)
    for path in sorted(new, reverse=True):  # the corrected picture is not left for the next case to find
        os.rmdir(path) if os.path.isdir(path) else os.unlink(path)


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


def test_a_checkpoint_after_a_list_of_images_is_not_swallowed(model, tmp_path, capsys):
    a, b = model["faces"]
    assert py_sample.main(["--out", str(tmp_path / "w.png"), "--interpolate", a, b, model["ckpt"]]) == 0
    assert py_sample.main(["--out", str(tmp_path / "r.png"), "--reconstruct", a, model["ckpt"]]) == 0
    assert sorted(os.listdir(tmp_path)) == ["r.png", "w.png"]
    assert py_sample.main([model["ckpt"], "--out", str(tmp_path / "x.png"), "--reconstruct", a, model["ckpt"]]) == 2
    assert "is not an image" in capsys.readouterr().err
    assert py_sample.main(["--out", str(tmp_path / "y.png")]) == 2
    assert "give the checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("args,words", [(["--vectors", "v.npz"], "go together"),
                                        (["--image", "a.png", "-n", "2"], "--image names faces"),
                                        (["--strengths", "1:2"], "first:last:count"),
                                        (["--temperature", "0"], "positive"),
                                        (["-n", "4", "--reconstruct", "a.png"], "add --grid")])
def test_option_mistakes_are_one_line(model, tmp_path, capsys, args, words):
    assert py_sample.main([model["ckpt"], "--out", str(tmp_path / "o.png")] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("text,want", [("Blond Hair", [(1.0, "Blond_Hair")]),
                                       ("smiling + blond  hair-EYEGLASSES",
                                        [(1.0, "Smiling"), (1.0, "Blond_Hair"), (-1.0, "Eyeglasses")]),
                                       ("-Blond_hair", [(-1.0, "Blond_Hair")])])
def test_attribute_names_are_read_as_the_page_writes_them(text, want):
    for side in (latent, edits):
        assert side.parse_expression(text, NAMES) == want
        assert side.expression_text(want) == "".join(("-" if s < 0 else "+" if i else "") + n
                                                     for i, (s, n) in enumerate(want))


@pytest.mark.parametrize("text,words", [("Blond", "--attribute Blond: no such attribute"),
                                        ("Smiling Eyeglasses", "--attribute Smiling Eyeglasses: no such"),
                                        ("Blond Hairs", "nearest: Blond_Hair")])
def test_a_word_of_an_attribute_is_never_dropped(text, words):
    for side, error in ((latent, UserError), (edits, edits.EditError)):
        with pytest.raises(error) as e:
            side.parse_expression(text, NAMES)
        assert words in str(e.value)


def test_the_page_spelling_gives_the_same_edits_as_the_file_spelling(model, tmp_path):
    common = ["--vectors", model["vectors"], "-n", "2", "--strengths", "-2,2"]
    for module, argv in both(model, common):
        outs = []
        for i, name in enumerate(("Blond_Hair", "blond hair")):
            outs.append(tmp_path / f"{module.__name__}-{i}.png")
            assert module.main(argv + ["--attribute", name, "--out", str(outs[-1])]) == 0
        np.testing.assert_array_equal(pixels(outs[0]), pixels(outs[1]))


def test_strips_say_what_their_columns_and_rows_show(model, tmp_path):
    """The edits strip carries its strengths under the columns and the attribute in the row labels;
    a walk its t values and the row label linear; a morph linear and slerp: the picture is the decoded
    rows laid out with exactly those words."""
    vae, s = model["vae"], SMALL.image_size
    found = vectors.load(model["vectors"])
    strengths = latent.parse_strengths("-1:1:3")
    out = tmp_path / "edits.png"
    assert py_sample.main([model["ckpt"], "--vectors", model["vectors"], "--attribute", "Blond Hair", "-n", "2",
                           "--strengths", "-1:1:3", "--out", str(out)]) == 0
    rows, labels = py_sample.attribute_picture(vae, found, ["Blond_Hair"], strengths,
                                               latent.draw_z(0, 2, SMALL.z_dim), None, ["z0", "z1"])
    assert labels == ["Blond_Hair, z0", "Blond_Hair, z1"]
    want = images.labelled_rows(rows, labels, ["-1", "0", "+1"], "strength")
    np.testing.assert_array_equal(pixels(out), want)
    unlabelled = images.labelled_rows(rows, labels)
    assert want.shape[0] > unlabelled.shape[0] == 2 * (s + 2) + 2  # a line of captions under the rows
    caption = want[unlabelled.shape[0]:]
    assert (caption < 128).any(axis=(0, 2)).sum() > 0  # ink in the caption line
    assert not np.array_equal(want, images.labelled_rows(rows, labels, ["-3", "0", "+3"], "strength"))

    out = tmp_path / "walk.png"
    a, b = model["faces"]
    assert py_sample.main([model["ckpt"], "--interpolate", a, b, "--steps", "3", "--out", str(out)]) == 0
    walk = pixels(out)
    assert walk.shape[0] > s + 4 and (walk[:s, :10] < 128).any()  # the row label "linear" at the left
    out = tmp_path / "morph.png"
    assert py_sample.main([model["ckpt"], "--morph", a, b, "--steps", "3", "--out", str(out)]) == 0
    rows, labels = py_sample.morph_picture(vae, py_sample.read_images([a, b], s, "center"), 3)
    assert labels == ["linear", "slerp"]
    np.testing.assert_array_equal(pixels(out), images.labelled_rows(rows, labels, ["input", "0", "0.5", "1", "input"],
                                                                    "t"))


def test_labelled_rows_with_captions_are_laid_out_alike_on_both_sides(rng):
    for size, columns, axis in ((9, ["input", "-3", "0", "+1.5"], "strength"), (64, ["0", "0.33", "0.67", "1"], "t"),
                                (12, None, None)):
        rows = [rng.uniform(0, 1, (4, size, size, 3)).astype(np.float32) for _ in range(2)]
        labels = ["Smiling, z0", "Blond_Hair-Eyeglasses, face.jpg"]
        np.testing.assert_array_equal(images.labelled_rows(rows, labels, columns, axis),
                                      pictures.labelled_rows(rows, labels, columns, axis))
    gray = rng.uniform(0, 1, (5, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(images.grid(gray, 3), pictures.tile(gray, 3))


def test_help_texts_are_whole_sentences_and_state_the_output_convention():
    sys.path.insert(0, str(EXPORT.parent / "web"))
    import screenshots
    import to_web
    parsers = {"python -m scratchvae.sample": py_sample.build_parser(), "export/sample.py": onnx_sample.build_parser()}
    for name, parser in parsers.items():
        text = parser.format_help()
        assert parser.description.endswith(".") and " ".join(parser.description.split()) in " ".join(text.split())
        flat = " ".join(text.split())
        for words in (("--out names the file when the command makes one picture, and the folder (created when "
                       "needed) when it makes several"), "grid -n new faces", "reconstructions --reconstruct",
                      "walk --interpolate", "edits --vectors", "morph --morph", "a failed run leaves no file behind"):
            assert words in flat, (name, words)
    epilogs = [p.epilog.replace("beside the checkpoint", "beside X").replace("beside the decoder", "beside X")
               for p in parsers.values()]
    assert epilogs[0] == epilogs[1]
    for doc in (py_sample.__doc__, onnx_sample.__doc__):
        assert "--out names the file when one picture is made, and the folder (created when needed) when several " \
               "are" in " ".join(doc.split())
    assert screenshots.DESCRIPTION.endswith(".") and "morph strip" in screenshots.DESCRIPTION
    assert to_web.build_parser().description.endswith("(page, models, vectors, prior, runtime).")
