"""numba.cuda kernels: the same names and signatures as `reference`, on numba.cuda device arrays.

Outputs first, then inputs, then scalars; every array stays on the device, host code only launches.
Elementwise kernels use grid-stride loops; reductions are deterministic (per-block partials, then a
second pass in a fixed order, no atomics). With NUMBA_ENABLE_CUDASIM=1 they run in numba's simulator.
"""

import functools
import math
import warnings

import numba
import numpy as np
from numba import cuda
from numba.core.errors import NumbaPerformanceWarning

name = "cuda"

# Per-channel kernels launch one small grid by design; numba-cuda would warn at every such launch.
warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization",
                        category=NumbaPerformanceWarning)

# No fastmath anywhere: numba.cuda's fastmath=True also assumes no NaN/Inf (np.isnan must keep working).
# Module-level kernels are cached on disk; the per-dtype ones (closures) compile once per process.
THREADS = 256        # threads per block of the 1-D kernels
MAX_BLOCKS = 1024    # grid cap of the 1-D kernels; grid-stride loops cover the rest
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
RX, RY = 32, 8       # column reductions: RX columns x RY row-threads per block
ROWS_PER_CHUNK = 256  # column reductions: rows per block before a second pass
MAX_CHUNKS = 1024


def available():
    """(True, what runs) when numba.cuda sees a GPU or the simulator; else (False, why not)."""
    try:
        ok = cuda.is_available()
    except Exception as e:  # noqa: BLE001  (a broken driver or toolkit raises instead of answering)
        return False, f"numba.cuda failed to initialise: {e}"
    if not ok:
        return False, ("numba.cuda found no usable NVIDIA GPU and driver: run on a machine with one "
                       "(pip install 'scratchvae[cuda]' there), or use --device cpu")
    if numba.config.ENABLE_CUDASIM:
        return True, "CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    device_name = cuda.get_current_device().name
    return True, device_name.decode() if isinstance(device_name, bytes) else str(device_name)


# ---------------------------------------------------------------- memory

def empty(shape, dtype):
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def zeros(shape, dtype):
    a = empty(shape, dtype)
    fill(a, 0)
    return a


def is_device_array(a):
    """Whether `a` lives on the device (a numba.cuda array, real or simulated, or any CUDA array)."""
    return bool(getattr(type(a), "__cuda_ndarray__", False) or hasattr(type(a), "__cuda_array_interface__"))


def to_host(a):
    return a.copy_to_host() if is_device_array(a) else np.asarray(a)


def from_host(a):
    return a if is_device_array(a) else cuda.to_device(np.ascontiguousarray(a))


def may_share_memory(a, b):
    """Whether the byte ranges of two arrays (both device, or both host) overlap: np.may_share_memory."""
    (a0, a1), (b0, b1) = _byte_range(a), _byte_range(b)
    return a0 < b1 and b0 < a1


def _byte_range(a):
    iface = getattr(a, "__cuda_array_interface__", None)
    if iface is None:  # a host array, or the simulator's device array (a NumPy array in `_ary`)
        iface = np.asarray(getattr(a, "_ary", a)).__array_interface__
    lo = hi = iface["data"][0]
    itemsize = np.dtype(a.dtype).itemsize
    strides = iface.get("strides") or _c_strides(a.shape, itemsize)
    for n, s in zip(a.shape, strides):
        if n == 0:
            return lo, lo
        lo, hi = lo + min(0, (n - 1) * s), hi + max(0, (n - 1) * s)
    return lo, hi + itemsize


def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for n in reversed(tuple(shape)):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


_SCRATCH = {}


def _scratch(key, shape, dtype):
    """A device buffer kept across calls (one stream orders every use), grown when too small."""
    shape = tuple(int(d) for d in shape)
    size = math.prod(shape)
    buf = _SCRATCH.get((key, dtype))
    if buf is None or buf.size < size:
        buf = _SCRATCH[(key, dtype)] = cuda.device_array(max(size, 1), dtype=dtype)
    return buf[:size].reshape(shape)


@functools.lru_cache(maxsize=512)
def _ints_on_device(values):
    return cuda.to_device(np.asarray(values or (0,), dtype=np.int64))


def _ints(values):
    """Small index vectors (tap offsets) as cached device arrays: uploaded once per distinct value."""
    if is_device_array(values):
        return values
    return _ints_on_device(tuple(int(v) for v in values))


def _flat(a):
    return a.reshape(a.size)


def _blocks(n):
    return max(1, min(-(-n // THREADS), MAX_BLOCKS))


def _launch(kernel, n, *args):
    """One grid-stride launch over n items."""
    if n > 0:
        kernel[_blocks(n), THREADS](*args)


def _same_size(*arrays):
    # Device code has no bounds checks: a size mismatch would read or write past an allocation.
    for a in arrays[1:]:
        if a.size != arrays[0].size:
            raise ValueError(f"cuda kernel: arrays of shapes {tuple(arrays[0].shape)} and {tuple(a.shape)} "
                             "do not match")


def _per_channel(x, *vectors):
    """Check that every per-channel vector has one entry per column of x (m, c)."""
    c = x.shape[x.ndim - 1]  # the simulator's shapes take no negative index
    for v in vectors:
        if v.size != c:
            raise ValueError(f"cuda kernel: a vector of {v.size} entries for {c} channels")


# ---------------------------------------------------------------- elementwise kernels (flat)

@cuda.jit(cache=True)
def _fill(a, value):
    """a[i] = value."""
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


@cuda.jit(cache=True)
def _copy(out, a):
    """out[i] = a[i]."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i]


@cuda.jit(cache=True)
def _add(y, a):
    """y[i] += a[i]."""
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[i] += a[i]


@cuda.jit(cache=True)
def _bias_act(y, b, relu, zero):
    """y[m, c] = y[m, c] + b[c], then max(., 0) when relu (NaN becomes 0, as on the CPU)."""
    c = b.size
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        v = y[i] + b[i % c]
        if relu and not v > 0:
            v = zero
        y[i] = v


@cuda.jit(cache=True)
def _leaky(y, x, alpha):
    """y = x if x > 0 else alpha * x."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        y[i] = v if v > 0 else v * alpha


@cuda.jit(cache=True)
def _leaky_back(dx, dy, x, alpha):
    """dx = dy if x > 0 else alpha * dy."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        dx[i] = dy[i] if x[i] > 0 else dy[i] * alpha


@cuda.jit(cache=True)
def _sigmoid(y, x, one):
    """y = 1 / (1 + exp(-x)), with exp of a non-positive argument only."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        if v >= 0:
            y[i] = one / (one + math.exp(-v))
        else:
            e = math.exp(v)
            y[i] = e / (one + e)


@cuda.jit(cache=True)
def _sigmoid_back(dx, dy, y, one):
    """dx = dy * y * (1 - y)."""
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        dx[i] = dy[i] * y[i] * (one - y[i])


@cuda.jit(cache=True)
def _adam(p, m, v, g, alpha, one_minus_b1, one_minus_b2, epsilon, scale):
    """g' = scale*g; m += (g'-m)(1-b1); v += (g'^2-v)(1-b2); p -= alpha*m/(sqrt(v)+eps)."""
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gs = g[i] * scale
        m[i] += (gs - m[i]) * one_minus_b1
        v[i] += (gs * gs - v[i]) * one_minus_b2
        p[i] -= alpha * m[i] / (math.sqrt(v[i]) + epsilon)


@cuda.jit(cache=True)
def _affine_leaky(y, x, scale, shift, alpha):
    """y[m, c] = leaky(x[m, c] * scale[c] + shift[c]); alpha 1 is the plain affine map."""
    c = scale.size
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i] * scale[i % c] + shift[i % c]
        y[i] = v if v > 0 else v * alpha


@cuda.jit(cache=True)
def _bn_act_dx(dx, dy, x, scale, shift, alpha, k, b, off):
    """dx = k * g + b * x + off per channel, g = dy masked by the activation's slope (from x)."""
    c = scale.size
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        ch = i % c
        xv = x[i]
        g = dy[i]
        if xv * scale[ch] + shift[ch] <= 0:
            g = g * alpha
        dx[i] = k[ch] * g + b[ch] * xv + off[ch]


@cuda.jit(cache=True)
def _bn_coeffs(scale, shift, mean, invstd, gamma, beta):
    """scale = invstd * gamma; shift = beta - mean * scale (per channel)."""
    for c in range(cuda.grid(1), scale.size, cuda.gridsize(1)):
        s = invstd[c] * gamma[c]
        scale[c] = s
        shift[c] = beta[c] - mean[c] * s


@cuda.jit(cache=True)
def _bn_dx_coeffs(k, b, off, s1, s2, mean, invstd, gamma, inv_m):
    """k = gamma invstd; b = -k invstd (s2 invstd) / m; off = -b mean - k s1 / m (per channel)."""
    for c in range(cuda.grid(1), k.size, cuda.gridsize(1)):
        kc = gamma[c] * invstd[c]
        bc = -kc * invstd[c] * (s2[c] * invstd[c]) * inv_m
        k[c] = kc
        b[c] = bc
        off[c] = -bc * mean[c] - kc * s1[c] * inv_m


@cuda.jit(cache=True)
def _bn_invstd(invstd, var, eps, one):
    """invstd = 1 / sqrt(var + eps)."""
    for c in range(cuda.grid(1), var.size, cuda.gridsize(1)):
        invstd[c] = one / math.sqrt(var[c] + eps)


@cuda.jit(cache=True)
def _moving_update(moving, batch, m, one_minus_m):
    """moving = m * moving + (1 - m) * batch."""
    for c in range(cuda.grid(1), moving.size, cuda.gridsize(1)):
        moving[c] = m * moving[c] + one_minus_m * batch[c]


@cuda.jit(cache=True)
def _reparameterize(z, sigma, z_mean, z_log_var, eps, lo, hi, half):
    """sigma = exp(clip(lv, lo, hi) / 2); z = mu + sigma * eps."""
    for i in range(cuda.grid(1), z.size, cuda.gridsize(1)):
        lv = z_log_var[i]
        if lv < lo:
            lv = lo
        elif lv > hi:
            lv = hi
        s = math.exp(lv * half)
        sigma[i] = s
        z[i] = z_mean[i] + s * eps[i]


@cuda.jit(cache=True)
def _latent_grads(d_mean, d_logvar, dz, z_mean, z_log_var, eps, sigma, inv_n, half, half_inv_n,
                  one, zero, lo, hi):
    """d_mean = dz + mu/n; d_logvar = (dz*eps*sigma/2 + (sigma^2 - 1)/(2n)) * [lo <= lv <= hi]."""
    for i in range(cuda.grid(1), dz.size, cuda.gridsize(1)):
        s = sigma[i]
        lv = z_log_var[i]
        inside = one if lv >= lo and lv <= hi else zero
        d_mean[i] = dz[i] + z_mean[i] * inv_n
        d_logvar[i] = (dz[i] * eps[i] * s * half + (s * s - one) * half_inv_n) * inside


# ---------------------------------------------------------------- gathers and scatters

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


@cuda.jit(cache=True)
def _scatter_phase(x, part, stride, a, b, hm, wm):
    """x[n, stride*m + a, stride*m' + b, c] = part[(n,m,m'), c]."""
    c = part.shape[1]
    for i in range(cuda.grid(1), part.size, cuda.gridsize(1)):
        src = i // c
        ch = i - src * c
        img = src // (hm * wm)
        mm = src - img * (hm * wm)
        m = mm // wm
        m2 = mm - m * wm
        x[img, stride * m + a, stride * m2 + b, ch] = part[src, ch]


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


@cuda.jit(cache=True)
def _gather_weights(wsub, kernel, taps_h, taps_w, tw):
    """wsub[(t,u,o), c] = kernel[taps_h[t], taps_w[u], c, o]."""
    c = kernel.shape[2]
    o = kernel.shape[3]
    for i in range(cuda.grid(1), wsub.size, cuda.gridsize(1)):
        row = i // c
        ch = i - row * c
        tu = row // o
        oo = row - tu * o
        t = tu // tw
        u = tu - t * tw
        wsub[row, ch] = kernel[taps_h[t], taps_w[u], ch, oo]


# ---------------------------------------------------------------- kernels built per dtype

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


@functools.cache
def _reductions(dtype):
    """The reduction kernels for one dtype (shared arrays and accumulators need it at compile time)."""
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
    def bn_act_sums(part1, part2, dy, x, mean, scale, shift, alpha, chunk):
        """Per chunk k: part1 = sum g, part2 = sum g * (x - mean), g = dy masked by the activation."""
        sh1 = cuda.shared.array((RY, RX), ft)
        sh2 = cuda.shared.array((RY, RX), ft)
        c = cuda.blockIdx.x * RX + cuda.threadIdx.x
        k = cuda.blockIdx.y
        acc1 = ft(0)
        acc2 = ft(0)
        if c < x.shape[1]:
            for r in range(k * chunk + cuda.threadIdx.y, min(x.shape[0], (k + 1) * chunk), RY):
                xv = x[r, c]
                g = dy[r, c]
                if xv * scale[c] + shift[c] <= 0:
                    g = g * alpha
                acc1 += g
                acc2 += g * (xv - mean[c])
        total1 = column_total(sh1, acc1)
        total2 = column_total(sh2, acc2)
        if cuda.threadIdx.y == 0 and c < x.shape[1]:
            part1[k, c] = total1
            part2[k, c] = total2

    @cuda.jit
    def finish_cols(out, part, factor):
        """out[c] = factor * sum_k part[k, c], k in order."""
        for c in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            acc = ft(0)
            for k in range(part.shape[0]):
                acc += part[k, c]
            out[c] = acc * factor

    @cuda.jit
    def bn_back_coeffs(dgamma, dbeta, k, b, off, part1, part2, mean, invstd, gamma, inv_m, batch):
        """dbeta = sum part1; dgamma = invstd sum part2; dx = k g + b x + off with k = gamma invstd,
        and with batch statistics b = -k invstd dgamma / m, off = -b mean - k dbeta / m (else 0)."""
        for c in range(cuda.grid(1), dgamma.size, cuda.gridsize(1)):
            s1 = ft(0)
            s2 = ft(0)
            for j in range(part1.shape[0]):
                s1 += part1[j, c]
                s2 += part2[j, c]
            dbeta[c] = s1
            dg = s2 * invstd[c]
            dgamma[c] = dg
            kc = gamma[c] * invstd[c]
            k[c] = kc
            if batch:
                bc = -kc * invstd[c] * dg * inv_m
                b[c] = bc
                off[c] = -bc * mean[c] - kc * s1 * inv_m
            else:
                b[c] = 0
                off[c] = 0

    @cuda.jit
    def sq_partials(part, a):
        """part[block] = sum over this block's grid-stride elements of a^2."""
        sh = cuda.shared.array(THREADS, ft)
        acc = ft(0)
        for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
            acc += a[i] * a[i]
        total = block_total(sh, acc)
        if cuda.threadIdx.x == 0:
            part[cuda.blockIdx.x] = total

    @cuda.jit
    def mse_partials(part, dx_hat, x_hat, x, scale):
        """dx_hat = scale (x_hat - x); part[block] = sum of (x_hat - x)^2 over this block's elements."""
        sh = cuda.shared.array(THREADS, ft)
        acc = ft(0)
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            d = x_hat[i] - x[i]
            dx_hat[i] = d * scale
            acc += d * d
        total = block_total(sh, acc)
        if cuda.threadIdx.x == 0:
            part[cuda.blockIdx.x] = total

    @cuda.jit
    def kl_partials(part, z_mean, z_log_var, lo, hi):
        """part[block] = sum of (1 + lv - mu^2 - exp(lv)), lv clipped to [lo, hi]."""
        sh = cuda.shared.array(THREADS, ft)
        acc = ft(0)
        for i in range(cuda.grid(1), z_mean.size, cuda.gridsize(1)):
            lv = z_log_var[i]
            if lv < lo:
                lv = lo
            elif lv > hi:
                lv = hi
            mu = z_mean[i]
            acc += ft(1) + lv - mu * mu - math.exp(lv)
        total = block_total(sh, acc)
        if cuda.threadIdx.x == 0:
            part[cuda.blockIdx.x] = total

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

    return {"col_sums": col_sums, "centered_sq_sums": centered_sq_sums, "bn_act_sums": bn_act_sums,
            "finish_cols": finish_cols, "bn_back_coeffs": bn_back_coeffs, "sq_partials": sq_partials,
            "mse_partials": mse_partials, "kl_partials": kl_partials, "finish_flat": finish_flat}


def _column_launch(a):
    """Grid, block and rows per chunk for a column reduction over a (M, C) array."""
    m, c = a.shape
    chunks = max(1, min(-(-m // ROWS_PER_CHUNK), MAX_CHUNKS))
    chunk = -(-m // chunks)
    return (-(-c // RX), chunks), (RX, RY), chunks, chunk


def _flat_reduce(out, kernel_name, n, dtype, factor, *args):
    """out[0] = factor * (sum of a per-element term): per-block partials, then one block sums them."""
    r = _reductions(dtype)
    blocks = _blocks(n)
    part = _scratch("flat_part", (blocks,), dtype)
    r[kernel_name][blocks, THREADS](part, *args)
    r["finish_flat"][1, THREADS](out, part, np.dtype(dtype).type(factor))


# ---------------------------------------------------------------- the kernel API

def fill(a, value):
    """a[...] = value."""
    _launch(_fill, a.size, _flat(a), a.dtype.type(value))


def copy(out, a):
    """out[...] = a, device to device."""
    _same_size(out, a)
    _launch(_copy, out.size, _flat(out), _flat(a))


def add(y, a):
    """y += a."""
    _same_size(y, a)
    _launch(_add, y.size, _flat(y), _flat(a))


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
        unused = _scratch("gemm-no-slices", (1, 1, 1), out.dtype)
        tiles[(gx, gy, 1), (TPB, TPB)](out, unused, a, b, bool(trans_a), bool(trans_b), bool(accumulate), k)
        return
    # Few output tiles and a long k (weight gradients, thin layers): one grid would leave most of
    # the GPU idle, so each k slice gets its own tiles, summed afterwards in a fixed order.
    part = _scratch("gemm-slices", (splits, m, n), out.dtype)
    tiles[(gx, gy, splits), (TPB, TPB)](out, part, a, b, bool(trans_a), bool(trans_b), False, kslice)
    _launch(sum_slices, m * n, out, part, bool(accumulate))


def _k_slice(tiles, k):
    """The k slice each grid layer of a gemm with `tiles` output tiles takes (k itself: no split)."""
    if tiles >= SPLIT_BLOCKS:
        return k
    splits = max(1, min(-(-SPLIT_BLOCKS // tiles), k // SPLIT_MIN_K, MAX_SPLITS))
    return -(-(-(-k // splits)) // WK) * WK  # rounded up to whole shared-memory steps


def add_bias(y, b):
    """y[m, c] += b[c]."""
    _per_channel(y, b)
    _launch(_bias_act, y.size, _flat(y), b, False, y.dtype.type(0))


def bias_relu(y, b):
    """y[m, c] = max(y[m, c] + b[c], 0)."""
    _per_channel(y, b)
    _launch(_bias_act, y.size, _flat(y), b, True, y.dtype.type(0))


def relu_forward(y, x):
    """y = max(x, 0)."""
    _same_size(y, x)
    _launch(_leaky, x.size, _flat(y), _flat(x), x.dtype.type(0))


def relu_backward(dx, dy, y):
    """dx = dy * (y > 0)."""
    _same_size(dx, dy, y)
    _launch(_leaky_back, y.size, _flat(dx), _flat(dy), _flat(y), dy.dtype.type(0))


def leaky_forward(y, x, alpha):
    """y = x if x > 0 else alpha * x."""
    _same_size(y, x)
    _launch(_leaky, x.size, _flat(y), _flat(x), x.dtype.type(alpha))


def leaky_backward(dx, dy, x, alpha):
    """dx = dy if x > 0 else alpha * dy."""
    _same_size(dx, dy, x)
    _launch(_leaky_back, x.size, _flat(dx), _flat(dy), _flat(x), dy.dtype.type(alpha))


def sigmoid_forward(y, x):
    """y = 1 / (1 + exp(-x)), written to avoid overflow for large |x|."""
    _same_size(y, x)
    _launch(_sigmoid, x.size, _flat(y), _flat(x), x.dtype.type(1))


def sigmoid_backward(dx, dy, y):
    """dx = dy * y * (1 - y)."""
    _same_size(dx, dy, y)
    _launch(_sigmoid_back, y.size, _flat(dx), _flat(dy), _flat(y), y.dtype.type(1))


def sum_rows(out, a):
    """out[c] = sum_m a[m, c]."""
    _per_channel(a, out)
    r = _reductions(a.dtype)
    grid, block, chunks, chunk = _column_launch(a)
    part = _scratch("part1", (chunks, a.shape[1]), a.dtype)
    r["col_sums"][grid, block](part, a, chunk)
    _launch(r["finish_cols"], out.size, out, part, a.dtype.type(1))


def bn_stats(mean, var, x):
    """mean[c] = mean_m x[m,c]; var[c] = mean_m (x[m,c] - mean[c])^2 (biased, two passes)."""
    _per_channel(x, mean, var)
    r = _reductions(x.dtype)
    grid, block, chunks, chunk = _column_launch(x)
    part = _scratch("part1", (chunks, x.shape[1]), x.dtype)
    inv_m = x.dtype.type(1.0 / x.shape[0])
    r["col_sums"][grid, block](part, x, chunk)
    _launch(r["finish_cols"], mean.size, mean, part, inv_m)
    r["centered_sq_sums"][grid, block](part, x, mean, chunk)
    _launch(r["finish_cols"], var.size, var, part, inv_m)


def _bn_scale_shift(x, mean, invstd, gamma, beta):
    """Device vectors scale = invstd * gamma, shift = beta - mean * scale."""
    _per_channel(x, mean, invstd, gamma, beta)
    c = mean.size
    scale = _scratch("bn_scale", (c,), x.dtype)
    shift = _scratch("bn_shift", (c,), x.dtype)
    _launch(_bn_coeffs, c, scale, shift, mean, invstd, gamma, beta)
    return scale, shift


def bn_forward(y, x, mean, invstd, gamma, beta):
    """y = (x - mean) * invstd * gamma + beta, as one affine pass."""
    _same_size(y, x)
    scale, shift = _bn_scale_shift(x, mean, invstd, gamma, beta)
    _launch(_affine_leaky, x.size, _flat(y), _flat(x), scale, shift, x.dtype.type(1))


def bn_act_forward(y, x, mean, invstd, gamma, beta, alpha):
    """y = leaky_alpha((x - mean) * invstd * gamma + beta); alpha 1 is plain BatchNorm."""
    _same_size(y, x)
    scale, shift = _bn_scale_shift(x, mean, invstd, gamma, beta)
    _launch(_affine_leaky, x.size, _flat(y), _flat(x), scale, shift, x.dtype.type(alpha))


def _bn_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha, batch):
    _same_size(dx, dy, x)
    _per_channel(x, dgamma, dbeta)
    t = x.dtype.type
    r = _reductions(x.dtype)
    c = mean.size
    scale, shift = _bn_scale_shift(x, mean, invstd, gamma, beta)
    grid, block, chunks, chunk = _column_launch(x)
    part1 = _scratch("part1", (chunks, c), x.dtype)
    part2 = _scratch("part2", (chunks, c), x.dtype)
    r["bn_act_sums"][grid, block](part1, part2, dy, x, mean, scale, shift, t(alpha), chunk)
    k, b, off = (_scratch(key, (c,), x.dtype) for key in ("bn_k", "bn_b", "bn_off"))
    _launch(r["bn_back_coeffs"], c, dgamma, dbeta, k, b, off, part1, part2, mean, invstd, gamma,
            t(1.0 / x.shape[0]), batch)
    _launch(_bn_act_dx, x.size, _flat(dx), _flat(dy), _flat(x), scale, shift, t(alpha), k, b, off)


def bn_act_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha):
    """Backward of bn_act_forward with batch statistics: column sums of g and g*(x-mean), then dx."""
    _bn_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha, True)


def bn_act_backward_frozen(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha):
    """Backward with constant (moving) statistics: dbeta = sum g, dgamma = sum g*xhat, dx = g*gamma*invstd."""
    _bn_backward(dx, dgamma, dbeta, dy, x, mean, invstd, gamma, beta, alpha, False)


def centered_sq_sums(out, x, mean):
    """out[c] = sum_m (x[m,c] - mean[c])^2."""
    _per_channel(x, out, mean)
    r = _reductions(x.dtype)
    grid, block, chunks, chunk = _column_launch(x)
    part = _scratch("part1", (chunks, x.shape[1]), x.dtype)
    r["centered_sq_sums"][grid, block](part, x, mean, chunk)
    _launch(r["finish_cols"], out.size, out, part, x.dtype.type(1))


def bn_act_grad_sums(s1, s2, dy, x, mean, invstd, gamma, beta, alpha):
    """s1[c] = sum_m g[m,c]; s2[c] = sum_m g[m,c] * (x[m,c] - mean[c]); g = dy through the activation."""
    _same_size(dy, x)
    _per_channel(x, s1, s2)
    r = _reductions(x.dtype)
    c = mean.size
    scale, shift = _bn_scale_shift(x, mean, invstd, gamma, beta)
    grid, block, chunks, chunk = _column_launch(x)
    part1 = _scratch("part1", (chunks, c), x.dtype)
    part2 = _scratch("part2", (chunks, c), x.dtype)
    r["bn_act_sums"][grid, block](part1, part2, dy, x, mean, scale, shift, x.dtype.type(alpha), chunk)
    one = x.dtype.type(1)
    _launch(r["finish_cols"], c, s1, part1, one)
    _launch(r["finish_cols"], c, s2, part2, one)


def bn_act_dx(dx, dy, x, mean, invstd, gamma, beta, alpha, s1, s2, count):
    """dx = gamma*invstd*(g - s1/count - (x-mean)*invstd^2*s2/count): s1, s2 summed over all `count` rows."""
    _same_size(dx, dy, x)
    _per_channel(x, s1, s2)
    t = x.dtype.type
    c = mean.size
    scale, shift = _bn_scale_shift(x, mean, invstd, gamma, beta)
    k, b, off = (_scratch(key, (c,), x.dtype) for key in ("bn_k", "bn_b", "bn_off"))
    _launch(_bn_dx_coeffs, c, k, b, off, s1, s2, mean, invstd, gamma, t(1.0 / count))
    _launch(_bn_act_dx, x.size, _flat(dx), _flat(dy), _flat(x), scale, shift, t(alpha), k, b, off)


def bn_invstd(invstd, var, eps):
    """invstd = 1 / sqrt(var + eps)."""
    _same_size(invstd, var)
    t = var.dtype.type
    _launch(_bn_invstd, var.size, invstd, var, t(eps), t(1))


def moving_update(moving, batch, momentum):
    """moving = momentum * moving + (1 - momentum) * batch."""
    _same_size(moving, batch)
    m = moving.dtype.type(momentum)
    _launch(_moving_update, moving.size, moving, batch, m, moving.dtype.type(1) - m)


def adam_update(p, m, v, g, alpha, beta_1, beta_2, epsilon, scale):
    """g' = scale*g; m += (g'-m)(1-b1); v += (g'^2-v)(1-b2); p -= alpha*m/(sqrt(v)+eps)."""
    _same_size(p, m, v, g)
    t = p.dtype.type
    _launch(_adam, p.size, _flat(p), _flat(m), _flat(v), _flat(g), t(alpha), t(1 - beta_1), t(1 - beta_2),
            t(epsilon), t(scale))


def sum_squares(out, a):
    """out[0] = sum_i a_i^2."""
    _flat_reduce(out, "sq_partials", a.size, a.dtype, 1, _flat(a))


def mse_and_grad(sq_sum, dx_hat, x_hat, x, scale):
    """sq_sum[0] = sum (x_hat - x)^2; dx_hat = scale * (x_hat - x)."""
    _same_size(dx_hat, x_hat, x)
    _flat_reduce(sq_sum, "mse_partials", x.size, x.dtype, 1, _flat(dx_hat), _flat(x_hat), _flat(x),
                 x.dtype.type(scale))


def kl_sum(out, z_mean, z_log_var, lo, hi):
    """out[0] = -1/2 sum (1 + lv - mu^2 - exp(lv)) over batch and latent, lv = clip(log s^2, lo, hi)."""
    _same_size(z_mean, z_log_var)
    t = z_mean.dtype.type
    _flat_reduce(out, "kl_partials", z_mean.size, z_mean.dtype, -0.5, _flat(z_mean), _flat(z_log_var),
                 t(lo), t(hi))


def reparameterize(z, sigma, z_mean, z_log_var, eps, lo, hi):
    """sigma = exp(clip(lv, lo, hi) / 2); z = mu + sigma * eps."""
    _same_size(z, sigma, z_mean, z_log_var, eps)
    t = z.dtype.type
    _launch(_reparameterize, z.size, _flat(z), _flat(sigma), _flat(z_mean), _flat(z_log_var), _flat(eps),
            t(lo), t(hi), t(0.5))


def latent_grads(d_mean, d_logvar, dz, z_mean, z_log_var, eps, sigma, lo, hi):
    """d_mean = dz + mu/n; d_logvar = (dz*eps*sigma/2 + (sigma^2-1)/(2n)) * [lo <= lv <= hi], n = batch."""
    _same_size(d_mean, d_logvar, dz, z_mean, z_log_var, eps, sigma)
    t = dz.dtype.type
    n = z_mean.shape[0]
    _launch(_latent_grads, dz.size, _flat(d_mean), _flat(d_logvar), _flat(dz), _flat(z_mean), _flat(z_log_var),
            _flat(eps), _flat(sigma), t(1.0 / n), t(0.5), t(0.5 / n), t(1), t(0), t(lo), t(hi))


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
    per_image = max(1, 4 * MAX_BLOCKS // (th * tw * n))  # a few waves of blocks in all
    grid = (max(1, min(-(-ho * wo * x.shape[3] // THREADS), per_image)), th * tw, n)
    _gather_taps[grid, THREADS](cols, x, ho, wo, stride, _ints(offs_h), _ints(offs_w), tw)


def scatter_phase(x, part, stride, a, b):
    """x[n, stride*m + a, stride*m' + b, c] = part[(n,m,m'), c]: one output phase of a strided map."""
    n, h, w, c = x.shape
    hm, wm = -(-(h - a) // stride), -(-(w - b) // stride)
    if tuple(part.shape) != (n * hm * wm, c):
        raise ValueError(f"scatter_phase: part {tuple(part.shape)} does not fit x {tuple(x.shape)}")
    _launch(_scatter_phase, part.size, x, part, stride, a, b, hm, wm)


def col2im(x, cols, kh, kw, stride, pad_top, pad_left):
    """x[n,h,w,c] = sum over (p,q,i,j) with stride*p+i-pad_top = h, stride*q+j-pad_left = w of
    cols[(n,p,q), (i,j,c)], with Ho = ceil(H / stride): a gather, one thread per element of x."""
    n, h, w, c = x.shape
    ho, wo = -(-h // stride), -(-w // stride)
    if tuple(cols.shape) != (n * ho * wo, kh * kw * c):
        raise ValueError(f"col2im: cols {tuple(cols.shape)} does not fit x {tuple(x.shape)}")
    _launch(_col2im, x.size, x, cols, kh, kw, stride, pad_top, pad_left, ho, wo, x.dtype.type(0))


def gather_weights(wsub, kernel, taps_h, taps_w):
    """wsub[(t,u,o), c] = kernel[taps_h[t], taps_w[u], c, o]: the phase weights of conv_adjoint."""
    c, o = kernel.shape[2], kernel.shape[3]
    if tuple(wsub.shape) != (len(taps_h) * len(taps_w) * o, c):
        raise ValueError(f"gather_weights: wsub {tuple(wsub.shape)} does not fit kernel {tuple(kernel.shape)}")
    _launch(_gather_weights, wsub.size, wsub, kernel, _ints(taps_h), _ints(taps_w), len(taps_w))
