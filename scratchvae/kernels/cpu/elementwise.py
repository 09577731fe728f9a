"""Elementwise CPU kernels: per-channel bias, ReLU, LeakyReLU and sigmoid, forward and backward.
(The sigmoid runs on NumPy's vectorised exp, chunk by chunk; the fused kernels use it too.)

Each `prange` iteration writes its own element or row. 2-D arrays are (rows, channels) views of
NHWC activations; the activations run over the flat array. Scalars are cast to the array dtype.
"""

import numpy as np
from numba import njit, prange

from scratchvae.kernels.cpu import schedule
from scratchvae.kernels.cpu.jit import FASTMATH


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _affine(y, x, scale, shift):
    """y[m, c] = x[m, c] * scale[c] + shift[c]."""
    m, c = x.shape
    for r in prange(m):
        for ch in range(c):
            y[r, ch] = x[r, ch] * scale[ch] + shift[ch]


def add_bias(y, b):
    """y[m, c] += b[c]."""
    ones = np.ones_like(b)
    _affine(y, y, ones, b)


def _flat(a):
    return a.reshape(-1)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _leaky(y, x, alpha):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else v * alpha


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _leaky_back(dx, dy, x, alpha):
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > 0 else dy[i] * alpha


def leaky_forward(y, x, alpha):
    """y = x if x > 0 else alpha * x."""
    _leaky(_flat(y), _flat(x), x.dtype.type(alpha))


def leaky_backward(dx, dy, x, alpha):
    """dx = dy if x > 0 else alpha * dy."""
    _leaky_back(_flat(dx), _flat(dy), _flat(x), dy.dtype.type(alpha))


def relu_forward(y, x):
    """y = max(x, 0): LeakyReLU with slope 0."""
    _leaky(_flat(y), _flat(x), x.dtype.type(0))


def relu_backward(dx, dy, y):
    """dx = dy * (y > 0)."""
    _leaky_back(_flat(dx), _flat(dy), _flat(y), dy.dtype.type(0))


# Values per chunk of the sigmoid: small enough that its four passes run in the core's cache.
SIGMOID_CHUNK = 16384


def sigmoid_span(y, x):
    """y = 1 / (1 + exp(-x)) over flat arrays (y may be x), chunk by chunk, with NumPy's exp, which
    runs 16 values at a time (Numba's is a call per value here: about 6 against 1 ns a value). exp(-x)
    overflows to inf below x = -88 in float32, giving 0 where the exact value is under 1e-38."""
    with np.errstate(over="ignore"):
        for i in range(0, x.size, SIGMOID_CHUNK):
            v = y[i:i + SIGMOID_CHUNK]
            np.negative(x[i:i + SIGMOID_CHUNK], out=v)
            np.exp(v, out=v)
            v += 1
            np.reciprocal(v, out=v)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _sigmoid_back(dx, dy, y, one):
    for i in prange(y.size):
        dx[i] = dy[i] * y[i] * (one - y[i])


def sigmoid_forward(y, x):
    """y = 1 / (1 + exp(-x)) (sigmoid_span), in spans the cores take in turn."""
    yf, xf = _flat(y), _flat(x)
    span = max(SIGMOID_CHUNK, -(-xf.size // (schedule.workers() * schedule.TASKS_PER_CORE)))

    def do(k, t):
        sigmoid_span(yf[t * span:(t + 1) * span], xf[t * span:(t + 1) * span])

    if not schedule.in_turn(-(-xf.size // span), do, schedule.workers()):
        sigmoid_span(yf, xf)


def sigmoid_backward(dx, dy, y):
    """dx = dy * y * (1 - y)."""
    _sigmoid_back(_flat(dx), _flat(dy), _flat(y), y.dtype.type(1))
