"""scratchvae: a variational autoencoder written from scratch (NumPy + Numba), NHWC float32."""

import os

# Numba's OpenMP threads otherwise spin after each parallel loop, stealing the cores that the
# BLAS threads of the next matrix product need (measured: 4x slower steps on a busy 2-core box).
# Set before Numba starts its thread pool; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# OpenBLAS's idle workers likewise spin for 2^28 cycles (about 0.1 s) after each threaded matrix
# product, taking a core from the Numba loops and the per-core GEMMs that follow: 2^16 cycles
# (tens of microseconds) instead. OpenBLAS reads this when it loads, that is when NumPy is first
# imported, so it takes effect where scratchvae is imported first (`python -m scratchvae.<job>`).
# Measured on the seed's training step (batch 32, 2 cores): 31-32 images/s with the default,
# 41-42 with 2^12 to 2^20 cycles.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

__version__ = "0.2.0"
