"""The one dispatch point for array kernels.

Layers call `kernels.<op>(...)`; this module forwards the call to the active backend
("numpy" reference, "cpu" Numba, "cuda" numba.cuda). Nothing else knows which one runs.
"""

import importlib

_MODULES = {
    "numpy": "scratchvae.kernels.reference",
    "cpu": "scratchvae.kernels.cpu",
    "cuda": "scratchvae.kernels.cuda",
}
_active_name = "cpu"
_active = None


def available():
    """Names of the backends this build knows about."""
    return tuple(_MODULES)


def backend(name=None):
    """The backend module called `name`, or the active one."""
    global _active
    if name is None:
        if _active is None:
            _active = importlib.import_module(_MODULES[_active_name])
        return _active
    if name not in _MODULES:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name])


def use(name):
    """Make `name` the active backend for every later kernel call; returns the previous name."""
    global _active_name, _active
    module = backend(name)
    previous = _active_name
    _active_name, _active = name, module
    return previous


def active_name():
    return _active_name


def supports(op):
    """Whether the active backend has kernel `op` (a fused fast path falls back to plain kernels if not)."""
    return hasattr(backend(), op)


class using:
    """Context manager: `with kernels.using("numpy"): ...` runs a block on another backend."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = use(self.name)
        return backend()

    def __exit__(self, *exc):
        use(self.previous)
        return False


def __getattr__(op):
    # Module-level attribute lookup falls through to here for kernel names (PEP 562).
    if op.startswith("__"):
        raise AttributeError(op)
    return getattr(backend(), op)
