"""Fused inference on CUDA: the GEMM of kernels/cuda/matmul.py, then one pass that writes
act(col2im(cols) + bias) or act((y + bias) * scale + shift). BatchNorm's moving statistics arrive
folded into the weights and bias (fold_adjoint_weights). Activations: None, "leaky" or "sigmoid".
"""

import math

import numpy as np
from numba import cuda

from scratchvae.kernels.cuda.arrays import SCRATCH
from scratchvae.kernels.cuda.batchnorm import read_normalised
from scratchvae.kernels.cuda.convolution import gather_taps
from scratchvae.kernels.cuda.launch import flat, launch, per_channel
from scratchvae.kernels.cuda.matmul import gemm
from scratchvae.kernels.cuda.reductions import bn_stats

_ACTIVATIONS = {None: 0, "leaky": 1, "sigmoid": 2}


def _act_code(activation):
    """The code the kernels take for `activation` (None, "leaky" or "sigmoid")."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}")
    return _ACTIVATIONS[activation]


@cuda.jit(device=True)
def _activate(v, act, alpha, one):
    """act 0: v; 1: v if v > 0 else alpha*v; 2: 1 / (1 + exp(-v)) with exp of a non-positive argument."""
    if act == 1:
        return v if v > 0 else v * alpha
    if act == 2:
        if v >= 0:
            return one / (one + math.exp(-v))
        e = math.exp(v)
        return e / (one + e)
    return v


# ---------------------------------------------------------------- col2im + bias + activation

@cuda.jit(cache=True)
def _col2im_act(x, cols, kh, kw, stride, pad_top, pad_left, ho, wo, bias, act, alpha, one):
    """x[n,h,w,c] = act(bias[c] + the cols entries that im2col copied from (h, w)), taps (i, j) in
    order as on the CPU: a gather, one thread per element of x, no races."""
    _, h, w, c = x.shape
    for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        ch = e % c
        rest = e // c
        ww = rest % w
        rest = rest // w
        hh = rest % h
        img = rest // h
        acc = bias[ch]
        for ki in range(kh):
            t = hh + pad_top - ki
            if t < 0 or t % stride != 0 or t // stride >= ho:
                continue
            p = t // stride
            for kj in range(kw):
                u = ww + pad_left - kj
                if u < 0 or u % stride != 0 or u // stride >= wo:
                    continue
                acc += cols[(img * ho + p) * wo + u // stride, (ki * kw + kj) * c + ch]
        x[img, hh, ww, ch] = _activate(acc, act, alpha, one)


def col2im_act(x, cols, kh, kw, stride, pad_top, pad_left, bias, activation=None, alpha=1.0):
    """x = act(col2im(cols) + bias[c]); act None, "leaky" (x if x > 0 else alpha*x) or "sigmoid".
    Columns of cols past KH*KW*C are padding and ignored."""
    act = _act_code(activation)
    n, h, w, c = x.shape
    ho, wo = -(-h // stride), -(-w // stride)
    if cols.shape[0] != n * ho * wo or cols.shape[1] < kh * kw * c:
        raise ValueError(f"col2im_act: cols {tuple(cols.shape)} does not fit x {tuple(x.shape)}")
    per_channel(x, bias)
    t = x.dtype.type
    launch(_col2im_act, x.size, x, cols, kh, kw, stride, pad_top, pad_left, ho, wo, bias, act, t(alpha), t(1))


def conv_transpose_act(y, x, w2, bias, kh, kw, stride, pad_top, pad_left, activation=None, alpha=1.0, ws=None,
                       stats=None, pre=None, pre_alpha=1.0):
    """y = act(col2im(x @ w2) + bias): a transposed convolution, w2 (C, (i, j, O) + padding), as one
    GEMM into a cols buffer, then col2im_act. ws: the Workspace for cols (None: the backend's SCRATCH).
    stats (2, O), when given: bn_stats of y, as its own reduction over y. pre, when given: x
    normalised into a buffer of ws first (read_normalised)."""
    x = read_normalised(x, pre, pre_alpha, ws, "conv_transpose_act_pre")
    n, h, w, c = x.shape
    if w2.shape[0] != c:
        raise ValueError(f"conv_transpose_act: w2 {tuple(w2.shape)} does not fit x {tuple(x.shape)}")
    cols = (SCRATCH if ws is None else ws).buffer("conv_transpose_act", (n * h * w, w2.shape[1]), w2.dtype)
    gemm(cols, x.reshape(n * h * w, c), w2)  # (N*H*W, (i, j, O) + padding)
    col2im_act(y, cols, kh, kw, stride, pad_top, pad_left, bias, activation, alpha)
    if stats is not None:
        bn_stats(stats[0], stats[1], y.reshape(-1, y.shape[3]))


# ---------------------------------------------------------------- GEMM + per-column affine + activation

@cuda.jit(cache=True)
def _affine_act(y, bias, scale, shift, relu, act, alpha, one):
    """y[m, j] = act(r(y[m, j] + bias[j]) * scale[j] + shift[j]), over the flat y; r = max(., 0) if relu."""
    o = bias.size
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        j = i % o
        v = y[i] + bias[j]
        if relu and v < 0:
            v = v * 0
        y[i] = _activate(v * scale[j] + shift[j], act, alpha, one)


def dense_act(y, x, w, bias, scale, shift, activation=None, alpha=1.0, ws=None):
    """y = act((x @ w + bias) * scale + shift), y (N, O): the GEMM straight into y, then one pass.
    ws is accepted for the common signature; nothing here needs a buffer of the caller's."""
    act = _act_code(activation)
    per_channel(y, bias, scale, shift)
    gemm(y, x, w)
    t = y.dtype.type
    launch(_affine_act, y.size, flat(y), bias, scale, shift, False, act, t(alpha), t(1))


def conv_act(y, x, w, bias, scale, shift, kh, kw, stride, pad_top, pad_left, relu=False, activation=None,
             alpha=1.0, ws=None, stats=None):
    """y = act(r(im2col(x) @ w + bias) * scale + shift), w ((i, j, C), O), r = max(., 0) if relu: the
    patches gathered into cols (from ws, else the backend's SCRATCH), the GEMM straight into y, one pass.
    stats (2, O), when given: bn_stats of y, as its own reduction over y."""
    act = _act_code(activation)
    n, ho, wo, o = y.shape
    if tuple(w.shape) != (kh * kw * x.shape[3], o):
        raise ValueError(f"conv_act: w {tuple(w.shape)} does not fit x {tuple(x.shape)} and y {tuple(y.shape)}")
    per_channel(y, bias, scale, shift)
    cols = (SCRATCH if ws is None else ws).buffer("conv_act", (n * ho * wo, w.shape[0]), w.dtype)
    gather_taps(cols, x, ho, wo, stride, np.arange(kh) - pad_top, np.arange(kw) - pad_left)
    y2 = y.reshape(n * ho * wo, o)
    gemm(y2, cols, w)
    t = y.dtype.type
    launch(_affine_act, y.size, flat(y), bias, scale, shift, bool(relu), act, t(alpha), t(1))
    if stats is not None:
        bn_stats(stats[0], stats[1], y2)


# ---------------------------------------------------------------- BatchNorm folded into the weights

@cuda.jit(cache=True)
def _fold_weights(w2, kernel, scale):
    """w2[o, (i,j,c)] = kernel[i,j,c,o] * scale[c]; 0 in the padding columns past KH*KW*C."""
    kw, c = kernel.shape[1], kernel.shape[2]
    used = kernel.shape[0] * kw * c
    width = w2.shape[1]
    for e in range(cuda.grid(1), w2.size, cuda.gridsize(1)):
        o = e // width
        col = e - o * width
        if col < used:
            tap = col // c
            ch = col - tap * c
            i = tap // kw
            w2[o, col] = kernel[i, tap - i * kw, ch, o] * scale[ch]
        else:
            w2[o, col] = 0


@cuda.jit(cache=True)
def _fold_bias(b2, bias, scale, shift):
    """b2[c] = bias[c] * scale[c] + shift[c]."""
    for c in range(cuda.grid(1), b2.size, cuda.gridsize(1)):
        b2[c] = bias[c] * scale[c] + shift[c]


def fold_adjoint_weights(w2, b2, kernel, bias, scale, shift):
    """w2[o, (i,j,c)] = kernel[i,j,c,o] * scale[c], 0 in padding columns; b2[c] = bias[c]*scale[c] + shift[c]."""
    kh, kw, c, o = kernel.shape
    if w2.shape[0] != o or w2.shape[1] < kh * kw * c:
        raise ValueError(f"fold_adjoint_weights: w2 {tuple(w2.shape)} does not fit kernel {tuple(kernel.shape)}")
    per_channel(b2, bias, scale, shift)
    if b2.size != c:
        raise ValueError(f"fold_adjoint_weights: {b2.size} biases for {c} output channels")
    launch(_fold_weights, w2.size, w2, kernel, scale)
    launch(_fold_bias, b2.size, b2, bias, scale, shift)
