"""BatchNorm over the last axis (per channel for NHWC, per feature for (N, F)), Keras semantics.

Training uses the batch mean and biased variance and moves `moving = m*moving + (1-m)*batch`;
inference uses the moving statistics. Defaults follow Keras: momentum 0.99, epsilon 1e-3.
BatchNormLeakyReLU is BatchNorm then LeakyReLU in one layer: one pass forward, two backward.
With a DeferredNorm, a training forward leaves the normalised output unwritten and the convolution
after it normalises as it reads. With a `reducer` (sums an array over the ranks of a data-parallel
job, in place) the batch is the global one: per-channel sums are reduced before the mean, the
variance and the backward's dx.
`measure_population` replaces the moving averages by the exact statistics of a pass over data.
"""

import numpy as np

from scratchvae import kernels as K
from scratchvae.layers.base import Layer


class BatchStats:
    """The batch mean and biased variance of a convolution's training output, measured by the
    convolution as it writes it (the fused kernels add up each piece while it is in cache), for the
    BatchNorm that reads that output next: it then skips its own pass over the map. The model gives
    one to each convolution that feeds a BatchNorm directly, and to that BatchNorm (single-process
    training; a data-parallel BatchNorm reduces its sums over the ranks itself)."""

    def __init__(self, features, dtype):
        self.values = K.empty((2, features), dtype)  # mean, variance
        self.of = None  # the output array the values describe

    def request(self, training):
        """The (2, features) array a training forward fills (None in inference)."""
        self.of = None
        return self.values if training else None

    def measured(self, y):
        """The values now describe y (the array the producer returns)."""
        self.of = y
        return y

    def take(self, x):
        """(mean, variance) if they describe x (the very array), else None; forgotten either way."""
        fresh, self.of = self.of is x, None
        return (self.values[0], self.values[1]) if fresh else None


class DeferredNorm:
    """A training BatchNorm's output (with its LeakyReLU) left unwritten: the BatchNorm returns its
    input, and the convolution that reads it next applies the normalisation to each piece as its
    GEMM reads it (the kernels' `pre`). A step then writes and reads that map once less, and the
    BatchNorm holds no output map (the convolution's input gradient, no longer written over it,
    takes a gradient slot of that size instead). The model gives one to a BatchNorm whose output
    only a stride-1 Conv2DTranspose reads (the seed's last layer: 128 channels of 128x128 in, 3
    out), and to that convolution."""

    def __init__(self, features, dtype):
        self.values = K.empty((4, features), dtype)  # mean, invstd, gamma, beta: the kernels' `pre`
        self.alpha = 1.0
        self.of = None  # the BatchNorm input the values describe
        self.sums = K.empty((2, features), dtype)  # the backward's sums, taken by the convolution
        self.sums_of = None  # the output gradient they were taken from

    def defer(self, x, mean, invstd, gamma, beta, alpha):
        """The BatchNorm's part: remember how to normalise x; returns x (the very array)."""
        for row, v in enumerate((mean, invstd, gamma, beta)):
            K.copy(self.values[row], v)
        self.alpha, self.of = alpha, x
        return x

    def take(self, x):
        """The convolution's part: (pre, alpha) if x is the very array a BatchNorm deferred (read it
        normalised), else None (x is what it says); forgotten either way."""
        deferred, self.of = self.of is x, None
        return (self.values, self.alpha) if deferred else None

    def summed(self, dy):
        """The convolution's backward has filled `sums` (the kernels' pre_sums) from dy, the output
        gradient it hands the BatchNorm: the BatchNorm's backward skips its own pass over dy for them."""
        self.sums_of = dy
        return dy

    def take_sums(self, dy):
        """(s1, s2) if they were taken from dy (the very array), else None; forgotten either way."""
        fresh, self.sums_of = self.sums_of is dy, None
        return (self.sums[0], self.sums[1]) if fresh else None


class BatchNorm(Layer):
    kind = "BatchNormalization"

    alpha = 1.0  # slope for negative outputs: 1 is no activation (BatchNormLeakyReLU sets its own)

    def __init__(self, features, momentum=0.99, epsilon=1e-3, dtype=np.float32, rng=None, name=None,
                 reducer=None, batch_stats=None, deferred=None, **layer_options):
        super().__init__(dtype, name, **layer_options)
        self.features, self.momentum, self.epsilon = features, momentum, epsilon
        self.reducer = reducer  # None: this process's batch is the whole batch
        self.batch_stats = batch_stats  # a BatchStats its producer fills (None: measured here)
        self.deferred = deferred  # a DeferredNorm: a training forward leaves its output to the next layer
        self.census = None  # (sums, squares, count) while measure_population runs
        self._add_param("gamma", np.ones(features))
        self._add_param("beta", np.zeros(features))
        self.state["moving_mean"] = K.zeros((features,), self.dtype)
        self.state["moving_variance"] = K.from_host(np.ones(features, dtype=self.dtype))

    def forward(self, x, training):
        if x.dtype != self.dtype:
            raise TypeError(f"{self.name}: expected {self.dtype} input, got {x.dtype}")
        x2d = x.reshape(-1, self.features)
        count = x2d.shape[0]
        if training:
            mean = self.scratch("mean", (self.features,))
            var = self.scratch("var", (self.features,))
            if self.reducer is None:
                if count < 2:
                    raise ValueError(f"{self.name}: batch statistics need at least 2 values per feature")
                given = None if self.batch_stats is None else self.batch_stats.take(x)
                if given is None:
                    K.bn_stats(mean, var, x2d)
                else:
                    K.copy(mean, given[0])
                    K.copy(var, given[1])
            else:
                count = self._global_stats(mean, var, x2d)
            if self.census is None:
                K.moving_update(self.state["moving_mean"], mean, self.momentum)
                K.moving_update(self.state["moving_variance"], var, self.momentum)
            else:
                self._count(x2d, mean)
        else:
            mean, var = self.scratch("mean", (self.features,)), self.scratch("var", (self.features,))
            K.copy(mean, self.state["moving_mean"])
            K.copy(var, self.state["moving_variance"])
        invstd = self.scratch("invstd", (self.features,))
        K.bn_invstd(invstd, var, self.epsilon)
        self.cache = (x2d, mean, invstd, training, count)
        if training and self.deferred is not None:  # the next layer reads x through this BatchNorm
            return self.deferred.defer(x, mean, invstd, self.params["gamma"], self.params["beta"], self.alpha)
        y = self.output("y", x.shape, training)
        K.bn_act_forward(y.reshape(-1, self.features), x2d, mean, invstd, self.params["gamma"],
                         self.params["beta"], self.alpha)
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
        given = None if self.deferred is None or not training else self.deferred.take_sums(dy)
        if given is not None:  # the convolution after this layer took the sums as it wrote dy
            s1, s2 = given
            K.copy(self.grads["beta"], s1)
            ones, zeros = self.scratch("ones", (self.features,)), self.scratch("zeros", (self.features,))
            K.fill(ones, 1)
            K.fill(zeros, 0)
            # dgamma = s2 * invstd, as an affine map on any backend: (s2 - 0) * invstd * 1 + 0
            K.bn_forward(self.grads["gamma"].reshape(1, -1), s2.reshape(1, -1), zeros, invstd, ones, zeros)
            if self.reducer is not None:
                total = self._reduce(s1, s2).astype(self.dtype)
                s1, s2 = total[:self.features], total[self.features:]
            K.bn_act_dx(dx.reshape(-1, self.features), dy2d, x2d, mean, invstd, gamma, beta, self.alpha, s1, s2,
                        count)
        elif training and self.reducer is None:
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

    # ------------------------------------------------------------ population statistics
    def begin_population(self):
        """Start measuring: later training-mode forwards add their inputs to exact float64 sums
        and leave the moving averages alone (normalising with each batch's own statistics, as in
        training, so every layer sees the inputs it sees while training)."""
        self.census = [np.zeros(self.features), np.zeros(self.features), 0]

    def _count(self, x2d, mean):
        """Add this rank's rows x2d to the census, given `mean` (the batch mean the forward uses):
        sum x, and sum x^2 = sum (x - m)^2 + 2 m sum x - n m^2, all in float64 (the squares are
        taken about m in the kernel, so no large float32 numbers cancel)."""
        sums, squares = K.empty((self.features,), self.dtype), K.empty((self.features,), self.dtype)
        K.sum_rows(sums, x2d)
        K.centered_sq_sums(squares, x2d, mean)
        n = x2d.shape[0]
        sums, squares = K.to_host(sums).astype(np.float64), K.to_host(squares).astype(np.float64)
        m = K.to_host(mean).astype(np.float64)
        self.census[0] += sums
        self.census[1] += squares + 2 * m * sums - n * m * m
        self.census[2] += n

    def cancel_population(self):
        """Stop measuring and keep the moving statistics as they were."""
        self.census = None

    def end_population(self):
        """Store the measured mean and biased variance as the moving statistics (summed over the
        ranks first when there is a reducer); returns the number of values per feature."""
        sums, squares, count = self.census
        self.census = None
        if self.reducer is not None:
            total = self._reduce(sums, squares, [count])
            f = self.features
            sums, squares, count = total[:f], total[f:2 * f], int(total[2 * f])
        if count < 1:
            raise ValueError(f"{self.name}: no batches were measured")
        mean = sums / count
        var = np.maximum(squares / count - mean ** 2, 0.0)
        K.copy(self.state["moving_mean"], K.from_host(mean.astype(self.dtype)))
        K.copy(self.state["moving_variance"], K.from_host(var.astype(self.dtype)))
        return count


class BatchNormLeakyReLU(BatchNorm):
    """BatchNormalization followed by LeakyReLU(alpha), as one layer: the model builds it when the
    spec has the two in a row (the summary still lists the two Keras layers)."""

    kind = "BatchNormalization+LeakyReLU"

    def __init__(self, features, alpha=0.3, momentum=0.99, epsilon=1e-3, **options):
        super().__init__(features, momentum, epsilon, **options)
        self.alpha = alpha
