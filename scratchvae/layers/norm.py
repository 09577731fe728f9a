"""BatchNorm over the last axis (per channel for NHWC, per feature for (N, F)), Keras semantics.

Training uses the batch mean and biased variance and moves `moving = m*moving + (1-m)*batch`;
inference uses the moving statistics. Defaults follow Keras: momentum 0.99, epsilon 1e-3.
"""

import numpy as np

from scratchvae import kernels as K
from scratchvae.layers.base import Layer


class BatchNorm(Layer):
    kind = "BatchNormalization"

    def __init__(self, features, momentum=0.99, epsilon=1e-3, dtype=np.float32, rng=None, name=None):
        super().__init__(dtype, name)
        self.features, self.momentum, self.epsilon = features, momentum, epsilon
        self._add_param("gamma", np.ones(features))
        self._add_param("beta", np.zeros(features))
        self.state["moving_mean"] = np.zeros(features, dtype=self.dtype)
        self.state["moving_variance"] = np.ones(features, dtype=self.dtype)

    def output_shape(self, input_shape):
        if input_shape[-1] != self.features:
            raise ValueError(f"{self.name}: expects {self.features} features, got {input_shape[-1]}")
        return tuple(input_shape)

    def forward(self, x, training):
        if x.dtype != self.dtype:
            raise TypeError(f"{self.name}: expected {self.dtype} input, got {x.dtype}")
        x2d = x.reshape(-1, self.features)
        if training:
            if x2d.shape[0] < 2:
                raise ValueError(f"{self.name}: batch statistics need at least 2 values per feature")
            mean = np.empty(self.features, self.dtype)
            var = np.empty(self.features, self.dtype)
            K.bn_stats(mean, var, x2d)
            m = self.dtype.type(self.momentum)
            for key, batch in (("moving_mean", mean), ("moving_variance", var)):
                self.state[key][...] = m * self.state[key] + (1 - m) * batch
        else:
            mean, var = self.state["moving_mean"], self.state["moving_variance"]
        invstd = (1 / np.sqrt(var + self.dtype.type(self.epsilon))).astype(self.dtype)
        y = K.empty(x.shape, self.dtype)
        K.bn_forward(y.reshape(-1, self.features), x2d, mean, invstd, self.params["gamma"], self.params["beta"])
        self.cache = (x2d, mean.copy(), invstd, training)
        return y

    def backward(self, dy):
        x2d, mean, invstd, training = self.cache
        dy2d = dy.reshape(-1, self.features)
        dx = K.empty(dy.shape, self.dtype)
        if training:
            K.bn_backward(dx.reshape(-1, self.features), self.grads["gamma"], self.grads["beta"],
                          dy2d, x2d, mean, invstd, self.params["gamma"])
        else:
            # Moving statistics are constants here: the layer is a per-channel affine map.
            K.sum_rows(self.grads["beta"], dy2d)
            xhat = K.empty(x2d.shape, self.dtype)
            K.bn_forward(xhat, x2d, mean, invstd, np.ones_like(invstd), np.zeros_like(invstd))
            K.sum_rows(self.grads["gamma"], dy2d * xhat)
            K.bn_forward(dx.reshape(-1, self.features), dy2d, np.zeros_like(mean),
                         invstd * self.params["gamma"], np.ones_like(invstd), np.zeros_like(invstd))
        self.cache = None
        return dx
