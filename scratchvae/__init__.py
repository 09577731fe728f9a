"""scratchvae: a variational autoencoder written from scratch (NumPy + Numba), NHWC float32."""

import os

# Numba's OpenMP threads otherwise spin after each parallel loop, stealing the cores that the
# BLAS threads of the next matrix product need (measured: 4x slower steps on a busy 2-core box).
# Set before Numba starts its thread pool; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
