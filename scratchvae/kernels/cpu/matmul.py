"""GEMM on the CPU: one BLAS call through NumPy's matmul, with BLAS threads on all cores.

Never called from inside a prange (BLAS is multi-threaded itself).
"""

import numpy as np


def gemm(out, a, b, trans_a=False, trans_b=False, accumulate=False):
    """out (+)= op(a) @ op(b): one BLAS call, BLAS threads on all cores (never inside prange)."""
    a = a.T if trans_a else a
    b = b.T if trans_b else b
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)
