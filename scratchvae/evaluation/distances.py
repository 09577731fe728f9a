"""Distances between two sets of feature vectors (rows), in float64 NumPy: the Fréchet distance
between Gaussians fitted to each (FID with Inception features) and the kernel inception distance
(unbiased MMD^2 with a cubic polynomial kernel, averaged over random subsets).
"""

import numpy as np

KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # as Binkowski et al. 2018 and clean-fid


def gaussian_stats(f):
    """Mean (D,) and sample covariance (D, D), divisor n - 1, of features (n, D)."""
    f = np.asarray(f, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors shaped (n, D); got {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_eigenvalues(w):
    """Eigenvalues of a PSD matrix with round-off removed: those below D * eps * the largest are 0.
    A square root turns a round-off 1e-16 into 1e-8, which matters when covariances are singular
    (fewer images than feature dimensions)."""
    tol = len(w) * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    return np.where(w > tol, w, 0.0)


def _sqrt_psd(s):
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(_psd_eigenvalues(w))) @ v.T


def frechet_distance(mu1, s1, mu2, s2):
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    S1 S2 is not symmetric, but it is similar to M = S1^(1/2) S2 S1^(1/2), which is symmetric PSD:
    Tr (S1 S2)^(1/2) = sum of sqrt(eigenvalues of M). Two symmetric eigen-decompositions, no sqrtm.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"frechet_distance: shapes do not match: {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    root1 = _sqrt_psd(s1)
    m = root1 @ s2 @ root1
    tr_sqrt = np.sqrt(_psd_eigenvalues(np.linalg.eigvalsh((m + m.T) / 2))).sum()
    diff = mu1 - mu2
    # Equal distributions give 0 up to round-off; never report a negative distance.
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt))


def frechet_distance_of_features(f1, f2):
    """The Fréchet distance between Gaussians fitted to two feature sets (n1, D) and (n2, D)."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def polynomial_kernel(a, b):
    """k(x, y) = (x . y / D + 1)^3 for every pair of rows: (len(a), len(b))."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y):
    """Unbiased MMD^2 of two samples (m, D) and (n, D) with the polynomial kernel:
    sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1)) - 2 sum_{i,j} k(x_i, y_j) / (mn)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2 or x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd2_unbiased needs two sets of at least 2 rows of one width; got {x.shape}, {y.shape}")
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * polynomial_kernel(x, y).mean())


def kid(x, y, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=0):
    """KID: (mean, standard deviation) of mmd2_unbiased over `subsets` pairs of random subsets of
    min(subset_size, len(x), len(y)) rows each, drawn without replacement from a seeded Generator.
    When a subset is the whole of both sets every draw gives the same value, so one is computed."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError(f"KID needs at least 2 feature vectors in each set; got {len(x)} and {len(y)}")
    if size == len(x) == len(y):
        return mmd2_unbiased(x, y), 0.0
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def compare(reference, other, seed=0):
    """Both distances of feature set `other` from `reference`, with the counts they were taken at."""
    mean, std = kid(reference, other, seed=seed)
    size = min(KID_SUBSET_SIZE, len(reference), len(other))
    return {"count": len(other), "frechet_distance": frechet_distance_of_features(reference, other),
            "kid": mean, "kid_std": std, "kid_subset_size": size,
            "kid_subsets": 1 if size == len(reference) == len(other) else KID_SUBSETS}


def spread(values):
    """The median and [lowest, highest] of a few numbers (one distance over several sample seeds)."""
    return {"median": float(np.median(values)), "range": [float(np.min(values)), float(np.max(values))]}
