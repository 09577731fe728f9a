"""Conv2D and Conv2DTranspose, NHWC, TensorFlow 'same' padding, through gathers + GEMM.

The forward of Conv2D (and backward of Conv2DTranspose) is im2col + one GEMM, piece by piece on
the cores (kernels conv_act, conv_gemms). The adjoint direction (Conv2D's input gradient,
Conv2DTranspose's forward) is one GEMM over all taps and a col2im gather that sums them, also piece
by piece (kernel conv_transpose_act): no zeros are multiplied and nothing is scattered with +=.
(The fused inference pass of Conv2DTranspose, with a following BatchNorm folded in, is built by
scratchvae/inference.py from the trained layer.)
"""

import numpy as np

from scratchvae import kernels as K
from scratchvae.geometry import same_padding
from scratchvae.layers.base import Layer, default_rng, glorot_uniform


# A transposed convolution's tap GEMM output is padded with zero columns to a multiple of this:
# measured for the seed's last layer (16384 x 128 by 128 x 27, one core), 27 columns took 0.99 ms and
# 32 took 0.66 ms (BLAS's AVX-512 kernels work on 16 floats at a time).
GEMM_COLUMNS = 16


def adjoint_width(k, filters):
    """Columns of a transposed convolution's tap GEMM: the k*k*filters taps, padded (GEMM_COLUMNS)."""
    return -(-k * k * filters // GEMM_COLUMNS) * GEMM_COLUMNS


def identity_affine(layer, features):
    """(ones, zeros) per channel in the layer's scratch: the fused kernels' affine when no BatchNorm
    is folded in."""
    ones, zeros = layer.scratch("ones", (features,)), layer.scratch("zeros", (features,))
    K.fill(ones, 1)
    K.fill(zeros, 0)
    return ones, zeros


def adjoint_conv(layer, y, x, kernel, bias, stride, pt, pl, stats=None, pre=None):
    """y = the adjoint of a 'same' Conv2D applied to x, plus bias (None: none): y (N,H,W,C) from
    x (N,Ho,Wo,O), kernel (KH,KW,C,O). Conv2DTranspose's forward and Conv2D's input gradient: one GEMM
    of x by every tap's weights (rearranged at each call, a small copy), then col2im sums the taps
    that reach each pixel of y and adds the bias, piece by piece on the cores (conv_transpose_act).
    stats: as conv_transpose_act's (the output's batch mean and variance, or None). pre: (values,
    alpha) of a DeferredNorm, x read through it (None: x as it is)."""
    kh, kw, c, _ = kernel.shape
    w2, b2 = layer.scratch("w2", (kernel.shape[3], adjoint_width(kh, c))), layer.scratch("b2", (c,))
    ones, zeros = identity_affine(layer, c)
    K.fold_adjoint_weights(w2, b2, kernel, zeros if bias is None else bias, ones, zeros)
    K.conv_transpose_act(y, x, w2, b2, kh, kw, stride, pt, pl, None, 1.0, ws=layer.workspace, stats=stats,
                         **pre_args(pre))


def pre_args(pre):
    """The kernels' pre and pre_alpha for (values, alpha) of a DeferredNorm, or for None."""
    return {} if pre is None else dict(pre=pre[0], pre_alpha=pre[1])


def _check_common(kernel_size, strides, padding):
    if padding != "same":
        raise ValueError(f"padding {padding!r} is not supported; only 'same' (the seed's) is")
    if kernel_size < 1 or strides < 1:
        raise ValueError("kernel_size and strides must be positive")


class Conv2D(Layer):
    """Keras Conv2D ('same', optional ReLU). need_dx=False: backward returns no input gradient (the
    model's first layer: nothing upstream of the images needs one). overwrite_input=True: backward
    writes dx into the forward's input array, for inputs that are dead once the weight gradient is
    taken (the output of a BatchNorm, whose backward needs only its own input). batch_stats: a
    BatchStats that a training forward fills with its output's mean and variance, for the BatchNorm
    that follows."""

    kind = "Conv2D"

    def __init__(self, in_channels, filters, kernel_size=3, strides=1, padding="same",
                 activation=None, dtype=np.float32, rng=None, name=None, need_dx=True, overwrite_input=False,
                 batch_stats=None, **layer_options):
        super().__init__(dtype, name, **layer_options)
        self.need_dx, self.overwrite_input, self.batch_stats = need_dx, overwrite_input, batch_stats
        _check_common(kernel_size, strides, padding)
        if activation not in (None, "relu"):
            raise ValueError(f"activation {activation!r} is not supported; use None or 'relu'")
        self.in_channels, self.filters = in_channels, filters
        self.k, self.stride, self.activation = kernel_size, strides, activation
        fan_in, fan_out = kernel_size * kernel_size * in_channels, kernel_size * kernel_size * filters
        self._add_param("kernel", glorot_uniform(default_rng(rng), (kernel_size, kernel_size, in_channels, filters),
                                                 fan_in, fan_out))
        self._add_param("bias", np.zeros(filters))

    def forward(self, x, training):
        self._check_input(x, 4)
        n, h, w, c = x.shape
        ho, pt = same_padding(h, self.k, self.stride)
        wo, pl = same_padding(w, self.k, self.stride)
        y = self.output("y", (n * ho * wo, self.filters), training)  # (N*Ho*Wo, O)
        # patches, GEMM and bias (+ ReLU) piece by piece on the cores: the fused inference kernel
        # with an identity affine after it
        ones, zeros = identity_affine(self, self.filters)
        stats = None if self.batch_stats is None else self.batch_stats.request(training)
        K.conv_act(y.reshape(n, ho, wo, self.filters), x, self.params["kernel"].reshape(-1, self.filters),
                   self.params["bias"], ones, zeros, self.k, self.k, self.stride, pt, pl,
                   self.activation == "relu", None, 1.0, ws=self.workspace, stats=stats)
        self.cache = (x, y, pt, pl)
        out = y.reshape(n, ho, wo, self.filters)
        return out if stats is None else self.batch_stats.measured(out)

    def backward(self, dy):
        x, y, pt, pl = self.cache
        n, ho, wo = dy.shape[:3]
        dy = dy.reshape(-1, self.filters)
        if self.activation == "relu":
            K.relu_backward(dy, dy, y)  # in place
        self.bias_grad(dy)
        K.conv_gemms(None, self.grads["kernel"].reshape(-1, self.filters), x, None, dy, self.k, self.k, self.stride,
                     pt, pl, ws=self.workspace)  # dW = patches^T @ dy
        self.cache = None
        if not self.need_dx:
            return None
        dx = x if self.overwrite_input else self.grad_buffer(x.shape, avoid=dy)
        adjoint_conv(self, dx, dy.reshape(n, ho, wo, self.filters), self.params["kernel"], None, self.stride, pt, pl)
        return dx


class Conv2DTranspose(Layer):
    """Keras Conv2DTranspose ('same'): the adjoint of Conv2D 'same' on the output size. need_dx and
    overwrite_input and batch_stats as for Conv2D. deferred: the DeferredNorm of the BatchNorm before
    it, whose output this layer then reads normalised from that BatchNorm's input (and leaves that
    input alone in backward: the BatchNorm's backward reads it)."""

    kind = "Conv2DTranspose"

    def __init__(self, in_channels, filters, kernel_size=3, strides=1, padding="same",
                 dtype=np.float32, rng=None, name=None, need_dx=True, overwrite_input=False, batch_stats=None,
                 deferred=None, **layer_options):
        super().__init__(dtype, name, **layer_options)
        self.need_dx, self.overwrite_input, self.batch_stats = need_dx, overwrite_input, batch_stats
        self.deferred = deferred
        _check_common(kernel_size, strides, padding)
        self.in_channels, self.filters = in_channels, filters
        self.k, self.stride = kernel_size, strides
        # Keras: kernel (kh, kw, out, in); fans as Keras computes them for this shape.
        fan_in, fan_out = kernel_size * kernel_size * filters, kernel_size * kernel_size * in_channels
        self._add_param("kernel", glorot_uniform(default_rng(rng), (kernel_size, kernel_size, filters, in_channels),
                                                 fan_in, fan_out))
        self._add_param("bias", np.zeros(filters))

    def forward(self, x, training):
        self._check_input(x, 4)
        n, h, w, c = x.shape
        ho, wo = h * self.stride, w * self.stride
        pt = same_padding(ho, self.k, self.stride)[1]
        pl = same_padding(wo, self.k, self.stride)[1]
        pre = None if self.deferred is None else self.deferred.take(x)
        if pre is not None:  # kept until backward, whatever the BatchNorm does meanwhile
            values = self.scratch("pre", pre[0].shape)
            K.copy(values, pre[0])
            pre = (values, pre[1])
        self.geometry = (x, pt, pl, pre)
        y = self.output("y", (n, ho, wo, self.filters), training)
        stats = None if self.batch_stats is None else self.batch_stats.request(training)
        adjoint_conv(self, y, x, self.params["kernel"], self.params["bias"], self.stride, pt, pl, stats, pre)
        return y if stats is None else self.batch_stats.measured(y)

    def backward(self, dy):
        if self.geometry is None:
            raise RuntimeError(f"{self.name}: backward needs a training-mode forward first")
        x, pt, pl, pre = self.geometry
        c, k = self.in_channels, self.k
        self.bias_grad(dy.reshape(-1, self.filters))
        kernel2d = self.params["kernel"].reshape(-1, c)  # (KH*KW*O, C)
        dx = None
        if self.need_dx:
            dx = x if self.overwrite_input and pre is None else self.grad_buffer(x.shape, avoid=dy)
        # patches of dy: dW = patches^T @ x, then dx = patches @ W (each piece's rows of x read
        # before its rows of dx are written, so dx may be x)
        read_through = pre_args(pre)
        if pre is not None and dx is not None:  # the BatchNorm before takes its sums from here
            read_through["pre_sums"] = self.deferred.sums
        K.conv_gemms(dx, self.grads["kernel"].reshape(-1, c), dy, kernel2d, x, k, k, self.stride, pt, pl,
                     ws=self.workspace, **read_through)
        self.geometry = None
        return self.deferred.summed(dx) if "pre_sums" in read_through else dx
