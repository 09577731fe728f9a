"""Arrays of the CUDA backend: numba.cuda device arrays, host transfers, whole-array copies.

Also SCRATCH, the one Workspace of device buffers that the CUDA launchers use for their internal
partial sums and coefficients (see the comment there).
"""

import numpy as np
from numba import cuda

from scratchvae.kernels.cuda.launch import flat, launch, same_size
from scratchvae.kernels.workspace import Workspace


def empty(shape, dtype):
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def zeros(shape, dtype):
    a = empty(shape, dtype)
    fill(a, 0)
    return a


def is_device_array(a):
    """Whether `a` lives on the device (a numba.cuda array, real or simulated, or any CUDA array)."""
    return bool(getattr(type(a), "__cuda_ndarray__", False) or hasattr(type(a), "__cuda_array_interface__"))


def to_host(a):
    return a.copy_to_host() if is_device_array(a) else np.asarray(a)


def from_host(a):
    return a if is_device_array(a) else cuda.to_device(np.ascontiguousarray(a))


def may_share_memory(a, b):
    """Whether the byte ranges of two arrays (both device, or both host) overlap: np.may_share_memory."""
    (a0, a1), (b0, b1) = _byte_range(a), _byte_range(b)
    return a0 < b1 and b0 < a1


def _byte_range(a):
    iface = getattr(a, "__cuda_array_interface__", None)
    if iface is None:  # a host array, or the simulator's device array (a NumPy array in `_ary`)
        iface = np.asarray(getattr(a, "_ary", a)).__array_interface__
    lo = hi = iface["data"][0]
    itemsize = np.dtype(a.dtype).itemsize
    strides = iface.get("strides") or _c_strides(a.shape, itemsize)
    for n, s in zip(a.shape, strides):
        if n == 0:
            return lo, lo
        lo, hi = lo + min(0, (n - 1) * s), hi + max(0, (n - 1) * s)
    return lo, hi + itemsize


def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for n in reversed(tuple(shape)):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


# The CUDA launchers' internal buffers (reduction partials, per-channel coefficients, GEMM k slices):
# one Workspace for the whole backend, allocating with this backend's `empty` whatever backend is
# active. One is enough because one stream orders every launch: a buffer handed out again is only
# overwritten after every earlier kernel that used it has run. These buffers never leave an op, so
# callers need not know them (a caller's own buffers go in the Workspace it passes as `ws`).
SCRATCH = Workspace(empty)


@cuda.jit(cache=True)
def _fill(a, value):
    """a[i] = value."""
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


@cuda.jit(cache=True)
def _copy(out, a):
    """out[i] = a[i]."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i]


@cuda.jit(cache=True)
def _add(y, a):
    """y[i] += a[i]."""
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[i] += a[i]


def fill(a, value):
    """a[...] = value."""
    launch(_fill, a.size, flat(a), a.dtype.type(value))


def copy(out, a):
    """out[...] = a, device to device."""
    same_size(out, a)
    launch(_copy, out.size, flat(out), flat(a))


def add(y, a):
    """y += a."""
    same_size(y, a)
    launch(_add, y.size, flat(y), flat(a))
