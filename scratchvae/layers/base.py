"""The layer contract and the Keras initialisers every layer shares.

A layer holds `params` (trainable, Keras names), `grads` (same keys, shapes, dtype, overwritten by
backward) and `state` (non-trainable); every shape is fixed at construction.
"""

import numpy as np

from scratchvae import kernels as K

# Buffers shared by every layer (keyed by name and dtype): transient work that never outlives one
# layer call, and two slots that backward gradients alternate between (a conv reads dy from one
# and writes dx to the other), so a step holds two gradient maps instead of one per layer.
_SHARED = {}


def _grow(store, key, shape, dtype):
    """A view of store[key] with `shape`, reallocated only when it must grow."""
    shape = tuple(int(d) for d in shape)
    size = int(np.prod(shape))
    buf = store.get(key)
    if buf is None or buf.size < size:
        buf = store[key] = K.empty((size,), dtype)
    return buf[:size].reshape(shape)


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
        # The model sets this where the input buffer is dead once the weight gradient is taken (it
        # came from a BatchNorm, whose backward needs only its own input): dx is then written there.
        self.dx_into_input = False
        # Set by the model on layers whose output only the next layer sees: their inference
        # outputs reuse a buffer too (a model's final outputs stay fresh for callers to keep).
        self.internal = False
        # Inference fusion (fuse_inference): `epilogue` is the following layer this one applies in
        # its inference pass, `applied_by` the preceding layer that applies this one.
        self.epilogue = None
        self.applied_by = None
        self.fast_inference = True  # False: inference runs layer by layer (tests compare the two)
        self._buffers = {}

    def output_shape(self, input_shape):
        """Per-sample output shape (no batch axis) for a per-sample input shape."""
        return tuple(input_shape)

    def forward(self, x, training):
        raise NotImplementedError

    def backward(self, dy):
        """Fills grads and returns dx; may overwrite dy (pass a copy to keep it)."""
        raise NotImplementedError

    fused_kernel = None  # the kernel of a subclass's one-pass inference (None: it has none)

    def fuse_inference(self, layer):
        """Apply `layer` (a BatchNorm, folded into kernel and bias, or a Sigmoid) inside this layer's
        inference pass; in inference it then passes its input through. Training is unchanged."""
        if self.epilogue is not None:
            raise ValueError(f"{self.name}: already applies {self.epilogue.name} in inference")
        self.epilogue = layer
        layer.applied_by = self

    def fuses_inference(self):
        """Whether inference takes the one-pass path (the active backend has its kernel)."""
        return self.fast_inference and self.fused_kernel is not None and K.supports(self.fused_kernel)

    def applied_before(self, training):
        """True when the preceding layer already applied this one (inference, fused path)."""
        return not training and self.applied_by is not None and self.applied_by.fuses_inference()

    def epilogue_affine(self, features):
        """(scale, shift, activation, alpha) of the fused epilogue: act(y * scale + shift)."""
        scale, shift = np.ones(features, self.dtype), np.zeros(features, self.dtype)
        if self.epilogue is None:
            return scale, shift, None, 1.0
        return self.epilogue.inference_epilogue(scale, shift)

    def count_params(self):
        """(trainable, non-trainable) parameter counts."""
        return (sum(p.size for p in self.params.values()), sum(s.size for s in self.state.values()))

    def output(self, key, shape, training):
        """A forward output: reused across calls (valid until this layer's next forward) in training
        and on internal layers; otherwise freshly allocated so callers may keep what they get."""
        if training or self.internal:
            return self.scratch(("out", key), shape)
        return K.empty(tuple(shape), self.dtype)

    def scratch(self, key, shape):
        """A buffer of this layer kept across calls: allocated once at its largest size."""
        return _grow(self._buffers, key, shape, self.dtype)

    def work(self, key, shape):
        """A transient buffer shared by all layers: valid only within the current call."""
        return _grow(_SHARED, (key, self.dtype, K.active_name()), shape, self.dtype)

    def grad_buffer(self, shape, avoid):
        """A slot for a backward result that does not overlap `avoid` (this call's dy)."""
        for slot in ("grad_a", "grad_b"):
            key = (slot, self.dtype, K.active_name())
            buf = _SHARED.get(key)
            if buf is None or not K.may_share_memory(buf, avoid):
                return _grow(_SHARED, key, shape, self.dtype)
        raise AssertionError("dy overlaps both gradient slots")

    def _add_param(self, key, value):
        self.params[key] = K.from_host(np.ascontiguousarray(value, dtype=self.dtype))
        self.grads[key] = K.zeros(self.params[key].shape, self.dtype)

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
