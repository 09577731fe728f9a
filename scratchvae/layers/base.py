"""The layer contract and the Keras initialisers every layer shares.

A layer holds `params` (trainable, Keras names), `grads` (same keys, shapes, dtype, overwritten by
backward) and `state` (non-trainable); every shape is fixed at construction.
"""

import numpy as np

from scratchvae import kernels as K


class Layer:
    """Base class: subclasses set params/grads/state in __init__ and implement forward/backward."""

    kind = "Layer"

    def __init__(self, dtype=np.float32, name=None):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, not {self.dtype}")
        self.name = name or self.kind.lower()
        self.params = {}
        self.grads = {}
        self.state = {}
        self.need_dx = True  # the model clears it on its first layer: no gradient for the input images
        self._buffers = {}

    def output_shape(self, input_shape):
        """Per-sample output shape (no batch axis) for a per-sample input shape."""
        return tuple(input_shape)

    def forward(self, x, training):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def count_params(self):
        """(trainable, non-trainable) parameter counts."""
        return (sum(p.size for p in self.params.values()), sum(s.size for s in self.state.values()))

    def output(self, key, shape, training):
        """A forward output: reused across training steps (valid until this layer's next training
        forward), freshly allocated in inference so callers may keep what they get."""
        return self.scratch(("out", key), shape) if training else K.empty(tuple(shape), self.dtype)

    def scratch(self, key, shape):
        """A work buffer kept across calls (never handed to callers to keep): allocated once at its
        largest size, and smaller requests get a view of it."""
        shape = tuple(int(d) for d in shape)
        size = int(np.prod(shape))
        buf = self._buffers.get(key)
        if buf is None or buf.size < size:
            buf = self._buffers[key] = K.empty((size,), self.dtype)
        return buf[:size].reshape(shape)

    def _add_param(self, key, value):
        self.params[key] = np.ascontiguousarray(value, dtype=self.dtype)
        self.grads[key] = np.zeros_like(self.params[key])

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
