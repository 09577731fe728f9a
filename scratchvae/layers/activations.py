"""Element-wise activations: LeakyReLU (Keras alpha 0.3), ReLU, Sigmoid.

Each keeps the one array its backward needs (the input, or for ReLU and Sigmoid the output).
"""

import numpy as np

from scratchvae import kernels as K
from scratchvae.layers.base import Layer


class LeakyReLU(Layer):
    kind = "LeakyReLU"

    def __init__(self, alpha=0.3, dtype=np.float32, rng=None, name=None, **layer_options):
        super().__init__(dtype, name, **layer_options)
        self.alpha = alpha

    def forward(self, x, training):
        self._check_input(x, x.ndim)
        y = self.output("y", x.shape, training)
        K.leaky_forward(y, x, self.alpha)
        self.x = x
        return y

    def backward(self, dy):
        dx = dy  # in place: each element is read before it is written
        K.leaky_backward(dx, dy, self.x, self.alpha)
        self.x = None
        return dx


class ReLU(Layer):
    kind = "ReLU"

    def forward(self, x, training):
        self._check_input(x, x.ndim)
        y = self.output("y", x.shape, training)
        K.relu_forward(y, x)
        self.y = y
        return y

    def backward(self, dy):
        dx = dy
        K.relu_backward(dx, dy, self.y)
        self.y = None
        return dx


class Sigmoid(Layer):
    kind = "Sigmoid"

    def forward(self, x, training):
        self._check_input(x, x.ndim)
        y = self.output("y", x.shape, training)
        K.sigmoid_forward(y, x)
        self.y = y
        return y

    def backward(self, dy):
        dx = dy
        K.sigmoid_backward(dx, dy, self.y)
        self.y = None
        return dx
