"""How the CUDA kernels are launched: grid-stride 1-D grids, and the checks device code cannot make.

Device code has no bounds checks, so launchers check sizes on the host first. No fastmath anywhere:
numba.cuda's fastmath=True also assumes no NaN/Inf (np.isnan must keep working).
"""

import warnings

from numba.core.errors import NumbaPerformanceWarning

# Per-channel kernels launch one small grid by design; numba-cuda would warn at every such launch.
warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization",
                        category=NumbaPerformanceWarning)

THREADS = 256        # threads per block of the 1-D kernels
MAX_BLOCKS = 1024    # grid cap of the 1-D kernels; grid-stride loops cover the rest


def flat(a):
    """The 1-D view of a contiguous array."""
    return a.reshape(a.size)


def blocks(n):
    """Blocks of a 1-D grid over n items (grid-stride loops cover what MAX_BLOCKS leaves)."""
    return max(1, min(-(-n // THREADS), MAX_BLOCKS))


def launch(kernel, n, *args):
    """One grid-stride launch over n items."""
    if n > 0:
        kernel[blocks(n), THREADS](*args)


def same_size(*arrays):
    """Raise unless every array has as many elements as the first (else the kernel would run past one)."""
    for a in arrays[1:]:
        if a.size != arrays[0].size:
            raise ValueError(f"cuda kernel: arrays of shapes {tuple(arrays[0].shape)} and {tuple(a.shape)} "
                             "do not match")


def per_channel(x, *vectors):
    """Check that every per-channel vector has one entry per column of x (m, c)."""
    c = x.shape[x.ndim - 1]  # the simulator's shapes take no negative index
    for v in vectors:
        if v.size != c:
            raise ValueError(f"cuda kernel: a vector of {v.size} entries for {c} channels")
