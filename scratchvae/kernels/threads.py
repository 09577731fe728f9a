"""One thread count for both Numba's parallel loops and the BLAS behind NumPy's matmul.

BLAS is told through its own C entry point (found among the loaded libraries), so no
oversubscription: Numba prange and BLAS never run at the same time and each uses `n` threads.
`on_each_core` is the other arrangement: one Python thread per core, BLAS single-threaded.
"""

import concurrent.futures
import contextvars
import ctypes
import os

import numba

_BLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                 "openblas_set_num_threads64_", "openblas_set_num_threads", "MKL_Set_Num_Threads")
_BLAS_CORE_NAMES = ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
                    "openblas_get_corename")
_TIMEOUT_GETTER = ("openblas_thread_timeout",)  # OpenBLAS's own names (no 64_ suffix in the SciPy build)
_READ_ENV = ("openblas_read_env",)
_SHUTDOWN = ("blas_thread_shutdown_",)
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


_FOUND = {}  # names -> the first entry point found (or None); the loaded BLAS does not change


def _entry(names):
    """The first of `names` that a loaded BLAS library exports (a ctypes function), or None."""
    if names not in _FOUND:
        _FOUND[names] = next((fn for lib in _blas_libraries() for fn in (getattr(lib, n, None) for n in names)
                              if fn is not None), None)
    return _FOUND[names]


def _call_first(names, *args):
    fn = _entry(names)
    return None if fn is None else fn(*args)


_pool = None
_pool_key = None  # (process id, threads): a forked child or a larger count gets a pool of its own


def _with_one_blas_thread(run):
    """run() with BLAS single-threaded, its thread count restored after. Returns False (and does not
    call run) where BLAS's thread count cannot be read."""
    previous = _call_first(_BLAS_GETTERS)
    if previous is None:
        return False
    _call_first(_BLAS_SETTERS, ctypes.c_int(1))
    try:
        run()
    finally:
        _call_first(_BLAS_SETTERS, ctypes.c_int(previous))
    return True


def on_each_core(fn, workers):
    """fn(k) for k in range(workers), each on its own Python thread, with BLAS single-threaded
    meanwhile: each thread's GEMMs and nogil Numba kernels keep to one core. Returns False (and runs
    nothing) where BLAS's thread count cannot be set. Used where multi-threaded BLAS calls would
    alternate with Numba's parallel loops: OpenBLAS's idle workers spin for up to ~0.1 s after
    each call and take the cores the Numba threads need (measured on 2 cores: up to 2x slower)."""
    def run():
        global _pool, _pool_key
        if _pool_key is None or _pool_key[0] != os.getpid() or _pool_key[1] < workers:
            if _pool is not None and _pool_key[0] == os.getpid():
                _pool.shutdown()
            _pool = concurrent.futures.ThreadPoolExecutor(workers, "scratchvae-core")
            _pool_key = (os.getpid(), workers)
        # each worker in a copy of the caller's context: NumPy's error state (np.errstate) goes along
        futures = [_pool.submit(contextvars.copy_context().run, fn, k) for k in range(workers)]
        concurrent.futures.wait(futures)
        for f in futures:
            f.result()  # re-raises a worker's exception

    return _with_one_blas_thread(run)


def on_this_core(fn):
    """fn(0) on the calling thread, with BLAS single-threaded meanwhile: for work that is one task,
    which would gain nothing from on_each_core's hand-off to the pool (about 70 us on 2 cores, a
    seventh of a small layer's time at batch 1). Returns False (and runs nothing) where BLAS's
    thread count cannot be set."""
    return _with_one_blas_thread(lambda: fn(0))


def cpu_count():
    """Cores this process may run on (respects affinity masks and cgroup CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def quiet_blas_workers():
    """Give OpenBLAS the idle-thread timeout that scratchvae sets on import (OPENBLAS_THREAD_TIMEOUT,
    see scratchvae/__init__.py), also where NumPy loaded OpenBLAS before scratchvae was imported:
    then OpenBLAS re-reads its environment and its workers restart (at its next threaded call) with
    the new timeout, instead of spinning ~0.1 s after every matrix product. Returns the timeout
    OpenBLAS now uses (log2 of cycles; 0 for its default), or None where the BLAS is not OpenBLAS.
    Call it only while no BLAS call runs."""
    timeout = _call_first(_TIMEOUT_GETTER)
    want = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "")
    read_env, shutdown = _entry(_READ_ENV), _entry(_SHUTDOWN)
    if timeout is None or not want.isdigit() or timeout == int(want) or read_env is None or shutdown is None:
        return timeout
    read_env()
    if _call_first(_TIMEOUT_GETTER) == int(want):
        shutdown()  # its workers stop; the next threaded call starts them with the new timeout
    return _call_first(_TIMEOUT_GETTER)


def set_threads(n=None):
    """Use `n` threads (default: every available core) in Numba and BLAS; returns n. Also gives
    OpenBLAS scratchvae's idle-thread timeout (quiet_blas_workers)."""
    n = cpu_count() if n is None else int(n)
    if n < 1:
        raise ValueError("thread count must be at least 1")
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    quiet_blas_workers()
    _call_first(_BLAS_SETTERS, ctypes.c_int(n))
    return n


def blas_core():
    """The kernel family OpenBLAS runs on this processor (e.g. "SkylakeX", "Haswell": chosen at load,
    or forced by OPENBLAS_CORETYPE), or None for another BLAS."""
    fn = _entry(_BLAS_CORE_NAMES)
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def describe():
    """A short line: Numba's and BLAS's thread counts, and OpenBLAS's kernel family."""
    blas, core = _call_first(_BLAS_GETTERS), blas_core()
    return (f"numba threads {numba.get_num_threads()}, BLAS threads {blas if blas is not None else 'unknown'}"
            + (f", OpenBLAS kernels {core}" if core else ""))
