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


@pytest.mark.parametrize("size,batch", [(8, 3), (7, 1)])
def test_network_gradients_against_central_differences(rng, size, batch):
    with kernels.using("numpy"):
        clf = classifier.Classifier(size, ["a", "b"], filters=(2, 3), dtype=np.float64, seed=1)
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


def test_accuracy_summary_counts_by_hand():
    p = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1], [0.1, 0.3]])
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 0]])
    s = classifier.accuracy(p, y)
    assert s[0] == {"accuracy": 0.5, "baseline": 0.5, "true_positive_rate": 0.5, "true_negative_rate": 0.5,
                    "positives": 2, "negatives": 2}
    assert s[1]["accuracy"] == 1.0 and s[1]["baseline"] == 0.75 and s[1]["true_positive_rate"] == 1.0
