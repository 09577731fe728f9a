"""scratchvae: a variational autoencoder written from scratch (NumPy + Numba), NHWC float32."""

__version__ = "0.1.0"
