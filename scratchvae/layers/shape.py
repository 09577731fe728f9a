"""Flatten and Reshape in Keras order (H, then W, then C): with NHWC they are plain reshapes."""

import numpy as np

from scratchvae.layers.base import Layer


class Flatten(Layer):
    kind = "Flatten"

    def forward(self, x, training):
        self.in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.in_shape)


class Reshape(Layer):
    kind = "Reshape"

    def __init__(self, target_shape, dtype=np.float32, rng=None, name=None, **layer_options):
        super().__init__(dtype, name, **layer_options)
        self.target_shape = tuple(int(s) for s in target_shape)

    def forward(self, x, training):
        self.in_shape = x.shape
        return x.reshape((x.shape[0],) + self.target_shape)

    def backward(self, dy):
        return dy.reshape(self.in_shape)
