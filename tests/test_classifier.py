"""The attribute classifier (scratchvae/evaluation/classifier.py): the logistic loss and its gradient,
the whole network's gradients against central differences in float64, a tiny learnable task, its file,
and the accuracy summary."""

import numpy as np
import pytest

from scratchvae import kernels
from scratchvae.evaluation import classifier
from tests.gradcheck import numeric_grad, rel_error


def test_logistic_loss_matches_the_definition_and_its_gradient(rng):
    logits = rng.standard_normal((5, 3)) * 4
    y = (rng.random((5, 3)) < 0.5).astype(np.float64)
    loss, grad = classifier.logistic_loss(logits, y)
    p = 1 / (1 + np.exp(-logits))
    assert loss == pytest.approx(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))), rel=1e-12)
    numeric = numeric_grad(lambda: classifier.logistic_loss(logits, y)[0], logits)
    assert rel_error(grad, numeric) < 1e-6


def test_logistic_loss_stays_finite_for_huge_logits():
    loss, grad = classifier.logistic_loss(np.array([[800.0, -800.0]]), np.array([[0.0, 1.0]]))
    assert loss == pytest.approx(800.0) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[0.5, -0.5]])


@pytest.mark.parametrize("size,batch,hidden", [(8, 3, None), (7, 1, None), (7, 2, 5)])
def test_network_gradients_against_central_differences(rng, size, batch, hidden):
    with kernels.using("numpy"):
        clf = classifier.Classifier(size, ["a", "b"], filters=(2, 3), dtype=np.float64, seed=1, hidden=hidden)
        for p in clf.params().values():
            p[...] = rng.standard_normal(p.shape) * 0.5  # nonzero biases; ReLUs on both sides
        x = rng.uniform(0, 1, (batch, size, size, 3))
        y = (rng.random((batch, 2)) < 0.5).astype(np.float64)
        clf.loss_and_grads(x, y)
        analytic = {k: np.array(v) for k, v in clf.grads().items()}
        for name, p in clf.params().items():
            err = rel_error(analytic[name], numeric_grad(lambda: classifier.logistic_loss(clf.logits(x), y)[0], p))
            assert err < 1e-6, f"{name}: {err:.2e}"


def test_learns_a_visible_attribute(rng):
    # Attribute 0: a bright top half; attribute 1: a red tint. Held-out images are new draws.
    def draw(n):
        y = (rng.random((n, 2)) < 0.5).astype(np.float32)
        x = rng.uniform(0, 0.5, (n, 8, 8, 3)).astype(np.float32)
        x[:, :4] += 0.5 * y[:, 0, None, None, None]
        x[..., 0] += 0.4 * y[:, 1, None, None]
        return np.clip(x, 0, 1), y
    x, y = draw(256)
    clf = classifier.Classifier(8, ["top", "red"], filters=(4, 8), seed=0)
    losses = []
    classifier.train(clf, lambda idx: x[idx], np.arange(256), y, epochs=12, batch_size=32, lr=1e-2, seed=0,
                     log=lambda e, loss: losses.append(loss))
    assert losses[-1] < 0.5 * losses[0]
    xt, yt = draw(128)
    summary = classifier.accuracy(clf.probabilities(xt), yt)
    assert summary[0]["accuracy"] > 0.95 and summary[1]["accuracy"] > 0.95
    assert summary[0]["positives"] + summary[0]["negatives"] == 128


def test_save_and_load_give_the_same_probabilities(tmp_path, rng):
    clf = classifier.Classifier(8, ["a", "b", "c"], filters=(2, 2), seed=3)
    x = rng.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
    clf.save(tmp_path / "clf.npz", meta={"trained_on": "test"})
    back, meta = classifier.Classifier.load(tmp_path / "clf.npz")
    assert back.attributes == ["a", "b", "c"] and meta["trained_on"] == "test"
    np.testing.assert_array_equal(back.probabilities(x), clf.probabilities(x))


def test_a_hidden_layer_gives_features_and_keeps_the_plain_network_as_it_was(tmp_path, rng):
    plain = classifier.Classifier(8, ["a", "b"], filters=(2, 2), seed=3)
    assert [layer.name for layer in plain.layers] == ["conv_1", "conv_2", "flatten", "logits"]
    clf = classifier.Classifier(8, ["a", "b"], filters=(2, 2), seed=3, hidden=6)
    assert [layer.name for layer in clf.layers] == ["conv_1", "conv_2", "flatten", "hidden", "hidden_relu", "logits"]
    for name in ("conv_1.kernel", "conv_2.kernel"):  # the same draws before the head
        np.testing.assert_array_equal(clf.params()[name], plain.params()[name])
    for p in clf.params().values():
        p[...] = rng.standard_normal(p.shape) * 0.5
    x = rng.uniform(0, 1, (5, 8, 8, 3)).astype(np.float32)
    f = clf.features(x, batch_size=2)
    assert f.shape == (5, 6) and f.min() >= 0 and (f == 0).any() and (f > 0).any()
    p = clf.params()
    expected = f @ p["logits.kernel"] + p["logits.bias"]
    np.testing.assert_allclose(clf.logits(x), expected, rtol=1e-5, atol=1e-5)
    clf.save(tmp_path / "clf.npz")
    back, meta = classifier.Classifier.load(tmp_path / "clf.npz")
    assert back.hidden == 6 and meta["hidden"] == 6
    # the same batches as f: a matrix product of one row may round otherwise than one of five
    np.testing.assert_array_equal(back.features(x, batch_size=2), f)
    with pytest.raises(ValueError, match="no hidden layer"):
        plain.features(x)


def test_accuracy_summary_counts_by_hand():
    p = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1], [0.1, 0.3]])
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 0]])
    s = classifier.accuracy(p, y)
    assert s[0] == {"accuracy": 0.5, "baseline": 0.5, "true_positive_rate": 0.5, "true_negative_rate": 0.5,
                    "positives": 2, "negatives": 2}
    assert s[1]["accuracy"] == 1.0 and s[1]["baseline"] == 0.75 and s[1]["true_positive_rate"] == 1.0


class _Decoder:
    """A stand-in VAE whose decode makes an image from z: top half bright when z[0] > 0."""
    def decode(self, z):
        x = np.zeros((len(z), 8, 8, 3), np.float32)
        x[:, :4] = (np.asarray(z)[:, 0] > 0)[:, None, None, None]
        return x


class _Judge:
    """A stand-in classifier: attribute 'top' is a bright top half, 'never' is never seen."""
    attributes = ["top", "never"]

    def probabilities(self, x):
        top = np.asarray(x)[:, :4].mean(axis=(1, 2, 3)) > 0.5
        return np.stack([top, np.zeros(len(x), bool)], axis=1).astype(np.float64)


def test_edit_rates_count_the_shares_before_and_after():
    from scratchvae.evaluation import edit_rates
    from scratchvae.latent import vectors
    z = np.array([[-1.0, 0], [-3.0, 0], [0.5, 0], [-0.5, 0], [2.5, 0]], np.float32)
    y = np.array([[0, 0], [0, 0], [1, 0], [0, 0], [1, 0]], np.float32)
    vec = vectors.Vectors(["top"], np.array([[1.0, 0]], np.float32), np.array([[1.0, 0]], np.float32),
                          np.array([2]), np.array([3]), np.array([1.0]), "id", [], 1)
    p_real = np.array([[1.0, 0], [0, 0], [1, 0], [0, 0], [1, 0]])
    out = edit_rates.edit_rates(_Decoder(), _Judge(), p_real, z, y, vec, ["top"], 2.0, batch_size=2)
    without, with_ = out["top without"], out["top with"]
    assert without["faces"] == 3 and without["edit"] == "+2*v" and with_["edit"] == "-2*v"
    # without: z0 -1, -3, -0.5 -> after +2: 1, -1, 1.5 -> two of three now bright
    assert without["shares"]["top"] == {"real": pytest.approx(1 / 3), "before": 0.0, "after": pytest.approx(2 / 3)}
    # with: z0 0.5, 2.5 -> after -2: -1.5, 0.5 -> one of two still bright
    assert with_["shares"]["top"] == {"real": 1.0, "before": 1.0, "after": 0.5}
    assert with_["shares"]["never"] == {"real": 0.0, "before": 0.0, "after": 0.0}
