"""Stride-2 3x3 'same' convolutions with 25 products where im2col takes 36: a Winograd F(2, 2) on the
CPU, for the seed's 128-channel blocks (the transposed convolutions' forward and the Conv2Ds' input
gradient; the Conv2Ds' forward and the transposed convolutions' input gradient; both weight gradients).

One dimension first. A 'same' stride-2 3-tap Conv2D on an even size has no padding at the start, so
its adjoint, the transposed convolution from a small map x to a big one y, is
    y[2p] = W0 x[p] + W2 x[p-1],   y[2p+1] = W1 x[p].
Take the small map in tiles of two (x[2t], x[2t+1]) and the big one in tiles of four. The two even
outputs of a tile are a 2-tap filter, which F(2, 2) gives with three products instead of four:
    a = x[2t-1] - x[2t]    b = x[2t]    c = x[2t+1] - x[2t]    d = x[2t+1]        (the input planes)
    P1 = a W2   P2 = b (W0 + W2)   P3 = c W0   P4 = b W1   P5 = d W1              (the products)
    y[4t] = P1 + P2   y[4t+1] = P4   y[4t+2] = P2 + P3   y[4t+3] = P5                (the output map)
Five products for four outputs where im2col takes six. In two dimensions the tile is 2x2 small and
4x4 big, and the products are the 25 pairs (Pk along rows, Pl along columns): 25 GEMMs of
(tiles x C_small) by (C_small x C_big) where im2col's GEMM is 36 of them. Products that read the
same input plane (b is read by P2 and P4) are one GEMM with their kernels side by side: 16 GEMMs,
one per plane (u, v), made as three batched calls (the planes read by one, two and four products).

The other directions are this one's adjoint, read backwards: a Conv2D from the big map z to the
small one takes the output map's transpose over z (dP), the GEMMs with the kernels transposed,
and the input planes' transpose back to the small map; the weight gradient is the sum over tiles of
dP^T @ planes, mapped back through the kernel combinations. Tiles of the small map cover two rows,
so a small output row 2t+1 also takes plane a of tile t+1: a band of tile rows hands that row to
the next band (a carry), and the bands of one image run in order on one core.

Kernels are per tap (KH, KW) matrices big x small, as conv_gemms' w and conv_act's w hold them
(rows (i, j, C_big)); conv_transpose_act's w2 holds their transposes side by side (C_small,
(i, j, C_big)). fits() says where this path applies; elsewhere the callers gather patches.
"""

import numpy as np
from numba import njit

from scratchvae.kernels import threads
from scratchvae.kernels.cpu import schedule
from scratchvae.kernels.cpu.jit import FASTMATH
from scratchvae.kernels.cpu.reductions import _add_moments, finish_moments, moment_parts

# One dimension: the input planes over (x[2t-1], x[2t], x[2t+1]), each product's plane and kernel
# combination over (W0, W1, W2), and the output map (big position 4t + m from the products).
PLANES_1D = np.array([[1, -1, 0], [0, 1, 0], [0, -1, 1], [0, 0, 1]])
PRODUCT_PLANE_1D = (0, 1, 2, 1, 3)
PRODUCT_KERNEL_1D = np.array([[0, 0, 1], [1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 0]])
OUTPUT_MAP_1D = np.array([[1, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 1]])

# Both dimensions: the 16 planes (u, v), ordered by how many products read them (9 planes of one, 6
# of two, (b, b) of four), and the 25 products (k, l) grouped by plane in that order: the planes
# of a group are one batched GEMM, GROUPS (count, first plane, planes).
_PRODUCTS_OF = [[k for k in range(5) if PRODUCT_PLANE_1D[k] == u] for u in range(4)]
PLANES = sorted(((u, v) for u in range(4) for v in range(4)), key=lambda uv: len(_PRODUCTS_OF[uv[0]]) *
                len(_PRODUCTS_OF[uv[1]]))
PRODUCTS = [(k, k2) for u, v in PLANES for k in _PRODUCTS_OF[u] for k2 in _PRODUCTS_OF[v]]
PLANE_COUNT = np.array([len(_PRODUCTS_OF[u]) * len(_PRODUCTS_OF[v]) for u, v in PLANES])
PLANE_FIRST = np.concatenate([[0], np.cumsum(PLANE_COUNT)])  # the plane's first product
GROUPS = [(int(n), int(np.argmax(PLANE_COUNT == n)), int((PLANE_COUNT == n).sum())) for n in (1, 2, 4)]
# KERNEL_MAP[p, i*3+j]: product p's combination of the taps, in PRODUCTS' order
KERNEL_MAP = np.array([np.outer(PRODUCT_KERNEL_1D[k], PRODUCT_KERNEL_1D[k2]).ravel() for k, k2 in PRODUCTS])

# In the kernels (which write PLANES_1D and OUTPUT_MAP_1D out by hand; the tests hold them to the
# tables): _SLOT[k, l], the product's index in PRODUCTS; _OUT_TERMS, _OUT_COUNTS: the products each
# big position 4m + m' of a tile sums.
_SLOT = np.full((5, 5), -1, np.int64)
for _i, (_k, _l) in enumerate(PRODUCTS):
    _SLOT[_k, _l] = _i
_PLANE = np.full((4, 4), -1, np.int64)  # _PLANE[u, v]: the plane's index in PLANES
for _i, (_u, _v) in enumerate(PLANES):
    _PLANE[_u, _v] = _i
_OUT_TERMS = np.array([([_SLOT[k, k2] for k in range(5) if OUTPUT_MAP_1D[m, k]
                         for k2 in range(5) if OUTPUT_MAP_1D[mm, k2]] * 4)[:4]  # padded by repeating
                       for m in range(4) for mm in range(4)], np.int64)
_OUT_COUNTS = np.array([OUTPUT_MAP_1D[m].sum() * OUTPUT_MAP_1D[mm].sum() for m in range(4) for mm in range(4)],
                       np.int64)

# Floats of padding after each plane's channels and each tile's products: rows of a power-of-two
# length (16 planes of 128 channels) would put the GEMMs' strided operands in the same cache sets.
PAD = 16
MIN_CHANNELS = 32  # fewer channels on either side: the GEMMs are too thin to gain (the 3-channel layers)
MIN_SMALL_PIXELS = 8192  # fewer small-map pixels in a call: the transforms and calls cost more than they save


def fits(small, big, c_small, c_big, kh, kw, stride, pad_top, pad_left):
    """Whether this path takes the convolution between small (N, H, W) and big (N, 2H, 2W) maps: a
    stride-2 3x3 kernel with no padding at the start, an even small map, enough channels and work."""
    n, h, w = small
    return (stride == 2 and kh == 3 and kw == 3 and pad_top == 0 and pad_left == 0 and h % 2 == 0
            and w % 2 == 0 and tuple(big) == (n, 2 * h, 2 * w) and min(c_small, c_big) >= MIN_CHANNELS
            and n * h * w >= MIN_SMALL_PIXELS)


# ---------------------------------------------------------------- the kernels' combinations

def small_by_big(w2, c_big):
    """The products' kernels (25, C_small, C_big) from w2 (C_small, (i, j, C_big) + padding)."""
    taps = w2[:, :9 * c_big].reshape(w2.shape[0], 9, c_big).transpose(1, 0, 2).reshape(9, -1)
    return (KERNEL_MAP.astype(w2.dtype) @ taps).reshape(25, w2.shape[0], c_big)


def plane_blocks_up(g):
    """Per group of planes, their products' kernels side by side: (planes, C_small, count * C_big)."""
    return [np.ascontiguousarray(g[PLANE_FIRST[p]:PLANE_FIRST[p + k]].reshape(k, n, *g.shape[1:])
                                 .transpose(0, 2, 1, 3).reshape(k, g.shape[1], n * g.shape[2]))
            for n, p, k in GROUPS]


def big_by_small(w):
    """The products' kernels (25 * C_big, C_small) from w ((i, j, C_big), C_small): plane p's block of
    rows (count * C_big, C_small) is its products' kernels stacked, as its GEMM takes them."""
    c_small = w.shape[1]
    return (KERNEL_MAP.astype(w.dtype) @ w.reshape(9, -1)).reshape(-1, c_small)


def weight_gradient(dw, sums):
    """dw ((i, j, C_big), C_small) = the taps' share of the products' gradients sums (25 * C_big, C_small)."""
    np.matmul(KERNEL_MAP.T.astype(sums.dtype), sums.reshape(25, -1), out=dw.reshape(9, -1))


# ---------------------------------------------------------------- transforms (Numba)

@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _planes(d, x, i0, i1, t0, t1, plane):
    """The input planes: d[tile, plane[u, v], c] = sum over r, r' of PLANES_1D[u, r] PLANES_1D[v, r']
    x[b, 2t-1+r, 2s-1+r', c] (0 outside x), tiles (b, t, s) for images i0..i1 and tile rows t0..t1,
    in that order. Along the rows first, into r (the four combinations of rows 2t-1, 2t, 2t+1, each
    column q at q + 1 after a column of zeros: no branch at the left edge), then along the columns."""
    w, c = x.shape[2], x.shape[3]
    tw = w // 2
    r = np.zeros((4, w + 1, c), x.dtype)
    tile = 0
    for b in range(i0, i1):
        for t in range(t0, t1):
            mid, low = x[b, 2 * t], x[b, 2 * t + 1]
            for q in range(w):
                ra, rb, rc, rd = r[0, q + 1], r[1, q + 1], r[2, q + 1], r[3, q + 1]
                m, lo = mid[q], low[q]
                for ch in range(c):
                    rb[ch] = m[ch]
                    rc[ch] = lo[ch] - m[ch]
                    rd[ch] = lo[ch]
                if t > 0:
                    up = x[b, 2 * t - 1, q]
                    for ch in range(c):
                        ra[ch] = up[ch] - m[ch]
                else:
                    for ch in range(c):
                        ra[ch] = -m[ch]
            for s in range(tw):
                out = d[tile]
                for u in range(4):
                    v0, v1, v2 = r[u, 2 * s], r[u, 2 * s + 1], r[u, 2 * s + 2]
                    oa, ob, oc, od = out[plane[u, 0]], out[plane[u, 1]], out[plane[u, 2]], out[plane[u, 3]]
                    for ch in range(c):
                        oa[ch] = v0[ch] - v1[ch]
                        ob[ch] = v1[ch]
                        oc[ch] = v2[ch] - v1[ch]
                        od[ch] = v2[ch]
                tile += 1


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _outputs(y, prod, i0, i1, t0, t1, terms, counts, bias, measure, sums):
    """y[b, 4t+m, 4s+m', c] = bias[c] + the sum of the products the output map sends there, for
    images i0..i1 and tile rows t0..t1. prod (tiles, 25 * C); position j = 4m + m' sums the
    counts[j] products whose columns start at terms[j]. Row by row of y, so that its writes run on;
    the loops read slices, whose indices Numba knows are not negative (row[offset + c] would not
    vectorise), and the activation is the caller's (a branch on it here, even untaken, kept these
    loops from vectorising: four times slower). When measure, sums (2, C) float64 also gets the sums
    of y and y^2 over what is written, four pixels at a time while they are in L1 (into arrays of
    its own, which LLVM knows alias nothing else: into sums directly, the loop did not vectorise)."""
    s1 = np.zeros(y.shape[3], np.float64)
    s2 = np.zeros(y.shape[3], np.float64)
    c = y.shape[3]
    tw = y.shape[2] // 4
    for b in range(i0, i1):
        for t in range(t0, t1):
            first = ((b - i0) * (t1 - t0) + (t - t0)) * tw
            for m in range(4):
                line = y[b, 4 * t + m]
                for s in range(tw):
                    row = prod[first + s]
                    for mm in range(4):
                        j = 4 * m + mm
                        out = line[4 * s + mm]
                        p0, p1 = row[terms[j, 0]:], row[terms[j, 1]:]
                        p2, p3 = row[terms[j, 2]:], row[terms[j, 3]:]
                        if counts[j] == 1:
                            for ch in range(c):
                                out[ch] = bias[ch] + p0[ch]
                        elif counts[j] == 2:
                            for ch in range(c):
                                out[ch] = bias[ch] + (p0[ch] + p1[ch])
                        else:
                            for ch in range(c):
                                out[ch] = bias[ch] + ((p0[ch] + p1[ch]) + (p2[ch] + p3[ch]))
                    if measure:
                        a0, a1, a2, a3 = line[4 * s], line[4 * s + 1], line[4 * s + 2], line[4 * s + 3]
                        for ch in range(c):
                            d0, d1 = np.float64(a0[ch]), np.float64(a1[ch])
                            d2, d3 = np.float64(a2[ch]), np.float64(a3[ch])
                            s1[ch] += (d0 + d1) + (d2 + d3)
                            s2[ch] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    if measure:
        for ch in range(c):
            sums[0, ch] += s1[ch]
            sums[1, ch] += s2[ch]


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _output_map_transposed(prod, z, i0, i1, t0, t1, slot):
    """The output map's transpose: product (k, l) of tile (b, t, s) = the sum over m, m' of
    OUTPUT_MAP_1D[m, k] OUTPUT_MAP_1D[m', l] z[b, 4t+m, 4s+m'], into prod[tile, slot[k, l] * C:][:C],
    for images i0..i1 and tile rows t0..t1. Along the rows first (a tile row's four rows of z
    give five: rows 0, 0 + 2, 2, 1, 3), then along the columns (the same combinations)."""
    c = z.shape[3]
    tw = z.shape[2] // 4
    both = np.empty((z.shape[2], c), z.dtype)
    tile = 0
    for b in range(i0, i1):
        for t in range(t0, t1):
            top, bottom = z[b, 4 * t], z[b, 4 * t + 2]
            for w in range(z.shape[2]):
                r0, r2, out = top[w], bottom[w], both[w]
                for ch in range(c):
                    out[ch] = r0[ch] + r2[ch]
            for s in range(tw):
                row = prod[tile]
                for k in range(5):
                    if k == 0:
                        line = top
                    elif k == 1:
                        line = both
                    elif k == 2:
                        line = bottom
                    elif k == 3:
                        line = z[b, 4 * t + 1]
                    else:
                        line = z[b, 4 * t + 3]
                    v0, v1, v2, v3 = line[4 * s], line[4 * s + 1], line[4 * s + 2], line[4 * s + 3]
                    o0, o1, o2 = row[slot[k, 0] * c:], row[slot[k, 1] * c:], row[slot[k, 2] * c:]
                    o3, o4 = row[slot[k, 3] * c:], row[slot[k, 4] * c:]
                    for ch in range(c):
                        o0[ch] = v0[ch]
                        o1[ch] = v0[ch] + v2[ch]
                        o2[ch] = v2[ch]
                        o3[ch] = v1[ch]
                        o4[ch] = v3[ch]
                tile += 1


@njit(nogil=True, cache=True, fastmath=FASTMATH)
def _planes_transposed(y, d, carry, i0, i1, t0, t1, last, plane):
    """The input planes' transpose, PLANES_1D^T along both axes: small position 2t takes
    b - a - c of tile t, and 2t + 1 takes c + d of tile t and a of tile t + 1. For images i0..i1
    and tile rows t0..t1 (d: their tiles in order, plane (u, v) at plane[u, v]), along the columns
    into v, then rows 2t (whole)
    and 2t + 1 (c + d into carry, finished with the next tile row's a). A band that starts at
    t0 > 0 finishes row 2 t0 - 1 from the carry its predecessor left; unless `last`, the band
    leaves its own in carry."""
    w, c = y.shape[2], y.shape[3]
    tw = w // 2
    v = np.empty((4, w, c), y.dtype)  # per plane row u (a, b, c, d): the columns' transpose
    band = t1 - t0
    for b in range(i0, i1):
        pending = t0 > 0
        for t in range(t0, t1):
            first = ((b - i0) * band + (t - t0)) * tw
            for u in range(4):
                vu = v[u]
                for s in range(tw):
                    src = d[first + s]
                    pa, pb, pc, pd = src[plane[u, 0]], src[plane[u, 1]], src[plane[u, 2]], src[plane[u, 3]]
                    even, odd = vu[2 * s], vu[2 * s + 1]
                    for ch in range(c):
                        even[ch] = (pb[ch] - pa[ch]) - pc[ch]
                        odd[ch] = pc[ch] + pd[ch]
                    if s + 1 < tw:
                        na = d[first + s + 1, plane[u, 0]]
                        for ch in range(c):
                            odd[ch] += na[ch]
            va, vb, vc, vd = v[0], v[1], v[2], v[3]
            if pending:  # row 2t - 1: what the tile row before left, and this one's plane a
                row = y[b, 2 * t - 1]
                for q in range(w):
                    out, left, add = row[q], carry[q], va[q]
                    for ch in range(c):
                        out[ch] = left[ch] + add[ch]
            row = y[b, 2 * t]
            for q in range(w):
                out, ua, ub, uc = row[q], va[q], vb[q], vc[q]
                for ch in range(c):
                    out[ch] = (ub[ch] - ua[ch]) - uc[ch]
            for q in range(w):
                left, uc, ud = carry[q], vc[q], vd[q]
                for ch in range(c):
                    left[ch] = uc[ch] + ud[ch]
            pending = True
        if last:  # the map's last row: no tile row below
            row = y[b, 2 * t1 - 1]
            for q in range(w):
                out, left = row[q], carry[q]
                for ch in range(c):
                    out[ch] = left[ch]


# ---------------------------------------------------------------- drivers

def group_products(prod, group, c):
    """A group's products in prod (tiles, 25 * C + PAD) as (planes, tiles, count * C): a view."""
    n, p, k = group
    return prod[:, PLANE_FIRST[p] * c:PLANE_FIRST[p + k] * c].reshape(len(prod), k, n * c).transpose(1, 0, 2)


def group_planes(d, group, c):
    """A group's planes in d (tiles, 16, C + PAD) as (planes, tiles, C): a view."""
    return d[:, group[1]:group[1] + group[2], :c].transpose(1, 0, 2)


def group_rows(a, group, c):
    """A group's products' rows of a (25 * C_big, C_small) as (planes, count * C_big, C_small): a view."""
    n, p, k = group
    return a[PLANE_FIRST[p] * c:PLANE_FIRST[p + k] * c].reshape(k, n * c, -1)


def image_tasks(n, tile_rows, row_bytes, cores):
    """schedule.pieces over tile rows, the bands of one image gathered into one task (they hand a
    row to each other, so they run in order on one core): a list of tasks, each a list of
    (i0, i1, t0, t1)."""
    tasks = []
    for piece in schedule.pieces(n, tile_rows, row_bytes, cores):
        if piece[2] > 0:
            tasks[-1].append(piece)
        else:
            tasks.append([piece])
    return tasks


def up(y, x, w2, bias, ws, epilogue=None, stats=None):
    """y = the transposed convolution of x by w2's kernels + bias, then epilogue(rows) where given
    (rows: a 2-D view (pixels, C_big) of what a piece wrote, still in cache; None: y as it is, whose
    statistics the output map then takes as it writes): x (N, H, W, C_small),
    y (N, 2H, 2W, C_big). Pieces (a few images, or bands of tile rows) the cores take in turn, each
    its input planes, the single-threaded GEMMs and the output map with the bias while the products
    are in cache. stats (2, C_big): when given, y's per-channel mean and biased variance (after the
    epilogue), each piece's sums taken while it is in cache."""
    n, h, w, c = x.shape
    o = y.shape[3]
    blocks = plane_blocks_up(small_by_big(w2, o))
    ht, tw = h // 2, w // 2
    cores = schedule.workers()
    pieces = schedule.pieces(n, ht, tw * 25 * o * y.dtype.itemsize, cores)
    parts = None if stats is None else moment_parts(len(pieces), o)
    zero = np.zeros(o)
    sums = np.zeros((2, o))  # what _outputs is given when it measures nothing
    terms = _OUT_TERMS * o  # the products' column offsets

    def do(k, t):
        i0, i1, t0, t1 = pieces[t]
        tiles = (i1 - i0) * (t1 - t0) * tw
        d = ws.buffer(("patches", k), (tiles, 16, c + PAD), x.dtype)
        _planes(d, x, i0, i1, t0, t1, _PLANE)
        prod = ws.buffer(("winograd_products", k), (tiles, 25 * o + PAD), y.dtype)
        for group, block in zip(GROUPS, blocks):
            np.matmul(group_planes(d, group, c), block, out=group_products(prod, group, o))
        in_map = parts is not None and epilogue is None  # the output map measures as it writes
        _outputs(y, prod, i0, i1, t0, t1, terms, _OUT_COUNTS, bias, in_map, parts[t] if in_map else sums)
        rows = y[i0:i1, 4 * t0:4 * t1].reshape(-1, o)
        if epilogue is not None:
            epilogue(rows)
            if parts is not None:
                _add_moments(parts[t], rows, zero, 0, rows.shape[0])

    schedule.each(len(pieces), do, cores)
    if parts is not None:
        finish_moments(stats[0], stats[1], parts, y.size // o)


def _transposed_products(x, i0, i1, t0, t1, ws, k):
    """The output map's transpose of the big map x over a band: (tiles, 25 * C_big + PAD)."""
    tiles = (i1 - i0) * (t1 - t0) * (x.shape[2] // 4)
    prod = ws.buffer(("winograd_products", k), (tiles, 25 * x.shape[3] + PAD), x.dtype)
    _output_map_transposed(prod, x, i0, i1, t0, t1, _SLOT)
    return prod


def _down_band(y, x, gt, i0, i1, t0, t1, ws, k, prod=None):
    """One band of the small map from the big one: the output map's transpose of x (unless given
    as prod), the GEMMs with the kernels' blocks gt, the planes' transpose into y (rows 2 t0 - 1 ..
    2 t1 - 1, or to the image's end on its last band). Returns the rows of y written, (lo, hi)."""
    ht, tw, cb, cs = y.shape[1] // 2, y.shape[2] // 2, x.shape[3], y.shape[3]
    tiles = (i1 - i0) * (t1 - t0) * tw
    if prod is None:
        prod = _transposed_products(x, i0, i1, t0, t1, ws, k)
    d = ws.buffer(("patches", k), (tiles, 16, cs + PAD), y.dtype)
    for group in GROUPS:
        np.matmul(group_products(prod, group, cb), group_rows(gt, group, cb), out=group_planes(d, group, cs))
    carry = ws.buffer(("winograd_carry", k), (y.shape[2], cs), y.dtype)
    last = t1 == ht
    _planes_transposed(y, d, carry, i0, i1, t0, t1, last, _PLANE)
    return (2 * t0 - 1 if t0 > 0 else 0), (2 * t1 if last else 2 * t1 - 1)


def down(y, x, w, epilogue, ws, stats=None):
    """y = the 'same' stride-2 Conv2D of x by w ((i, j, C_big), C_small), then epilogue(rows) over
    each band's finished rows (a 2-D view (pixels, C_small), still in cache): x (N, 2H, 2W, C_big),
    y (N, H, W, C_small). Tasks of a few images, or one image's bands in order, that the cores take
    in turn. stats as up's."""
    n, h, wi, cs = y.shape
    gt = big_by_small(w)
    ht, tw = h // 2, wi // 2
    cores = schedule.workers()
    tasks = image_tasks(n, ht, tw * 25 * x.shape[3] * x.dtype.itemsize, cores)
    parts = None if stats is None else moment_parts(len(tasks), cs)
    zero = np.zeros(cs)

    def do(k, t):
        for i0, i1, t0, t1 in tasks[t]:
            lo, hi = _down_band(y, x, gt, i0, i1, t0, t1, ws, k)
            rows = y[i0:i1, lo:hi].reshape(-1, cs)
            epilogue(rows)
            if parts is not None:
                _add_moments(parts[t], rows, zero, 0, rows.shape[0])

    schedule.each(len(tasks), do, cores)
    if parts is not None:
        finish_moments(stats[0], stats[1], parts, y.size // cs)


def gemms(y, dw, x, w, t, ws):
    """conv_gemms for this path: dw = the weight gradient ((i, j, C_big), C_small) of the stride-2
    Conv2D between x (N, 2H, 2W, C_big) and t (N, H, W, C_small), then y (N, H, W, C_small) = the
    Conv2D of x by w; either skipped when None; y may be t. Core k takes tasks k, k + cores, ... in
    order and sums its products' gradients in order; the cores' sums are added in order (the same
    result at every call)."""
    n, hb, wb, cb = x.shape
    cs = t.shape[3] if t is not None else y.shape[3]
    ht, tw = hb // 4, wb // 4
    gt = None if y is None else big_by_small(w)
    cores = schedule.workers()
    tasks = image_tasks(n, ht, tw * 25 * cb * x.dtype.itemsize, cores)

    def run(k, sums, mine):
        started = False
        for task in mine:
            for i0, i1, t0, t1 in task:
                tiles = (i1 - i0) * (t1 - t0) * tw
                prod = _transposed_products(x, i0, i1, t0, t1, ws, k)
                if dw is not None:
                    d = ws.buffer(("patches", k), (tiles, 16, cs + PAD), t.dtype)
                    _planes(d, t, i0, i1, t0, t1, _PLANE)
                    part = ws.buffer(("winograd_dw", k), (25 * cb, cs), sums.dtype) if started else sums
                    for group in GROUPS:
                        np.matmul(group_products(prod, group, cb).transpose(0, 2, 1), group_planes(d, group, cs),
                                  out=group_rows(part, group, cb))
                    if started:
                        sums += part
                    started = True
                if y is not None:
                    _down_band(y, x, gt, i0, i1, t0, t1, ws, k, prod)
        if dw is not None and not started:
            sums[...] = 0

    sums = None if dw is None else [ws.buffer(("winograd_sums", k), (25 * cb, cs), dw.dtype) for k in range(cores)]
    if cores > 1 and len(tasks) > 1 and threads.on_each_core(
            lambda k: run(k, None if sums is None else sums[k], tasks[k::cores]), cores):
        if dw is not None:
            for k in range(1, cores):
                sums[0] += sums[k]
    else:  # one core, or BLAS's threads cannot be set: every task in order
        run(0, None if sums is None else sums[0], tasks)
    if dw is not None:
        weight_gradient(dw, sums[0])
