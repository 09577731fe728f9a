"""The declared contract of the kernel backends: every operation, its signature and its math.

Plain data, no Numba. Each backend ("numpy" reference, "cpu", "cuda") implements every entry with
these parameter names in this order; tests/test_kernel_contract.py says so. Outputs come first;
kernels write them and return nothing, while the "arrays" helpers return what they make.
"""

import ast
from typing import NamedTuple


class Op(NamedTuple):
    """One operation: name(*outputs, *inputs). `inputs` are the arrays read and the scalars, in call
    order ("name=default" where optional; col2im_act's bias and bn_act_dx's s1, s2 come after scalars).
    `family` is the module of the cpu/ and cuda/ packages where it lives."""
    name: str
    family: str
    outputs: tuple
    inputs: tuple
    math: str

    @property
    def params(self):
        """Parameter names in call order."""
        return tuple(p.split("=")[0] for p in self.outputs + self.inputs)

    @property
    def defaults(self):
        """{name: default} of the optional parameters."""
        return {k: ast.literal_eval(v) for k, v in (p.split("=") for p in self.inputs if "=" in p)}


def _op(family, name, outputs, inputs, math):
    split = lambda s: tuple(p.strip() for p in s.split(",") if p.strip())  # noqa: E731
    return Op(name, family, split(outputs), split(inputs), math)


BN = "x, mean, invstd, gamma, beta"  # a BatchNorm's input, statistics and parameters, per channel (M, C)
GEOMETRY = "kh, kw, stride, pad_top, pad_left"  # a 'same' convolution's taps; Ho = ceil(H / stride)
# A BatchNorm (+ LeakyReLU) applied to an operand as it is read, instead of in a pass of its own:
# pre (4, C) holds the BatchNorm's mean, invstd, gamma and beta per channel of that operand.
PRE = "pre (4, C), when given: {0} is read as leaky_pre_alpha(({0} - pre[0]) * pre[1] * pre[2] + pre[3])"

OPS = (
    # arrays: allocation, transfers, whole-array copies (a device-resident step needs them)
    _op("arrays", "empty", "", "shape, dtype", "returns a new uninitialised array on the backend's device"),
    _op("arrays", "zeros", "", "shape, dtype", "returns a new array of zeros on the backend's device"),
    _op("arrays", "to_host", "", "a", "returns a as a NumPy array"),
    _op("arrays", "from_host", "", "a", "returns a (a NumPy array) on the backend's device, contiguous"),
    _op("arrays", "is_device_array", "", "a", "returns whether a lives on a device (not host memory)"),
    _op("arrays", "may_share_memory", "", "a, b", "returns whether the memory of a and b may overlap"),
    _op("arrays", "fill", "a", "value", "a[...] = value"),
    _op("arrays", "copy", "out", "a", "out[...] = a"),
    _op("arrays", "add", "y", "a", "y += a"),
    # elementwise maps, per-channel bias
    _op("elementwise", "add_bias", "y", "b", "y[m, c] += b[c]"),
    _op("elementwise", "relu_forward", "y", "x", "y = max(x, 0)"),
    _op("elementwise", "relu_backward", "dx", "dy, y", "dx = dy * (y > 0)"),
    _op("elementwise", "leaky_forward", "y", "x, alpha", "y = x if x > 0 else alpha * x"),
    _op("elementwise", "leaky_backward", "dx", "dy, x, alpha", "dx = dy if x > 0 else alpha * dy"),
    _op("elementwise", "sigmoid_forward", "y", "x", "y = 1 / (1 + exp(-x)), no overflow for large |x|"),
    _op("elementwise", "sigmoid_backward", "dx", "dy, y", "dx = dy * y * (1 - y)"),
    # column reductions of (M, C) arrays
    _op("reductions", "sum_rows", "out", "a", "out[c] = sum_m a[m, c]"),
    _op("reductions", "bn_stats", "mean, var", "x",
        "mean[c] = mean_m x[m, c]; var[c] = mean_m (x[m, c] - mean[c])^2 (biased)"),
    _op("reductions", "centered_sq_sums", "out", "x, mean", "out[c] = sum_m (x[m, c] - mean[c])^2"),
    # BatchNorm, optionally fused with LeakyReLU (alpha 1: plain BatchNorm)
    _op("batchnorm", "bn_forward", "y", BN, "y = (x - mean) * invstd * gamma + beta"),
    _op("batchnorm", "bn_act_forward", "y", BN + ", alpha",
        "y = leaky_alpha((x - mean) * invstd * gamma + beta)"),
    _op("batchnorm", "bn_act_backward", "dx, dgamma, dbeta", "dy, " + BN + ", alpha",
        "g = dy through the activation; dbeta = sum g; dgamma = sum g*xhat; "
        "dx = gamma*invstd*(g - mean(g) - xhat*mean(g*xhat))"),
    _op("batchnorm", "bn_act_backward_frozen", "dx, dgamma, dbeta", "dy, " + BN + ", alpha",
        "with constant (moving) statistics: dbeta = sum g; dgamma = sum g*xhat; dx = g*gamma*invstd"),
    _op("batchnorm", "bn_act_grad_sums", "s1, s2", "dy, " + BN + ", alpha",
        "s1[c] = sum_m g[m, c]; s2[c] = sum_m g[m, c] * (x[m, c] - mean[c]); g = dy through the activation"),
    _op("batchnorm", "bn_act_dx", "dx", "dy, " + BN + ", alpha, s1, s2, count",
        "dx = gamma*invstd*(g - s1/count - (x - mean)*invstd^2*s2/count), s1 and s2 over all count rows"),
    _op("batchnorm", "bn_invstd", "invstd", "var, eps", "invstd = 1 / sqrt(var + eps)"),
    _op("batchnorm", "moving_update", "moving", "batch, momentum",
        "moving = momentum * moving + (1 - momentum) * batch"),
    # matrix products
    _op("matmul", "gemm", "out", "a, b, trans_a=False, trans_b=False, accumulate=False",
        "out (+)= op(a) @ op(b), op = transpose when asked"),
    # convolution gathers and scatters (NHWC; cols rows are (n, p, q), columns (tap, c))
    _op("convolution", "gather_taps", "cols", "x, ho, wo, stride, offs_h, offs_w",
        "cols[(n,p,q), (t,u,c)] = x[n, stride*p + offs_h[t], stride*q + offs_w[u], c], 0 outside x"),
    _op("convolution", "col2im", "x", "cols, " + GEOMETRY,
        "x[n,h,w,c] = sum of cols[(n,p,q), (i,j,c)] over stride*p + i - pad_top = h, stride*q + j - pad_left = w"),
    _op("convolution", "conv_gemms", "y, dw",
        "x, w, t, " + GEOMETRY + ", ws=None, pre=None, pre_alpha=1.0, pre_sums=None",
        "cols = im2col(x) (rows (n,p,q), columns (i,j,C)); dw = cols^T @ t, then y = cols @ w (y may be t); "
        "either output may be None (skipped); ws: an optional Workspace for the patches; " + PRE.format("t")
        + "; pre_sums (2, C), when given with pre and y: pre_sums[0], pre_sums[1] = bn_act_grad_sums of dy = y "
        "against x = t (a BatchNorm's backward sums, from its output gradient y; y not t)"),
    _op("convolution", "upsample_nearest", "y", "x",
        "y[n, 2h + a, 2w + b, c] = x[n, h, w, c] for a, b in {0, 1}: nearest-neighbour upsampling by 2"),
    _op("convolution", "upsample_nearest_backward", "dx", "dy",
        "dx[n, h, w, c] = sum over a, b in {0, 1} of dy[n, 2h + a, 2w + b, c]: the adjoint, per 2x2 block"),
    # fused inference (BatchNorm folded in, activation in the same pass; act None, "leaky" or "sigmoid")
    _op("fused", "col2im_act", "x", "cols, " + GEOMETRY + ", bias, activation=None, alpha=1.0",
        "x = act(col2im(cols) + bias[c]); columns of cols past KH*KW*C are padding, ignored"),
    _op("fused", "conv_transpose_act", "y",
        "x, w2, bias, " + GEOMETRY + ", activation=None, alpha=1.0, ws=None, stats=None, pre=None, pre_alpha=1.0",
        "y = act(col2im(x @ w2) + bias), w2 (C, (i, j, O) + padding); ws: an optional Workspace for cols; "
        "stats (2, O), when given: stats[0], stats[1] = bn_stats of y (per-channel mean, biased variance); "
        + PRE.format("x")),
    _op("fused", "conv_act", "y",
        "x, w, bias, scale, shift, " + GEOMETRY + ", relu=False, activation=None, alpha=1.0, ws=None, stats=None",
        "y = act(r(im2col(x) @ w + bias) * scale + shift), w ((i, j, C), O), r = max(., 0) if relu: "
        "a 'same' Conv2D, then an inference BatchNorm's affine; ws: an optional Workspace for the patches; "
        "stats (2, O), when given: bn_stats of y"),
    _op("fused", "dense_act", "y", "x, w, bias, scale, shift, activation=None, alpha=1.0, ws=None",
        "y = act((x @ w + bias) * scale + shift), y (N, O); ws: an optional Workspace"),
    _op("fused", "fold_adjoint_weights", "w2, b2", "kernel, bias, scale, shift",
        "w2[o, (i,j,c)] = kernel[i,j,c,o] * scale[c], 0 in padding columns; b2[c] = bias[c]*scale[c] + shift[c]"),
    # optimizer
    _op("optimizer", "adam_update", "p, m, v", "g, alpha, beta_1, beta_2, epsilon, scale",
        "g' = scale*g; m += (g' - m)(1 - b1); v += (g'^2 - v)(1 - b2); p -= alpha*m/(sqrt(v) + eps)"),
    _op("optimizer", "sum_squares", "out", "a", "out[0] = sum_i a_i^2"),
    # loss terms of the VAE (lv = clip(z_log_var, lo, hi))
    _op("losses", "mse_and_grad", "sq_sum, dx_hat", "x_hat, x, scale",
        "sq_sum[0] = sum (x_hat - x)^2; dx_hat = scale * (x_hat - x)"),
    _op("losses", "kl_sum", "out", "z_mean, z_log_var, lo, hi",
        "out[0] = -1/2 sum (1 + lv - mu^2 - exp(lv)) over batch and latent"),
    _op("losses", "reparameterize", "z, sigma", "z_mean, z_log_var, eps, lo, hi",
        "sigma = exp(lv / 2); z = mu + sigma * eps"),
    _op("losses", "latent_grads", "d_mean, d_logvar", "dz, z_mean, z_log_var, eps, sigma, lo, hi, kl_weight=1.0",
        "d_mean = dz + w*mu/n; d_logvar = (dz*eps*sigma/2 + w*(sigma^2 - 1)/(2n)) * [lo <= lv <= hi], "
        "n = batch, w = kl_weight"),
)

BY_NAME = {op.name: op for op in OPS}
FAMILIES = tuple(dict.fromkeys(op.family for op in OPS))
