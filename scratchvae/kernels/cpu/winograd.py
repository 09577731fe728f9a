"""Stride-2 3x3 'same' convolutions with 25 products where im2col takes 36: a Winograd F(2, 2) on the
CPU, for the seed's 128-channel blocks (the transposed convolutions' forward and the Conv2Ds' input
gradient; the Conv2Ds' forward and the transposed convolutions' input gradient; both weight gradients).

fits() says where this path applies; up, down and gemms are the three operations, each in pieces
the cores take in turn. The algebra (the tables, the transforms, why 25 products) lives in
kernels/cpu/winograd_transforms.py.
"""

import numpy as np

from scratchvae.kernels import threads
from scratchvae.kernels.cpu import schedule
from scratchvae.kernels.cpu.reductions import _add_moments, finish_moments, moment_parts
from scratchvae.kernels.cpu.winograd_transforms import (GROUPS, OUTPUT_COUNTS, OUTPUT_TERMS, PLANE_INDEX, SLOT,
                                                        big_by_small, group_planes, group_products, group_rows,
                                                        input_planes, input_planes_transposed, output_map,
                                                        output_map_transposed, plane_blocks_up, small_by_big,
                                                        weight_gradient)

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


# ---------------------------------------------------------------- the three operations

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
    sums = np.zeros((2, o))  # what output_map is given when it measures nothing
    terms = OUTPUT_TERMS * o  # the products' column offsets

    def do(k, t):
        i0, i1, t0, t1 = pieces[t]
        tiles = (i1 - i0) * (t1 - t0) * tw
        d = ws.buffer(("patches", k), (tiles, 16, c + PAD), x.dtype)
        input_planes(d, x, i0, i1, t0, t1, PLANE_INDEX)
        prod = ws.buffer(("winograd_products", k), (tiles, 25 * o + PAD), y.dtype)
        for group, block in zip(GROUPS, blocks):
            np.matmul(group_planes(d, group, c), block, out=group_products(prod, group, o))
        in_map = parts is not None and epilogue is None  # the output map measures as it writes
        output_map(y, prod, i0, i1, t0, t1, terms, OUTPUT_COUNTS, bias, in_map, parts[t] if in_map else sums)
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
    output_map_transposed(prod, x, i0, i1, t0, t1, SLOT)
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
    input_planes_transposed(y, d, carry, i0, i1, t0, t1, last, PLANE_INDEX)
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
                    input_planes(d, t, i0, i1, t0, t1, PLANE_INDEX)
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
