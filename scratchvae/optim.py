"""Adam, hand-rolled with Keras defaults and Keras' bias-corrected step size.

alpha_t = lr * sqrt(1 - b2^t) / (1 - b1^t); m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
p -= alpha_t * m / (sqrt(v) + epsilon). Optional global-norm clipping of the gradients first.
"""

import numpy as np

from scratchvae import kernels as K


class Adam:
    def __init__(self, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7, clipnorm=None):
        if lr <= 0:
            raise ValueError("learning rate must be positive")
        self.lr, self.beta_1, self.beta_2, self.epsilon = lr, beta_1, beta_2, epsilon
        self.clipnorm = clipnorm
        self.t = 0
        self.m, self.v = {}, {}

    def step(self, params, grads):
        """Update every params[name] in place from grads[name]; returns the gradient's global norm."""
        squares = K.zeros((len(grads),), np.float64)
        for i, g in enumerate(grads.values()):
            K.sum_squares(squares[i:i + 1], g)
        norm = float(np.sqrt(sum(K.to_host(squares).tolist())))  # one device sync per step
        if not np.isfinite(norm):
            raise FloatingPointError("non-finite gradient: parameters left unchanged")
        scale = 1.0
        if self.clipnorm is not None and norm > self.clipnorm:
            scale = self.clipnorm / norm
        self.t += 1
        alpha = self.lr * np.sqrt(1 - self.beta_2 ** self.t) / (1 - self.beta_1 ** self.t)
        for name, p in params.items():
            if name not in self.m:
                self.m[name] = K.zeros(p.shape, p.dtype)
                self.v[name] = K.zeros(p.shape, p.dtype)
            K.adam_update(p.reshape(-1), self.m[name].reshape(-1), self.v[name].reshape(-1),
                          grads[name].reshape(-1), alpha, self.beta_1, self.beta_2, self.epsilon, scale)
        return norm

    def state_dict(self):
        """Arrays for the checkpoint: step count and the two moments, by dotted name."""
        out = {"t": np.array(self.t, dtype=np.int64)}
        for name in self.m:
            out[f"m.{name}"] = K.to_host(self.m[name])
            out[f"v.{name}"] = K.to_host(self.v[name])
        return out

    def load_state_dict(self, arrays, params):
        """Restore from `state_dict()` output; every moment must match its parameter's shape."""
        self.t = int(arrays["t"])
        self.m, self.v = {}, {}
        if self.t == 0:
            return
        for name, p in params.items():
            for key, store in (("m", self.m), ("v", self.v)):
                a = arrays.get(f"{key}.{name}")
                if a is None or a.shape != p.shape:
                    raise ValueError(f"optimizer state for {name} is missing or has the wrong shape")
                store[name] = K.from_host(np.array(a, dtype=p.dtype))
