"""Dense (fully connected) layer: y = x @ kernel + bias, kernel (in, units) as in Keras."""

import numpy as np

from scratchvae import kernels as K
from scratchvae.layers.base import Layer, default_rng, glorot_uniform


class Dense(Layer):
    kind = "Dense"
    fused_kernel = "dense_act"

    def __init__(self, in_features, units, dtype=np.float32, rng=None, name=None):
        super().__init__(dtype, name)
        self.x = None
        self.in_features, self.units = in_features, units
        self._add_param("kernel", glorot_uniform(default_rng(rng), (in_features, units), in_features, units))
        self._add_param("bias", np.zeros(units))

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"{self.name}: expects ({self.in_features},) inputs, got {tuple(input_shape)}")
        return (self.units,)

    def fuses_inference(self):
        """Only with a layer to apply (a BatchNorm): alone, the plain GEMM + bias is as good."""
        return self.epilogue is not None and super().fuses_inference()

    def forward(self, x, training):
        self._check_input(x, 2)
        if not training and self.fuses_inference():
            self.x = None
            return self._infer(x)
        y = self.output("y", (x.shape[0], self.units), training)
        K.gemm(y, x, self.params["kernel"])
        K.add_bias(y, self.params["bias"])
        self.x = x
        return y

    def _infer(self, x):
        """Inference with the following BatchNorm's moving-statistics affine and LeakyReLU applied
        as the output is written: one GEMM, one pass (the kernel is too big to refold per call)."""
        scale, shift, activation, alpha = self.epilogue_affine(self.units)
        y = self.epilogue.output("y", (x.shape[0], self.units), False)
        K.dense_act(y, x, self.params["kernel"], self.params["bias"], scale, shift, activation, alpha)
        return y

    def backward(self, dy):
        if self.x is None:
            raise RuntimeError(f"{self.name}: backward needs a training-mode forward first")
        K.sum_rows(self.grads["bias"], dy)
        K.gemm(self.grads["kernel"], self.x, dy, trans_a=True)
        dx = self.scratch("dx", self.x.shape)
        K.gemm(dx, dy, self.params["kernel"], trans_b=True)
        self.x = None
        return dx
