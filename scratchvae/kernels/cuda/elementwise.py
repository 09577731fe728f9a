"""Elementwise CUDA kernels: per-channel bias, ReLU, LeakyReLU and sigmoid, forward and backward.

Grid-stride loops over the flat arrays; a per-channel vector is indexed by i % C (NHWC, C innermost).
"""

import math

from numba import cuda

from scratchvae.kernels.cuda.launch import flat, launch, per_channel, same_size


@cuda.jit(cache=True)
def _bias_act(y, b, relu, zero):
    """y[m, c] = y[m, c] + b[c], then max(., 0) when relu (NaN becomes 0, as on the CPU)."""
    c = b.size
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        v = y[i] + b[i % c]
        if relu and not v > 0:
            v = zero
        y[i] = v


def add_bias(y, b):
    """y[m, c] += b[c]."""
    per_channel(y, b)
    launch(_bias_act, y.size, flat(y), b, False, y.dtype.type(0))


@cuda.jit(cache=True)
def _leaky(y, x, alpha):
    """y = x if x > 0 else alpha * x."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        y[i] = v if v > 0 else v * alpha


@cuda.jit(cache=True)
def _leaky_back(dx, dy, x, alpha):
    """dx = dy if x > 0 else alpha * dy."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        dx[i] = dy[i] if x[i] > 0 else dy[i] * alpha


def relu_forward(y, x):
    """y = max(x, 0)."""
    same_size(y, x)
    launch(_leaky, x.size, flat(y), flat(x), x.dtype.type(0))


def relu_backward(dx, dy, y):
    """dx = dy * (y > 0)."""
    same_size(dx, dy, y)
    launch(_leaky_back, y.size, flat(dx), flat(dy), flat(y), dy.dtype.type(0))


def leaky_forward(y, x, alpha):
    """y = x if x > 0 else alpha * x."""
    same_size(y, x)
    launch(_leaky, x.size, flat(y), flat(x), x.dtype.type(alpha))


def leaky_backward(dx, dy, x, alpha):
    """dx = dy if x > 0 else alpha * dy."""
    same_size(dx, dy, x)
    launch(_leaky_back, x.size, flat(dx), flat(dy), flat(x), dy.dtype.type(alpha))


@cuda.jit(cache=True)
def _sigmoid(y, x, one):
    """y = 1 / (1 + exp(-x)), with exp of a non-positive argument only."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        if v >= 0:
            y[i] = one / (one + math.exp(-v))
        else:
            e = math.exp(v)
            y[i] = e / (one + e)


@cuda.jit(cache=True)
def _sigmoid_back(dx, dy, y, one):
    """dx = dy * y * (1 - y)."""
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        dx[i] = dy[i] * y[i] * (one - y[i])


def sigmoid_forward(y, x):
    """y = 1 / (1 + exp(-x)), written to avoid overflow for large |x|."""
    same_size(y, x)
    launch(_sigmoid, x.size, flat(y), flat(x), x.dtype.type(1))


def sigmoid_backward(dx, dy, y):
    """dx = dy * y * (1 - y)."""
    same_size(dx, dy, y)
    launch(_sigmoid_back, y.size, flat(dx), flat(dy), flat(y), y.dtype.type(1))
