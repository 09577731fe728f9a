"""The fitted latent prior: EM against mixtures with known parameters, the documented draw against a
scalar reference, the prior file and its identity checks, python -m scratchvae.prior end to end on a
tiny checkpoint, and the fit at the end of a training run."""

import itertools
import os
import signal

import numpy as np
import pytest
from PIL import Image

from scratchvae import data, latent, train
from scratchvae.latent import mixture, prior, vectors
from scratchvae.model import VAE
from scratchvae.run import checkpoint
from scratchvae.run.errors import UserError
from tests.test_evaluate import RUN, make_checkpoint, make_images
from tests.test_train import TINY


def mixture_data(rng, means, covs, weights, n):
    """n codes from a Gaussian mixture, and each code's component."""
    k = rng.choice(len(weights), n, p=weights)
    factors = np.linalg.cholesky(np.asarray(covs))
    return means[k] + np.einsum("nij,nj->ni", factors[k], rng.standard_normal((n, means.shape[1]))), k


def matched(fit_means, true_means):
    """The order of the fitted components that puts each nearest its true one (all permutations)."""
    best = min(itertools.permutations(range(len(true_means))),
               key=lambda p: np.sum((fit_means[list(p)] - true_means) ** 2))
    return list(best)


def covariances(mix):
    return np.einsum("kij,klj->kil", mix.cholesky, mix.cholesky)


# ------------------------------------------------------------------ EM

def test_em_recovers_a_two_dimensional_mixture():
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [6.0, 5.0], [-5.0, 4.0]])
    covs = [[[1.0, 0.6], [0.6, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[0.3, -0.1], [-0.1, 0.3]]]
    weights = np.array([0.5, 0.3, 0.2])
    x, _ = mixture_data(rng, means, covs, weights, 6000)
    mix = mixture.fit(x, 3, seed=1)
    order = matched(mix.means, means)
    assert mix.stopped == "converged at tol" and mix.iterations == len(mix.history) - 1
    assert mix.weights.dtype == mix.means.dtype == mix.cholesky.dtype == np.float64
    assert np.abs(mix.weights[order] - weights).max() < 0.02
    assert np.abs(mix.means[order] - means).max() < 0.1
    assert np.abs(covariances(mix)[order] - np.array(covs)).max() < 0.12
    assert np.array_equal(np.tril(mix.cholesky), mix.cholesky)
    assert mix.loglik == pytest.approx(np.mean(mixture.log_likelihood(mix, x)), abs=1e-12)


def test_em_recovers_a_fifty_dimensional_mixture():
    rng = np.random.default_rng(1)
    d, k = 50, 4
    means = rng.standard_normal((k, d)) * 1.5
    scales = rng.uniform(0.5, 1.5, (k, d))
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    x, _ = mixture_data(rng, means, [np.diag(s ** 2) for s in scales], weights, 4000)
    mix = mixture.fit(x, k, seed=2)
    order = matched(mix.means, means)
    assert np.abs(mix.weights[order] - weights).max() < 0.01
    assert np.abs(mix.means[order] - means).max() < 0.25
    assert np.abs(np.sqrt(np.diagonal(covariances(mix)[order], axis1=1, axis2=2)) - scales).max() < 0.25


def test_the_log_likelihood_never_decreases():
    """Overlapping components, run far past the usual tolerance. Each M-step adds the covariance
    floor to the exact maximiser, so a step may lose a hair: at most 1e-9 per code, five orders
    below the default tol."""
    rng = np.random.default_rng(2)
    for trial in range(6):
        d, k = int(rng.integers(1, 6)), int(rng.integers(2, 6))
        x, _ = mixture_data(rng, rng.standard_normal((k, d)) * 2, [np.eye(d) + 0.3 * np.ones((d, d))] * k,
                            np.full(k, 1 / k), 800)
        for covariance in mixture.COVARIANCES:
            mix = mixture.fit(x, k + 1, covariance, seed=trial, restarts=1, tol=1e-13, max_iter=300)
            steps = np.diff(mix.history)
            assert len(steps) > 10 and steps.min() > -1e-9, (trial, covariance, steps.min())
            assert mix.history[-1] - mix.history[0] > 0.01


def test_full_and_diagonal_fits_agree_on_a_diagonal_mixture():
    rng = np.random.default_rng(3)
    means = np.array([[0.0, 0.0, 0.0], [5.0, -4.0, 3.0]])
    covs = [np.diag([1.0, 0.5, 2.0]), np.diag([0.3, 1.0, 0.7])]
    x, _ = mixture_data(rng, means, covs, [0.6, 0.4], 8000)
    full, diag = mixture.fit(x, 2, "full", seed=0), mixture.fit(x, 2, "diag", seed=0)
    order = matched(diag.means, full.means)
    assert diag.covariance == "diag" and np.count_nonzero(np.tril(diag.cholesky, -1)) == 0
    assert np.abs(diag.means[order] - full.means).max() < 1e-2
    assert np.abs(diag.weights[order] - full.weights).max() < 1e-3
    assert np.abs(covariances(diag)[order] - covariances(full)).max() < 0.05
    assert 0 <= full.loglik - diag.loglik < 2e-3  # the full fit has the diagonal one's freedom and more


def test_a_component_of_equal_codes_stays_finite():
    rng = np.random.default_rng(4)
    blob = rng.standard_normal((300, 3))
    same = np.tile([[6.0, -2.0, 1.0]], (60, 1))
    x = np.concatenate([blob, same])
    for covariance in mixture.COVARIANCES:
        mix = mixture.fit(x, 3, covariance, seed=0)
        ll = mixture.log_likelihood(mix, x)
        assert np.all(np.isfinite(ll)) and np.isfinite(mix.loglik) and np.all(np.isfinite(mix.history))
        spike = np.argmin(np.linalg.norm(mix.means - same[0], axis=1))
        assert np.allclose(mix.means[spike], same[0]) and mix.weights[spike] == pytest.approx(60 / 360, abs=1e-6)
        assert np.all(np.diagonal(mix.cholesky, axis1=1, axis2=2) > 0)
    everyone = mixture.fit(np.ones((50, 2)), 2, seed=0)  # no spread at all: the floor is `floor` itself
    assert np.all(np.isfinite(mixture.log_likelihood(everyone, np.ones((5, 2)))))


def test_an_empty_component_is_removed():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((100, 2))
    resp = np.zeros((100, 3))
    resp[:50, 0], resp[50:, 2] = 1.0, 1.0  # the middle component holds nothing
    mix, dropped = mixture._m_step(x, resp, "full", 1e-6)
    assert dropped == 1 and mix.components == 2 and np.allclose(mix.weights, [0.5, 0.5])
    assert np.allclose(mix.means, [x[:50].mean(0), x[50:].mean(0)])


def test_auto_picks_the_true_count_on_well_separated_codes():
    rng = np.random.default_rng(6)
    means = rng.standard_normal((5, 4)) * 8
    x, _ = mixture_data(rng, means, [np.eye(4)] * 5, np.full(5, 0.2), 1500)
    sel = mixture.select(x, seed=0)
    assert [row[0] for row in sel.table] == list(mixture.CANDIDATES)
    assert sel.chosen == 5 and sel.mixture.components == 5
    assert sel.heldout == max(row[2] for row in sel.table)
    assert sel.mixture.loglik == pytest.approx(np.mean(mixture.log_likelihood(sel.mixture, x)), abs=1e-12)


def test_bad_fit_requests_are_one_line():
    x = np.zeros((5, 2))
    for call, words in ((lambda: mixture.fit(x, 6), "--components 6"), (lambda: mixture.fit(x, 2, "tied"), "full"),
                        (lambda: mixture.fit(x[:, :1] * np.nan, 1), "non-finite")):
        with pytest.raises(UserError, match=words) as e:
            call()
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------ the draw

def reference_draw(weights, means, factors, seed, n, temperature):
    """The docstring of mixture.draw in scalar Python arithmetic (IEEE doubles, as JavaScript's)."""
    k, d = means.shape
    e = latent.standard_normals(seed, n * d).tolist()
    x = latent.splitmix64((seed ^ mixture.PRIOR_SALT) & latent.MASK64, n).tolist()
    running, cum = 0.0, []
    for w in weights.tolist():
        running += w
        cum.append(running)
    rows = []
    for i in range(n):
        u = (x[i] >> 11) / 2 ** 53
        c = next((j for j in range(k) if cum[j] / cum[-1] > u), k - 1)
        acc = [0.0] * d
        for j in range(d):
            for r in range(d):
                acc[r] += float(factors[c, r, j]) * e[i * d + j]
        rows.append([float(means[c, r]) + temperature * acc[r] for r in range(d)])
    return np.array(rows, np.float64).astype(np.float32)


def random_prior(rng, k, d):
    a = rng.standard_normal((k, d, d))
    factors = np.linalg.cholesky(a @ a.transpose(0, 2, 1) + np.eye(d))
    return rng.dirichlet(np.ones(k)), rng.standard_normal((k, d)) * 3, factors


def test_the_draw_is_the_documented_one():
    rng = np.random.default_rng(7)
    weights, means, factors = random_prior(rng, 3, 5)
    for seed, temperature in ((0, 1.0), (12345, 0.7), (-3, 1.3), (2 ** 70 + 5, 1.0)):
        z = mixture.draw(weights, means, factors, seed, 40, temperature)
        assert z.dtype == np.float32 and z.shape == (40, 5)
        assert np.array_equal(z, reference_draw(weights, means, factors, seed, 40, temperature))


def test_a_row_depends_only_on_the_seed_and_its_index():
    rng = np.random.default_rng(8)
    weights, means, factors = random_prior(rng, 4, 6)
    many = mixture.draw(weights, means, factors, 9, 300)
    for k in (1, 7, 64):
        assert np.array_equal(mixture.draw(weights, means, factors, 9, k), many[:k])
    assert not np.array_equal(mixture.draw(weights, means, factors, 10, 300), many)


def test_one_standard_component_is_draw_z():
    for d, seed, t in ((4, 0, 1.0), (7, 99, 0.5), (200, 3, 1.0)):
        z = mixture.draw(np.ones(1), np.zeros((1, d)), np.eye(d)[None], seed, 33, t)
        assert np.array_equal(z, latent.draw_z(seed, 33, d, t))


def test_components_are_drawn_in_proportion_to_their_weights():
    weights = np.array([0.2, 0.5, 0.3])
    means = np.array([[-100.0], [0.0], [100.0]])
    z = mixture.draw(weights * 7, means, np.full((3, 1, 1), 0.01), 1, 30000)  # weights need not sum to 1
    share = np.bincount(np.digitize(z[:, 0], [-50, 50]), minlength=3) / len(z)
    assert np.abs(share - weights).max() < 0.01


def test_the_draw_refuses_a_temperature_that_is_not_positive():
    for t in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match="--temperature"):
            mixture.draw(np.ones(1), np.zeros((1, 2)), np.eye(2)[None], 0, 4, t)


# ------------------------------------------------------------------ the file

def some_prior(z_dim=3, identity="a" * 64):
    rng = np.random.default_rng(9)
    weights, means, factors = random_prior(rng, 2, z_dim)
    return prior.Prior(weights, means, factors, "full", -3.5, -3.9, -4.2, 123, identity, 17, "converged at tol")


def test_the_file_round_trips_and_plain_numpy_reads_it(tmp_path):
    p = some_prior()
    prior.save(tmp_path / "prior.npz", p)
    back = prior.load(tmp_path / "prior.npz", identity="a" * 64, z_dim=3)
    for name in ("weights", "means", "cholesky"):
        assert np.array_equal(getattr(back, name), getattr(p, name))
    assert (back.covariance, back.loglik_heldout, back.images, back.identity, back.stopped) == \
           ("full", -3.9, 123, "a" * 64, "converged at tol")
    with np.load(tmp_path / "prior.npz", allow_pickle=False) as f:
        assert str(f["format"]) == "scratchvae-latent-prior" and int(f["z_dim"]) == 3
        assert str(f["checkpoint_sha256"]) == "a" * 64 and f["cholesky"].shape == (2, 3, 3)
        assert all(f[k].dtype != object for k in f.files)


def one_line_error(call, *words):
    with pytest.raises(UserError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_prior_of_another_model_or_a_bad_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "prior.npz"
    prior.save(path, some_prior())
    one_line_error(lambda: prior.load(path, identity="b" * 64), "another checkpoint", "python -m scratchvae.prior")
    one_line_error(lambda: prior.load(path, z_dim=4), "3-dimensional", "z has 4", "python -m scratchvae.prior")
    one_line_error(lambda: prior.load(tmp_path / "none.npz"), "no prior file")
    (tmp_path / "garbled.npz").write_bytes(path.read_bytes()[:200])
    one_line_error(lambda: prior.load(tmp_path / "garbled.npz"), "not a readable prior file")
    np.savez(tmp_path / "other.npz", format=np.array("scratchvae-attribute-vectors"), version=np.array(1))
    one_line_error(lambda: prior.load(tmp_path / "other.npz"), "not a scratchvae latent-prior file")
    bad = some_prior()
    bad.cholesky = bad.cholesky.transpose(0, 2, 1).copy()  # upper-triangular
    prior.save(tmp_path / "upper.npz", bad)
    one_line_error(lambda: prior.load(tmp_path / "upper.npz"), "damaged prior file", "lower-triangular")


# ------------------------------------------------------------------ the command

@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """40 images and a checkpoint 'trained' on them (tests/test_evaluate.py's), the codes of its
    training split encoded directly, and a helper that runs the command."""
    root = tmp_path_factory.mktemp("prior")
    faces = make_images(root / "faces", 40)
    vae = make_checkpoint(root / "checkpoint.npz", str(faces), 40)
    found = data.load_images(faces, 16, crop="center", cache_dir=root / "cache", progress=False)
    train_idx, _ = data.split_indices(len(found), RUN["val_fraction"], RUN["batch_size"], RUN["seed"], found.partition)
    codes = np.asarray(vae.encode(found.images[train_idx].astype(np.float32) / 255)[0])

    def command(*args):
        return prior.main([str(root / "checkpoint.npz"), "--cache-dir", str(root / "cache"), "--threads", "1",
                           "--quiet", *map(str, args)])
    return {"root": root, "vae": vae, "codes": codes, "command": command}


def test_the_command_fits_the_runs_training_codes(run_folder, capsys):
    out = run_folder["root"] / "fit" / "prior.npz"
    assert run_folder["command"]("--out", out, "--components", 3) == 0
    p = prior.load(out, identity=vectors.model_identity(run_folder["vae"]), z_dim=4)
    codes = run_folder["codes"]
    assert p.components == 3 and p.images == prior.fitted_count(len(codes)) == 27
    assert p.loglik_standard == pytest.approx(prior.standard_loglik(codes), rel=1e-6)
    # the same fit as mixture.fit on the run's own seed's 90% of those codes
    fit_idx, held_idx = mixture.held_out_split(len(codes), RUN["seed"])
    direct = mixture.fit(codes[fit_idx], 3, seed=RUN["seed"])
    assert np.allclose(p.means, direct.means, atol=1e-5) and np.allclose(p.weights, direct.weights, atol=1e-6)
    assert p.loglik_heldout == pytest.approx(np.mean(mixture.log_likelihood(direct, codes[held_idx])), abs=1e-3)
    printed = capsys.readouterr().out
    assert "30 images (train split of" in printed and "converged at tol" in printed and "under N(0, I)" in printed


def test_the_command_with_auto_prints_the_table_it_chose_from(run_folder, capsys):
    out = run_folder["root"] / "auto.npz"
    assert run_folder["command"]("--out", out, "--components", "auto", "--covariance", "diag") == 0
    printed = capsys.readouterr().out
    p = prior.load(out)
    assert p.covariance == "diag" and p.images == 30 and "<- chosen" in printed
    for k in (1, 2, 5, 10, 20):
        assert f"\n{k:>4} " in printed


def test_an_existing_prior_is_kept_without_force(run_folder, capsys):
    out = run_folder["root"] / "kept.npz"
    assert run_folder["command"]("--out", out, "--components", 2) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert run_folder["command"]("--out", out, "--components", 1) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--force" in err
    assert out.read_bytes() == before
    assert run_folder["command"]("--out", out, "--components", 1, "--force") == 0
    assert prior.load(out).components == 1


@pytest.mark.parametrize("args,words", [
    (("--components", 28), "only 27 of the 30 codes"),
    (("--components", "many"), "whole number of components or auto"),
    (("--limit", 0), "at least 1"),
    (("--seed", -1), "zero or more"),
    (("--data", "missing-folder"), "no such"),
])
def test_bad_input_is_one_line_and_writes_nothing(run_folder, capsys, args, words):
    out = run_folder["root"] / "bad" / "prior.npz"
    code = run_folder["command"]("--out", out, *args)
    err = "".join(line for line in capsys.readouterr().err.splitlines(True) if not line.startswith("note:"))
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not out.exists()


def test_a_file_in_the_way_of_the_out_folder_is_refused_before_encoding(run_folder, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(prior, "encode", lambda *a, **k: pytest.fail("encoded before checking --out"))
    assert run_folder["command"]("--out", tmp_path / "file" / "prior.npz") == 2
    assert "cannot write" in capsys.readouterr().err


# ------------------------------------------------------------------ the end of training

def train_run(out, *extra):
    return train.main([*TINY, "--out", str(out), "--threads", "1", *extra])


def test_a_finished_run_writes_its_prior_and_prior_samples(tmp_path, capsys):
    assert train_run(tmp_path / "a", "--limit", "96", "--epochs", "2") == 0
    printed = capsys.readouterr().out
    assert "samples-prior.png, prior.npz," in printed.splitlines()[-1] and "\nprior: " in printed
    vae, arrays, _ = VAE.load(tmp_path / "a" / "checkpoint.npz", with_extras=True)
    p = prior.load(tmp_path / "a" / "prior.npz", identity=vectors.checkpoint_identity(arrays), z_dim=4)
    assert p.images == prior.fitted_count(80) and np.isfinite(p.loglik_heldout)
    with Image.open(tmp_path / "a" / "samples-prior.png") as a, Image.open(tmp_path / "a" / "samples.png") as b:
        assert a.size == b.size and a.mode == b.mode == "RGB"
        assert not np.array_equal(np.asarray(a), np.asarray(b))
    # python -m scratchvae.prior repeats the end of training's fit exactly: 10 components, or one Gaussian
    # where that predicts the held-out codes better
    fits = []
    for k in ("10", "1"):
        assert prior.main([str(tmp_path / "a" / "checkpoint.npz"), "--limit", "20000", "--components", k, "--out",
                           str(tmp_path / f"cli{k}.npz"), "--threads", "1", "--quiet"]) == 0
        fits.append(prior.load(tmp_path / f"cli{k}.npz"))
    again = fits[1] if fits[1].loglik_heldout > fits[0].loglik_heldout else fits[0]
    assert p.components == again.components and f"\nprior: {prior.count(p.components, 'component')}" in printed
    for name in ("weights", "means", "cholesky"):
        assert np.array_equal(getattr(again, name), getattr(p, name)), name

    # --no-prior: neither file, and the same training to the bit
    assert train_run(tmp_path / "b", "--limit", "96", "--epochs", "2", "--no-prior") == 0
    assert "prior" not in capsys.readouterr().out
    assert not (tmp_path / "b" / "prior.npz").exists() and not (tmp_path / "b" / "samples-prior.png").exists()
    other = checkpoint.load(tmp_path / "b" / "checkpoint.npz")[0]
    assert sorted(other) == sorted(arrays) and all(np.array_equal(arrays[k], other[k]) for k in arrays)


def test_a_resumed_run_fits_the_prior_an_uninterrupted_one_does(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_run(straight, "--limit", "96", "--epochs", "2") == 0
    assert train_run(split, "--limit", "96", "--epochs", "1") == 0
    assert train_run(split, "--resume", "--epochs", "2") == 0
    with np.load(straight / "prior.npz") as a, np.load(split / "prior.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    before = (split / "prior.npz").read_bytes()
    capsys.readouterr()
    assert train_run(split, "--resume", "--epochs", "2") == 2  # already finished: refused, nothing changes
    assert "already has 2 epochs" in capsys.readouterr().err
    assert (split / "prior.npz").read_bytes() == before


def test_a_signal_while_fitting_the_prior_leaves_the_run_complete_without_it(tmp_path, capsys, monkeypatch):
    real = prior.encode

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the training loop's handler only marks the stop
        return real(*args, **kwargs)
    monkeypatch.setattr(prior, "encode", interrupted)
    assert train_run(tmp_path, "--limit", "96", "--epochs", "1") == 130
    printed = capsys.readouterr().out
    assert "while fitting the latent prior; training is complete" in printed
    assert "python -m scratchvae.prior" in printed
    assert not (tmp_path / "prior.npz").exists() and not (tmp_path / "samples-prior.png").exists()
    VAE.load(tmp_path / "checkpoint.npz")
