"""The Adam step on CUDA (one grid-stride pass) and the gradient norm's sum of squares (a flat,
deterministic reduction: per-block partials, then one block adds them in a fixed order).
"""

import functools
import math

import numba
import numpy as np
from numba import cuda

from scratchvae.kernels.cuda.launch import THREADS, flat, launch, same_size
from scratchvae.kernels.cuda.reductions import device_sums, flat_reduce


@cuda.jit(cache=True)
def _adam(p, m, v, g, alpha, one_minus_b1, one_minus_b2, epsilon, scale):
    """g' = scale*g; m += (g'-m)(1-b1); v += (g'^2-v)(1-b2); p -= alpha*m/(sqrt(v)+eps)."""
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gs = g[i] * scale
        m[i] += (gs - m[i]) * one_minus_b1
        v[i] += (gs * gs - v[i]) * one_minus_b2
        p[i] -= alpha * m[i] / (math.sqrt(v[i]) + epsilon)


def adam_update(p, m, v, g, alpha, beta_1, beta_2, epsilon, scale):
    """g' = scale*g; m += (g'-m)(1-b1); v += (g'^2-v)(1-b2); p -= alpha*m/(sqrt(v)+eps)."""
    same_size(p, m, v, g)
    t = p.dtype.type
    launch(_adam, p.size, flat(p), flat(m), flat(v), flat(g), t(alpha), t(1 - beta_1), t(1 - beta_2),
           t(epsilon), t(scale))


@functools.cache
def _sq_partials(dtype):
    """The per-block partials of sum_squares for one dtype."""
    ft = numba.from_dtype(np.dtype(dtype))
    _, block_total = device_sums(dtype)

    @cuda.jit
    def sq_partials(part, a):
        """part[block] = sum over this block's grid-stride elements of a^2."""
        sh = cuda.shared.array(THREADS, ft)
        acc = ft(0)
        for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
            acc += a[i] * a[i]
        total = block_total(sh, acc)
        if cuda.threadIdx.x == 0:
            part[cuda.blockIdx.x] = total

    return sq_partials


def sum_squares(out, a):
    """out[0] = sum_i a_i^2."""
    flat_reduce(out, _sq_partials(a.dtype), a.size, a.dtype, 1, flat(a))
