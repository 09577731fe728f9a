"""One thread count for both Numba's parallel loops and the BLAS behind NumPy's matmul.

BLAS is told through its own C entry point (found among the loaded libraries), so no
oversubscription: Numba prange and BLAS never run at the same time and each uses `n` threads.
"""

import ctypes
import os

import numba

_BLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                 "openblas_set_num_threads64_", "openblas_set_num_threads", "MKL_Set_Num_Threads")
_BLAS_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                 "openblas_get_num_threads64_", "openblas_get_num_threads", "MKL_Get_Max_Threads")


def _blas_libraries():
    import numpy as np  # noqa: F401  (loads NumPy's BLAS so it appears in the maps)
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "blas" in line.lower() or "mkl_rt" in line.lower()}
    except OSError:
        return []
    libs = []
    for path in sorted(p for p in paths if os.path.isfile(p)):
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return libs


def _call_first(names, *args):
    for lib in _blas_libraries():
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                return fn(*args)
    return None


def cpu_count():
    """Cores this process may run on (respects affinity masks and cgroup CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_threads(n=None):
    """Use `n` threads (default: every available core) in Numba and BLAS; returns n."""
    n = cpu_count() if n is None else int(n)
    if n < 1:
        raise ValueError("thread count must be at least 1")
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    _call_first(_BLAS_SETTERS, ctypes.c_int(n))
    return n


def describe():
    """A short line: Numba's and BLAS's thread counts."""
    blas = _call_first(_BLAS_GETTERS)
    return f"numba threads {numba.get_num_threads()}, BLAS threads {blas if blas is not None else 'unknown'}"
