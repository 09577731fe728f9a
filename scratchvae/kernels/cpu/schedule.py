"""How the CPU's fused inference ops split their work across cores: pieces the cores take in turn.

Each piece runs a single-threaded GEMM and its epilogue on one core (see threads.on_each_core for
why not a threaded GEMM, then a parallel loop); a core slowed by another job simply takes fewer.
"""

import itertools

from numba import get_num_threads

from scratchvae.kernels import threads

TASKS_PER_CORE = 4  # pieces of work per core, taken in turn: a core slowed by another job takes fewer
MIN_BAND_ROWS = 32  # a band's GEMM also covers the input rows it shares with its neighbours: keep that small
# One worker's cols per GEMM of the fused transposed convolution: a few small images, or one large
# one. Small enough that col2im reads the cols a GEMM just wrote from cache: the seed's decoder,
# batch 64, 2 cores, decoded 178 images/s with 2 MB, 176 with 4 MB and 164 with 24 MB.
CORE_COLS_BYTES = 2 * 2 ** 20
# An image whose cols take more than this is cut into bands even in a large batch (each band's GEMM
# recomputes the input row it shares with the next: ~5% more for the seed's 64 -> 128 layer), so
# each worker's cols stay a few MB instead of 19 (peak memory of a training step).
LARGE_IMAGE_COLS_BYTES = 8 * 2 ** 20


def workers():
    """The number of cores the CPU kernels use (Numba's thread count)."""
    return get_num_threads()


def images_or_bands(n, out_rows, image_bytes, cores):
    """Pieces (images, r0, r1) of a batch of n images: whole images (r1 None), a few per piece within
    CORE_COLS_BYTES of cols (image_bytes each), when there are TASKS_PER_CORE pieces per core and an
    image's cols are within LARGE_IMAGE_COLS_BYTES; else bands [r0, r1) of each image's out_rows
    output rows, MIN_BAND_ROWS at least."""
    pieces = cores * TASKS_PER_CORE
    if n >= pieces and image_bytes <= LARGE_IMAGE_COLS_BYTES:
        step = max(1, min(CORE_COLS_BYTES // image_bytes, n // pieces))
        return [(slice(i, min(n, i + step)), 0, None) for i in range(0, n, step)]
    bands = max(1, min(max(-(-pieces // n), -(-image_bytes // LARGE_IMAGE_COLS_BYTES)), out_rows // MIN_BAND_ROWS))
    return [(slice(i, i + 1), b * out_rows // bands, (b + 1) * out_rows // bands)
            for i in range(n) for b in range(bands)]


# One piece's gathered patches (conv_act), at most. Larger pieces pay BLAS's packing of the weights
# less often; measured on the seed's encoder, batch 64, 2 cores: 1, 2, 4, 5, 8 MB gave 722, 758,
# 758, 776, 759 images/s (the 5 MB piece is one 32x32 map of 3x3x128 patches).
PIECE_COLS_BYTES = 5 * 2 ** 20
# One piece's output rows, at most, where they outweigh its patches (a 3-channel image's 27 patch
# columns against 128 output channels): the epilogue then reads them back from cache. Measured on
# the seed's first convolution with its BatchNorm, batch 64, 2 cores: 14.2 ms a call with the
# patches' budget alone (23 MB of output a piece), 12.4-13.3 ms with 1.25 MB.
PIECE_OUT_BYTES = PIECE_COLS_BYTES // 4


def pieces(n, rows, row_bytes, cores, out_row_bytes=0):
    """(i0, i1, p0, p1): images i0..i1, output rows p0..p1 of each, covering n images of `rows` rows
    whose patches take row_bytes a row (and their outputs out_row_bytes). Each piece holds at most
    PIECE_COLS_BYTES of patches and PIECE_OUT_BYTES of output, and less where that leaves fewer
    than TASKS_PER_CORE pieces per core: a few whole images, or bands of one image's rows (one row
    at least, the rows shared out evenly)."""
    row_bytes = max(row_bytes, out_row_bytes * PIECE_COLS_BYTES // PIECE_OUT_BYTES)
    per_image = rows * row_bytes
    budget = max(row_bytes, min(PIECE_COLS_BYTES, n * per_image // (cores * TASKS_PER_CORE)))
    if per_image <= budget:
        step = budget // per_image
        return [(i, min(n, i + step), 0, rows) for i in range(0, n, step)]
    bands = -(-per_image // budget)
    return [(i, i + 1, b * rows // bands, (b + 1) * rows // bands) for i in range(n) for b in range(bands)]


def image_steps(n, image_bytes):
    """Slices of the batch with at most CORE_COLS_BYTES of cols each (one image at least)."""
    step = max(1, CORE_COLS_BYTES // image_bytes)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def column_block(columns, cores):
    """Columns per piece of a (N, columns) output: TASKS_PER_CORE pieces per core, 64 columns at least."""
    return max(64, -(-columns // (cores * TASKS_PER_CORE)))


def each(count, do, cores):
    """do(k, t) for every task t < count: the cores in turn (in_turn), or, where that runs nothing,
    every task in order on this thread (k 0; BLAS threaded as set)."""
    if not in_turn(count, do, cores):
        for t in range(count):
            do(0, t)


def in_turn(count, do, cores):
    """do(k, t) for every task t < count on `cores` threads (k: the thread, e.g. for its own buffers)
    that take the tasks in turn, BLAS single-threaded meanwhile; a single task runs on the calling
    thread (threads.on_this_core). Returns False, and runs nothing, with one core or where BLAS's
    threads cannot be set."""
    if cores < 2:
        return False
    if count == 1:
        return threads.on_this_core(lambda k: do(k, 0))
    counter = itertools.count()

    def work(k):
        for t in iter(counter.__next__, None):
            if t >= count:
                return
            do(k, t)

    return threads.on_each_core(work, cores)
