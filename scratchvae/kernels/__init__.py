"""The one dispatch point for array kernels: `kernels.<op>(...)` runs op on the active backend.

Backends: "numpy" (the reference), "cpu" (Numba), "cuda" (numba.cuda). Every operation of ops.py
is a plain function here with the backends' signature, so calls are visible to readers and tools;
nothing else knows which backend runs. A backend's module is imported when first chosen.
"""

import importlib

from scratchvae.kernels.ops import OPS

_MODULES = {
    "numpy": "scratchvae.kernels.reference",
    "cpu": "scratchvae.kernels.cpu",
    "cuda": "scratchvae.kernels.cuda",
}
_active_name = "cpu"
_active = None


def available():
    """Names of the backends this build knows about."""
    return tuple(_MODULES)


def backend(name=None):
    """The backend module called `name`, or the active one."""
    global _active
    if name is None:
        if _active is None:
            _active = importlib.import_module(_MODULES[_active_name])
        return _active
    if name not in _MODULES:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name])


def use(name):
    """Make `name` the active backend for every later kernel call; returns the previous name."""
    global _active_name, _active
    module = backend(name)
    previous = _active_name
    _active_name, _active = name, module
    return previous


def active_name():
    return _active_name


class using:
    """Context manager: `with kernels.using("numpy"): ...` runs a block on another backend."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = use(self.name)
        return backend()

    def __exit__(self, *exc):
        use(self.previous)
        return False


# The operations of ops.py in its order, each forwarded to the active backend as it was called.

# ---------------------------------------------------------------- arrays

def empty(shape, dtype):
    return backend().empty(shape, dtype)


def zeros(shape, dtype):
    return backend().zeros(shape, dtype)


def to_host(a):
    return backend().to_host(a)


def from_host(a):
    return backend().from_host(a)


def is_device_array(a):
    return backend().is_device_array(a)


def may_share_memory(a, b):
    return backend().may_share_memory(a, b)


def fill(a, value):
    return backend().fill(a, value)


def copy(out, a):
    return backend().copy(out, a)


def add(y, a):
    return backend().add(y, a)


# ---------------------------------------------------------------- elementwise

def add_bias(y, b):
    return backend().add_bias(y, b)


def relu_forward(y, x):
    return backend().relu_forward(y, x)


def relu_backward(dx, dy, y):
    return backend().relu_backward(dx, dy, y)


def leaky_forward(y, x, alpha):
    return backend().leaky_forward(y, x, alpha)


def leaky_backward(dx, dy, x, alpha):
    return backend().leaky_backward(dx, dy, x, alpha)


def sigmoid_forward(y, x):
    return backend().sigmoid_forward(y, x)


def sigmoid_backward(dx, dy, y):
    return backend().sigmoid_backward(dx, dy, y)


# ---------------------------------------------------------------- reductions

def sum_rows(out, a):
    return backend().sum_rows(out, a)


def bn_stats(mean, var, x):
    return backend().bn_stats(mean, var, x)


def centered_sq_sums(out, x, mean):
    return backend().centered_sq_sums(out, x, mean)


# ---------------------------------------------------------------- batchnorm

def bn_forward(y, x, mean, invstd, gamma, beta):
    return backend().bn_forward(y, x, mean, invstd, gamma, beta)


def bn_act_forward(y, x, mean, invstd, gamma, beta, alpha):
    return backend().bn_act_forward(y, x, mean, invstd, gamma, beta, alpha)


def bn_act_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha):
    return backend().bn_act_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha)


def bn_act_backward_frozen(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha):
    return backend().bn_act_backward_frozen(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha)


def bn_act_grad_sums(s1, s2, dy, x, mean, invstd, gamma, beta, alpha):
    return backend().bn_act_grad_sums(s1, s2, dy, x, mean, invstd, gamma, beta, alpha)


def bn_act_dx(dx, dy, x, mean, invstd, gamma, beta, alpha, s1, s2, count):
    return backend().bn_act_dx(dx, dy, x, mean, invstd, gamma, beta, alpha, s1, s2, count)


def bn_invstd(invstd, var, eps):
    return backend().bn_invstd(invstd, var, eps)


def moving_update(moving, batch, momentum):
    return backend().moving_update(moving, batch, momentum)


# ---------------------------------------------------------------- matmul

def gemm(out, a, b, trans_a=False, trans_b=False, accumulate=False):
    return backend().gemm(out, a, b, trans_a, trans_b, accumulate)


# ---------------------------------------------------------------- convolution

def gather_taps(cols, x, ho, wo, stride, offs_h, offs_w):
    return backend().gather_taps(cols, x, ho, wo, stride, offs_h, offs_w)


def col2im(x, cols, kh, kw, stride, pad_top, pad_left):
    return backend().col2im(x, cols, kh, kw, stride, pad_top, pad_left)


def conv_gemms(y, dw, x, w, t, kh, kw, stride, pad_top, pad_left, ws=None, pre=None, pre_alpha=1.0, pre_sums=None):
    return backend().conv_gemms(y, dw, x, w, t, kh, kw, stride, pad_top, pad_left, ws, pre, pre_alpha, pre_sums)


def upsample_nearest(y, x):
    return backend().upsample_nearest(y, x)


def upsample_nearest_backward(dx, dy):
    return backend().upsample_nearest_backward(dx, dy)


# ---------------------------------------------------------------- fused

def col2im_act(x, cols, kh, kw, stride, pad_top, pad_left, bias, activation=None, alpha=1.0):
    return backend().col2im_act(x, cols, kh, kw, stride, pad_top, pad_left, bias, activation, alpha)


def conv_transpose_act(y, x, w2, bias, kh, kw, stride, pad_top, pad_left, activation=None, alpha=1.0, ws=None,
                       stats=None, pre=None, pre_alpha=1.0):
    return backend().conv_transpose_act(y, x, w2, bias, kh, kw, stride, pad_top, pad_left, activation, alpha, ws,
                                        stats, pre, pre_alpha)


def conv_act(y, x, w, bias, scale, shift, kh, kw, stride, pad_top, pad_left, relu=False, activation=None, alpha=1.0,
             ws=None, stats=None):
    return backend().conv_act(y, x, w, bias, scale, shift, kh, kw, stride, pad_top, pad_left, relu, activation,
                              alpha, ws, stats)


def dense_act(y, x, w, bias, scale, shift, activation=None, alpha=1.0, ws=None):
    return backend().dense_act(y, x, w, bias, scale, shift, activation, alpha, ws)


def fold_adjoint_weights(w2, b2, kernel, bias, scale, shift):
    return backend().fold_adjoint_weights(w2, b2, kernel, bias, scale, shift)


# ---------------------------------------------------------------- optimizer

def adam_update(p, m, v, g, alpha, beta_1, beta_2, epsilon, scale):
    return backend().adam_update(p, m, v, g, alpha, beta_1, beta_2, epsilon, scale)


def sum_squares(out, a):
    return backend().sum_squares(out, a)


# ---------------------------------------------------------------- losses

def mse_and_grad(sq_sum, dx_hat, x_hat, x, scale):
    return backend().mse_and_grad(sq_sum, dx_hat, x_hat, x, scale)


def kl_sum(out, z_mean, z_log_var, lo, hi):
    return backend().kl_sum(out, z_mean, z_log_var, lo, hi)


def reparameterize(z, sigma, z_mean, z_log_var, eps, lo, hi):
    return backend().reparameterize(z, sigma, z_mean, z_log_var, eps, lo, hi)


def latent_grads(d_mean, d_logvar, dz, z_mean, z_log_var, eps, sigma, lo, hi, kl_weight=1.0):
    return backend().latent_grads(d_mean, d_logvar, dz, z_mean, z_log_var, eps, sigma, lo, hi, kl_weight)


for _op in OPS:  # the math of each op, as ops.py declares it, for help()
    globals()[_op.name].__doc__ = _op.math
del _op
