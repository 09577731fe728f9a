"""Numba CPU kernels: the same names and signatures as `reference`, parallel where it pays.

Outputs first, then inputs, then scalars. `prange` always runs over an axis whose iterations
write their own slice; cross-thread reductions go through per-chunk rows and a serial sum.
Scalars are cast to the array dtype before the call so float32 stays float32 inside.
"""

import itertools

import numpy as np
from numba import get_num_threads, njit, prange

from scratchvae import threads

name = "cpu"

# No 'nnan'/'ninf': np.isnan must keep working. 'reassoc' lets reductions vectorise.
FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
_CHUNK_ROWS = 2048  # rows per partial sum in the reductions


def empty(shape, dtype):
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def to_host(a):
    return np.asarray(a)


def from_host(a):
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------- matrix products

def gemm(out, a, b, trans_a=False, trans_b=False, accumulate=False):
    """out (+)= op(a) @ op(b): one BLAS call, BLAS threads on all cores (never inside prange)."""
    if trans_a and a.shape[1] < b.shape[1]:
        # A thin a^T b (e.g. a 3-channel layer's weight gradient): BLAS runs (b^T a)^T twice as fast.
        r = (b.T if not trans_b else b) @ a
        if accumulate:
            out += r.T
        else:
            out[...] = r.T
        return
    a = a.T if trans_a else a
    b = b.T if trans_b else b
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)


# ---------------------------------------------------------------- per-channel reductions

@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _col_sums(part, a, chunk):
    """part[k, c] = sum of a[m, c] over rows m of chunk k."""
    m, c = a.shape
    for k in prange(part.shape[0]):
        for ch in range(c):
            part[k, ch] = 0
        for r in range(k * chunk, min(m, (k + 1) * chunk)):
            for ch in range(c):
                part[k, ch] += a[r, ch]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _centered_sq_sums(part, a, mean, chunk):
    """part[k, c] = sum of (a[m, c] - mean[c])^2 over rows m of chunk k."""
    m, c = a.shape
    for k in prange(part.shape[0]):
        for ch in range(c):
            part[k, ch] = 0
        for r in range(k * chunk, min(m, (k + 1) * chunk)):
            for ch in range(c):
                d = a[r, ch] - mean[ch]
                part[k, ch] += d * d


def _partials(a):
    chunks = max(1, -(-a.shape[0] // _CHUNK_ROWS))
    return np.empty((chunks, a.shape[1]), dtype=a.dtype), -(-a.shape[0] // chunks)


def sum_rows(out, a):
    """out[c] = sum_m a[m, c]."""
    part, chunk = _partials(a)
    _col_sums(part, a, chunk)
    out[...] = part.sum(axis=0)


def bn_stats(mean, var, x):
    """mean[c] = mean_m x[m,c]; var[c] = mean_m (x[m,c] - mean[c])^2 (biased, two passes)."""
    part, chunk = _partials(x)
    inv_m = x.dtype.type(1.0 / x.shape[0])
    _col_sums(part, x, chunk)
    mean[...] = part.sum(axis=0) * inv_m
    _centered_sq_sums(part, x, mean, chunk)
    var[...] = part.sum(axis=0) * inv_m


# ---------------------------------------------------------------- per-channel affine maps

@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _affine(y, x, scale, shift):
    """y[m, c] = x[m, c] * scale[c] + shift[c]."""
    m, c = x.shape
    for r in prange(m):
        for ch in range(c):
            y[r, ch] = x[r, ch] * scale[ch] + shift[ch]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _bias_relu(y, b):
    """y[m, c] = max(y[m, c] + b[c], 0)."""
    m, c = y.shape
    for r in prange(m):
        for ch in range(c):
            v = y[r, ch] + b[ch]
            y[r, ch] = v if v > 0 else 0


def add_bias(y, b):
    """y[m, c] += b[c]."""
    ones = np.ones_like(b)
    _affine(y, y, ones, b)


def bias_relu(y, b):
    """y[m, c] = max(y[m, c] + b[c], 0)."""
    _bias_relu(y, b)


def bn_forward(y, x, mean, invstd, gamma, beta):
    """y = (x - mean) * invstd * gamma + beta, as one affine pass."""
    scale = (invstd * gamma).astype(x.dtype)
    _affine(y, x, scale, (beta - mean * scale).astype(x.dtype))


# ---------------------------------------------------------------- elementwise activations

@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _leaky(y, x, alpha):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else v * alpha


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _leaky_back(dx, dy, x, alpha):
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > 0 else dy[i] * alpha


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _sigmoid(y, x, one):
    for i in prange(x.size):
        v = x[i]
        if v >= 0:
            y[i] = one / (one + np.exp(-v))
        else:
            e = np.exp(v)
            y[i] = e / (one + e)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _sigmoid_back(dx, dy, y, one):
    for i in prange(y.size):
        dx[i] = dy[i] * y[i] * (one - y[i])


def _flat(a):
    return a.reshape(-1)


def leaky_forward(y, x, alpha):
    """y = x if x > 0 else alpha * x."""
    _leaky(_flat(y), _flat(x), x.dtype.type(alpha))


def leaky_backward(dx, dy, x, alpha):
    """dx = dy if x > 0 else alpha * dy."""
    _leaky_back(_flat(dx), _flat(dy), _flat(x), dy.dtype.type(alpha))


def relu_forward(y, x):
    """y = max(x, 0)."""
    _leaky(_flat(y), _flat(x), x.dtype.type(0))


def relu_backward(dx, dy, y):
    """dx = dy * (y > 0)."""
    _leaky_back(_flat(dx), _flat(dy), _flat(y), dy.dtype.type(0))


def sigmoid_forward(y, x):
    """y = 1 / (1 + exp(-x)), written to avoid overflow for large |x|."""
    _sigmoid(_flat(y), _flat(x), x.dtype.type(1))


def sigmoid_backward(dx, dy, y):
    """dx = dy * y * (1 - y)."""
    _sigmoid_back(_flat(dx), _flat(dy), _flat(y), y.dtype.type(1))


# ---------------------------------------------------------------- optimizer

@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _adam(p, m, v, g, alpha, one_minus_b1, one_minus_b2, epsilon, scale):
    for i in prange(p.size):
        gs = g[i] * scale
        m[i] += (gs - m[i]) * one_minus_b1
        v[i] += (gs * gs - v[i]) * one_minus_b2
        p[i] -= alpha * m[i] / (np.sqrt(v[i]) + epsilon)


def adam_update(p, m, v, g, alpha, beta_1, beta_2, epsilon, scale):
    """g' = scale*g; m += (g'-m)(1-b1); v += (g'^2-v)(1-b2); p -= alpha*m/(sqrt(v)+eps)."""
    t = p.dtype.type
    _adam(p, m, v, g, t(alpha), t(1 - beta_1), t(1 - beta_2), t(epsilon), t(scale))


# ---------------------------------------------------------------- phase decomposition

@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _gather_taps(cols, x, ho, wo, stride, offs_h, offs_w):
    n, h, w, c = x.shape
    th, tw = offs_h.size, offs_w.size
    for r in prange(n * ho):
        b = r // ho
        p = r - b * ho
        for q in range(wo):
            row = r * wo + q
            for t in range(th):
                hh = p * stride + offs_h[t]
                for u in range(tw):
                    ww = q * stride + offs_w[u]
                    base = (t * tw + u) * c
                    if hh >= 0 and hh < h and ww >= 0 and ww < w:
                        for ch in range(c):
                            cols[row, base + ch] = x[b, hh, ww, ch]
                    else:
                        for ch in range(c):
                            cols[row, base + ch] = 0


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _scatter_phase(x, part, stride, a, b):
    n, h, w, c = x.shape
    hm = (h - a + stride - 1) // stride
    wm = (w - b + stride - 1) // stride
    for r in prange(n * hm):
        img = r // hm
        m = r - img * hm
        for mm in range(wm):
            src = r * wm + mm
            for ch in range(c):
                x[img, stride * m + a, stride * mm + b, ch] = part[src, ch]


def gather_taps(cols, x, ho, wo, stride, offs_h, offs_w):
    """cols[(n,p,q), (t,u,c)] = x[n, stride*p + offs_h[t], stride*q + offs_w[u], c], 0 outside x."""
    _gather_taps(cols, x, ho, wo, stride, np.asarray(offs_h, np.int64), np.asarray(offs_w, np.int64))


def scatter_phase(x, part, stride, a, b):
    """x[n, stride*m + a, stride*m' + b, c] = part[(n,m,m'), c]: one output phase of a strided map."""
    _scatter_phase(x, part, stride, a, b)


# ---------------------------------------------------------------- BatchNorm fused with LeakyReLU

@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _affine_leaky(y, x, scale, shift, alpha):
    """y[m, c] = leaky(x[m, c] * scale[c] + shift[c])."""
    m, c = x.shape
    for r in prange(m):
        for ch in range(c):
            v = x[r, ch] * scale[ch] + shift[ch]
            y[r, ch] = v if v > 0 else v * alpha


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _bn_act_sums(part1, part2, dy, x, mean, scale, shift, alpha, chunk):
    """Per chunk: sum of g and of g * (x - mean), g = dy masked by the activation's slope."""
    m, c = dy.shape
    for k in prange(part1.shape[0]):
        for ch in range(c):
            part1[k, ch] = 0
            part2[k, ch] = 0
        for r in range(k * chunk, min(m, (k + 1) * chunk)):
            for ch in range(c):
                xv = x[r, ch]
                g = dy[r, ch]
                if xv * scale[ch] + shift[ch] <= 0:
                    g = g * alpha
                part1[k, ch] += g
                part2[k, ch] += g * (xv - mean[ch])


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _bn_act_dx(dx, dy, x, scale, shift, alpha, a, b, off):
    """dx = a * g + b * x + off, g = dy masked by the activation's slope (recomputed from x)."""
    m, c = x.shape
    for r in prange(m):
        for ch in range(c):
            xv = x[r, ch]
            g = dy[r, ch]
            if xv * scale[ch] + shift[ch] <= 0:
                g = g * alpha
            dx[r, ch] = a[ch] * g + b[ch] * xv + off[ch]


def bn_act_forward(y, x, mean, invstd, gamma, beta, alpha):
    """y = leaky_alpha((x - mean) * invstd * gamma + beta); alpha 1 is plain BatchNorm."""
    t = x.dtype.type
    scale = (invstd * gamma).astype(x.dtype)
    _affine_leaky(y, x, scale, (beta - mean * scale).astype(x.dtype), t(alpha))


def bn_act_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha):
    """Backward of bn_act_forward with batch statistics, in two fused passes over x and dy."""
    bn_act_grad_sums(dbeta, dgamma, dy, x, mean, invstd, gamma, beta, alpha)
    bn_act_dx(dx, dy, x, mean, invstd, gamma, beta, alpha, dbeta, dgamma, x.shape[0])
    dgamma *= invstd


# ---------------------------------------------------------------- thin adjoint: GEMM then gather

@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _col2im(x, cols, kh, kw, stride, pad_top, pad_left, ho, wo):
    """x[n,h,w,c] = sum of the cols entries that im2col copied from (h, w): a gather, no races."""
    n, h, w, c = x.shape
    for r in prange(n * h):
        b = r // h
        hh = r - b * h
        for ww in range(w):
            for ch in range(c):
                x[b, hh, ww, ch] = 0
            for i in range(kh):
                t = hh + pad_top - i
                if t < 0 or t % stride != 0:
                    continue
                p = t // stride
                if p >= ho:
                    continue
                for j in range(kw):
                    u = ww + pad_left - j
                    if u < 0 or u % stride != 0:
                        continue
                    q = u // stride
                    if q >= wo:
                        continue
                    row = (b * ho + p) * wo + q
                    base = (i * kw + j) * c
                    for ch in range(c):
                        x[b, hh, ww, ch] += cols[row, base + ch]


def col2im(x, cols, kh, kw, stride, pad_top, pad_left):
    """x[n,h,w,c] = sum over (p,q,i,j) with stride*p+i-pad_top = h, stride*q+j-pad_left = w of
    cols[(n,p,q), (i,j,c)], with Ho = ceil(H / stride): a gather, parallel over output rows."""
    ho, wo = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    _col2im(x, cols, kh, kw, stride, pad_top, pad_left, ho, wo)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _activate(v, act, alpha):
    """In place over a 1-D slice: act 0 none, 1 leaky (v if v > 0 else alpha*v), 2 sigmoid."""
    one = v.dtype.type(1)
    if act == 1:
        for i in range(v.size):
            v[i] = v[i] if v[i] > 0 else v[i] * alpha
    elif act == 2:
        for i in range(v.size):
            if v[i] >= 0:
                v[i] = one / (one + np.exp(-v[i]))
            else:
                e = np.exp(v[i])
                v[i] = e / (one + e)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _col2im_act_rows(x, cols, src_h, src_w, ho, wo, bias, act, alpha, r0, r1, p0):
    """Rows r0..r1 (of the N*H output rows) of col2im plus bias and an activation (act 0 none, 1 leaky,
    2 sigmoid), in one pass. src_h[h, i] is the input row p that tap i brings to output row h, or -1
    (src_w likewise for columns): the geometry worked out once per call, no divisions per pixel.
    cols holds input rows from p0 on (a band of one image when p0 > 0)."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = src_h.shape[1], src_w.shape[1]
    for r in range(r0, r1):
        b = r // h
        hh = r - b * h
        for ww in range(w):
            for ch in range(c):
                x[b, hh, ww, ch] = bias[ch]
            for i in range(kh):
                p = src_h[hh, i]
                if p < 0:
                    continue
                for j in range(kw):
                    q = src_w[ww, j]
                    if q < 0:
                        continue
                    row = (b * ho + p - p0) * wo + q
                    base = (i * kw + j) * c
                    for ch in range(c):
                        x[b, hh, ww, ch] += cols[row, base + ch]
            _activate(x[b, hh, ww], act, alpha)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _col2im_act(x, cols, src_h, src_w, ho, wo, bias, act, alpha):
    for r in prange(x.shape[0] * x.shape[1]):
        _col2im_act_rows(x, cols, src_h, src_w, ho, wo, bias, act, alpha, r, r + 1, 0)


_ACTIVATIONS = {None: 0, "leaky": 1, "sigmoid": 2}


def _act_code(activation):
    """The code _activate takes for `activation` (None, "leaky" or "sigmoid")."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}")
    return _ACTIVATIONS[activation]


def _sources(size, k, stride, pad):
    """src[h, i] = p where stride*p + i - pad = h and 0 <= p < ceil(size / stride), else -1."""
    t = np.arange(size)[:, None] + pad - np.arange(k)[None, :]
    p = t // stride
    ok = (t >= 0) & (t % stride == 0) & (p < -(-size // stride))
    return np.where(ok, p, -1).astype(np.int64)


def _col2im_act_args(x, kh, kw, stride, pad_top, pad_left, bias, activation, alpha):
    act = _act_code(activation)
    h, w = x.shape[1], x.shape[2]
    return (_sources(h, kh, stride, pad_top), _sources(w, kw, stride, pad_left), -(-h // stride), -(-w // stride),
            bias, act, x.dtype.type(alpha))


def col2im_act(x, cols, kh, kw, stride, pad_top, pad_left, bias, activation=None, alpha=1.0):
    """x = act(col2im(cols) + bias[c]); act None, "leaky" (x if x > 0 else alpha*x) or "sigmoid".
    Columns of cols past KH*KW*C are padding and ignored."""
    _col2im_act(x, cols, *_col2im_act_args(x, kh, kw, stride, pad_top, pad_left, bias, activation, alpha))


_WORK = {}  # per-worker cols buffers of conv_transpose_act, kept at their largest size
CORE_COLS_BYTES = 24 * 2 ** 20  # one worker's cols per GEMM: a few images, or one large one


def _work(key, shape, dtype):
    size = int(np.prod(shape))
    buf = _WORK.get((key, dtype))
    if buf is None or buf.size < size:
        buf = _WORK[(key, dtype)] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


TASKS_PER_CORE = 4  # pieces of work per core, taken in turn: a core slowed by another job takes fewer
MIN_BAND_ROWS = 32  # a band's GEMM also covers the input rows it shares with its neighbours: keep that small


def conv_transpose_act(y, x, w2, bias, kh, kw, stride, pad_top, pad_left, activation=None, alpha=1.0):
    """y = act(col2im(x @ w2) + bias): a transposed convolution, w2 (C, (i, j, O) + padding).
    The work is cut into pieces (a few images, or bands of output rows when there are few images)
    that the cores take in turn, each running a single-threaded GEMM and col2im pass per piece
    (see threads.on_each_core for why not a threaded GEMM, then a parallel loop)."""
    n, h, w, c = x.shape
    args = _col2im_act_args(y, kh, kw, stride, pad_top, pad_left, bias, activation, alpha)
    src_h, width = args[0], w2.shape[1]
    workers = get_num_threads()
    pieces = workers * TASKS_PER_CORE
    if n >= pieces:  # whole images, within a cols budget per GEMM
        step = max(1, min(CORE_COLS_BYTES // (h * w * width * w2.dtype.itemsize), n // pieces))
        tasks = [(slice(i, min(n, i + step)), 0, None) for i in range(0, n, step)]
    else:  # bands of output rows of each image, from the input rows that reach them
        bands = max(1, min(-(-pieces // n), y.shape[1] // MIN_BAND_ROWS))
        tasks = [(slice(i, i + 1), b * y.shape[1] // bands, (b + 1) * y.shape[1] // bands)
                 for i in range(n) for b in range(bands)]
    counter = itertools.count()

    def work(k):
        for t in iter(counter.__next__, None):
            if t >= len(tasks):
                return
            sl, r0, r1 = tasks[t]
            if r1 is None:  # all rows of the images in sl
                p0, p1, r1 = 0, h, (sl.stop - sl.start) * y.shape[1]
            else:
                rows = src_h[r0:r1][src_h[r0:r1] >= 0]
                p0, p1 = (int(rows.min()), int(rows.max()) + 1) if rows.size else (0, 0)
            cols = _work(k, ((sl.stop - sl.start) * (p1 - p0) * w, width), w2.dtype)
            np.matmul(x[sl, p0:p1].reshape(-1, c), w2, out=cols)
            _col2im_act_rows(y[sl], cols, *args, r0, r1, p0)

    if workers > 1 and threads.on_each_core(work, workers):
        return
    step = max(1, CORE_COLS_BYTES // (h * w * width * w2.dtype.itemsize))
    for i in range(0, n, step):  # one core, or no say over BLAS's threads: threaded GEMM, parallel loop
        sl = slice(i, min(n, i + step))
        cols = _work(0, ((sl.stop - sl.start) * h * w, width), w2.dtype)
        np.matmul(x[sl].reshape(-1, c), w2, out=cols)
        _col2im_act(y[sl], cols, *args)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _affine_act_columns(y, t, bias, scale, shift, j0, act, alpha):
    """y[m, j0 + j] = act((t[m, j] + bias[j0 + j]) * scale[j0 + j] + shift[j0 + j])."""
    for m in range(t.shape[0]):
        row = y[m, j0:j0 + t.shape[1]]
        for j in range(t.shape[1]):
            row[j] = (t[m, j] + bias[j0 + j]) * scale[j0 + j] + shift[j0 + j]
        _activate(row, act, alpha)


def dense_act(y, x, w, bias, scale, shift, activation=None, alpha=1.0):
    """y = act((x @ w + bias) * scale + shift), y (N, O): blocks of columns that the cores take in
    turn, each a single-threaded GEMM and one pass (a threaded GEMM here would leave OpenBLAS's
    workers spinning into the transposed convolutions that follow)."""
    act, alpha = _act_code(activation), y.dtype.type(alpha)
    workers = get_num_threads()
    o = w.shape[1]
    block = max(64, -(-o // (workers * TASKS_PER_CORE)))
    counter = itertools.count()

    def work(k):
        for j0 in iter(lambda: next(counter) * block, None):
            if j0 >= o:
                return
            _affine_act_columns(y, x @ w[:, j0:j0 + block], bias, scale, shift, j0, act, alpha)

    if workers == 1 or not threads.on_each_core(work, workers):
        _affine_act_columns(y, x @ w, bias, scale, shift, 0, act, alpha)


# ---------------------------------------------------------------- BatchNorm over ranks: sums, then maps

def centered_sq_sums(out, x, mean):
    """out[c] = sum_m (x[m,c] - mean[c])^2."""
    part, chunk = _partials(x)
    _centered_sq_sums(part, x, mean, chunk)
    out[...] = part.sum(axis=0)


def bn_act_grad_sums(s1, s2, dy, x, mean, invstd, gamma, beta, alpha):
    """s1[c] = sum_m g[m,c]; s2[c] = sum_m g[m,c] * (x[m,c] - mean[c]); g = dy through the activation."""
    t = x.dtype.type
    scale = (invstd * gamma).astype(x.dtype)
    shift = (beta - mean * scale).astype(x.dtype)
    part1, chunk = _partials(dy)
    part2 = np.empty_like(part1)
    _bn_act_sums(part1, part2, dy, x, mean, scale, shift, t(alpha), chunk)
    s1[...] = part1.sum(axis=0)
    s2[...] = part2.sum(axis=0)


def bn_act_dx(dx, dy, x, mean, invstd, gamma, beta, alpha, s1, s2, count):
    """dx = gamma*invstd*(g - s1/count - (x-mean)*invstd^2*s2/count): s1, s2 summed over all `count` rows."""
    t = x.dtype.type
    scale = (invstd * gamma).astype(x.dtype)
    shift = (beta - mean * scale).astype(x.dtype)
    inv_m = t(1.0 / count)
    k = gamma * invstd
    b = -k * invstd * (s2 * invstd) * inv_m
    _bn_act_dx(dx, dy, x, scale, shift, t(alpha), k.astype(x.dtype), b.astype(x.dtype),
               (-b * mean - k * s1 * inv_m).astype(x.dtype))


# Small or already NumPy-bound: the reference code is the CPU code.
from scratchvae.kernels.reference import (add, bn_act_backward_frozen, bn_invstd, copy, fill,  # noqa: E402
                                          fold_adjoint_weights, gather_weights, is_device_array, kl_sum,
                                          latent_grads, may_share_memory, moving_update, mse_and_grad,
                                          reparameterize, sum_squares)
