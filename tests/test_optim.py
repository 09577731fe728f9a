"""Adam's first steps against closed-form values, and clipping."""

import numpy as np
import pytest

from scratchvae.optim import Adam


def closed_form(p0, grads, lr, b1, b2, eps):
    p, m, v = p0.copy(), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        p = p - alpha * m / (np.sqrt(v) + eps)
    return p


def test_first_three_steps(backend):
    p0 = np.array([1.0, -2.0, 0.5, 3.0])
    gs = [np.array([0.1, -0.3, 2.0, 0.0]), np.array([0.2, 0.1, -1.0, 1e-3]), np.array([-0.5, 0.4, 0.3, 2.0])]
    opt = Adam(lr=0.01)
    p = p0.copy()
    for step, g in enumerate(gs, start=1):
        opt.step({"w": p}, {"w": g.copy()})
        np.testing.assert_allclose(p, closed_form(p0, gs[:step], 0.01, 0.9, 0.999, 1e-7), rtol=1e-12, atol=1e-15)
    assert opt.t == 3
    # The first step of Adam moves every coordinate with a non-zero gradient by about lr.
    q = p0.copy()
    Adam(lr=0.01).step({"w": q}, {"w": gs[0].copy()})
    np.testing.assert_allclose(np.abs(q - p0)[:3], 0.01, rtol=1e-4)


def test_clipnorm_scales_gradients():
    p, q = np.zeros(2), np.zeros(2)
    g = np.array([30.0, 40.0])  # norm 50
    norm = Adam(lr=0.1, clipnorm=5.0).step({"w": p}, {"w": g.copy()})
    Adam(lr=0.1).step({"w": q}, {"w": g * 0.1})
    assert norm == pytest.approx(50.0)
    np.testing.assert_allclose(p, q, rtol=1e-12)


def test_state_roundtrip():
    p = np.ones(3, np.float32)
    opt = Adam()
    opt.step({"w": p}, {"w": np.array([1.0, 2.0, 3.0], np.float32)})
    other = Adam()
    other.load_state_dict(opt.state_dict(), {"w": p})
    assert other.t == 1 and np.array_equal(other.m["w"], opt.m["w"]) and np.array_equal(other.v["w"], opt.v["w"])
