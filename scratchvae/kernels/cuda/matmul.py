"""GEMM on CUDA: out (+)= op(a) @ op(b) in WM x WN tiles through shared memory, split over k when
few tiles would leave the GPU idle (the slices are then summed in a fixed order: deterministic).

The kernels are built per dtype (shared arrays and accumulators need it at compile time).
"""

import functools

import numba
import numpy as np
from numba import cuda

from scratchvae.kernels.cuda.arrays import SCRATCH, fill
from scratchvae.kernels.cuda.launch import launch

# gemm: a block computes a WM x WN tile of out, stepping through k WK at a time in shared memory,
# with TPB x TPB threads, each holding 8 x 4 outputs in registers. (A 64 x 64 tile with 4 x 4 per
# thread ran at 5-7 TFLOP/s on an H200 against this one's 9.5-10.7: see benches/RESULTS.md.)
WM, WN, WK = 128, 64, 8
TPB = 16
# Shared row lengths = 4 mod 32 banks, so the transposing stores do not conflict. Named constants:
# shared.array shapes must be compile-time literals on a real GPU (the simulator accepts `WM + 4`).
WA, WB = WM + 4, WN + 4
SPLIT_BLOCKS = 264   # gemm: a grid of fewer tiles than this (two per H100/H200 SM) splits k ...
SPLIT_MIN_K = 1024   # ... into slices of at least this many k, summed afterwards in a fixed order
MAX_SPLITS = 256


def gemm(out, a, b, trans_a=False, trans_b=False, accumulate=False):
    """out (+)= op(a) @ op(b): WM x WN blocks through shared memory, 8 x 4 outputs per thread."""
    m, k = (a.shape[1], a.shape[0]) if trans_a else tuple(a.shape)
    k2, n = (b.shape[1], b.shape[0]) if trans_b else tuple(b.shape)
    if k != k2 or tuple(out.shape) != (m, n):
        raise ValueError(f"gemm: op(a) {(m, k)} @ op(b) {(k2, n)} does not fit out {tuple(out.shape)}")
    if m == 0 or n == 0:
        return
    if k == 0:
        if not accumulate:
            fill(out, 0)
        return
    tiles, sum_slices = _gemm_kernel(out.dtype)
    gx, gy = -(-n // WN), -(-m // WM)
    kslice = _k_slice(gx * gy, k)
    splits = -(-k // kslice)
    if splits == 1:
        unused = SCRATCH.buffer("gemm-no-slices", (1, 1, 1), out.dtype)
        tiles[(gx, gy, 1), (TPB, TPB)](out, unused, a, b, bool(trans_a), bool(trans_b), bool(accumulate), k)
        return
    # Few output tiles and a long k (weight gradients, thin layers): one grid would leave most of
    # the GPU idle, so each k slice gets its own tiles, summed afterwards in a fixed order.
    part = SCRATCH.buffer("gemm-slices", (splits, m, n), out.dtype)
    tiles[(gx, gy, splits), (TPB, TPB)](out, part, a, b, bool(trans_a), bool(trans_b), False, kslice)
    launch(sum_slices, m * n, out, part, bool(accumulate))


def _k_slice(tiles, k):
    """The k slice each grid layer of a gemm with `tiles` output tiles takes (k itself: no split)."""
    if tiles >= SPLIT_BLOCKS:
        return k
    splits = max(1, min(-(-SPLIT_BLOCKS // tiles), k // SPLIT_MIN_K, MAX_SPLITS))
    return -(-(-(-k // splits)) // WK) * WK  # rounded up to whole shared-memory steps


@functools.cache
def _gemm_kernel(dtype):
    ft = numba.from_dtype(np.dtype(dtype))

    @cuda.jit(device=True)
    def put(out, part, z, sliced, accumulate, i, j, v):
        if j < out.shape[1]:
            if sliced:
                part[z, i, j] = v
            elif accumulate:
                out[i, j] += v
            else:
                out[i, j] = v

    @cuda.jit(device=True)
    def load_a(a, trans_a, i, k, m, kdim):
        """op(a)[i, k], 0 outside."""
        if i < m and k < kdim:
            return a[k, i] if trans_a else a[i, k]
        return ft(0)

    @cuda.jit(device=True)
    def load_b(b, trans_b, k, j, kdim, n):
        """op(b)[k, j], 0 outside."""
        if k < kdim and j < n:
            return b[j, k] if trans_b else b[k, j]
        return ft(0)

    @cuda.jit(device=True)
    def put_row(out, part, z, sliced, accumulate, i, j, v0, v1, v2, v3):
        """Row i of one thread's outputs: columns j, j + 16, j + 32, j + 48."""
        if i < out.shape[0]:
            put(out, part, z, sliced, accumulate, i, j, v0)
            put(out, part, z, sliced, accumulate, i, j + 16, v1)
            put(out, part, z, sliced, accumulate, i, j + 32, v2)
            put(out, part, z, sliced, accumulate, i, j + 48, v3)

    @cuda.jit
    def gemm_tile(out, part, a, b, trans_a, trans_b, accumulate, kslice):
        """out[i, j] (+)= sum_k op(a)[i, k] op(b)[k, j] over one WM x WN tile of out.

        Thread (ty, tx) owns rows ty + 16 r (r < 8) and columns tx + 16 s (s < 4), as named scalars:
        numba leaves a local array in (slow, off-chip) local memory unless LLVM unrolls every loop
        that indexes it. The next k step's values are loaded into registers while this one's
        products run, and each thread's load positions are worked out once, not per k step.
        With several k slices (gridDim.z > 1), blockIdx.z takes k in [z * kslice, (z + 1) * kslice)
        and writes part[z, i, j] instead, for sum_slices to add up."""
        z = cuda.blockIdx.z
        sliced = cuda.gridDim.z > 1
        m, n = out.shape
        kfull = a.shape[0] if trans_a else a.shape[1]
        kbeg = z * kslice
        kdim = min(kfull, kbeg + kslice)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TPB + tx
        row0 = cuda.blockIdx.y * WM
        col0 = cuda.blockIdx.x * WN
        sa = cuda.shared.array((WK, WA), ft)  # sa[k, i] = op(a)[row0 + i, k0 + k]
        sb = cuda.shared.array((WK, WB), ft)  # sb[k, j] = op(b)[k0 + k, col0 + j]
        # This thread's four A slots (i + di q, k + dk q) and two B slots (k + ek q, j + ej q), q = 0, 1, ..:
        # consecutive threads walk the stored array's contiguous axis (coalesced loads).
        if trans_a:
            ia, ka, dia, dka = tid % WM, tid // WM, 0, 2
        else:
            ia, ka, dia, dka = tid // WK, tid % WK, 32, 0
        if trans_b:
            jb, kb, djb, dkb = tid // WK, tid % WK, 32, 0
        else:
            jb, kb, djb, dkb = tid % WN, tid // WN, 0, 4
        pa0 = load_a(a, trans_a, row0 + ia, kbeg + ka, m, kdim)
        pa1 = load_a(a, trans_a, row0 + ia + dia, kbeg + ka + dka, m, kdim)
        pa2 = load_a(a, trans_a, row0 + ia + 2 * dia, kbeg + ka + 2 * dka, m, kdim)
        pa3 = load_a(a, trans_a, row0 + ia + 3 * dia, kbeg + ka + 3 * dka, m, kdim)
        pb0 = load_b(b, trans_b, kbeg + kb, col0 + jb, kdim, n)
        pb1 = load_b(b, trans_b, kbeg + kb + dkb, col0 + jb + djb, kdim, n)
        c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = ft(0)
        c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = ft(0)
        c40 = c41 = c42 = c43 = c50 = c51 = c52 = c53 = ft(0)
        c60 = c61 = c62 = c63 = c70 = c71 = c72 = c73 = ft(0)
        for k0 in range(kbeg, kdim, WK):
            sa[ka, ia] = pa0
            sa[ka + dka, ia + dia] = pa1
            sa[ka + 2 * dka, ia + 2 * dia] = pa2
            sa[ka + 3 * dka, ia + 3 * dia] = pa3
            sb[kb, jb] = pb0
            sb[kb + dkb, jb + djb] = pb1
            cuda.syncthreads()
            k1 = k0 + WK  # the next step's loads are in flight during this step's products
            if k1 < kdim:
                pa0 = load_a(a, trans_a, row0 + ia, k1 + ka, m, kdim)
                pa1 = load_a(a, trans_a, row0 + ia + dia, k1 + ka + dka, m, kdim)
                pa2 = load_a(a, trans_a, row0 + ia + 2 * dia, k1 + ka + 2 * dka, m, kdim)
                pa3 = load_a(a, trans_a, row0 + ia + 3 * dia, k1 + ka + 3 * dka, m, kdim)
                pb0 = load_b(b, trans_b, k1 + kb, col0 + jb, kdim, n)
                pb1 = load_b(b, trans_b, k1 + kb + dkb, col0 + jb + djb, kdim, n)
            for kk in range(WK):
                b0, b1, b2, b3 = sb[kk, tx], sb[kk, tx + 16], sb[kk, tx + 32], sb[kk, tx + 48]
                a0, a1, a2, a3 = sa[kk, ty], sa[kk, ty + 16], sa[kk, ty + 32], sa[kk, ty + 48]
                c00 += a0 * b0
                c01 += a0 * b1
                c02 += a0 * b2
                c03 += a0 * b3
                c10 += a1 * b0
                c11 += a1 * b1
                c12 += a1 * b2
                c13 += a1 * b3
                c20 += a2 * b0
                c21 += a2 * b1
                c22 += a2 * b2
                c23 += a2 * b3
                c30 += a3 * b0
                c31 += a3 * b1
                c32 += a3 * b2
                c33 += a3 * b3
                a0, a1, a2, a3 = sa[kk, ty + 64], sa[kk, ty + 80], sa[kk, ty + 96], sa[kk, ty + 112]
                c40 += a0 * b0
                c41 += a0 * b1
                c42 += a0 * b2
                c43 += a0 * b3
                c50 += a1 * b0
                c51 += a1 * b1
                c52 += a1 * b2
                c53 += a1 * b3
                c60 += a2 * b0
                c61 += a2 * b1
                c62 += a2 * b2
                c63 += a2 * b3
                c70 += a3 * b0
                c71 += a3 * b1
                c72 += a3 * b2
                c73 += a3 * b3
            cuda.syncthreads()
        i = row0 + ty
        j = col0 + tx
        put_row(out, part, z, sliced, accumulate, i, j, c00, c01, c02, c03)
        put_row(out, part, z, sliced, accumulate, i + 16, j, c10, c11, c12, c13)
        put_row(out, part, z, sliced, accumulate, i + 32, j, c20, c21, c22, c23)
        put_row(out, part, z, sliced, accumulate, i + 48, j, c30, c31, c32, c33)
        put_row(out, part, z, sliced, accumulate, i + 64, j, c40, c41, c42, c43)
        put_row(out, part, z, sliced, accumulate, i + 80, j, c50, c51, c52, c53)
        put_row(out, part, z, sliced, accumulate, i + 96, j, c60, c61, c62, c63)
        put_row(out, part, z, sliced, accumulate, i + 112, j, c70, c71, c72, c73)

    @cuda.jit
    def sum_slices(out, part, accumulate):
        """out[i, j] (+)= sum_z part[z, i, j], z in order: deterministic."""
        n = out.shape[1]
        for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            i = t // n
            j = t - i * n
            total = out[i, j] if accumulate else ft(0)
            for z in range(part.shape[0]):
                total += part[z, i, j]
            out[i, j] = total

    return gemm_tile, sum_slices
