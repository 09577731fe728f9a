"""The fitted prior in the samplers: python -m scratchvae.sample --prior, export/sample.py --prior (NumPy
only) and the page's drawPrior give the same z from the same prior and seed, and so the same faces;
a prior of another checkpoint or z size is refused in one line before anything is written.
(The page itself, in headless Chromium, is in tests/test_web.py.)"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchvae import latent
from scratchvae import sample as py_sample
from scratchvae.latent import mixture, prior, vectors
from scratchvae.model import VAE, VAEConfig
from tests.priors import write_prior

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "export"
if str(EXPORT) not in sys.path:
    sys.path.insert(0, str(EXPORT))
import edits  # noqa: E402
import sample as onnx_sample  # noqa: E402
import to_onnx  # noqa: E402

SMALL = VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4)
SEEDS = (0, 7, -3, 2**64 + 5, 12345678901234567890)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prior")
    vae = VAE(SMALL, seed=4)
    vae.params()["decoder.dense.kernel"][...] *= 5  # faces that follow z visibly, unlike a fresh decoder's
    ckpt = tmp / "run" / "checkpoint.npz"
    ckpt.parent.mkdir()
    vae.save(ckpt)
    assert to_onnx.main([str(ckpt), "--out", str(tmp / "onnx")]) == 0
    path = tmp / "prior.npz"
    w, means, factors = write_prior(path, vectors.model_identity(vae), SMALL.z_dim, components=3, seed=1)
    write_prior(tmp / "other.npz", vectors.model_identity(VAE(SMALL, seed=5)), SMALL.z_dim)
    write_prior(tmp / "wide.npz", vectors.model_identity(vae), SMALL.z_dim + 2)
    np.savez(tmp / "plain.npz", weights=np.ones(1))
    face = tmp / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(face)
    return {"tmp": tmp, "vae": vae, "ckpt": str(ckpt), "dec": str(tmp / "onnx" / "decoder.onnx"),
            "enc": str(tmp / "onnx" / "encoder.onnx"), "prior": str(path), "w": w, "means": means,
            "factors": factors, "face": str(face)}


def reference_prior_draw(w, means, factors, seed, n, temperature):
    """The documented draw written out with Python integers and floats, one row at a time."""
    k, d = means.shape
    e = latent.standard_normals(seed, n * d).reshape(n, d).tolist()
    cum, total = [], 0.0
    for x in w.tolist():
        total += x
        cum.append(total)
    state, rows, chosen = (seed ^ 0xD1B54A32D192ED03) % 2**64, [], []
    for i in range(n):
        state = (state + 0x9E3779B97F4A7C15) % 2**64
        x = state
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
        u = ((x ^ (x >> 31)) >> 11) / 2**53
        comp = min(sum(c / cum[-1] <= u for c in cum), k - 1)
        chosen.append(comp)
        acc = [0.0] * d
        for j in range(d):
            for r in range(d):
                acc[r] += float(factors[comp][r][j]) * e[i][j]
        rows.append([float(means[comp][r]) + temperature * acc[r] for r in range(d)])
    return np.array(rows).astype(np.float32), chosen


def node_draws(cases):
    """drawPrior of web/app.js under Node for each (prior, seed, n, temperature)."""
    if shutil.which("node") is None:
        pytest.fail("this test needs Node (Debian's nodejs; bash .ci/run installs it)")
    app = json.dumps((ROOT / "web" / "app.js").as_uri())
    payload = json.dumps([[{"weights": w.tolist(), "means": m.tolist(),
                            "cholesky": [f[np.tril_indices(m.shape[1])].tolist() for f in factors]},
                           str(seed), n, t] for (w, m, factors), seed, n, t in cases])
    script = (f"import {{ drawPrior }} from {app};\nconst cases = {payload};\n"
              "console.log(JSON.stringify(cases.map(([p, s, n, t]) => Array.from(drawPrior(p, BigInt(s), n, t)))));")
    proc = subprocess.run(["node", "--input-type=module"], input=script, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return [np.array(v, np.float32) for v in json.loads(proc.stdout)]


def test_the_package_the_exporter_and_the_page_draw_the_same_z(model):
    fitted = prior.load(model["prior"], identity=vectors.model_identity(model["vae"]), z_dim=SMALL.z_dim)
    mix = (fitted.weights, fitted.means, fitted.cholesky)
    d = SMALL.z_dim
    one = (np.ones(1), np.zeros((1, d)), np.eye(d)[None])  # one standard component: the N(0, I) draw
    cases = [(mix, seed, 40, t) for seed, t in zip(SEEDS, (1.0, 0.7, 1.3, 1.0, 0.45))] + [(one, 5, 6, 0.8)]
    js = node_draws(cases)
    for (parts, seed, n, t), page in zip(cases, js):
        want, chosen = reference_prior_draw(*parts, seed, n, t)
        assert len(set(chosen)) == len(parts[0])  # 40 rows pick every component: each choice is tested
        np.testing.assert_array_equal(mixture.draw(*parts, seed, n, t), want)
        np.testing.assert_array_equal(edits.draw_prior(*parts, seed, n, t), want)
        np.testing.assert_array_equal(page.reshape(n, d), want)
        np.testing.assert_array_equal(mixture.draw(*parts, seed, 3, t), want[:3])  # a prefix of a bigger draw
    np.testing.assert_array_equal(edits.draw_prior(*one, 5, 6, 0.8), latent.draw_z(5, 6, d, 0.8))


def pixels(path):
    return np.asarray(Image.open(path)).astype(int)


@pytest.mark.parametrize("extra", [["-n", "6", "--seed", "3", "--temperature", "0.7"], ["--interpolate", "--seed", "2"],
                                   ["--vectors", "{vectors}", "--attribute", "Smiling", "-n", "2",
                                    "--strengths", "-1:1:3"]])
def test_both_samplers_draw_the_same_faces_from_the_prior(model, tmp_path, extra):
    vf = tmp_path / "vectors.npz"
    z = np.random.default_rng(0).standard_normal((10, SMALL.z_dim))
    vectors.save(vf, vectors.directions(z, np.tile([[1], [-1]], (5, 1)), ["Smiling"],
                                        vectors.model_identity(model["vae"]), min_count=2))
    extra = [a.format(vectors=vf) for a in extra] + ["--prior", model["prior"]]
    py, ox, plain = tmp_path / "py.png", tmp_path / "onnx.png", tmp_path / "plain.png"
    assert py_sample.main([model["ckpt"], "--out", str(py)] + extra) == 0
    assert onnx_sample.main(["--decoder", model["dec"], "--out", str(ox)] + extra) == 0
    assert py_sample.main([model["ckpt"], "--out", str(plain)] + extra[:-2]) == 0
    a, b = pixels(py), pixels(ox)
    assert a.shape == b.shape and np.max(np.abs(a - b)) <= 1
    assert np.max(np.abs(a - pixels(plain))) > 10  # the prior's faces, not N(0, I)'s


def test_the_grid_is_the_decoded_prior_draw_and_named_so(model, capsys):
    folder = Path(model["ckpt"]).parent
    assert py_sample.main([model["ckpt"], "-n", "3", "--seed", "5", "--prior", model["prior"]]) == 0
    path = folder / "grid-n3-seed5-prior.png"
    face = pixels(path)[2:18, 2:18]
    z = mixture.draw(model["w"], model["means"], model["factors"], 5, 3)
    want = np.asarray(model["vae"].decode(z))[0]
    assert np.max(np.abs(face - np.round(want * 255))) <= 1
    assert py_sample.main([model["ckpt"], "-n", "3", "--seed", "5"]) == 0  # N(0, I): another name, no clash
    assert (folder / "grid-n3-seed5.png").is_file()
    for name in ("grid-n3-seed5-prior.png", "grid-n3-seed5.png"):
        (folder / name).unlink()


@pytest.mark.parametrize("case,words", [("other", "another checkpoint"), ("wide", "6-dimensional"),
                                        ("missing", "no prior file"), ("plain", "plain.npz"),
                                        ("no random faces", "--prior is for random faces")])
def test_a_prior_that_does_not_fit_is_refused_before_anything_is_written(model, tmp_path, capsys, case, words):
    path = {"other": "other.npz", "wide": "wide.npz", "missing": "nothing.npz", "plain": "plain.npz",
            "no random faces": "prior.npz"}[case]
    args = ["--prior", str(model["tmp"] / path), "--out", str(tmp_path / "out")]
    args += ["--reconstruct", model["face"]] if case == "no random faces" else ["--grid", "--interpolate"]
    before = sorted(os.listdir(model["tmp"]))
    onnx_argv = ["--decoder", model["dec"], "--encoder", model["enc"]]
    for module, argv, prefix in ((py_sample, [model["ckpt"]], "error:"), (onnx_sample, onnx_argv, "sample: error:")):
        assert module.main(argv + args) == 2
        err = capsys.readouterr().err
        assert err.startswith(prefix) and err.count("\n") == 1 and words in err, err
        assert list(tmp_path.iterdir()) == [] and sorted(os.listdir(model["tmp"])) == before


def test_the_exporter_checks_the_prior_against_the_decoders_identity(model, tmp_path, capsys):
    import onnx
    graph = onnx.load(model["dec"])
    props = {p.key: p.value for p in graph.metadata_props}
    assert props[edits.IDENTITY_KEY] == vectors.model_identity(model["vae"])
    onnx.helper.set_model_props(graph, {**props, edits.IDENTITY_KEY: "f" * 64})
    onnx.save(graph, str(tmp_path / "decoder.onnx"))
    assert onnx_sample.main(["--decoder", str(tmp_path / "decoder.onnx"), "--prior", model["prior"],
                             "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "another checkpoint" in err and "ffffffffffff" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_the_exporter_reads_a_prior_as_the_package_does(model):
    w, means, factors = edits.load_prior(model["prior"], SMALL.z_dim, vectors.model_identity(model["vae"]))
    fitted = prior.load(model["prior"])
    for a, b in ((w, fitted.weights), (means, fitted.means), (factors, fitted.cholesky)):
        np.testing.assert_array_equal(a, b)
    assert math.isclose(w.sum(), 1.0)


ONNX_ONLY = """
import json, sys
sys.path.insert(0, {export!r})
import sample
rc = sample.main({args!r})
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite", "scratchvae"))
print(json.dumps({{"rc": rc, "bad": bad}}))
"""


def test_the_exporter_draws_from_the_prior_without_scratchvae(model, tmp_path):
    out = tmp_path / "g.png"
    args = ["--decoder", model["dec"], "-n", "4", "--prior", model["prior"], "--out", str(out)]
    proc = subprocess.run([sys.executable, "-c", ONNX_ONLY.format(export=str(EXPORT), args=args)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rc": 0, "bad": []}
    z = mixture.draw(model["w"], model["means"], model["factors"], 0, 4)
    face = pixels(out)[2:18, 2:18]
    assert np.max(np.abs(face - np.round(np.asarray(model["vae"].decode(z))[0] * 255))) <= 1
