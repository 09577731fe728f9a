"""Conv2D and Conv2DTranspose, NHWC, TensorFlow 'same' padding, through im2col + one GEMM.

Conv2DTranspose is the exact adjoint of Conv2D 'same' on the output size, so both directions
reuse the same two kernels: im2col (gather into rows) and col2im (gather back, race-free).
"""

import numpy as np

from scratchvae import kernels as K
from scratchvae.layers.base import Layer, default_rng, glorot_uniform


def same_padding(size, kernel, stride):
    """TensorFlow 'same': (output size, padding before); the larger half of the padding goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2


def _check_common(kernel_size, strides, padding):
    if padding != "same":
        raise ValueError(f"padding {padding!r} is not supported; only 'same' (the seed's) is")
    if kernel_size < 1 or strides < 1:
        raise ValueError("kernel_size and strides must be positive")


class Conv2D(Layer):
    kind = "Conv2D"

    def __init__(self, in_channels, filters, kernel_size=3, strides=1, padding="same",
                 activation=None, dtype=np.float32, rng=None, name=None):
        super().__init__(dtype, name)
        _check_common(kernel_size, strides, padding)
        if activation not in (None, "relu"):
            raise ValueError(f"activation {activation!r} is not supported; use None or 'relu'")
        self.in_channels, self.filters = in_channels, filters
        self.k, self.stride, self.activation = kernel_size, strides, activation
        fan_in, fan_out = kernel_size * kernel_size * in_channels, kernel_size * kernel_size * filters
        self._add_param("kernel", glorot_uniform(default_rng(rng), (kernel_size, kernel_size, in_channels, filters),
                                                 fan_in, fan_out))
        self._add_param("bias", np.zeros(filters))

    def output_shape(self, input_shape):
        h, w, c = input_shape
        if c != self.in_channels:
            raise ValueError(f"{self.name}: expects {self.in_channels} channels, got {c}")
        return (same_padding(h, self.k, self.stride)[0], same_padding(w, self.k, self.stride)[0], self.filters)

    def forward(self, x, training):
        self._check_input(x, 4)
        n, h, w, c = x.shape
        ho, pt = same_padding(h, self.k, self.stride)
        wo, pl = same_padding(w, self.k, self.stride)
        self.geometry = (x.shape, pt, pl)
        cols = K.empty((n * ho * wo, self.k * self.k * c), self.dtype)  # (N*Ho*Wo, KH*KW*C)
        K.im2col(cols, x, self.k, self.k, self.stride, pt, pl)
        y = K.empty((n * ho * wo, self.filters), self.dtype)  # (N*Ho*Wo, O)
        K.gemm(y, cols, self.params["kernel"].reshape(-1, self.filters))
        if self.activation == "relu":
            K.bias_relu(y, self.params["bias"])
        else:
            K.add_bias(y, self.params["bias"])
        self.cols, self.y = cols, y
        return y.reshape(n, ho, wo, self.filters)

    def backward(self, dy):
        xshape, pt, pl = self.geometry
        dy = dy.reshape(-1, self.filters)
        if self.activation == "relu":
            dz = K.empty(dy.shape, self.dtype)
            K.relu_backward(dz, dy, self.y)
            dy = dz
        K.sum_rows(self.grads["bias"], dy)
        K.gemm(self.grads["kernel"].reshape(-1, self.filters), self.cols, dy, trans_a=True)
        dcols = K.empty(self.cols.shape, self.dtype)
        K.gemm(dcols, dy, self.params["kernel"].reshape(-1, self.filters), trans_b=True)
        dx = K.empty(xshape, self.dtype)
        K.col2im(dx, dcols, self.k, self.k, self.stride, pt, pl)
        self.cols = self.y = None
        return dx


class Conv2DTranspose(Layer):
    kind = "Conv2DTranspose"

    def __init__(self, in_channels, filters, kernel_size=3, strides=1, padding="same",
                 dtype=np.float32, rng=None, name=None):
        super().__init__(dtype, name)
        _check_common(kernel_size, strides, padding)
        self.in_channels, self.filters = in_channels, filters
        self.k, self.stride = kernel_size, strides
        # Keras: kernel (kh, kw, out, in); fans as Keras computes them for this shape.
        fan_in, fan_out = kernel_size * kernel_size * filters, kernel_size * kernel_size * in_channels
        self._add_param("kernel", glorot_uniform(default_rng(rng), (kernel_size, kernel_size, filters, in_channels),
                                                 fan_in, fan_out))
        self._add_param("bias", np.zeros(filters))

    def output_shape(self, input_shape):
        h, w, c = input_shape
        if c != self.in_channels:
            raise ValueError(f"{self.name}: expects {self.in_channels} channels, got {c}")
        return (h * self.stride, w * self.stride, self.filters)

    def forward(self, x, training):
        self._check_input(x, 4)
        n, h, w, c = x.shape
        ho, wo = h * self.stride, w * self.stride
        pt = same_padding(ho, self.k, self.stride)[1]
        pl = same_padding(wo, self.k, self.stride)[1]
        self.geometry = (x, pt, pl)
        x2d = x.reshape(-1, c)
        kernel2d = self.params["kernel"].reshape(-1, c)  # (KH*KW*O, C)
        cols = K.empty((x2d.shape[0], kernel2d.shape[0]), self.dtype)  # (N*H*W, KH*KW*O)
        K.gemm(cols, x2d, kernel2d, trans_b=True)
        y = K.empty((n, ho, wo, self.filters), self.dtype)
        K.col2im(y, cols, self.k, self.k, self.stride, pt, pl)
        K.add_bias(y.reshape(-1, self.filters), self.params["bias"])
        return y

    def backward(self, dy):
        x, pt, pl = self.geometry
        c = self.in_channels
        K.sum_rows(self.grads["bias"], dy.reshape(-1, self.filters))
        cols = K.empty((x.size // c, self.k * self.k * self.filters), self.dtype)  # (N*H*W, KH*KW*O)
        K.im2col(cols, dy, self.k, self.k, self.stride, pt, pl)
        K.gemm(self.grads["kernel"].reshape(-1, c), cols, x.reshape(-1, c), trans_a=True)
        dx = K.empty(x.shape, self.dtype)
        K.gemm(dx.reshape(-1, c), cols, self.params["kernel"].reshape(-1, c))
        self.geometry = None
        return dx
