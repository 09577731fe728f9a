"""The page export/to_web.py writes, in headless Chromium: it reports ready, a seed's faces equal
export/sample.py's (from N(0, I) and from a fitted prior), a slider changes exactly the selected face, a
photo is prepared as scratchvae prepares images, bad input shows a message; the JS draw and resize equal
Python's under Node."""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from scratchvae import latent
from scratchvae import sample as py_sample
from scratchvae.data import imagefile
from scratchvae.latent import attributes, mixture, prior, vectors
from scratchvae.model import VAE, VAEConfig

from tests import browser
from tests.labelled import labelled_faces
from tests.priors import write_prior

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "export"
if str(EXPORT) not in sys.path:
    sys.path.insert(0, str(EXPORT))
import edits  # noqa: E402
import sample as onnx_sample  # noqa: E402
import to_web  # noqa: E402
from tests.hang import HANG_S

SMALL = VAEConfig(image_size=16, filters=8, blocks=2, z_dim=4)
NAMES = ["Smiling", "Eyeglasses", "Blond_Hair", "Bald"]
N_IMAGES, GRID = 40, 16
DEBIAN_TOOLS = {"chromium": lambda: Path(browser.CHROMIUM).exists(), "nodejs": lambda: shutil.which("node"),
                "npm": lambda: shutil.which("npm")}


@functools.lru_cache(maxsize=None)
def browser_tools():
    """Chromium, Node and npm, installed from Debian's packages when missing (as .ci/run does); the
    tests fail, saying what is missing, where they cannot be installed. They never skip."""
    missing = [name for name, present in DEBIAN_TOOLS.items() if not present()]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        for command in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
            subprocess.run(command, capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        missing = [name for name, present in DEBIAN_TOOLS.items() if not present()]
    if missing:
        pytest.fail(f"the browser tests need {', '.join(missing)} (Debian packages; bash .ci/run installs them)")


def tiny_vae(seed):
    vae = VAE(SMALL, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for name, a in vae.state().items():  # BN statistics away from init, so inference mode is not trivial
        a[...] = rng.uniform(0.5, 2.0, a.shape) if name.endswith("variance") else rng.normal(0, 0.3, a.shape)
    return vae


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny checkpoint, vectors from a labelled set made here, and the site built from them."""
    browser_tools()
    if not to_web.ORT_DIST.is_dir():  # the pinned runtime, installed as .ci/run installs it
        web = Path(to_web.__file__).resolve().parents[1] / "web"
        done = subprocess.run(["npm", "ci", "--prefix", str(web), "--no-audit", "--no-fund", "--loglevel=error"],
                              capture_output=True, text=True)
        assert done.returncode == 0 and to_web.ORT_DIST.is_dir(), f"npm ci --prefix web failed: {done.stderr[-2000:]}"
    tmp = tmp_path_factory.mktemp("web")
    faces = tmp / "faces"
    labelled_faces(faces, N_IMAGES, NAMES, seed=11)  # Bald, the last, is nobody's: it is skipped
    vae = tiny_vae(0)
    ckpt = tmp / "run" / "checkpoint.npz"
    ckpt.parent.mkdir()
    vae.save(ckpt)
    vec = tmp / "vectors.npz"
    assert attributes.main([str(ckpt), "--data", str(faces), "--out", str(vec), "--min-count", "5",
                            "--cache-dir", str(tmp / "cache"), "--quiet"]) == 0
    site = tmp / "site"
    assert to_web.main([str(ckpt), "--vectors", str(vec), "--out", str(site)]) == 0
    return {"tmp": tmp, "vae": vae, "ckpt": str(ckpt), "vectors": str(vec), "site": site}


@pytest.fixture(scope="module")
def page(world, tmp_path_factory):
    """The site served on 127.0.0.1 and open in headless Chromium in test mode, once ready."""
    browser_tools()
    with browser.serve(world["site"]) as url:
        b = browser.Browser(tmp_path_factory.mktemp("profile"))
        try:
            b.url = url
            b.open(url + "?test=1")
            wait_ready(b)
            yield b
        finally:
            b.close()


def results(b):
    return json.loads(b.evaluate("document.getElementById('test-results').textContent") or "{}")


def wait_ready(b):
    b.wait_for("(() => { const t = document.getElementById('test-results'); if (!t || !t.textContent) return false;"
               " const r = JSON.parse(t.textContent); return r.ready || r.failed; })()")
    r = results(b)
    assert r["ready"], r
    return r


def tiles(b):
    """(faces, S, S, 3) uint8 of the grid's canvases as the page shows them."""
    data = b.evaluate("Array.from(document.querySelectorAll('#grid canvas'), c => Array.from("
                      "c.getContext('2d').getImageData(0, 0, c.width, c.height).data))")
    s = SMALL.image_size
    return np.array(data, np.uint8).reshape(-1, s, s, 4)[..., :3]


def decode_python(world, z):
    runner = ort.InferenceSession(str(world["site"] / "decoder.onnx"), providers=["CPUExecutionProvider"])
    return runner.run(["image"], {"z": np.ascontiguousarray(z, np.float32)})[0]


def show_seed(b, seed):
    before = results(b)["decodes"]
    b.evaluate(f"document.getElementById('seed').value = '{seed}';"
               "document.getElementById('sample-form').requestSubmit()")
    b.wait_for(f"JSON.parse(document.getElementById('test-results').textContent).decodes > {before} + {GRID}")
    b.wait_for("document.querySelectorAll('#grid canvas').length >= 16")


def test_page_is_ready_with_the_ranked_sliders_and_reports_the_decode_time(world, page):
    r = results(page)
    v = vectors.load(world["vectors"])
    assert r["z_dim"] == SMALL.z_dim and r["faces"] == GRID and r["message"] is None
    assert r["sliders"] == [v.names[i] for i in v.ranking()]  # Bald was skipped: three sliders
    assert 0 < r["decode_ms"] < 1000
    print(f"\ndecode time per face in headless Chromium (tiny 16 px model, mean of 20): {r['decode_ms']:.2f} ms")


def test_a_seed_gives_export_samples_faces(world, page, tmp_path):
    show_seed(page, 7)
    shown = tiles(page)[:GRID]
    out = tmp_path / "samples.png"
    assert onnx_sample.main(["--decoder", str(world["site"] / "decoder.onnx"), "-n", str(GRID), "--seed", "7",
                             "--out", str(out)]) == 0
    grid, s = np.asarray(Image.open(out)), SMALL.image_size
    for i in range(GRID):
        r, c = divmod(i, 4)
        tile = grid[2 + r * (s + 2):2 + r * (s + 2) + s, 2 + c * (s + 2):2 + c * (s + 2) + s]
        assert np.max(np.abs(tile.astype(int) - shown[i].astype(int))) <= 1, i
    want = decode_python(world, edits.draw_z(7, GRID, SMALL.z_dim))  # (16, S, S, 3) floats
    diff = np.max(np.abs(shown / 255.0 - want))
    print(f"\nmax |page pixel - export/sample.py float| = {diff * 255:.3f}/255")
    assert diff <= 1 / 255


def test_a_slider_changes_exactly_the_selected_face(world, page):
    show_seed(page, 3)
    before, n = tiles(page), results(page)["edits"]
    page.evaluate("document.querySelectorAll('#grid .face')[5].click()")
    page.wait_for("document.querySelectorAll('#grid .face')[5].getAttribute('aria-pressed') === 'true'")
    page.evaluate("(() => { const s = document.getElementById('attr-0'); s.value = '2.5';"
                  " s.dispatchEvent(new Event('input')); })()")
    page.wait_for(f"JSON.parse(document.getElementById('test-results').textContent).edits > {n}")
    after = tiles(page)
    changed = [i for i in range(len(after)) if not np.array_equal(before[i], after[i])]
    assert changed == [5] and results(page)["edited"] == 5
    v = vectors.load(world["vectors"])
    top = v.ranking()[0]
    z = latent.draw_z(3, GRID, SMALL.z_dim)[5:6] + np.float32(2.5) * v.vectors[top][None]
    assert np.max(np.abs(after[5] / 255.0 - decode_python(world, z)[0])) <= 1 / 255
    page.evaluate("document.getElementById('reset').click()")


def test_a_photo_is_prepared_as_scratchvae_prepares_it(world, page, tmp_path):
    rng = np.random.default_rng(4)
    png = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (29, 47, 3), dtype=np.uint8)).save(png)
    smooth = np.clip(np.cumsum(rng.normal(0, 6, (200, 300, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    small = tmp_path / "small.jpg"  # under 4x the model's size: decoded at full size, no draft
    Image.fromarray(smooth[:40, :50]).save(small, quality=90)
    jpeg = tmp_path / "photo.jpg"  # 300x200: Pillow's draft decodes it at 1/4
    Image.fromarray(smooth).save(jpeg, quality=90)
    encoder = ort.InferenceSession(str(world["site"] / "encoder.onnx"), providers=["CPUExecutionProvider"])
    for path, limit in ((png, 0), (small, JPEG_TOLERANCE), (jpeg, JPEG_TOLERANCE)):
        page.set_file("#photo", path)
        page.wait_for(f"(JSON.parse(document.getElementById('test-results').textContent).photo || {{}}).name"
                      f" === '{path.name}'")
        photo = results(page)["photo"]
        want, why = imagefile.decode(str(path), SMALL.image_size, "center")
        got = np.array(photo["pixels"], np.uint8).reshape(want.shape)
        diff = int(np.max(np.abs(got.astype(int) - want.astype(int))))
        print(f"\n{path.name}: max difference from scratchvae's pixels {diff}/255, "
              f"mean {np.mean(np.abs(got.astype(int) - want.astype(int))):.3f}")
        assert diff <= limit
        if limit == 0:  # the same pixels: the same code as the Python encoder gives
            x = want.astype(np.float32)[None] * np.float32(1 / 255)
            np.testing.assert_allclose(photo["z"], encoder.run(["z_mean"], {"image": x})[0][0], atol=1e-5)
    assert page.evaluate("document.querySelector('#grid .face[aria-pressed=\"true\"] span').textContent") \
        == "photo: photo.jpg"


JPEG_TOLERANCE = 8  # browser JPEG decode + a block average for libjpeg's DCT scaling (see docs/WEB.md)


def test_the_morph_strip_runs_from_one_face_to_the_other(world, page):
    show_seed(page, 5)
    strip = page.evaluate("(() => { const c = document.getElementById('morph-strip');"
                          " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); })()")
    s = SMALL.image_size
    strip = np.array(strip, np.uint8).reshape(s, 8 * s, 4)[..., :3]
    z = latent.draw_z(5, 2, SMALL.z_dim)
    want = decode_python(world, latent.slerp(z[0], z[1], np.linspace(0, 1, 8)))
    got = strip.reshape(s, 8, s, 3).transpose(1, 0, 2, 3)
    assert np.max(np.abs(got / 255.0 - want)) <= 1 / 255


def test_a_file_that_is_not_an_image_shows_the_message(page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("these are not pixels\n")
    page.set_file("#photo", bad)
    text = page.wait_for("!document.getElementById('message').hidden && document.getElementById('message').textContent")
    assert "notes.png" in text and "not a JPEG, PNG, WebP, BMP or GIF image" in text


def test_the_screenshot_is_kept(page, tmp_path_factory):
    path = tmp_path_factory.mktemp("artefacts") / "page.png"
    page.screenshot(path)
    width, height = Image.open(path).size
    print(f"\nscreenshot of the page: {path}")
    assert width >= 800 and height >= 800


def test_vectors_for_another_z_size_and_a_site_without_vectors_show_a_note(world, tmp_path, tmp_path_factory):
    bad = tmp_path / "bad"
    shutil.copytree(world["site"], bad)
    doc = json.loads((bad / "vectors.json").read_text())
    doc.update(z_dim=SMALL.z_dim + 1, vectors=[row + [0.0] for row in doc["vectors"]])
    (bad / "vectors.json").write_text(json.dumps(doc))
    plain = tmp_path / "plain"
    assert to_web.main([world["ckpt"], "--out", str(plain)]) == 0
    b = browser.Browser(tmp_path_factory.mktemp("profile"))
    try:
        with browser.serve(bad) as url:
            b.open(url + "?test=1")
            r = wait_ready(b)
            assert "5-dimensional" in r["message"] and "z has 4" in r["message"] and r["sliders"] == []
            assert b.evaluate("!document.getElementById('message').hidden")
        with browser.serve(plain) as url:
            b.open(url + "?test=1")
            r = wait_ready(b)
            assert r["message"] is None and r["sliders"] == []
            assert b.evaluate("!document.getElementById('no-vectors').hidden")
    finally:
        b.close()


def test_to_web_refuses_vectors_of_another_model_and_a_missing_runtime(world, tmp_path, capsys, monkeypatch):
    other = tmp_path / "other.npz"
    z = np.random.default_rng(0).standard_normal((10, SMALL.z_dim))
    vectors.save(other, vectors.directions(z, np.tile([[1], [-1]], (5, 1)), ["Smiling"],
                                           vectors.model_identity(tiny_vae(1)), min_count=2))
    out = tmp_path / "site"
    assert to_web.main([world["ckpt"], "--vectors", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("to_web: error:") and "another checkpoint" in err and err.count("\n") == 1
    assert not out.exists()
    monkeypatch.setattr(to_web, "ORT_DIST", tmp_path / "empty")
    assert to_web.main([world["ckpt"], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "npm ci --prefix web" in err and err.count("\n") == 1 and not out.exists()


def test_named_attributes_get_the_first_sliders_and_unknown_names_are_refused(world, tmp_path, capsys):
    v = vectors.load(world["vectors"])
    last = v.names[v.ranking()[-1]]  # the shortest direction: no slider of its own by default
    out = tmp_path / "site"
    assert to_web.main([world["ckpt"], "--vectors", str(world["vectors"]), "--out", str(out), "--sliders", "1",
                        "--attribute", last]) == 0
    doc = json.loads((out / "vectors.json").read_text())
    assert doc["names"][0] == last and doc["sliders"] == 1
    assert doc["names"][1:] == [v.names[i] for i in v.ranking() if v.names[i] != last]
    np.testing.assert_array_equal(np.float32(doc["vectors"][0]), v.vectors[v.names.index(last)])
    capsys.readouterr()
    assert to_web.main([world["ckpt"], "--vectors", str(world["vectors"]), "--out", str(tmp_path / "b"),
                        "--attribute", "Smilng"]) == 2
    err = capsys.readouterr().err
    assert "Smilng" in err and "nearest" in err and err.count("\n") == 1 and not (tmp_path / "b").exists()


def test_a_site_with_the_prior_draws_export_samples_prior_faces(world, tmp_path, tmp_path_factory, capsys):
    """to_web --prior --temperature 0.85: the page's slider starts at 0.85 and its grid is drawPrior's
    faces, the ones export/sample.py --prior and the package draw at that temperature; its morph strip
    walks between two of them. Another checkpoint's prior, and a temperature off the slider, are refused."""
    path = tmp_path / "prior.npz"
    write_prior(path, vectors.model_identity(world["vae"]), SMALL.z_dim, components=3, seed=2)
    site = tmp_path / "site"
    assert to_web.main([world["ckpt"], "--vectors", world["vectors"], "--prior", str(path), "--temperature", "0.85",
                        "--out", str(site)]) == 0
    assert json.loads((site / "model.json").read_text())["temperature"] == 0.85
    doc = json.loads((site / "prior.json").read_text())
    fitted = prior.load(str(path))
    np.testing.assert_array_equal(doc["weights"], fitted.weights)  # float64 values, exact in JSON
    np.testing.assert_array_equal(doc["cholesky"][1], fitted.cholesky[1][np.tril_indices(SMALL.z_dim)])
    out = tmp_path / "grid.png"
    assert onnx_sample.main(["--decoder", str(site / "decoder.onnx"), "-n", str(GRID), "--seed", "11",
                             "--temperature", "0.85", "--prior", str(path), "--out", str(out)]) == 0
    py = tmp_path / "py.png"
    assert py_sample.main([world["ckpt"], "-n", str(GRID), "--seed", "11", "--temperature", "0.85",
                           "--prior", str(path), "--out", str(py)]) == 0
    grid, s = np.asarray(Image.open(out)).astype(int), SMALL.image_size
    assert np.max(np.abs(grid - np.asarray(Image.open(py)).astype(int))) <= 1
    z = mixture.draw(fitted.weights, fitted.means, fitted.cholesky, 11, GRID, 0.85)
    b = browser.Browser(tmp_path_factory.mktemp("profile"))
    try:
        with browser.serve(site) as url:
            b.open(url + "?test=1")
            r = wait_ready(b)
            assert r["prior"] == 3 and r["message"] is None
            assert b.evaluate("!document.getElementById('prior-note').hidden")
            assert b.evaluate("document.getElementById('temperature').value") == "0.85"
            assert b.evaluate("document.getElementById('temperature-value').textContent") == "0.85"
            show_seed(b, 11)
            shown = tiles(b)[:GRID]
            for i in range(GRID):
                r_, c = divmod(i, 4)
                tile = grid[2 + r_ * (s + 2):2 + r_ * (s + 2) + s, 2 + c * (s + 2):2 + c * (s + 2) + s]
                assert np.max(np.abs(tile - shown[i].astype(int))) <= 1, i
            want = decode_python(world, z)
            diff = np.max(np.abs(shown / 255.0 - want))
            print(f"\nprior faces: max |page pixel - decoded package draw| = {diff * 255:.3f}/255")
            assert diff <= 1 / 255
            plain = decode_python(world, latent.draw_z(11, GRID, SMALL.z_dim, 0.85))
            assert np.max(np.abs(shown / 255.0 - plain)) > 4 / 255  # the prior's faces, not N(0, I)'s
            strip = b.evaluate("(() => { const c = document.getElementById('morph-strip'); return Array.from("
                               "c.getContext('2d').getImageData(0, 0, c.width, c.height).data); })()")
            strip = np.array(strip, np.uint8).reshape(s, 8 * s, 4)[..., :3].reshape(s, 8, s, 3).transpose(1, 0, 2, 3)
            walk = decode_python(world, latent.slerp(z[0], z[1], np.linspace(0, 1, 8)))
            assert np.max(np.abs(strip / 255.0 - walk)) <= 1 / 255
    finally:
        b.close()
    other = tmp_path / "other.npz"
    write_prior(other, vectors.model_identity(tiny_vae(1)), SMALL.z_dim)
    capsys.readouterr()
    assert to_web.main([world["ckpt"], "--prior", str(other), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("to_web: error:") and "another checkpoint" in err and err.count("\n") == 1
    assert not (tmp_path / "refused").exists()
    assert to_web.main([world["ckpt"], "--prior", str(path), "--temperature", "2.5", "--out", str(tmp_path / "hot")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("to_web: error: --temperature 2.5") and "0.1 to 2" in err and err.count("\n") == 1
    assert not (tmp_path / "hot").exists()
    slider = re.search(r'<input id="temperature" type="range" min="([\d.]+)" max="([\d.]+)"',
                       (Path(to_web.__file__).resolve().parents[1] / "web" / "index.html").read_text())
    assert (float(slider[1]), float(slider[2])) == (to_web.MIN_TEMPERATURE, to_web.MAX_TEMPERATURE)


def node(script):
    browser_tools()
    proc = subprocess.run(["node", "--input-type=module"], input=script, capture_output=True, text=True,
                          timeout=HANG_S, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


APP = json.dumps((ROOT / "web" / "app.js").as_uri())


def test_the_js_draw_is_pythons_draw():
    cases = [(0, 64, 32, 1.0), (7, 16, 4, 1.0), (-3, 5, 7, 0.7), (2**64 + 5, 3, 9, 1.3),
             (12345678901234567890, 2, 5, 1)]
    got = node(f"import {{ drawZ }} from {APP};\n"
               f"const cases = {json.dumps([[str(s), n, d, t] for s, n, d, t in cases])};\n"
               "console.log(JSON.stringify(cases.map(([s, n, d, t]) => Array.from(drawZ(BigInt(s), n, d, t)))));")
    for (seed, n, z_dim, t), values in zip(cases, got):
        np.testing.assert_array_equal(np.array(values, np.float32).reshape(n, z_dim), latent.draw_z(seed, n, z_dim, t))


def test_the_js_resize_is_pillows_lanczos():
    rng = np.random.default_rng(8)
    shapes = [(29, 47, 16), (200, 300, 64), (16, 16, 16), (20, 17, 64), (640, 480, 64)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w, _ in shapes]
    payload = json.dumps([[im.ravel().tolist(), w, h, s] for im, (h, w, s) in zip(images, shapes)])
    got = node(f"import {{ prepareRGB }} from {APP};\nconst cases = {payload};\n"
               "console.log(JSON.stringify(cases.map(([p, w, h, s]) =>"
               " Array.from(prepareRGB(Uint8Array.from(p), w, h, s, 3, false)))));")
    for im, (h, w, s), values in zip(images, shapes, got):
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        want = np.asarray(Image.fromarray(im).resize((s, s), Image.LANCZOS, box=box))
        np.testing.assert_array_equal(np.array(values, np.uint8).reshape(s, s, 3), want)
