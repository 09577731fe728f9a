"""Convolution gathers and scatters on the CPU (NHWC): im2col by taps, phase scatter, col2im, and
nearest-neighbour upsampling by 2 with its adjoint; and the GEMMs of a convolution's patches
(conv_gemms), run piece by piece on the cores.

cols rows are output pixels (n, p, q), columns (tap, channel). Every kernel is a gather or writes
disjoint slices, parallel over (image, row): never a += into a slot two iterations share.
"""

import numpy as np
from numba import njit, prange

from scratchvae.kernels import threads
from scratchvae.kernels.cpu import schedule, winograd
from scratchvae.kernels.cpu.arrays import empty
from scratchvae.kernels.cpu.batchnorm import (add_grad_sums, bn_act_grad_sums, normalise_rows,
                                              normalised_copy, pre_affine)
from scratchvae.kernels.cpu.jit import FASTMATH
from scratchvae.kernels.workspace import Workspace

# The patch buffers of conv_gemms when the caller passes no workspace.
WORKSPACE = Workspace(empty)


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _gather_piece(cols, x, i0, i1, p0, p1, wo, stride, offs_h, offs_w):
    """cols[((b - i0) * (p1 - p0) + p - p0) * wo + q, (t,u,c)] = x[b, stride*p + offs_h[t],
    stride*q + offs_w[u], c] (0 outside x) for images i0 <= b < i1 and output rows p0 <= p < p1."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    th, tw = offs_h.size, offs_w.size
    zero = x.dtype.type(0)
    row = 0
    for b in range(i0, i1):
        for p in range(p0, p1):
            for q in range(wo):
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
                                cols[row, base + ch] = zero
                row += 1


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _gather_taps(cols, x, ho, wo, stride, offs_h, offs_w):
    for r in prange(x.shape[0] * ho):  # an iteration per output row p of image b
        b = r // ho
        p = r - b * ho
        _gather_piece(cols[r * wo:(r + 1) * wo], x, b, b + 1, p, p + 1, wo, stride, offs_h, offs_w)


def gather_taps(cols, x, ho, wo, stride, offs_h, offs_w):
    """cols[(n,p,q), (t,u,c)] = x[n, stride*p + offs_h[t], stride*q + offs_w[u], c], 0 outside x."""
    _gather_taps(cols, x, ho, wo, stride, np.asarray(offs_h, np.int64), np.asarray(offs_w, np.int64))


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


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _upsample_nearest(y, x):
    n, h, w, c = x.shape
    for r in prange(n * h):  # one input row: it writes its own two output rows
        b = r // h
        i = r - b * h
        for j in range(w):
            for a in range(2):
                for d in range(2):
                    for ch in range(c):
                        y[b, 2 * i + a, 2 * j + d, ch] = x[b, i, j, ch]


def upsample_nearest(y, x):
    """y[n, 2h + a, 2w + b, c] = x[n, h, w, c] for a, b in {0, 1}: parallel over input rows."""
    _upsample_nearest(y, x)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _upsample_nearest_backward(dx, dy):
    n, h, w, c = dx.shape
    for r in prange(n * h):  # one row of dx, summed from its own two rows of dy: no shared slot
        b = r // h
        i = r - b * h
        for j in range(w):
            for ch in range(c):
                dx[b, i, j, ch] = (dy[b, 2 * i, 2 * j, ch] + dy[b, 2 * i, 2 * j + 1, ch]) + \
                                  (dy[b, 2 * i + 1, 2 * j, ch] + dy[b, 2 * i + 1, 2 * j + 1, ch])


def upsample_nearest_backward(dx, dy):
    """dx[n, h, w, c] = sum of dy over the 2x2 block (2h + a, 2w + b): parallel over rows of dx."""
    _upsample_nearest_backward(dx, dy)


# ---------------------------------------------------------------- the GEMMs of a convolution's patches

def conv_gemms(y, dw, x, w, t, kh, kw, stride, pad_top, pad_left, ws=None, pre=None, pre_alpha=1.0, pre_sums=None):
    """With cols = im2col(x) ('same', Ho = ceil(H / stride)), rows (n, p, q), columns (i, j, C):
    dw = cols^T @ t (t: N*Ho*Wo rows), then y = cols @ w, each skipped when its output is None.
    Pieces of a few images or bands of output rows (schedule.pieces: bounded by their patches and
    their rows of y), split between the cores in a fixed way (core k takes pieces k, k + cores,
    ...): each gathers its patches into its own buffer
    and runs single-threaded GEMMs on them while they are in cache; each core sums its dw
    products in order and the cores' sums are added in order, so the result does not depend on
    timing. A piece's dw product reads its rows of t before its rows of y are written: y may be t.
    ws: the Workspace for the per-core buffers (None: this module's WORKSPACE). pre, when given: t is
    read through that BatchNorm (+ LeakyReLU), each piece's rows normalised into a buffer of the
    core just before its dw product (on the 25-product path, all of t first). pre_sums (2, C), when
    given with pre and y: bn_act_grad_sums of y against t, each piece's sums taken as it writes its
    rows of y (float64 per piece, added in the same order at every call)."""
    ws = WORKSPACE if ws is None else ws
    reads_t = dw is not None or pre_sums is not None
    norm = pre_affine(pre, pre_alpha, t.dtype) if reads_t else None
    n, h, wi, c = x.shape
    ho, wo = -(-h // stride), -(-wi // stride)
    width = kh * kw * c
    rows = n * ho * wo
    y2 = None if y is None else y.reshape(rows, -1)
    t2 = t.reshape(rows, -1) if reads_t else None
    if (y2 is not None and w.shape != (width, y2.shape[1])) or (dw is not None and dw.shape != (width, t2.shape[1])):
        raise ValueError(f"conv_gemms: w, dw, y or t do not fit x {x.shape} with a {kh}x{kw} stride-{stride} kernel")
    if pre_sums is not None and (norm is None or y2 is None or y2.shape[1] != t2.shape[1]):
        raise ValueError("conv_gemms: pre_sums needs pre, and y with t's channels")
    c_small = (t2 if y2 is None else y2).shape[1]
    if winograd.fits((n, ho, wo), x.shape[:3], c_small, c, kh, kw, stride, pad_top, pad_left):
        shape = (n, ho, wo, c_small)
        tn = normalised_copy(ws.buffer("pre_operand", t.shape, t.dtype) if norm else None, t, norm)
        winograd.gemms(None if y is None else y.reshape(shape), dw, x, w, None if dw is None else tn.reshape(shape), ws)
        if pre_sums is not None:
            bn_act_grad_sums(pre_sums[0], pre_sums[1], y2, t2, *pre, pre_alpha)
        return
    offs_h = np.arange(kh, dtype=np.int64) - pad_top
    offs_w = np.arange(kw, dtype=np.int64) - pad_left
    cores = schedule.workers()
    out_row_bytes = 0 if y2 is None else wo * y2.shape[1] * y2.dtype.itemsize  # y's rows bound a piece too
    pieces = schedule.pieces(n, ho, wo * width * x.dtype.itemsize, cores, out_row_bytes)
    parts = None if pre_sums is None else np.zeros((len(pieces), 2, t2.shape[1]))  # pre_sums's, a piece each
    mean = None if pre_sums is None else pre[0]

    def run(k, sums, order):
        started = False
        for j in order:
            i0, i1, p0, p1 = pieces[j]
            r0 = (i0 * ho + p0) * wo
            r1 = r0 + (i1 - i0) * (p1 - p0) * wo
            cols = ws.buffer(("patches", k), (r1 - r0, width), x.dtype)
            _gather_piece(cols, x, i0, i1, p0, p1, wo, stride, offs_h, offs_w)
            if dw is not None:
                rows = t2[r0:r1]
                if norm is not None:  # dw is taken against t as the BatchNorm would have written it
                    rows = ws.buffer(("conv_gemms_pre", k), rows.shape, rows.dtype)
                    normalise_rows(rows, t2[r0:r1], *norm)
                if started:
                    product = ws.buffer(("conv_gemms_dw", k), dw.shape, dw.dtype)
                    np.matmul(cols.T, rows, out=product)
                    sums += product
                else:
                    np.matmul(cols.T, rows, out=sums)
                started = True
            if y2 is not None:
                np.matmul(cols, w, out=y2[r0:r1])
                if parts is not None:  # the piece's rows of y and t from cache
                    add_grad_sums(parts[j], y2[r0:r1], t2[r0:r1], *norm[:2], mean, norm[2])
        if dw is not None and not started:
            sums[...] = 0

    split = False
    if cores > 1 and len(pieces) > 1:
        sums = [dw if k == 0 or dw is None else ws.buffer(("conv_gemms_sum", k), dw.shape, dw.dtype)
                for k in range(cores)]
        split = threads.on_each_core(lambda k: run(k, sums[k], range(k, len(pieces), cores)), cores)
        if split and dw is not None:
            for k in range(1, cores):
                dw += sums[k]
    if not split:
        run(0, dw, range(len(pieces)))  # one core, or BLAS's threads cannot be set: every piece in order
    if parts is not None:
        pre_sums[...] = parts.sum(axis=0)  # the same order at every call
