"""UpSampling2D: Keras' nearest-neighbour upsampling by 2 (NHWC), the resize decoder's first half.

Forward copies each pixel into a 2x2 block; backward sums dy over each block (its exact adjoint).
Both run in kernels (upsample_nearest, upsample_nearest_backward); the layer has no parameters.
"""

import numpy as np

from scratchvae import kernels as K
from scratchvae.layers.base import Layer


class UpSampling2D(Layer):
    """Keras UpSampling2D(size=2, interpolation='nearest'): (N, H, W, C) -> (N, 2H, 2W, C)."""

    kind = "UpSampling2D"

    def __init__(self, size=2, dtype=np.float32, rng=None, name=None, **layer_options):
        super().__init__(dtype, name, **layer_options)
        if size != 2:
            raise ValueError(f"UpSampling2D size {size!r} is not supported; only 2 (nearest) is")
        self.size = size

    def forward(self, x, training):
        self._check_input(x, 4)
        n, h, w, c = x.shape
        y = self.output("y", (n, 2 * h, 2 * w, c), training)
        K.upsample_nearest(y, x)
        self.in_shape = x.shape
        return y

    def backward(self, dy):
        dx = self.grad_buffer(self.in_shape, avoid=dy)
        K.upsample_nearest_backward(dx, dy)
        return dx
