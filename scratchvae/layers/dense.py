"""Dense (fully connected) layer: y = x @ kernel + bias, kernel (in, units) as in Keras."""

import numpy as np

from scratchvae import kernels as K
from scratchvae.layers.base import Layer, default_rng, glorot_uniform


class Dense(Layer):
    kind = "Dense"

    def __init__(self, in_features, units, dtype=np.float32, rng=None, name=None):
        super().__init__(dtype, name)
        self.in_features, self.units = in_features, units
        self._add_param("kernel", glorot_uniform(default_rng(rng), (in_features, units), in_features, units))
        self._add_param("bias", np.zeros(units))

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"{self.name}: expects ({self.in_features},) inputs, got {tuple(input_shape)}")
        return (self.units,)

    def forward(self, x, training):
        self._check_input(x, 2)
        y = self.output("y", (x.shape[0], self.units), training)
        K.gemm(y, x, self.params["kernel"])
        K.add_bias(y, self.params["bias"])
        self.x = x
        return y

    def backward(self, dy):
        K.sum_rows(self.grads["bias"], dy)
        K.gemm(self.grads["kernel"], self.x, dy, trans_a=True)
        dx = self.scratch("dx", self.x.shape)
        K.gemm(dx, dy, self.params["kernel"], trans_b=True)
        self.x = None
        return dx
