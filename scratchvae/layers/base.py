"""The layer contract and the Keras initialisers every layer shares.

A layer holds `params` (trainable, Keras names), `grads` (same keys, shapes, dtype, overwritten by
backward) and `state` (non-trainable); every shape is fixed at construction, and everything a layer
does is what its constructor was told: nothing is set on it from outside.
"""

import numpy as np

from scratchvae import kernels as K
from scratchvae.kernels.workspace import Workspace


class Layer:
    """Base class: subclasses add params/state in __init__ and implement forward/backward.

    Constructor options every layer takes:
      dtype          float32 or float64 for params, activations and gradients
      name           the layer's name inside its model (dotted tensor names start with it)
      workspace      where transient buffers come from: the model passes the one it owns, so a
                     step holds one set of work buffers and two gradient slots for all its layers
      grads          preallocated gradient arrays by parameter name (views of the model's flat
                     gradient buffer); missing ones are allocated here
      reuse_outputs  inference outputs go into a buffer reused across calls, as training outputs
                     always do: for layers whose output only the next layer reads
      dead_bias      the bias feeds a BatchNorm with nothing in between (model.dead_biases): its
                     gradient is zero in exact arithmetic, so backward writes zeros instead of
                     summing dy (a full read of the output gradient saved)
    """

    kind = "Layer"

    def __init__(self, dtype=np.float32, name=None, workspace=None, grads=None, reuse_outputs=False,
                 dead_bias=False):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, not {self.dtype}")
        self.name = name or self.kind.lower()
        self.workspace = workspace if workspace is not None else Workspace()
        self.reuse_outputs = reuse_outputs
        self.dead_bias = dead_bias
        self.params = {}
        self.grads = {}
        self.state = {}
        self._given_grads = dict(grads or {})
        self._buffers = Workspace()

    def forward(self, x, training):
        raise NotImplementedError

    def backward(self, dy):
        """Fills grads and returns dx; may overwrite dy (pass a copy to keep it)."""
        raise NotImplementedError

    def output(self, key, shape, training):
        """A forward output: reused across calls (valid until this layer's next forward) in training
        and with reuse_outputs; otherwise freshly allocated so callers may keep what they get."""
        if training or self.reuse_outputs:
            return self.scratch(("out", key), shape)
        return K.empty(tuple(shape), self.dtype)

    def scratch(self, key, shape):
        """A buffer of this layer kept across calls: allocated once at its largest size."""
        return self._buffers.buffer(key, shape, self.dtype)

    def work(self, key, shape):
        """A transient buffer shared by all layers of the workspace: valid only within one call."""
        return self.workspace.buffer(key, shape, self.dtype)

    def grad_buffer(self, shape, avoid):
        """A slot for a backward result that does not overlap `avoid` (this call's dy): the layers
        of a workspace alternate between two slots instead of holding a gradient map each."""
        for slot in ("grad_a", "grad_b"):
            buf = self.workspace.buffer(slot, shape, self.dtype)
            if not K.may_share_memory(buf, avoid):
                return buf
        raise AssertionError("dy overlaps both gradient slots")

    def bias_grad(self, dy2d):
        """grads["bias"] = the sum of dy2d's rows, or zeros for a dead bias."""
        if self.dead_bias:
            K.fill(self.grads["bias"], 0)
        else:
            K.sum_rows(self.grads["bias"], dy2d)

    def _add_param(self, key, value):
        self.params[key] = K.from_host(np.ascontiguousarray(value, dtype=self.dtype))
        grad = self._given_grads.get(key)
        if grad is None:
            grad = K.zeros(self.params[key].shape, self.dtype)
        elif tuple(grad.shape) != tuple(self.params[key].shape) or grad.dtype != self.dtype:
            raise ValueError(f"{self.name}: the gradient buffer for {key} has shape {grad.shape} {grad.dtype}, "
                             f"not {self.params[key].shape} {self.dtype}")
        self.grads[key] = grad

    def _check_input(self, x, ndim):
        if x.dtype != self.dtype:
            raise TypeError(f"{self.name}: expected {self.dtype} input, got {x.dtype}")
        if x.ndim != ndim:
            raise ValueError(f"{self.name}: expected a {ndim}-D input, got shape {x.shape}")


def default_rng(rng):
    return rng if rng is not None else np.random.default_rng(0)


def glorot_uniform(rng, shape, fan_in, fan_out):
    """Keras' default kernel initialiser: U(-l, l) with l = sqrt(6 / (fan_in + fan_out))."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)
