"""A Gaussian mixture fitted by EM to latent codes (the fitted prior), and the one documented draw
from it that export/ and the web page repeat.

Plain NumPy, float64 throughout. A mixture is weights (K,), means (K, d) and the lower-triangular
Cholesky factors (K, d, d) of its covariances; a diagonal fit is stored the same way.
"""

from dataclasses import dataclass, field

import numpy as np

from scratchvae.latent import arithmetic
from scratchvae.run.errors import UserError

PRIOR_SALT = 0xD1B54A32D192ED03  # the draw's component choice: SplitMix64 from seed ^ PRIOR_SALT
COVARIANCES = ("full", "diag")
CANDIDATES = (1, 2, 5, 10, 20)  # the component counts --components auto compares
HELD_OUT = 0.1  # the share of codes select() holds out to compare them
EMPTY = 1e-10  # a component with less responsibility than this (in codes) is removed
LOG_2PI = np.log(2 * np.pi)


@dataclass
class Mixture:
    weights: np.ndarray  # (K,) float64, summing to 1
    means: np.ndarray  # (K, d) float64
    cholesky: np.ndarray  # (K, d, d) float64 lower-triangular: covariance k = L_k L_k^T
    covariance: str  # "full" or "diag"
    loglik: float = float("nan")  # mean log-likelihood per code of the codes fitted, at the end
    iterations: int = 0  # EM updates run
    stopped: str = ""  # "converged at tol" or "reached max_iter"
    history: np.ndarray = field(default_factory=lambda: np.zeros(0))  # mean log-likelihood: start, then per update
    dropped: int = 0  # components removed because nothing was left in them

    @property
    def components(self):
        return len(self.weights)

    @property
    def z_dim(self):
        return self.means.shape[1]


@dataclass
class Selection:
    table: list  # [(K, mean log-likelihood of the fitted codes, of the held-out codes)] per candidate tried
    chosen: int  # the K with the best held-out log-likelihood
    heldout: float  # that best held-out mean log-likelihood (of the check fit on the other codes)
    mixture: Mixture  # the chosen K refitted on all the codes


# ------------------------------------------------------------------ density

def component_log_densities(weights, means, cholesky, codes):
    """(N, K): log w_k + log N(x_i; mu_k, L_k L_k^T), through the inverse of each factor."""
    x = np.asarray(codes, np.float64)
    n, d = x.shape
    out = np.empty((n, len(weights)), np.float64)
    with np.errstate(divide="ignore"):
        log_w = np.log(np.asarray(weights, np.float64))
    for k in range(len(weights)):
        factor = np.asarray(cholesky[k], np.float64)
        diag = np.diagonal(factor)
        xc = x - means[k]  # (N, d)
        if np.count_nonzero(factor) == np.count_nonzero(diag):  # a diagonal factor: no product needed
            y = xc / diag
        else:
            y = xc @ np.linalg.inv(factor).T
        maha = np.einsum("ij,ij->i", y, y)
        out[:, k] = log_w[k] - 0.5 * (d * LOG_2PI + 2 * np.sum(np.log(diag)) + maha)
    return out


def _log_sum_exp(a):
    """(N,) log sum_k exp a[:, k], shifted by each row's maximum so that nothing overflows."""
    top = np.max(a, axis=1)
    return top + np.log(np.sum(np.exp(a - top[:, None]), axis=1))


def log_likelihood(mix, codes):
    """(N,) float64: the log density of each code under the mixture (any object with weights, means
    and cholesky, a Prior too)."""
    return _log_sum_exp(component_log_densities(mix.weights, mix.means, mix.cholesky, codes))


# ------------------------------------------------------------------ EM

def fit(codes, components, covariance="full", seed=0, restarts=3, tol=1e-4, max_iter=200, floor=1e-6,
        on_iteration=None):
    """A K-component mixture fitted by EM, the best of `restarts` runs (highest final log-likelihood).

    Each run starts from k-means++ centres (seeded by (seed, run)) with uniform weights and the codes'
    own covariance, then alternates E-steps (responsibilities through log-sum-exp) and M-steps until
    the mean log-likelihood per code rises by less than `tol` ("converged at tol") or `max_iter`
    updates ran ("reached max_iter"). Every covariance gets `floor` times the codes' mean variance
    added to its diagonal (`floor` itself when all codes are equal), so a component whose codes are
    all equal stays positive-definite with a finite density. A component left with no
    responsibility (under EMPTY codes' worth) is removed, so the result may have fewer than K
    components (`dropped` says how many went). `on_iteration(run, iteration, loglik)` is called after
    each update (it may raise to stop the fit)."""
    x = np.asarray(codes, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise UserError(f"the codes to fit must be a non-empty (N, d) array, not shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise UserError("the codes hold non-finite values: the model's encoder is broken; use another checkpoint")
    if covariance not in COVARIANCES:
        raise UserError(f"--covariance {covariance!r}: use full or diag")
    if not 1 <= components <= len(x):
        raise UserError(f"--components {components}: use between 1 and the {len(x)} codes fitted")
    if restarts < 1 or max_iter < 1:
        raise UserError("--restarts and --max-iter must be at least 1")
    spread = float(np.mean(np.var(x, axis=0)))
    reg = floor * (spread if spread > 0 else 1.0)
    best = None
    for run in range(restarts):
        rng = np.random.default_rng([seed, run])
        mix = _em(x, _start(x, components, covariance, reg, rng), tol, max_iter, reg,
                  None if on_iteration is None else (lambda it, ll, run=run: on_iteration(run, it, ll)))
        if best is None or mix.loglik > best.loglik:
            best = mix
    return best


def _start(x, k, covariance, reg, rng):
    """k-means++ centres, uniform weights and the codes' covariance for every component."""
    n = len(x)
    centres = [int(rng.integers(n))]
    d2 = np.sum((x - x[centres[0]]) ** 2, axis=1)
    for _ in range(1, k):
        total = d2.sum()
        # next centre with probability proportional to the squared distance to the nearest chosen one
        i = int(rng.integers(n)) if total <= 0 else min(int(np.searchsorted(np.cumsum(d2), rng.random() * total,
                                                                                side="right")), n - 1)
        centres.append(i)
        d2 = np.minimum(d2, np.sum((x - x[i]) ** 2, axis=1))
    cov = np.cov(x, rowvar=False, bias=True).reshape(x.shape[1], x.shape[1])
    factor = _factor(cov if covariance == "full" else np.diag(np.diag(cov)), reg)
    return Mixture(np.full(k, 1.0 / k), x[centres].copy(), np.repeat(factor[None], k, axis=0), covariance)


def _factor(cov, reg):
    """The Cholesky factor of a covariance with the floor on its diagonal."""
    cov = 0.5 * (cov + cov.T) + reg * np.eye(len(cov))  # symmetric to the last bit: BLAS sums each half apart
    return np.linalg.cholesky(cov)


def _e_step(x, mix):
    """(mean log-likelihood per code, responsibilities (N, K))."""
    logp = component_log_densities(mix.weights, mix.means, mix.cholesky, x)
    ll = _log_sum_exp(logp)
    return float(np.mean(ll)), np.exp(logp - ll[:, None])


def _m_step(x, resp, covariance, reg):
    """Weights, means and floored covariances from responsibilities; (Mixture, components dropped)."""
    mass = resp.sum(axis=0)  # (K,) codes' worth in each component
    keep = mass > EMPTY
    resp, mass = resp[:, keep], mass[keep]
    means = (resp.T @ x) / mass[:, None]
    factors = np.empty((len(mass), x.shape[1], x.shape[1]))
    for k in range(len(mass)):
        xc = x - means[k]
        if covariance == "full":
            cov = (xc * resp[:, k, None]).T @ xc / mass[k]
        else:
            cov = np.diag(resp[:, k] @ (xc * xc) / mass[k])
        factors[k] = _factor(cov, reg)
    return Mixture(mass / mass.sum(), means, factors, covariance), int(np.count_nonzero(~keep))


def _em(x, mix, tol, max_iter, reg, on_iteration):
    ll, resp = _e_step(x, mix)
    history, dropped, stopped = [ll], 0, "reached max_iter"
    for it in range(1, max_iter + 1):
        mix, gone = _m_step(x, resp, mix.covariance, reg)
        dropped += gone
        ll, resp = _e_step(x, mix)
        history.append(ll)
        if on_iteration is not None:
            on_iteration(it, ll)
        if ll - history[-2] < tol:
            stopped = "converged at tol"
            break
    mix.loglik, mix.iterations, mix.stopped = ll, len(history) - 1, stopped
    mix.history, mix.dropped = np.array(history), dropped
    return mix


# ------------------------------------------------------------------ choosing K

def held_out_split(n, seed):
    """(indices fitted, indices held out): a seeded HELD_OUT share of n codes (at least one) held out."""
    if n < 2:
        raise UserError(f"{n} code cannot be split into a fitted and a held-out part: encode more images")
    order = np.random.default_rng([seed, 0x5E1EC7]).permutation(n)
    held = max(1, int(round(HELD_OUT * n)))
    return np.sort(order[held:]), np.sort(order[:held])


def select(codes, candidates=CANDIDATES, covariance="full", seed=0, restarts=3, tol=1e-4, max_iter=200,
           floor=1e-6, on_iteration=None):
    """--components auto: fit each candidate K on 90% of the codes (held_out_split), keep the K with
    the best mean log-likelihood of the held-out 10% (the smaller K on a tie), and refit it on all
    the codes. Candidates above the number of codes fitted are left out of the table."""
    x = np.asarray(codes, np.float64)
    fit_idx, held_idx = held_out_split(len(x), seed)
    tried = sorted({int(k) for k in candidates if 1 <= int(k) <= len(fit_idx)})
    if not tried:
        raise UserError(f"no candidate component count fits {len(fit_idx)} codes: encode more images")
    table = []
    for k in tried:
        mix = fit(x[fit_idx], k, covariance, seed, restarts, tol, max_iter, floor, on_iteration)
        table.append((k, mix.loglik, float(np.mean(log_likelihood(mix, x[held_idx])))))
    chosen, _, heldout = max(table, key=lambda row: (row[2], -row[0]))
    mixture = fit(x, chosen, covariance, seed, restarts, tol, max_iter, floor, on_iteration)
    return Selection(table, chosen, heldout, mixture)


# ------------------------------------------------------------------ the draw

def draw(weights, means, cholesky, seed, n, temperature=1.0):
    """The one documented draw from a fitted prior, float32 (n, d); export/ and the web page repeat
    it step for step:

    1. normals e = latent.standard_normals(seed, n * d).reshape(n, d), the stream latent.draw_z uses;
    2. one uniform per row: x = latent.splitmix64((seed ^ PRIOR_SALT) & MASK64, n), u = (x >> 11) / 2**53,
       in [0, 1);
    3. row i's component k_i = min(searchsorted(c / c[-1], u_i, side="right"), K - 1), c = cumsum(weights)
       (a running sum from the first weight);
    4. z_i = means[k_i] + temperature * acc, acc the float64 sum over j = 0 .. d-1, in that order, of the
       columns L[:, j] * e_i[j] of L = cholesky[k_i], starting from zeros; then cast to float32.

    Row i depends only on (seed, i): the first k rows of a draw of n are a draw of k. A one-component
    prior with mean 0 and the identity factor gives exactly latent.draw_z(seed, n, d, temperature)."""
    if not temperature > 0:
        raise UserError(f"--temperature {temperature}: use a positive number (1 is the fitted prior)")
    w = np.asarray(weights, np.float64)
    mu, factor = np.asarray(means, np.float64), np.asarray(cholesky, np.float64)
    k, d = mu.shape
    if w.shape != (k,) or factor.shape != (k, d, d) or not (np.all(w >= 0) and w.sum() > 0):
        raise UserError(f"a prior needs weights (K,) >= 0 with a positive sum, means (K, d) and factors "
                        f"(K, d, d); got {w.shape}, {mu.shape}, {factor.shape}")
    e = arithmetic.standard_normals(seed, n * d).reshape(n, d)
    x = arithmetic.splitmix64((seed ^ PRIOR_SALT) & arithmetic.MASK64, n)
    u = (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    cum = np.cumsum(w)
    comp = np.minimum(np.searchsorted(cum / cum[-1], u, side="right"), k - 1)
    z = np.empty((n, d), np.float64)
    for c in np.unique(comp):  # the rows of one component at a time, each row on its own
        rows = comp == c
        acc = np.zeros((int(rows.sum()), d), np.float64)
        for j in range(d):  # acc += L[:, j] * e[j], j in index order, as JavaScript's loop adds them
            acc += factor[c][:, j][None, :] * e[rows, j][:, None]
        z[rows] = mu[c] + temperature * acc
    return z.astype(np.float32)
