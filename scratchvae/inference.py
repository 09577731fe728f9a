"""The inference plan: trained layers -> the passes that run them in inference mode.

A Dense or Conv2DTranspose followed by a BatchNorm (and its LeakyReLU) or by a Sigmoid runs as one
fused pass: the BatchNorm's moving-statistics affine folded into its weights (or applied as the
output is written), bias and activation in the same pass. A Conv2D (and its ReLU) followed by a
BatchNorm or a Sigmoid runs as one pass piece by piece (FusedConv): patches gathered into a
cache-sized buffer, the GEMM, then bias, ReLU, affine and activation while the piece is in cache.
The folding is made from the live parameters at each call (a transposed convolution reuses its last
fold while the parameters and statistics it was made from are unchanged), so it never goes stale
after an optimizer step or a load. Every other layer runs its own inference forward. Training never
goes through here.
"""

import numpy as np

from scratchvae import kernels as K
from scratchvae.folding import batchnorm_affine
from scratchvae.geometry import same_padding
from scratchvae.kernels.workspace import Workspace
from scratchvae.layers import BatchNorm, Conv2D, Conv2DTranspose, Dense, Sigmoid
from scratchvae.layers.conv import adjoint_width


class Plan:
    """Steps over a list of layers; `run(x)` is the inference forward of the whole list. The fused
    kernels take their transient buffers from `workspace` (the model's)."""

    def __init__(self, layers, workspace=None):
        self.steps = []
        workspace = workspace if workspace is not None else Workspace()
        i = 0
        while i < len(layers):
            layer, following = layers[i], layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, (Dense, Conv2DTranspose)) and isinstance(following, (BatchNorm, Sigmoid)) \
                    and not (isinstance(layer, Dense) and isinstance(following, Sigmoid)):
                fused = FusedDense if isinstance(layer, Dense) else FusedConvTranspose
                self.steps.append(fused(layer, following, workspace))
                i += 2
            elif isinstance(layer, Conv2D) and isinstance(following, (BatchNorm, Sigmoid)):
                self.steps.append(FusedConv(layer, following, workspace))
                i += 2
            elif isinstance(layer, Dense) and not isinstance(following, Sigmoid):
                self.steps.append(FusedDense(layer, None, workspace))  # a plain Dense: its GEMM by pieces too
                i += 1
            else:
                self.steps.append(Unfused(layer))
                i += 1

    def run(self, x):
        for step in self.steps:
            x = step(x)
        return x

    def describe(self):
        """One line per step: which layers it runs (for tests and the curious)."""
        return [step.describe() for step in self.steps]


class Unfused:
    def __init__(self, layer):
        self.layer = layer

    def __call__(self, x):
        return self.layer.forward(x, False)

    def describe(self):
        return self.layer.name


def epilogue(follower, features, dtype):
    """(scale, shift, activation, alpha) of what follows the fused layer: y -> act(y * scale + shift)
    (nothing follows: the identity)."""
    if follower is None:
        return np.ones(features, dtype), np.zeros(features, dtype), None, 1.0
    if isinstance(follower, Sigmoid):
        return np.ones(features, dtype), np.zeros(features, dtype), "sigmoid", 1.0
    host = {k: K.to_host(v) for k, v in {**follower.params, **follower.state}.items()}
    scale, shift = batchnorm_affine(host["gamma"], host["beta"], host["moving_mean"], host["moving_variance"],
                                    follower.epsilon)
    activation = "leaky" if follower.alpha != 1 else None
    return scale.astype(dtype), shift.astype(dtype), activation, follower.alpha


class FusedDense:
    """Dense -> BatchNorm(+LeakyReLU), or a Dense alone (follower None): one GEMM, then the affine and
    activation as the output is written (the kernel is too big to refold at every call). Its pieces
    run single-threaded on each core, so no BLAS worker is left spinning into the next pass."""

    def __init__(self, dense, follower, workspace):
        self.dense, self.follower, self.workspace = dense, follower, workspace

    def __call__(self, x):
        d = self.dense
        d._check_input(x, 2)
        scale, shift, activation, alpha = epilogue(self.follower, d.units, d.dtype)
        y = (self.follower or d).output("y", (x.shape[0], d.units), False)
        K.dense_act(y, x, d.params["kernel"], d.params["bias"], K.from_host(scale), K.from_host(shift),
                    activation, alpha, ws=self.workspace)
        return y

    def describe(self):
        return self.dense.name if self.follower is None else f"{self.dense.name}+{self.follower.name}"


class FusedConvTranspose:
    """Conv2DTranspose -> BatchNorm(+LeakyReLU) or Sigmoid: a GEMM over all taps (the BatchNorm
    folded into its weights and bias), then col2im sums the taps and writes act(sum + bias)."""

    def __init__(self, conv, follower, workspace):
        self.conv, self.follower, self.workspace = conv, follower, workspace
        self.buffers = Workspace()  # the folded weights, kept at their size between calls
        self.folded_from = None  # host copies of what the folded weights were made from

    def __call__(self, x):
        c = self.conv
        c._check_input(x, 4)
        n, h, w, _ = x.shape
        k, o, s = c.k, c.filters, c.stride
        pt = same_padding(h * s, k, s)[1]
        pl = same_padding(w * s, k, s)[1]
        scale, shift, activation, alpha = epilogue(self.follower, o, c.dtype)
        w2, b2 = self.folded(scale, shift)
        y = self.follower.output("y", (n, h * s, w * s, o), False)
        K.conv_transpose_act(y, x, w2, b2, k, k, s, pt, pl, activation, alpha, ws=self.workspace)
        return y

    def folded(self, scale, shift):
        """(w2, b2): the kernel and bias with the follower's affine folded in. Folded again only when
        the kernel, the bias or the affine differ from those of the last fold (a transposition of
        the kernel: 140 us for the seed's 128x128 layers, against 14 us to compare; a sample at
        batch 1 takes 8 ms). Arrays on a device are folded at every call."""
        c = self.conv
        w2 = self.buffers.buffer("kernel", (c.in_channels, adjoint_width(c.k, c.filters)), c.dtype)  # (C, (i,j,O)+0s)
        b2 = self.buffers.buffer("bias", (c.filters,), c.dtype)
        sources = (c.params["kernel"], c.params["bias"], scale, shift)
        on_host = not any(K.is_device_array(a) for a in sources)
        if on_host and self.folded_from is not None and all(np.array_equal(a, b) for a, b in zip(sources,
                                                                                            self.folded_from)):
            return w2, b2
        K.fold_adjoint_weights(w2, b2, c.params["kernel"], c.params["bias"], K.from_host(scale), K.from_host(shift))
        self.folded_from = tuple(np.array(a) for a in sources) if on_host else None
        return w2, b2

    def describe(self):
        return f"{self.conv.name}+{self.follower.name}"


class FusedConv:
    """Conv2D(+ReLU) -> BatchNorm(+LeakyReLU) or Sigmoid: the patches gathered piece by piece, each
    piece's GEMM straight into the output, then bias, ReLU, the BatchNorm's moving-statistics affine
    and the activation over the piece while it is in cache (the layer by layer path writes the
    patches of the whole batch, then the map, then reads and writes the map twice more)."""

    def __init__(self, conv, follower, workspace):
        self.conv, self.follower, self.workspace = conv, follower, workspace

    def __call__(self, x):
        c = self.conv
        c._check_input(x, 4)
        n, h, w, _ = x.shape
        ho, pt = same_padding(h, c.k, c.stride)
        wo, pl = same_padding(w, c.k, c.stride)
        scale, shift, activation, alpha = epilogue(self.follower, c.filters, c.dtype)
        y = self.follower.output("y", (n, ho, wo, c.filters), False)
        K.conv_act(y, x, c.params["kernel"].reshape(-1, c.filters), c.params["bias"], K.from_host(scale),
                   K.from_host(shift), c.k, c.k, c.stride, pt, pl, c.activation == "relu", activation, alpha,
                   ws=self.workspace)
        return y

    def describe(self):
        return f"{self.conv.name}+{self.follower.name}"
