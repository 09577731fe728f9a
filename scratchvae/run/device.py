"""Which compute device a run uses: `cpu` (the Numba CPU kernels) or `cuda` (the numba.cuda kernels).

Choosing a device is choosing the kernel backend; this module only checks that it can run here.
"""

from scratchvae import kernels
from scratchvae.run.errors import UserError

DEVICES = ("cpu", "cuda")


def check(device):
    """(ok, reason): whether `device` can run on this machine; never raises."""
    if device == "cpu":
        return True, "Numba CPU kernels"
    if device != "cuda":
        return False, f"unknown device {device!r}; choose one of {', '.join(DEVICES)}"
    try:
        backend = kernels.backend("cuda")
    except Exception as e:  # noqa: BLE001  (numba.cuda missing, or its CUDA bindings failing to load)
        return False, (f"the CUDA backend cannot load ({type(e).__name__}: {e}); "
                       "install it with pip install 'scratchvae[cuda]'")
    return backend.available()


def use(device):
    """Make `device` the active kernel backend; a UserError naming the problem when it cannot run."""
    ok, reason = check(device)
    if not ok:
        raise UserError(f"--device {device}: {reason}")
    kernels.use(device)
    return reason
