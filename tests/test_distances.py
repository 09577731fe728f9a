"""The Fréchet distance and KID (scratchvae/evaluation/distances.py) on feature sets as wide as the
face feature network's (256): zero against itself, the closed form of a shift, KID's unbiasedness,
and the per-set summary evaluate writes."""

import numpy as np
import pytest

from scratchvae.evaluation import distances

D = 256


def correlated_features(rng, n, d=D):
    """n rows of a correlated, non-negative-ish feature distribution (ReLU features are skewed)."""
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return np.maximum(rng.standard_normal((n, d)) @ mix + 0.3, 0.0)


def test_frechet_distance_of_a_set_against_itself_is_zero(rng):
    for n in (600, 100):  # more rows than dimensions, and fewer (singular covariances)
        f = correlated_features(rng, n)
        scale = np.trace(np.cov(f, rowvar=False))
        assert distances.frechet_distance_of_features(f, f) == pytest.approx(0.0, abs=1e-9 * scale)


def test_frechet_distance_of_a_shifted_copy_is_the_squared_length_of_the_shift(rng):
    f = correlated_features(rng, 600)
    c = rng.standard_normal(D) * 0.2
    fd = distances.frechet_distance_of_features(f, f + c)
    assert fd == pytest.approx(float(c @ c), rel=1e-8)
    assert distances.frechet_distance_of_features(f + c, f) == pytest.approx(fd, rel=1e-10)


def test_kid_of_a_set_against_itself_is_small(rng):
    f = correlated_features(rng, 400)
    other = correlated_features(np.random.default_rng(99), 400) + 0.5  # a clearly different set
    same, _ = distances.kid(f, f)
    far, _ = distances.kid(f, other)
    assert far > 0 and abs(same) < 0.01 * far


def test_kid_is_unbiased_between_independent_draws_of_one_distribution(rng):
    """Mean of the unbiased MMD^2 over many pairs of draws from one distribution: zero within a few
    standard errors, while a small shift gives a mean many standard errors above zero."""
    d, n, trials = 16, 40, 300
    mix = rng.standard_normal((d, d)) / np.sqrt(d)

    def draw(shift=0.0):
        return rng.standard_normal((n, d)) @ mix + shift
    same = np.array([distances.mmd2_unbiased(draw(), draw()) for _ in range(trials)])
    shifted = np.array([distances.mmd2_unbiased(draw(), draw(0.3)) for _ in range(trials)])
    se_same, se_shifted = same.std() / np.sqrt(trials), shifted.std() / np.sqrt(trials)
    assert abs(same.mean()) < 4 * se_same
    assert shifted.mean() > 10 * se_shifted


def test_compare_gives_both_distances_with_their_counts(rng):
    ref, other = correlated_features(rng, 30, 8), correlated_features(rng, 50, 8)
    out = distances.compare(ref, other)
    assert out["count"] == 50 and out["kid_subset_size"] == 30 and out["kid_subsets"] == distances.KID_SUBSETS
    assert out["frechet_distance"] == distances.frechet_distance_of_features(ref, other)
    assert (out["kid"], out["kid_std"]) == distances.kid(ref, other)
    whole = distances.compare(ref, ref[::-1])
    assert whole["kid_subsets"] == 1 and whole["kid_std"] == 0.0


def test_spread_is_the_median_and_range():
    assert distances.spread([3.0, 1.0, 2.5]) == {"median": 2.5, "range": [1.0, 3.0]}
