"""Dense (fully connected) layer: y = x @ kernel + bias, kernel (in, units) as in Keras."""

import numpy as np

from scratchvae import kernels as K
from scratchvae.layers.base import Layer, default_rng, glorot_uniform


class Dense(Layer):
    kind = "Dense"

    def __init__(self, in_features, units, dtype=np.float32, rng=None, name=None, **layer_options):
        super().__init__(dtype, name, **layer_options)
        self.x = None
        self.in_features, self.units = in_features, units
        self._add_param("kernel", glorot_uniform(default_rng(rng), (in_features, units), in_features, units))
        self._add_param("bias", np.zeros(units))

    def forward(self, x, training):
        self._check_input(x, 2)
        y = self.output("y", (x.shape[0], self.units), training)
        K.gemm(y, x, self.params["kernel"])
        K.add_bias(y, self.params["bias"])
        self.x = x
        return y

    def backward(self, dy):
        if self.x is None:
            raise RuntimeError(f"{self.name}: backward needs a training-mode forward first")
        self.bias_grad(dy)
        K.gemm(self.grads["kernel"], self.x, dy, trans_a=True)
        dx = self.scratch("dx", self.x.shape)
        K.gemm(dx, dy, self.params["kernel"], trans_b=True)
        self.x = None
        return dx
