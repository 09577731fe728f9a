"""Convolution gathers and scatters on CUDA (NHWC): im2col by taps, phase scatter, col2im, the
phase weights of a conv adjoint, and nearest upsampling by 2 with its adjoint. Every kernel is a
gather or writes disjoint elements: no atomics.

Small index vectors (tap offsets) are uploaded once per distinct value and cached on the device.
"""

import functools

import numpy as np
from numba import cuda

from scratchvae.kernels.cuda import launch as launching  # its MAX_BLOCKS, read at call time
from scratchvae.kernels.cuda.arrays import SCRATCH, is_device_array
from scratchvae.kernels.cuda.batchnorm import bn_act_grad_sums, read_normalised
from scratchvae.kernels.cuda.launch import THREADS, launch
from scratchvae.kernels.cuda.matmul import gemm

COLS_BYTES = 256 * 2 ** 20  # conv_gemms: patches gathered per chunk on the device


@functools.lru_cache(maxsize=512)
def _ints_on_device(values):
    return cuda.to_device(np.asarray(values or (0,), dtype=np.int64))


def _ints(values):
    """Small index vectors (tap offsets) as cached device arrays: uploaded once per distinct value."""
    if is_device_array(values):
        return values
    return _ints_on_device(tuple(int(v) for v in values))


@cuda.jit(cache=True)
def _gather_taps(cols, x, ho, wo, stride, offs_h, offs_w, tw):
    """cols[(n,p,q), (t,u,c)] = x[n, stride*p + offs_h[t], stride*q + offs_w[u], c], 0 outside x.

    blockIdx.z is the image and blockIdx.y the tap (t, u), so each element costs two integer
    divisions rather than six; consecutive threads take consecutive channels (coalesced)."""
    _, h, w, c = x.shape
    img = cuda.blockIdx.z
    tu = cuda.blockIdx.y
    t = tu // tw
    oh = offs_h[t]
    ow = offs_w[tu - t * tw]
    col0 = tu * c
    row0 = img * ho * wo
    for i in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, ho * wo * c,
                   cuda.gridDim.x * cuda.blockDim.x):
        pq = i // c
        ch = i - pq * c
        p = pq // wo
        hh = p * stride + oh
        ww = (pq - p * wo) * stride + ow
        if hh >= 0 and hh < h and ww >= 0 and ww < w:
            cols[row0 + pq, col0 + ch] = x[img, hh, ww, ch]
        else:
            cols[row0 + pq, col0 + ch] = 0


def gather_taps(cols, x, ho, wo, stride, offs_h, offs_w):
    """cols[(n,p,q), (t,u,c)] = x[n, stride*p + offs_h[t], stride*q + offs_w[u], c], 0 outside x."""
    th, tw = len(offs_h), len(offs_w)
    if tuple(cols.shape) != (x.shape[0] * ho * wo, th * tw * x.shape[3]):
        raise ValueError(f"gather_taps: cols {tuple(cols.shape)} does not fit x {tuple(x.shape)}")
    n = x.shape[0]
    if cols.size == 0:
        return
    if n > 65535:
        raise ValueError(f"gather_taps: {n} images in one call; at most 65535 (the grid's z limit)")
    per_image = max(1, 4 * launching.MAX_BLOCKS // (th * tw * n))  # a few waves of blocks in all
    grid = (max(1, min(-(-ho * wo * x.shape[3] // THREADS), per_image)), th * tw, n)
    _gather_taps[grid, THREADS](cols, x, ho, wo, stride, _ints(offs_h), _ints(offs_w), tw)


@cuda.jit(cache=True)
def _col2im(x, cols, kh, kw, stride, pad_top, pad_left, ho, wo, zero):
    """x[n,h,w,c] = sum of the cols entries that im2col copied from (h, w): a gather, no races."""
    _, h, w, c = x.shape
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        ch = i % c
        rest = i // c
        ww = rest % w
        rest = rest // w
        hh = rest % h
        img = rest // h
        acc = zero
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
        x[img, hh, ww, ch] = acc


def col2im(x, cols, kh, kw, stride, pad_top, pad_left):
    """x[n,h,w,c] = sum over (p,q,i,j) with stride*p+i-pad_top = h, stride*q+j-pad_left = w of
    cols[(n,p,q), (i,j,c)], with Ho = ceil(H / stride): a gather, one thread per element of x."""
    n, h, w, c = x.shape
    ho, wo = -(-h // stride), -(-w // stride)
    if tuple(cols.shape) != (n * ho * wo, kh * kw * c):
        raise ValueError(f"col2im: cols {tuple(cols.shape)} does not fit x {tuple(x.shape)}")
    launch(_col2im, x.size, x, cols, kh, kw, stride, pad_top, pad_left, ho, wo, x.dtype.type(0))


@cuda.jit(cache=True)
def _upsample_nearest(y, x):
    """y[n, 2h + a, 2w + b, c] = x[n, h, w, c]: one thread per element of y."""
    _, ho, wo, c = y.shape
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        ch = i % c
        rest = i // c
        q = rest % wo
        rest = rest // wo
        p = rest % ho
        img = rest // ho
        y[img, p, q, ch] = x[img, p // 2, q // 2, ch]


def upsample_nearest(y, x):
    """y[n, 2h + a, 2w + b, c] = x[n, h, w, c] for a, b in {0, 1}: a gather, one thread per output."""
    n, h, w, c = x.shape
    if tuple(y.shape) != (n, 2 * h, 2 * w, c):
        raise ValueError(f"upsample_nearest: y {tuple(y.shape)} is not twice x {tuple(x.shape)}")
    launch(_upsample_nearest, y.size, y, x)


@cuda.jit(cache=True)
def _upsample_nearest_backward(dx, dy):
    """dx[n, h, w, c] = the sum of dy over its 2x2 block: one thread per element of dx."""
    _, h, w, c = dx.shape
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        ch = i % c
        rest = i // c
        q = rest % w
        rest = rest // w
        p = rest % h
        img = rest // h
        dx[img, p, q, ch] = (dy[img, 2 * p, 2 * q, ch] + dy[img, 2 * p, 2 * q + 1, ch]) + \
                            (dy[img, 2 * p + 1, 2 * q, ch] + dy[img, 2 * p + 1, 2 * q + 1, ch])


def upsample_nearest_backward(dx, dy):
    """dx[n, h, w, c] = sum over a, b in {0, 1} of dy[n, 2h + a, 2w + b, c]: a gather, one thread per input."""
    n, h, w, c = dx.shape
    if tuple(dy.shape) != (n, 2 * h, 2 * w, c):
        raise ValueError(f"upsample_nearest_backward: dy {tuple(dy.shape)} is not twice dx {tuple(dx.shape)}")
    launch(_upsample_nearest_backward, dx.size, dx, dy)


def conv_gemms(y, dw, x, w, t, kh, kw, stride, pad_top, pad_left, ws=None, pre=None, pre_alpha=1.0, pre_sums=None):
    """cols = im2col(x); dw = cols^T @ t, then y = cols @ w (either output may be None): the patches
    of a few images at a time (within COLS_BYTES) in one buffer from ws (else the backend's SCRATCH),
    dw accumulated over the chunks. pre, when given: t normalised into a buffer of ws first;
    pre_sums (with pre and y): bn_act_grad_sums of y against t, after the GEMMs."""
    raw = t
    if dw is not None and pre is not None:
        t = read_normalised(t, pre, pre_alpha, ws, "conv_gemms_pre")
    n, h, wi, c = x.shape
    ho, wo = -(-h // stride), -(-wi // stride)
    width, per = kh * kw * c, ho * wo
    step = max(1, min(n, COLS_BYTES // max(per * width * x.dtype.itemsize, 1)))
    offs_h, offs_w = np.arange(kh) - pad_top, np.arange(kw) - pad_left
    # t and y as (N*Ho*Wo, channels) matrices (the simulator's shapes take no negative index)
    t2 = None if dw is None else t.reshape(n * per, t.shape[t.ndim - 1])
    y2 = None if y is None else y.reshape(n * per, y.shape[y.ndim - 1])
    for i in range(0, n, step):
        j = min(n, i + step)
        cols = (SCRATCH if ws is None else ws).buffer("conv_gemms", ((j - i) * per, width), x.dtype)
        gather_taps(cols, x[i:j], ho, wo, stride, offs_h, offs_w)
        if dw is not None:
            gemm(dw, cols, t2[i * per:j * per], trans_a=True, accumulate=i > 0)
        if y is not None:
            gemm(y2[i * per:j * per], cols, w)
    if pre_sums is not None:
        if pre is None or y is None:
            raise ValueError("conv_gemms: pre_sums needs pre, and y with t's channels")
        c = raw.shape[raw.ndim - 1]
        bn_act_grad_sums(pre_sums[0], pre_sums[1], y2, raw.reshape(n * per, c), pre[0], pre[1], pre[2], pre[3],
                         pre_alpha)
