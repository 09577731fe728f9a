"""Plain-NumPy reference of every kernel: slow, obvious, the oracle for tests and benches.

Signature convention: outputs first, then inputs, then scalars; nothing is returned.
Layout NHWC; 2-D arrays are (rows, channels) views of NHWC activations.
"""

import numpy as np

name = "numpy"


def empty(shape, dtype):
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def to_host(a):
    return np.asarray(a)


def from_host(a):
    return np.ascontiguousarray(a)


def gemm(out, a, b, trans_a=False, trans_b=False, accumulate=False):
    """out (+)= op(a) @ op(b), op = transpose when asked."""
    r = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if accumulate:
        out += r
    else:
        out[...] = r


def add_bias(y, b):
    """y[m, c] += b[c]."""
    y += b


def relu_backward(dx, dy, y):
    """dx = dy * (y > 0)."""
    dx[...] = dy * (y > 0)


def sum_rows(out, a):
    """out[c] = sum_m a[m, c]."""
    out[...] = a.sum(axis=0)


def bn_stats(mean, var, x):
    """mean[c] = mean_m x[m,c]; var[c] = mean_m (x[m,c] - mean[c])^2 (biased)."""
    mean[...] = x.mean(axis=0)
    var[...] = ((x - mean) ** 2).mean(axis=0)


def bn_forward(y, x, mean, invstd, gamma, beta):
    """y = (x - mean) * invstd * gamma + beta."""
    y[...] = (x - mean) * invstd * gamma + beta


def _bn_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma):
    """Batch-statistics backward: dx = gamma*invstd*(dy - mean(dy) - xhat*mean(dy*xhat))."""
    xhat = (x - mean) * invstd
    dbeta[...] = dy.sum(axis=0)
    dgamma[...] = (dy * xhat).sum(axis=0)
    m = x.shape[0]
    dx[...] = gamma * invstd * (dy - dbeta / m - xhat * dgamma / m)


def leaky_forward(y, x, alpha):
    """y = x if x > 0 else alpha * x."""
    y[...] = np.where(x > 0, x, x * x.dtype.type(alpha))


def leaky_backward(dx, dy, x, alpha):
    """dx = dy if x > 0 else alpha * dy."""
    dx[...] = np.where(x > 0, dy, dy * dy.dtype.type(alpha))


def relu_forward(y, x):
    """y = max(x, 0)."""
    np.maximum(x, 0, out=y)


def sigmoid_forward(y, x):
    """y = 1 / (1 + exp(-x)), written to avoid overflow for large |x|."""
    e = np.exp(-np.abs(x))
    y[...] = np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(dx, dy, y):
    """dx = dy * y * (1 - y)."""
    dx[...] = dy * y * (1 - y)


def adam_update(p, m, v, g, alpha, beta_1, beta_2, epsilon, scale):
    """g' = scale*g; m += (g'-m)(1-b1); v += (g'^2-v)(1-b2); p -= alpha*m/(sqrt(v)+eps)."""
    t = p.dtype.type
    gs = g * t(scale)
    m += (gs - m) * t(1 - beta_1)
    v += (gs * gs - v) * t(1 - beta_2)
    p -= t(alpha) * m / (np.sqrt(v) + t(epsilon))


def gather_taps(cols, x, ho, wo, stride, offs_h, offs_w):
    """cols[(n,p,q), (t,u,c)] = x[n, stride*p + offs_h[t], stride*q + offs_w[u], c], 0 outside x."""
    n, h, w, c = x.shape
    out = cols.reshape(n, ho, wo, len(offs_h), len(offs_w), c)
    for t, dh in enumerate(offs_h):
        for u, dw in enumerate(offs_w):
            rows = stride * np.arange(ho) + dh
            cols_ = stride * np.arange(wo) + dw
            ok_r, ok_c = (rows >= 0) & (rows < h), (cols_ >= 0) & (cols_ < w)
            block = np.zeros((n, ho, wo, c), x.dtype)
            block[:, np.flatnonzero(ok_r)[:, None], np.flatnonzero(ok_c)[None, :]] = \
                x[:, rows[ok_r][:, None], cols_[ok_c][None, :]]
            out[:, :, :, t, u, :] = block


def _read_normalised(a, pre, pre_alpha):
    """a as an operand with a BatchNorm (+ LeakyReLU) applied as it is read: a itself when pre is None,
    else a new array leaky_pre_alpha((a - pre[0]) * pre[1] * pre[2] + pre[3]) (pre: mean, invstd,
    gamma, beta per channel)."""
    if pre is None:
        return a
    out = np.empty_like(a)
    bn_act_forward(out, a, pre[0], pre[1], pre[2], pre[3], pre_alpha)
    return out


def conv_gemms(y, dw, x, w, t, kh, kw, stride, pad_top, pad_left, ws=None, pre=None, pre_alpha=1.0, pre_sums=None):
    """cols = im2col(x); dw = cols^T @ t, then y = cols @ w; either output may be None (skipped).
    pre, when given: t is read normalised (_read_normalised); pre_sums (with pre and y): the
    BatchNorm's backward sums bn_act_grad_sums(y, t). ws (a Workspace) is accepted for the common
    signature and ignored: the reference allocates freely."""
    raw = t
    if dw is not None:
        t = _read_normalised(t, pre, pre_alpha)
    n, h, wi, c = x.shape
    ho, wo = -(-h // stride), -(-wi // stride)
    cols = np.empty((n * ho * wo, kh * kw * c), x.dtype)
    gather_taps(cols, x, ho, wo, stride, np.arange(kh) - pad_top, np.arange(kw) - pad_left)
    if dw is not None:
        dw[...] = cols.T @ t.reshape(len(cols), -1)
    if y is not None:
        y.reshape(len(cols), -1)[...] = cols @ w
    if pre_sums is not None:
        if pre is None or y is None:
            raise ValueError("conv_gemms: pre_sums needs pre, and y with t's channels")
        c = raw.shape[-1]
        bn_act_grad_sums(pre_sums[0], pre_sums[1], y.reshape(-1, c), raw.reshape(-1, c), *pre, pre_alpha)


def bn_act_forward(y, x, mean, invstd, gamma, beta, alpha):
    """y = leaky_alpha((x - mean) * invstd * gamma + beta); alpha 1 is plain BatchNorm."""
    pre = (x - mean) * invstd * gamma + beta
    y[...] = np.where(pre > 0, pre, pre * x.dtype.type(alpha))


def bn_act_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha):
    """Backward of bn_act_forward with batch statistics: the activation's mask, then bn_backward."""
    pre = (x - mean) * invstd * gamma + beta
    g = np.where(pre > 0, dy, dy * dy.dtype.type(alpha))
    _bn_backward(dx, dgamma, dbeta, g, x, mean, invstd, gamma)


def col2im(x, cols, kh, kw, stride, pad_top, pad_left):
    """x[n,h,w,c] = sum over (p,q,i,j) with stride*p+i-pad_top = h, stride*q+j-pad_left = w of cols."""
    n, h, w, c = x.shape
    ho, wo = _out_hw(h, w, cols.shape[0] // n, kh, kw, stride, pad_top, pad_left)
    xpad = np.zeros((n, pad_top + h + (ho - 1) * stride + kh, pad_left + w + (wo - 1) * stride + kw, c), x.dtype)
    src = cols.reshape(n, ho, wo, kh, kw, c)
    for i in range(kh):
        for j in range(kw):
            xpad[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :] += src[:, :, :, i, j, :]
    x[...] = xpad[:, pad_top:pad_top + h, pad_left:pad_left + w]


def col2im_act(x, cols, kh, kw, stride, pad_top, pad_left, bias, activation=None, alpha=1.0):
    """x = act(col2im(cols) + bias[c]); act None, "leaky" (x if x > 0 else alpha*x) or "sigmoid".
    Columns of cols past KH*KW*C are padding and ignored."""
    c = x.shape[3]
    col2im(x, cols[:, :kh * kw * c], kh, kw, stride, pad_top, pad_left)
    x += bias
    _activate(x, activation, alpha)


def _activate(y, activation, alpha):
    """In place: None, "leaky" (y if y > 0 else alpha*y) or "sigmoid"."""
    if activation == "leaky":
        leaky_forward(y, y, alpha)
    elif activation == "sigmoid":
        sigmoid_forward(y, y)
    elif activation is not None:
        raise ValueError(f"unknown activation {activation!r}")


def dense_act(y, x, w, bias, scale, shift, activation=None, alpha=1.0, ws=None):
    """y = act((x @ w + bias) * scale + shift), y (N, O): a Dense layer, then an inference BatchNorm.
    ws (a Workspace) is accepted for the common signature and ignored: the reference allocates freely."""
    y[...] = (x @ w + bias) * scale + shift
    _activate(y, activation, alpha)


def conv_act(y, x, w, bias, scale, shift, kh, kw, stride, pad_top, pad_left, relu=False, activation=None, alpha=1.0,
             ws=None, stats=None):
    """y = act(r(im2col(x) @ w + bias) * scale + shift), w ((i, j, C), O), r = max(., 0) if relu;
    stats (2, O), when given: bn_stats of y. ws (a Workspace) is accepted for the common signature
    and ignored: the reference allocates freely."""
    n, ho, wo, o = y.shape
    cols = np.empty((n * ho * wo, w.shape[0]), x.dtype)
    gather_taps(cols, x, ho, wo, stride, np.arange(kh) - pad_top, np.arange(kw) - pad_left)
    t = cols @ w + bias
    if relu:
        t = np.maximum(t, 0)
    y[...] = (t * scale + shift).reshape(y.shape)
    _activate(y, activation, alpha)
    if stats is not None:
        bn_stats(stats[0], stats[1], y.reshape(-1, o))


def conv_transpose_act(y, x, w2, bias, kh, kw, stride, pad_top, pad_left, activation=None, alpha=1.0, ws=None,
                       stats=None, pre=None, pre_alpha=1.0):
    """y = act(col2im(x @ w2) + bias): a transposed convolution, w2 (C, (i, j, O) + padding);
    stats (2, O), when given: bn_stats of y; pre, when given: x is read normalised (_read_normalised).
    ws (a Workspace) is accepted for the common signature and ignored: the reference allocates freely."""
    x = _read_normalised(x, pre, pre_alpha)
    cols = x.reshape(-1, x.shape[3]) @ w2
    col2im_act(y, cols, kh, kw, stride, pad_top, pad_left, bias, activation, alpha)
    if stats is not None:
        bn_stats(stats[0], stats[1], y.reshape(-1, y.shape[3]))


def _out_hw(h, w, rows_per_image, kh, kw, stride, pad_top, pad_left):
    # 'same' geometry: Ho = ceil(H / stride); the row count must agree with it.
    ho, wo = -(-h // stride), -(-w // stride)
    if ho * wo != rows_per_image:
        raise ValueError(f"im2col rows {rows_per_image} do not match output {ho}x{wo}")
    return ho, wo


# ---------------------------------------------------------------- BatchNorm over ranks: sums, then maps

def centered_sq_sums(out, x, mean):
    """out[c] = sum_m (x[m,c] - mean[c])^2."""
    out[...] = ((x - mean) ** 2).sum(axis=0)


def bn_act_grad_sums(s1, s2, dy, x, mean, invstd, gamma, beta, alpha):
    """s1[c] = sum_m g[m,c]; s2[c] = sum_m g[m,c] * (x[m,c] - mean[c]); g = dy through the activation."""
    pre = (x - mean) * invstd * gamma + beta
    g = np.where(pre > 0, dy, dy * dy.dtype.type(alpha))
    s1[...] = g.sum(axis=0)
    s2[...] = (g * (x - mean)).sum(axis=0)


def bn_act_dx(dx, dy, x, mean, invstd, gamma, beta, alpha, s1, s2, count):
    """dx = gamma*invstd*(g - s1/count - (x-mean)*invstd^2*s2/count): s1, s2 summed over all `count` rows."""
    pre = (x - mean) * invstd * gamma + beta
    g = np.where(pre > 0, dy, dy * dy.dtype.type(alpha))
    xhat = (x - mean) * invstd
    dx[...] = gamma * invstd * (g - s1 / count - xhat * (s2 * invstd) / count)


# ---------------------------------------------------------------- for a device-resident step

def is_device_array(a):
    return False


def may_share_memory(a, b):
    return np.may_share_memory(a, b)


def fill(a, value):
    """a[...] = value."""
    a[...] = value


def copy(out, a):
    """out[...] = a."""
    out[...] = a


def add(y, a):
    """y += a."""
    y += a


def bn_invstd(invstd, var, eps):
    """invstd = 1 / sqrt(var + eps)."""
    invstd[...] = 1 / np.sqrt(var + var.dtype.type(eps))


def moving_update(moving, batch, momentum):
    """moving = momentum * moving + (1 - momentum) * batch."""
    m = moving.dtype.type(momentum)
    moving[...] = m * moving + (1 - m) * batch


def bn_act_backward_frozen(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha):
    """Backward with constant (moving) statistics: dbeta = sum g, dgamma = sum g*xhat, dx = g*gamma*invstd."""
    pre = (x - mean) * invstd * gamma + beta
    g = np.where(pre > 0, dy, dy * dy.dtype.type(alpha))
    dbeta[...] = g.sum(axis=0)
    dgamma[...] = (g * (x - mean)).sum(axis=0) * invstd
    dx[...] = g * (gamma * invstd)


def fold_adjoint_weights(w2, b2, kernel, bias, scale, shift):
    """w2[o, (i,j,c)] = kernel[i,j,c,o] * scale[c], 0 in padding columns; b2[c] = bias[c]*scale[c] + shift[c]."""
    kh, kw, c, o = kernel.shape
    w2[:, kh * kw * c:] = 0
    w2[:, :kh * kw * c] = (kernel * scale[:, None]).reshape(-1, o).T
    b2[...] = bias * scale + shift


def sum_squares(out, a):
    """out[0] = sum_i a_i^2."""
    out[0] = np.vdot(a, a)


def mse_and_grad(sq_sum, dx_hat, x_hat, x, scale):
    """sq_sum[0] = sum (x_hat - x)^2; dx_hat = scale * (x_hat - x)."""
    d = x_hat - x
    sq_sum[0] = np.sum(np.square(d, dtype=np.float64))
    dx_hat[...] = d * d.dtype.type(scale)


def upsample_nearest(y, x):
    """y[n, 2h + a, 2w + b, c] = x[n, h, w, c] for a, b in {0, 1}."""
    y[...] = x.repeat(2, axis=1).repeat(2, axis=2)


def upsample_nearest_backward(dx, dy):
    """dx[n, h, w, c] = sum of dy over the 2x2 block (2h + a, 2w + b) that copied x[n, h, w, c]."""
    n, h, w, c = dx.shape
    dx[...] = dy.reshape(n, h, 2, w, 2, c).sum(axis=(2, 4))


def kl_sum(out, z_mean, z_log_var, lo, hi):
    """out[0] = -1/2 sum (1 + lv - mu^2 - exp(lv)) over batch and latent, lv = clip(log s^2, lo, hi)."""
    lv = np.clip(z_log_var, lo, hi).astype(np.float64)
    out[0] = -0.5 * np.sum(1.0 + lv - np.square(z_mean, dtype=np.float64) - np.exp(lv))


def reparameterize(z, sigma, z_mean, z_log_var, eps, lo, hi):
    """sigma = exp(clip(lv, lo, hi) / 2); z = mu + sigma * eps."""
    sigma[...] = np.exp(np.clip(z_log_var, lo, hi) * z.dtype.type(0.5))
    z[...] = z_mean + sigma * eps


def latent_grads(d_mean, d_logvar, dz, z_mean, z_log_var, eps, sigma, lo, hi, kl_weight=1.0):
    """d_mean = dz + w*mu/n; d_logvar = (dz*eps*sigma/2 + w*(sigma^2-1)/(2n)) * [lo <= lv <= hi], n = batch,
    w = kl_weight (w = 1 gives the same scalars, so the same bits, as no weight)."""
    t, n = dz.dtype.type, z_mean.shape[0]
    d_mean[...] = dz + z_mean * t(kl_weight / n)
    inside = (z_log_var >= lo) & (z_log_var <= hi)
    d_logvar[...] = (dz * eps * sigma * t(0.5) + (sigma * sigma - t(1)) * t(0.5 * kl_weight / n)) * inside
