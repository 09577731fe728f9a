"""Central finite differences in float64 for the gradient-check tests."""

import numpy as np


def rel_error(a, n):
    """max|a - n| / max(max|a| + max|n|, tiny): the DESIGN's relative error."""
    a, n = np.asarray(a, np.float64), np.asarray(n, np.float64)
    return float(np.max(np.abs(a - n)) / max(np.max(np.abs(a)) + np.max(np.abs(n)), 1e-300))


def numeric_grad(f, x, h=1e-6):
    """d f / d x by central differences; f() reads x, which is perturbed in place and restored."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g


def check_layer(layer, x, rng, training=True, tol=1e-6):
    """Check dx and every parameter gradient of `layer` at x with loss = sum(y * g)."""
    y = layer.forward(x, training)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g.copy())
    analytic = {"x": dx.copy(), **{k: v.copy() for k, v in layer.grads.items()}}

    def loss():
        return float(np.sum(layer.forward(x, training) * g))

    errors = {"x": rel_error(analytic["x"], numeric_grad(loss, x))}
    for key, p in layer.params.items():
        errors[key] = rel_error(analytic[key], numeric_grad(loss, p))
    for key, err in errors.items():
        assert err < tol, f"{layer.name}: gradient of {key} off by {err:.2e}"
    return errors
