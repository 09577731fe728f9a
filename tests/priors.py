"""A fitted-prior file made by hand for the sampler tests, in the format python -m scratchvae.prior
writes (scratchvae/latent/prior.py): a few components with spread-out weights, means away from 0 and full
lower-triangular factors, so that a wrong component choice or product order shows in the faces."""

import numpy as np

FORMAT, VERSION = "scratchvae-latent-prior", 1


def write_prior(path, identity, z_dim, components=3, seed=0, weights=None):
    """Write a prior for the checkpoint `identity` to `path`; (weights, means, cholesky) as written."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.2, 1.0, components) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    means = rng.normal(0, 1.5, (components, z_dim))
    factors = np.tril(rng.normal(0, 0.4, (components, z_dim, z_dim)), -1)
    factors[:, np.arange(z_dim), np.arange(z_dim)] = rng.uniform(0.3, 1.2, (components, z_dim))
    np.savez(path, format=np.array(FORMAT), version=np.array(VERSION, np.int64), weights=w, means=means,
             cholesky=factors, covariance=np.array("full"), loglik_train=np.array(-5.0),
             loglik_heldout=np.array(-5.5), loglik_standard=np.array(-7.0), images=np.array(100, np.int64),
             checkpoint_sha256=np.array(identity), z_dim=np.array(z_dim, np.int64),
             iterations=np.array(10, np.int64), stopped=np.array("converged at tol"))
    return w, means, factors
