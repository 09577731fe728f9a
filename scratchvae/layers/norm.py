"""BatchNorm over the last axis (per channel for NHWC, per feature for (N, F)), Keras semantics.

Training uses the batch mean and biased variance and moves `moving = m*moving + (1-m)*batch`;
inference uses the moving statistics. Defaults follow Keras: momentum 0.99, epsilon 1e-3.
A following LeakyReLU can be fused in (`fuse`): one pass forward, two backward, same results.
With a `reducer` (sums an array over the ranks of a data-parallel job, in place) the batch is the
global one: per-channel sums are reduced before the mean, the variance and the backward's dx.
"""

import numpy as np

from scratchvae import kernels as K
from scratchvae.layers.base import Layer


class BatchNorm(Layer):
    kind = "BatchNormalization"

    def __init__(self, features, momentum=0.99, epsilon=1e-3, dtype=np.float32, rng=None, name=None,
                 reducer=None):
        super().__init__(dtype, name)
        self.features, self.momentum, self.epsilon = features, momentum, epsilon
        self.reducer = reducer  # None: this process's batch is the whole batch
        self.alpha = 1.0  # slope of a fused LeakyReLU for negative inputs; 1 means none
        self._add_param("gamma", np.ones(features))
        self._add_param("beta", np.zeros(features))
        self.state["moving_mean"] = K.zeros((features,), self.dtype)
        self.state["moving_variance"] = K.from_host(np.ones(features, dtype=self.dtype))

    def fuse(self, activation):
        """Apply `activation` (a LeakyReLU) inside this layer's passes; it becomes a pass-through."""
        self.alpha = activation.alpha
        activation.fused_into = self

    def output_shape(self, input_shape):
        if input_shape[-1] != self.features:
            raise ValueError(f"{self.name}: expects {self.features} features, got {input_shape[-1]}")
        return tuple(input_shape)

    def inference_epilogue(self, scale, shift):
        """For a preceding layer that applies this one: its per-channel (scale, shift) composed with
        the moving-statistics affine, then (activation, alpha) of the fused LeakyReLU (if any)."""
        invstd = self.scratch("invstd", (self.features,))
        K.bn_invstd(invstd, self.state["moving_variance"], self.epsilon)
        s = (invstd * self.params["gamma"]).astype(self.dtype)  # as bn_act_forward computes it
        t = (self.params["beta"] - self.state["moving_mean"] * s).astype(self.dtype)
        return scale * s, shift * s + t, ("leaky" if self.alpha != 1 else None), self.alpha

    def forward(self, x, training):
        if x.dtype != self.dtype:
            raise TypeError(f"{self.name}: expected {self.dtype} input, got {x.dtype}")
        if self.applied_before(training):
            self.cache = None
            return x
        x2d = x.reshape(-1, self.features)
        count = x2d.shape[0]
        if training:
            mean = self.scratch("mean", (self.features,))
            var = self.scratch("var", (self.features,))
            if self.reducer is None:
                if count < 2:
                    raise ValueError(f"{self.name}: batch statistics need at least 2 values per feature")
                K.bn_stats(mean, var, x2d)
            else:
                count = self._global_stats(mean, var, x2d)
            K.moving_update(self.state["moving_mean"], mean, self.momentum)
            K.moving_update(self.state["moving_variance"], var, self.momentum)
        else:
            mean, var = self.scratch("mean", (self.features,)), self.scratch("var", (self.features,))
            K.copy(mean, self.state["moving_mean"])
            K.copy(var, self.state["moving_variance"])
        invstd = self.scratch("invstd", (self.features,))
        K.bn_invstd(invstd, var, self.epsilon)
        y = self.output("y", x.shape, training)
        K.bn_act_forward(y.reshape(-1, self.features), x2d, mean, invstd, self.params["gamma"],
                         self.params["beta"], self.alpha)
        self.cache = (x2d, mean, invstd, training, count)
        return y

    def _global_stats(self, mean, var, x2d):
        """Mean and biased variance over every rank's rows (two passes: the variance about the
        global mean); returns the global row count."""
        f = self.features
        sums = np.empty(f, self.dtype)
        K.sum_rows(sums, x2d)
        total = self._reduce(sums, [x2d.shape[0]])
        count = int(total[f])
        if count < 2:
            raise ValueError(f"{self.name}: batch statistics need at least 2 values per feature")
        mean[...] = total[:f] / count
        K.centered_sq_sums(var, x2d, mean)
        var[...] = self._reduce(var) / count
        return count

    def _reduce(self, *parts):
        """The concatenated parts summed over the ranks, in float64 (exact for the count, and
        for two ranks independent of the order in which they arrive)."""
        buf = np.concatenate([np.asarray(p, np.float64).ravel() for p in parts])
        self.reducer(buf)
        return buf

    def backward(self, dy):
        x2d, mean, invstd, training, count = self.cache
        dy2d = dy.reshape(-1, self.features)
        dx = dy  # in place: the kernels read each dy element before writing dx there
        gamma, beta = self.params["gamma"], self.params["beta"]
        if training and self.reducer is None:
            K.bn_act_backward(dx.reshape(-1, self.features), self.grads["gamma"], self.grads["beta"],
                              dy2d, x2d, mean, invstd, gamma, beta, self.alpha)
        elif training:
            # The parameter gradients stay this rank's own sums (the job sums them with every other
            # gradient); dx needs the sums over every rank.
            f = self.features
            s1, s2 = np.empty(f, self.dtype), np.empty(f, self.dtype)
            K.bn_act_grad_sums(s1, s2, dy2d, x2d, mean, invstd, gamma, beta, self.alpha)
            self.grads["beta"][...] = s1
            self.grads["gamma"][...] = s2 * invstd
            total = self._reduce(s1, s2).astype(self.dtype)
            K.bn_act_dx(dx.reshape(-1, self.features), dy2d, x2d, mean, invstd, gamma, beta, self.alpha,
                        total[:f], total[f:], count)
        else:
            K.bn_act_backward_frozen(dx.reshape(-1, self.features), self.grads["gamma"], self.grads["beta"],
                                     dy2d, x2d, mean, invstd, gamma, beta, self.alpha)
        self.cache = None
        return dx
