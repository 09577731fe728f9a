"""The Adam step on the CPU, parallel over a large tensor's values; the gradient norm's sum of squares.

Scalars are cast to the parameters' dtype first, so float32 stays float32 inside the kernel.
"""

import numpy as np
from numba import get_num_threads, njit, prange, set_num_threads

from scratchvae.kernels.cpu.jit import FASTMATH
# One BLAS dot product: the reference code is the CPU code.
from scratchvae.kernels.reference import sum_squares  # noqa: F401


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _adam(p, m, v, g, alpha, one_minus_b1, one_minus_b2, epsilon, scale):
    for i in prange(p.size):
        gs = g[i] * scale
        m[i] += (gs - m[i]) * one_minus_b1
        v[i] += (gs * gs - v[i]) * one_minus_b2
        p[i] -= alpha * m[i] / (np.sqrt(v[i]) + epsilon)


# A tensor smaller than this is updated on the calling thread alone (Numba's thread count set to 1
# for the call): waking the other cores for it costs more than they save. The seed's convolution
# kernels are 147k values each; its Dense kernels, 1.6M, are updated on every core.
PARALLEL_MIN = 2 ** 20


def adam_update(p, m, v, g, alpha, beta_1, beta_2, epsilon, scale):
    """g' = scale*g; m += (g'-m)(1-b1); v += (g'^2-v)(1-b2); p -= alpha*m/(sqrt(v)+eps)."""
    t = p.dtype.type
    args = (p, m, v, g, t(alpha), t(1 - beta_1), t(1 - beta_2), t(epsilon), t(scale))
    cores = get_num_threads()
    if p.size >= PARALLEL_MIN or cores == 1:
        _adam(*args)
        return
    set_num_threads(1)  # this thread's setting only
    try:
        _adam(*args)
    finally:
        set_num_threads(cores)
