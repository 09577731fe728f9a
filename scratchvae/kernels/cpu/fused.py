"""Fused inference on the CPU: a GEMM, then col2im (or a per-column affine) plus bias and activation
written in the same pass; a convolution's patches are gathered piece by piece, so each piece's
GEMM reads them while they are in cache. BatchNorm's moving statistics arrive folded into the
weights and bias.

Activations: None, "leaky" (x if x > 0 else alpha*x) or "sigmoid". The work is cut by schedule.py.
Scratch cols come from a Workspace: the caller's `ws`, else this module's WORKSPACE.
"""

import numpy as np
from numba import njit, prange

from scratchvae.kernels.cpu import schedule, winograd
from scratchvae.kernels.cpu.arrays import empty
from scratchvae.kernels.cpu.batchnorm import normalise_rows, normalised_copy, pre_affine
from scratchvae.kernels.cpu.convolution import _gather_piece
from scratchvae.kernels.cpu.elementwise import sigmoid_span
from scratchvae.kernels.cpu.jit import FASTMATH
from scratchvae.kernels.cpu.reductions import _add_moments, finish_moments, moment_parts
# A small per-call weight fold: the reference code is the CPU code.
from scratchvae.kernels.reference import fold_adjoint_weights  # noqa: F401
from scratchvae.kernels.workspace import Workspace

# The cols buffers when the caller passes no workspace: one per worker, kept at their largest size.
WORKSPACE = Workspace(empty)

# Rows of an operand read through a BatchNorm (`pre`) that are normalised at a time, then multiplied:
# 512 KB at 128 channels, so the GEMM reads them from L2.
PRE_ROWS = 1024

_ACTIVATIONS = {None: 0, "leaky": 1, "sigmoid": 2}
SIGMOID = _ACTIVATIONS["sigmoid"]


def _act_code(activation):
    """The code _activate takes for `activation` (None, "leaky" or "sigmoid")."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}")
    return _ACTIVATIONS[activation]


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _activate(v, act, alpha):
    """In place over a 1-D slice: act 1 leaky (v if v > 0 else alpha*v); 0 none. The sigmoid (2) is
    left to the caller, after the pass (_sigmoid_after: NumPy's vectorised exp)."""
    if act == 1:
        for i in range(v.size):
            v[i] = v[i] if v[i] > 0 else v[i] * alpha


def _sigmoid_after(act, y):
    """The sigmoid in place over y (a C-contiguous view of what a pass just wrote, still in cache)
    where act asks for it."""
    if act == SIGMOID:
        flat = y.reshape(-1)
        sigmoid_span(flat, flat)


# ---------------------------------------------------------------- col2im + bias + activation

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
    args = _col2im_act_args(x, kh, kw, stride, pad_top, pad_left, bias, activation, alpha)
    _col2im_act(x, cols, *args)
    _sigmoid_after(args[5], x)


def _normalised_product(out, a, w, norm, buf):
    """out = read(a) @ w on the calling thread: a's rows as they are (norm None), else PRE_ROWS at a
    time normalised into buf (norm: batchnorm.pre_affine's triple) and multiplied from there."""
    if norm is None:
        np.matmul(a, w, out=out)
        return
    for r in range(0, len(a), PRE_ROWS):
        part = buf[:min(PRE_ROWS, len(a) - r)]
        normalise_rows(part, a[r:r + len(part)], *norm)
        np.matmul(part, w, out=out[r:r + len(part)])


def conv_transpose_act(y, x, w2, bias, kh, kw, stride, pad_top, pad_left, activation=None, alpha=1.0, ws=None,
                       stats=None, pre=None, pre_alpha=1.0):
    """y = act(col2im(x @ w2) + bias): a transposed convolution, w2 (C, (i, j, O) + padding).
    The work is cut into pieces (a few images, or bands of output rows when there are few images)
    that the cores take in turn, each running a single-threaded GEMM and col2im pass per piece.
    ws: the Workspace for each worker's cols (None: this module's WORKSPACE). stats (2, O), when
    given: the mean and biased variance of y per channel, each piece's sums taken while it is in
    cache (what a BatchNorm after this layer would otherwise read the whole map again for).
    pre, when given: x is read through that BatchNorm (+ LeakyReLU), PRE_ROWS rows at a time just
    before their GEMM, so the normalised map is never written out (on the 25-product path it is
    normalised into a buffer of ws first)."""
    ws = WORKSPACE if ws is None else ws
    n, h, w, c = x.shape
    o = y.shape[3]
    norm = pre_affine(pre, pre_alpha, x.dtype)
    if winograd.fits(x.shape[:3], y.shape[:3], c, o, kh, kw, stride, pad_top, pad_left):
        x = normalised_copy(ws.buffer("pre_operand", x.shape, x.dtype) if norm else None, x, norm)
        act, alpha = _act_code(activation), y.dtype.type(alpha)

        def epilogue(rows):
            _activate(rows.reshape(-1), act, alpha)
            _sigmoid_after(act, rows)
        winograd.up(y, x, w2, bias, ws, None if act == 0 else epilogue, stats)
        return
    args = _col2im_act_args(y, kh, kw, stride, pad_top, pad_left, bias, activation, alpha)
    src_h, width = args[0], w2.shape[1]
    image_bytes = h * w * width * w2.dtype.itemsize
    cores = schedule.workers()
    tasks = schedule.images_or_bands(n, y.shape[1], image_bytes, cores)
    parts = None if stats is None else moment_parts(len(tasks), o)
    zero = np.zeros(o)  # the moments' shift

    def pre_rows(k):  # worker k's buffer for the normalised rows
        return None if norm is None else ws.buffer(("pre_rows", k), (PRE_ROWS, c), x.dtype)

    def do(k, t):
        sl, r0, r1 = tasks[t]
        if r1 is None:  # all rows of the images in sl
            p0, p1, r1 = 0, h, (sl.stop - sl.start) * y.shape[1]
        else:  # the input rows that reach output rows r0..r1
            rows = src_h[r0:r1][src_h[r0:r1] >= 0]
            p0, p1 = (int(rows.min()), int(rows.max()) + 1) if rows.size else (0, 0)
        cols = ws.buffer(("patches", k), ((sl.stop - sl.start) * (p1 - p0) * w, width), w2.dtype)
        _normalised_product(cols, x[sl, p0:p1].reshape(-1, c), w2, norm, pre_rows(k))
        _col2im_act_rows(y[sl], cols, *args, r0, r1, p0)
        _sigmoid_after(args[5], y[sl].reshape(-1, y.shape[2] * o)[r0:r1])
        if parts is not None:
            _add_moments(parts[t], y[sl].reshape(-1, o), zero, r0 * y.shape[2], r1 * y.shape[2])

    if not schedule.in_turn(len(tasks), do, cores):
        for sl in schedule.image_steps(n, image_bytes):  # one core, or no say over BLAS's threads
            cols = ws.buffer(("patches", 0), ((sl.stop - sl.start) * h * w, width), w2.dtype)
            _normalised_product(cols, x[sl].reshape(-1, c), w2, norm, pre_rows(0))  # threaded GEMM
            _col2im_act(y[sl], cols, *args)
            _sigmoid_after(args[5], y[sl])
        if parts is not None:  # the whole map as one slot
            parts = moment_parts(1, o)
            _add_moments(parts[0], y.reshape(-1, o), zero, 0, y.size // o)
    if parts is not None:
        finish_moments(stats[0], stats[1], parts, y.size // o)


# ---------------------------------------------------------------- GEMM + per-column affine + activation

@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _affine_act_columns(y, t, bias, scale, shift, j0, act, alpha):
    """y[m, j0 + j] = act((t[m, j] + bias[j0 + j]) * scale[j0 + j] + shift[j0 + j])."""
    for m in range(t.shape[0]):
        row = y[m, j0:j0 + t.shape[1]]
        for j in range(t.shape[1]):
            row[j] = (t[m, j] + bias[j0 + j]) * scale[j0 + j] + shift[j0 + j]
        _activate(row, act, alpha)


def dense_act(y, x, w, bias, scale, shift, activation=None, alpha=1.0, ws=None):
    """y = act((x @ w + bias) * scale + shift), y (N, O): blocks of columns that the cores take in
    turn, each a single-threaded GEMM and one pass (a threaded GEMM here would leave OpenBLAS's
    workers spinning into the transposed convolutions that follow). ws: the Workspace for the
    products (None: this module's WORKSPACE)."""
    ws = WORKSPACE if ws is None else ws
    act, alpha = _act_code(activation), y.dtype.type(alpha)
    n, o = x.shape[0], w.shape[1]
    dtype = np.result_type(x.dtype, w.dtype)  # what x @ w would give
    cores = schedule.workers()
    block = schedule.column_block(o, cores)

    def do(k, t):
        j0 = t * block
        wj = w[:, j0:j0 + block]
        product = ws.buffer(("dense_act", k), (n, wj.shape[1]), dtype)
        np.matmul(x, wj, out=product)
        _affine_act_columns(y, product, bias, scale, shift, j0, act, alpha)

    if not schedule.in_turn(-(-o // block), do, cores):
        product = ws.buffer(("dense_act", 0), (n, o), dtype)
        np.matmul(x, w, out=product)
        _affine_act_columns(y, product, bias, scale, shift, 0, act, alpha)
    _sigmoid_after(act, y)  # over the whole of y: a block of columns is not contiguous


# ---------------------------------------------------------------- im2col by pieces + GEMM + affine + activation

@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _affine_act_rows(y, bias, scale, shift, relu, act, alpha):
    """In place over y (M, O): y = act(r(y + bias) * scale + shift), r = max(., 0) when relu."""
    zero = y.dtype.type(0)
    for m in range(y.shape[0]):
        row = y[m]
        if relu:
            for j in range(row.size):
                row[j] = max(row[j] + bias[j], zero) * scale[j] + shift[j]
        else:
            for j in range(row.size):
                row[j] = (row[j] + bias[j]) * scale[j] + shift[j]
        _activate(row, act, alpha)


def conv_act(y, x, w, bias, scale, shift, kh, kw, stride, pad_top, pad_left, relu=False, activation=None,
             alpha=1.0, ws=None, stats=None):
    """y = act(r(im2col(x) @ w + bias) * scale + shift), w ((i, j, C), O), r = max(., 0) when relu:
    a 'same' Conv2D (Ho = ceil(H / stride)) and an inference BatchNorm's affine. Pieces of a few
    images, or bands of output rows (schedule.pieces), which the cores take in turn: each gathers
    its patches, runs a single-threaded GEMM straight into its rows of y and the epilogue over them
    while they are in cache. ws: the Workspace for each worker's patches (None: this module's
    WORKSPACE). stats (2, O), when given: the mean and biased variance of y per channel, each
    piece's sums taken after its epilogue (as conv_transpose_act)."""
    ws = WORKSPACE if ws is None else ws
    n, h, wi, c = x.shape
    ho, wo, o = y.shape[1], y.shape[2], y.shape[3]
    if w.shape != (kh * kw * c, o) or ho != -(-h // stride) or wo != -(-wi // stride):
        raise ValueError(f"conv_act: w {w.shape} and y {y.shape} do not fit x {x.shape} with a {kh}x{kw} "
                         f"stride-{stride} kernel")
    act, alpha = _act_code(activation), y.dtype.type(alpha)
    if winograd.fits(y.shape[:3], x.shape[:3], o, c, kh, kw, stride, pad_top, pad_left):
        def epilogue(rows):
            _affine_act_rows(rows, bias, scale, shift, relu, act, alpha)
            _sigmoid_after(act, rows)
        winograd.down(y, x, w, epilogue, ws, stats)
        return
    offs_h = np.arange(kh, dtype=np.int64) - pad_top
    offs_w = np.arange(kw, dtype=np.int64) - pad_left
    y2 = y.reshape(n * ho * wo, o)
    width = kh * kw * c
    cores = schedule.workers()
    pieces = schedule.pieces(n, ho, wo * width * w.dtype.itemsize, cores, wo * o * y.dtype.itemsize)
    parts = None if stats is None else moment_parts(len(pieces), o)
    zero = np.zeros(o)  # the moments' shift

    def do(k, t):
        i0, i1, p0, p1 = pieces[t]
        r0 = (i0 * ho + p0) * wo
        r1 = r0 + (i1 - i0) * (p1 - p0) * wo
        cols = ws.buffer(("patches", k), (r1 - r0, width), w.dtype)  # conv_gemms's key: one buffer for both
        _gather_piece(cols, x, i0, i1, p0, p1, wo, stride, offs_h, offs_w)
        np.matmul(cols, w, out=y2[r0:r1])
        _affine_act_rows(y2[r0:r1], bias, scale, shift, relu, act, alpha)
        _sigmoid_after(act, y2[r0:r1])
        if parts is not None:
            _add_moments(parts[t], y2, zero, r0, r1)

    schedule.each(len(pieces), do, cores)
    if parts is not None:
        finish_moments(stats[0], stats[1], parts, y2.shape[0])
