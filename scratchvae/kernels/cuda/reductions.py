"""Column reductions on CUDA, deterministic: per-block partial sums, then a second pass that adds
them in a fixed order (no atomics). Also the block-level sums and the flat-reduction launcher that
the BatchNorm, optimizer and loss kernels build on. Kernels with shared arrays are built per dtype.
"""

import functools

import numba
import numpy as np
from numba import cuda

from scratchvae.kernels.cuda.arrays import SCRATCH
from scratchvae.kernels.cuda.launch import THREADS, blocks, launch, per_channel

RX, RY = 32, 8       # column reductions: RX columns x RY row-threads per block
ROWS_PER_CHUNK = 256  # column reductions: rows per block before a second pass
MAX_CHUNKS = 1024


@functools.cache
def device_sums(dtype):
    """(column_total, block_total): device functions summing a value over a block's threads."""
    ft = numba.from_dtype(np.dtype(dtype))

    @cuda.jit(device=True)
    def column_total(shared, value):
        """Sum of `value` over the block's RY row-threads of this column; valid where threadIdx.y == 0."""
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        shared[ty, tx] = value
        cuda.syncthreads()
        total = ft(0)
        if ty == 0:
            for k in range(RY):
                total += shared[k, tx]
        return total

    @cuda.jit(device=True)
    def block_total(shared, value):
        """Tree sum of `value` over a 1-D block of THREADS threads, in a fixed order."""
        tid = cuda.threadIdx.x
        shared[tid] = value
        cuda.syncthreads()
        step = THREADS // 2
        while step > 0:
            if tid < step:
                shared[tid] += shared[tid + step]
            cuda.syncthreads()
            step //= 2
        return shared[0]

    return column_total, block_total


@functools.cache
def column_kernels(dtype):
    """{name: kernel}: col_sums and centered_sq_sums (per-chunk partials), finish_cols (their sum)."""
    ft = numba.from_dtype(np.dtype(dtype))
    column_total, _ = device_sums(dtype)

    @cuda.jit
    def col_sums(part, a, chunk):
        """part[k, c] = sum of a[m, c] over the rows m of chunk k."""
        sh = cuda.shared.array((RY, RX), ft)
        c = cuda.blockIdx.x * RX + cuda.threadIdx.x
        k = cuda.blockIdx.y
        acc = ft(0)
        if c < a.shape[1]:
            for r in range(k * chunk + cuda.threadIdx.y, min(a.shape[0], (k + 1) * chunk), RY):
                acc += a[r, c]
        total = column_total(sh, acc)
        if cuda.threadIdx.y == 0 and c < a.shape[1]:
            part[k, c] = total

    @cuda.jit
    def centered_sq_sums(part, a, mean, chunk):
        """part[k, c] = sum of (a[m, c] - mean[c])^2 over the rows m of chunk k."""
        sh = cuda.shared.array((RY, RX), ft)
        c = cuda.blockIdx.x * RX + cuda.threadIdx.x
        k = cuda.blockIdx.y
        acc = ft(0)
        if c < a.shape[1]:
            mu = mean[c]
            for r in range(k * chunk + cuda.threadIdx.y, min(a.shape[0], (k + 1) * chunk), RY):
                d = a[r, c] - mu
                acc += d * d
        total = column_total(sh, acc)
        if cuda.threadIdx.y == 0 and c < a.shape[1]:
            part[k, c] = total

    @cuda.jit
    def finish_cols(out, part, factor):
        """out[c] = factor * sum_k part[k, c], k in order."""
        for c in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            acc = ft(0)
            for k in range(part.shape[0]):
                acc += part[k, c]
            out[c] = acc * factor

    return {"col_sums": col_sums, "centered_sq_sums": centered_sq_sums, "finish_cols": finish_cols}


def column_launch(a):
    """Grid, block and rows per chunk for a column reduction over a (M, C) array."""
    m, c = a.shape
    chunks = max(1, min(-(-m // ROWS_PER_CHUNK), MAX_CHUNKS))
    chunk = -(-m // chunks)
    return (-(-c // RX), chunks), (RX, RY), chunks, chunk


@functools.cache
def _finish_flat(dtype):
    """The second pass of flat_reduce for one dtype."""
    ft = numba.from_dtype(np.dtype(dtype))
    _, block_total = device_sums(dtype)

    @cuda.jit
    def finish_flat(out, part, factor):
        """out[0] = factor * sum_k part[k]: one block, strided per thread then a tree."""
        sh = cuda.shared.array(THREADS, ft)
        acc = ft(0)
        for k in range(cuda.threadIdx.x, part.size, THREADS):
            acc += part[k]
        total = block_total(sh, acc)
        if cuda.threadIdx.x == 0:
            out[0] = total * factor

    return finish_flat


def flat_reduce(out, partials, n, dtype, factor, *args):
    """out[0] = factor * (sum of a per-element term over n elements): partials(part, *args) writes one
    sum per block of a 1-D grid, then one block adds them up in a fixed order."""
    nblocks = blocks(n)
    part = SCRATCH.buffer("flat_part", (nblocks,), dtype)
    partials[nblocks, THREADS](part, *args)
    _finish_flat(dtype)[1, THREADS](out, part, np.dtype(dtype).type(factor))


def sum_rows(out, a):
    """out[c] = sum_m a[m, c]."""
    per_channel(a, out)
    r = column_kernels(a.dtype)
    grid, block, chunks, chunk = column_launch(a)
    part = SCRATCH.buffer("part1", (chunks, a.shape[1]), a.dtype)
    r["col_sums"][grid, block](part, a, chunk)
    launch(r["finish_cols"], out.size, out, part, a.dtype.type(1))


def bn_stats(mean, var, x):
    """mean[c] = mean_m x[m,c]; var[c] = mean_m (x[m,c] - mean[c])^2 (biased, two passes)."""
    per_channel(x, mean, var)
    r = column_kernels(x.dtype)
    grid, block, chunks, chunk = column_launch(x)
    part = SCRATCH.buffer("part1", (chunks, x.shape[1]), x.dtype)
    inv_m = x.dtype.type(1.0 / x.shape[0])
    r["col_sums"][grid, block](part, x, chunk)
    launch(r["finish_cols"], mean.size, mean, part, inv_m)
    r["centered_sq_sums"][grid, block](part, x, mean, chunk)
    launch(r["finish_cols"], var.size, var, part, inv_m)


def centered_sq_sums(out, x, mean):
    """out[c] = sum_m (x[m,c] - mean[c])^2."""
    per_channel(x, out, mean)
    r = column_kernels(x.dtype)
    grid, block, chunks, chunk = column_launch(x)
    part = SCRATCH.buffer("part1", (chunks, x.shape[1]), x.dtype)
    r["centered_sq_sums"][grid, block](part, x, mean, chunk)
    launch(r["finish_cols"], out.size, out, part, x.dtype.type(1))
