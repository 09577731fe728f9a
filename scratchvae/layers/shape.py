"""Flatten and Reshape in Keras order (H, then W, then C): with NHWC they are plain reshapes."""

import numpy as np

from scratchvae.layers.base import Layer


class Flatten(Layer):
    kind = "Flatten"

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training):
        self.in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self.in_shape)


class Reshape(Layer):
    kind = "Reshape"

    def __init__(self, target_shape, dtype=np.float32, rng=None, name=None):
        super().__init__(dtype, name)
        self.target_shape = tuple(int(s) for s in target_shape)

    def output_shape(self, input_shape):
        if int(np.prod(input_shape)) != int(np.prod(self.target_shape)):
            raise ValueError(f"{self.name}: cannot reshape {tuple(input_shape)} to {self.target_shape}")
        return self.target_shape

    def forward(self, x, training):
        self.in_shape = x.shape
        return x.reshape((x.shape[0],) + self.target_shape)

    def backward(self, dy):
        return dy.reshape(self.in_shape)
