"""Attribute directions corrected on decoded faces (python -m scratchvae.attributes, its default method).

A direction made from the codes (vectors.METHODS) holds the other labels fixed in the codes, yet
the decoder and the eye may still see them move: blond hair decoded on a man can read as less
male, glasses as less made-up. calibrate() measures that where it shows, on decoded faces. It edits
codes of faces without the attribute by +s v and codes of faces with it by -s v, asks a classifier
for every label's probability on the decodes, and adds to v the combination of the other labels'
directions that, to first order, takes every other label's mean change back to zero while keeping
the attribute's own change: a weighted least-squares step on a Jacobian found once by finite
differences on a few of the faces and refined after each step by Broyden's rank-one update, a few
steps, each at most a share of v's length.

Labels that the label file almost never shows together with the attribute are left free (exclusive):
black hair cannot stay on a face made blond, so holding it would only undo the edit.
"""

import numpy as np

STRENGTH = 2.0  # s: the edit measured, as edit_rates measures it
DEFAULT_FACES = 200  # codes per side (without the attribute, with it)
SLOPE_FACES = 64  # of those, per side, the ones the Jacobian's finite differences decode
DEFAULT_STEPS = 4
KEEP = 3.0  # weight of the attribute's own change (kept at what it was) against each other label's
RIDGE = 0.01  # on the step's coefficients, a share of the weighted Jacobian's mean squared column norm
DELTA = 0.5  # finite-difference step along each other direction, in lengths of that direction
MAX_STEP = 0.5  # a step moves v by at most this share of its length
LENGTH = 0.1  # weight of v's length in the codes' own metric (|v|_S^2 = v^T S^-1 v), against the side effects
EXCLUSIVE = 0.01  # a label seen with the attribute at most this share of what independence would give


def exclusive(pos, a, share=EXCLUSIVE):
    """(A,) bool: labels b that the 0/1 labels pos (N, A) show together with label a in at most `share`
    of the images independence would put there (n_ab <= share * n_a n_b / N); never a itself."""
    pos = np.asarray(pos, bool)
    n = pos.sum(axis=0).astype(np.float64)
    together = (pos[:, [a]] & pos).sum(axis=0)
    out = (together <= share * n[a] * n / len(pos)) & (n > 0)
    out[a] = False
    return out


def code_metric(z):
    """The inverse of the codes' covariance (z_dim, z_dim), a 1e-6 share of their mean variance added to
    its diagonal so that a direction no code moves along is costly rather than singular."""
    z = np.asarray(z, np.float64)
    cov = np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1])
    return np.linalg.inv(cov + max(1e-6 * np.trace(cov) / len(cov), 1e-12) * np.eye(len(cov)))


def pick_faces(pos, a, count, seed=0):
    """Two sorted index arrays: up to `count` images without label a and up to `count` with it, drawn
    without replacement from a generator seeded by `seed` and a."""
    rng = np.random.default_rng([seed, a])
    sides = []
    for side in (False, True):
        rows = np.flatnonzero(np.asarray(pos, bool)[:, a] == side)
        sides.append(np.sort(rng.choice(rows, min(count, len(rows)), replace=False)))
    return sides


class Probe:
    """The mean change of every label's probability when codes are edited along a direction.

    judge(codes (n, z_dim) float32) -> (n, A) probabilities of the decoded codes. groups: (codes,
    sign) pairs, each edited by sign * strength * v. effects(v) is the (len(groups) * A,) vector of
    mean probabilities after the edit minus before, group after group."""

    def __init__(self, judge, groups, strength=STRENGTH):
        self.judge, self.strength, self.calls = judge, float(strength), 0
        self.groups = [(np.asarray(codes, np.float64), float(sign)) for codes, sign in groups]
        self.before = [self._mean(codes) for codes, _ in self.groups]

    def _mean(self, codes):
        self.calls += 1
        return np.asarray(self.judge(codes.astype(np.float32)), np.float64).mean(axis=0)

    def effects(self, v):
        v = np.asarray(v, np.float64)
        return np.concatenate([self._mean(codes + sign * self.strength * v) - before
                               for (codes, sign), before in zip(self.groups, self.before)])


def slope_faces(faces, count=SLOPE_FACES):
    """Up to `count` of the index array `faces`, spread evenly over it."""
    faces = np.asarray(faces)
    return faces[np.unique(np.linspace(0, len(faces) - 1, min(count, len(faces))).round().astype(int))]


def jacobian(probe, v, basis, delta=DELTA, f=None):
    """(len(effects), B): the forward differences of probe.effects from v (f: the effects at v, when
    known) along each basis row, a step of `delta` times that row, divided by delta."""
    f = probe.effects(v) if f is None else f
    return np.stack([(probe.effects(v + delta * u) - f) / delta for u in basis], axis=1)


def decodes(faces, slope_faces, others, steps=DEFAULT_STEPS):
    """Faces decoded for one direction with `others` basis rows, the two Probes made included: `faces`
    and `slope_faces`, the probe's and the slopes probe's faces over all groups, each decoded before
    the edit and at v, the probe's again after each step and the slopes probe's along each other
    direction (with none, calibrate() stops at v)."""
    return faces * (2 + steps) + slope_faces * (2 + others) if others else faces * 2 + slope_faces


def calibrate(v, basis, probe, own, free=None, steps=DEFAULT_STEPS, keep=KEEP, ridge=RIDGE, delta=DELTA,
              max_step=MAX_STEP, metric=None, length=LENGTH, slopes=None, log=None):
    """v (z_dim,) plus the combination of basis rows (other labels' directions, (B, z_dim)) that brings
    probe.effects of every label but `own` (a label index) and the `free` ones (A,) bool towards zero,
    while the own label's change stays what it was before calibration (weight `keep`; a fixed aim, so
    the edit does not weaken step by step as the slopes' errors add up).

    The Jacobian J of the effects along each basis row comes once from jacobian() on `slopes` (a Probe
    of fewer faces, the same groups' signs; default `probe` itself); after each step c, Broyden's update
    J += (df - J c) c^T / c^T c makes it agree with the change df the step made. Each step:
    c = argmin |W (f + J c - t)|^2 + r |c|^2, t zero but for the own label's first change and r `ridge`
    times the mean of diag(J^T W J), so the step does not depend on the judge's scale; with a `metric`
    (code_metric: the codes' inverse covariance S^-1) and length > 0, plus lam |v + basis^T c|_S^2, lam
    scaled so that lam basis S^-1 basis^T has `length` times the trace of J^T W J; the move basis^T c
    shortened to at most max_step |v|. Returns (v, [effects before, after each step]); log(step, effects)
    after each step."""
    v, basis = np.array(v, np.float64), np.asarray(basis, np.float64)
    f = probe.effects(v)
    groups = len(probe.groups)
    labels = len(f) // groups
    weight = np.ones(labels)
    if free is not None:
        weight[np.asarray(free, bool)] = 0.0
    weight[own] = keep
    is_own = np.tile(np.arange(labels) == own, groups)
    root, goal = np.sqrt(np.tile(weight, groups)), np.where(is_own, f, 0.0)  # own: its change before, no drift
    penalised = metric is not None and length > 0
    m = basis @ metric @ basis.T if penalised else None
    history = [f]
    if len(basis) == 0:  # no other direction to correct with
        return v, history
    jac = jacobian(probe, v, basis, delta, f) if slopes is None else jacobian(slopes, v, basis, delta)
    for step in range(steps):
        a, b = root[:, None] * jac, -root * (f - goal)
        gram, rhs = a.T @ a, a.T @ b
        scale = max(np.trace(gram) / len(basis), 1e-300)
        lhs = gram + ridge * scale * np.eye(len(basis))
        if penalised:  # + lam |v + basis^T c|_S^2, in the data term's scale
            lam = length * scale * len(basis) / max(np.trace(m), 1e-300)
            lhs, rhs = lhs + lam * m, rhs - lam * basis @ (metric @ v)
        c = np.linalg.solve(lhs, rhs)
        size = np.linalg.norm(basis.T @ c)
        if size > max_step * np.linalg.norm(v):
            c *= max_step * np.linalg.norm(v) / size
        v = v + basis.T @ c
        moved = probe.effects(v)
        if c @ c > 0:
            jac += np.outer(moved - f - jac @ c, c) / (c @ c)
        f = moved
        history.append(f)
        if log is not None:
            log(step + 1, f)
    return v, history


def largest_other(f, own, labels):
    """(index, change) of the label other than `own` whose mean change is largest in size, in the
    first `labels` entries of effects f (the first group's)."""
    side = np.array(f[:labels], np.float64)
    side[own] = 0.0
    b = int(np.argmax(np.abs(side)))
    return b, side[b]


def summary(name, history, attributes, own, male=None):
    """One line: the first group's (+s v on faces without the attribute) own change, largest other
    change and Male's, before calibration -> after, as mean probabilities."""
    labels = len(attributes)
    first, last = history[0], history[-1]
    parts = [f"{name}: own {first[own]:+.2f} -> {last[own]:+.2f}"]
    for label, f in (("largest other before", first), ("after", last)):
        b, change = largest_other(f, own, labels)
        parts.append(f"{label} {attributes[b]} {change:+.2f}")
    if male is not None and male != own:
        parts.append(f"Male {first[male]:+.2f} -> {last[male]:+.2f}")
    return ", ".join(parts) + " (mean probability change at +s v on faces without it)"
