"""The arithmetic of folding an inference-mode BatchNorm into the layer before it (NumPy only).

BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta = y * scale + shift. Used by the inference plan
(scratchvae/inference.py) and by the ONNX export, so both fold with the same formulas.
"""

import numpy as np


def batchnorm_affine(gamma, beta, mean, var, eps):
    """(scale, shift) in float64 with BN(y) = y * scale + shift, from the moving statistics."""
    gamma, beta, mean, var = (np.asarray(a, np.float64) for a in (gamma, beta, mean, var))
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def fold_affine(kernel, bias, scale, shift, axis):
    """Kernel and bias of `layer -> y * scale + shift` as one layer: the kernel's output axis
    `axis` is scaled, the bias becomes bias * scale + shift."""
    shape = [1] * kernel.ndim
    shape[axis] = -1
    return kernel * scale.reshape(shape), bias * scale + shift
