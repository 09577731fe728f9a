"""The 25-product path's algebra (kernels/cpu/winograd.py runs it): the tables, the kernels'
combinations, views of the products' layout, and the Numba transforms between maps and planes.

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
(i, j, C_big)). winograd.fits() says where this path applies; elsewhere the callers gather patches.
"""

import numpy as np
from numba import njit

from scratchvae.kernels.cpu.jit import FASTMATH

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
# tables): SLOT[k, l], the product's index in PRODUCTS; OUTPUT_TERMS, OUTPUT_COUNTS: the products each
# big position 4m + m' of a tile sums.
SLOT = np.full((5, 5), -1, np.int64)
for _i, (_k, _l) in enumerate(PRODUCTS):
    SLOT[_k, _l] = _i
PLANE_INDEX = np.full((4, 4), -1, np.int64)  # PLANE_INDEX[u, v]: the plane's index in PLANES
for _i, (_u, _v) in enumerate(PLANES):
    PLANE_INDEX[_u, _v] = _i
OUTPUT_TERMS = np.array([([SLOT[k, k2] for k in range(5) if OUTPUT_MAP_1D[m, k]
                           for k2 in range(5) if OUTPUT_MAP_1D[mm, k2]] * 4)[:4]  # padded by repeating
                         for m in range(4) for mm in range(4)], np.int64)
OUTPUT_COUNTS = np.array([OUTPUT_MAP_1D[m].sum() * OUTPUT_MAP_1D[mm].sum() for m in range(4) for mm in range(4)],
                         np.int64)


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


# ---------------------------------------------------------------- views of the products' layout

def group_products(prod, group, c):
    """A group's products in prod (tiles, 25 * C + padding) as (planes, tiles, count * C): a view."""
    n, p, k = group
    return prod[:, PLANE_FIRST[p] * c:PLANE_FIRST[p + k] * c].reshape(len(prod), k, n * c).transpose(1, 0, 2)


def group_planes(d, group, c):
    """A group's planes in d (tiles, 16, C + padding) as (planes, tiles, C): a view."""
    return d[:, group[1]:group[1] + group[2], :c].transpose(1, 0, 2)


def group_rows(a, group, c):
    """A group's products' rows of a (25 * C_big, C_small) as (planes, count * C_big, C_small): a view."""
    n, p, k = group
    return a[PLANE_FIRST[p] * c:PLANE_FIRST[p + k] * c].reshape(k, n * c, -1)


# ---------------------------------------------------------------- transforms (Numba)

@njit(nogil=True, cache=True, fastmath=FASTMATH)
def input_planes(d, x, i0, i1, t0, t1, plane):
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
def output_map(y, prod, i0, i1, t0, t1, terms, counts, bias, measure, sums):
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
def output_map_transposed(prod, z, i0, i1, t0, t1, slot):
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
def input_planes_transposed(y, d, carry, i0, i1, t0, t1, last, plane):
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
