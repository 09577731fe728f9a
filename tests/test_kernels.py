"""Numba CPU kernels against the NumPy reference in float32, plus the layers' defining identities."""

import os
import warnings

import numpy as np
import pytest

from scratchvae import kernels
from scratchvae.kernels import cpu, reference, threads
from scratchvae.kernels.cpu import fused, schedule, winograd, winograd_transforms
from scratchvae.kernels.cpu import elementwise as cpu_elementwise
from scratchvae.kernels.workspace import Workspace
from scratchvae.layers import BatchNorm, Conv2D, Conv2DTranspose, same_padding

F32 = np.float32
RTOL, ATOL = 1e-4, 1e-5
GEOMS = [  # (batch, height, width, channels, kernel, stride)
    (1, 5, 5, 1, 3, 1), (2, 6, 6, 3, 3, 2), (2, 7, 5, 4, 3, 2), (3, 8, 8, 2, 1, 1), (1, 9, 6, 3, 3, 2),
]


def both(fn_name, outs, *args):
    """Run a kernel on both backends from the same inputs; return (reference outs, cpu outs)."""
    ref = [o.copy() for o in outs]
    fast = [o.copy() for o in outs]
    getattr(reference, fn_name)(*ref, *args)
    getattr(cpu, fn_name)(*fast, *args)
    return ref, fast


def assert_close(ref, fast):
    for r, f in zip(ref, fast):
        assert f.dtype == r.dtype == F32
        np.testing.assert_allclose(f, r, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("n,h,w,c,k,s", GEOMS)
def test_gather_taps_im2col_and_phases(rng, n, h, w, c, k, s):
    ho, pt = same_padding(h, k, s)
    wo, pl = same_padding(w, k, s)
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    # im2col: every tap of a 'same' convolution, at the layer's stride
    cols = np.full((n * ho * wo, k * k * c), np.nan, F32)
    assert_close(*both("gather_taps", [cols], x, ho, wo, s, np.arange(k) - pt, np.arange(k) - pl))
    # a phase gather: stride 1, uneven offsets that run off both edges
    offs_h, offs_w = np.array([1, -1, 0]), np.array([-2, 2])
    cols = np.full((n * h * w, 3 * 2 * c), np.nan, F32)
    assert_close(*both("gather_taps", [cols], x, h, w, 1, offs_h, offs_w))


@pytest.mark.parametrize("n,h,w,c,k,s", GEOMS)
def test_col2im(rng, n, h, w, c, k, s):
    ho, pt = same_padding(h, k, s)
    wo, pl = same_padding(w, k, s)
    cols = rng.standard_normal((n * ho * wo, k * k * c)).astype(F32)
    assert_close(*both("col2im", [np.full((n, h, w, c), np.nan, F32)], cols, k, k, s, pt, pl))


@pytest.mark.parametrize("n,h,w,c,k,s", GEOMS)
@pytest.mark.parametrize("activation", [None, "leaky", "sigmoid"])
def test_col2im_act(rng, n, h, w, c, k, s, activation):
    """col2im, then bias and the activation; the padding columns past KH*KW*C are ignored."""
    ho, pt = same_padding(h, k, s)
    wo, pl = same_padding(w, k, s)
    cols = rng.standard_normal((n * ho * wo, k * k * c + 5)).astype(F32)
    cols[:, k * k * c:] = np.nan
    bias = rng.standard_normal(c).astype(F32)
    ref, fast = both("col2im_act", [np.full((n, h, w, c), np.nan, F32)], cols, k, k, s, pt, pl, bias, activation, 0.3)
    assert_close(ref, fast)
    pre = np.empty((n, h, w, c), F32)
    reference.col2im(pre, np.ascontiguousarray(cols[:, :k * k * c]), k, k, s, pt, pl)
    pre += bias
    want = {None: pre, "leaky": np.where(pre > 0, pre, 0.3 * pre), "sigmoid": 1 / (1 + np.exp(-pre))}[activation]
    np.testing.assert_allclose(ref[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,h,w,c,k,s", GEOMS + [(5, 4, 3, 6, 3, 2), (1, 3, 4, 2, 1, 2), (19, 3, 2, 3, 3, 2),
                                         (1, 33, 3, 2, 3, 2)])
@pytest.mark.parametrize("split", [True, False])
def test_conv_transpose_act(rng, monkeypatch, n, h, w, c, k, s, split):
    """The fused inference transposed convolution, its work split across the cores (by images, or
    by bands of output rows for small batches) or, where BLAS's threads cannot be set, not split."""
    if split:
        monkeypatch.setattr(schedule, "MIN_BAND_ROWS", 1)  # several bands even on these small images
    else:
        monkeypatch.setattr(threads, "on_each_core", lambda fn, workers: False)
    o = 4
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    w2 = rng.standard_normal((c, k * k * o + 3)).astype(F32)
    bias = rng.standard_normal(o).astype(F32)
    pt = same_padding(h * s, k, s)[1]
    pl = same_padding(w * s, k, s)[1]
    y = np.full((n, h * s, w * s, o), np.nan, F32)
    assert_close(*both("conv_transpose_act", [y], x, w2, bias, k, k, s, pt, pl, "leaky", 0.3))


@pytest.mark.parametrize("n,h,w,c,k,s", GEOMS + [(5, 4, 3, 6, 3, 2), (1, 33, 3, 2, 3, 2), (2, 5, 6, 8, 3, 2)])
@pytest.mark.parametrize("relu,activation", [(True, "leaky"), (False, None), (False, "sigmoid")])
@pytest.mark.parametrize("pieces", ["bands", "images", "unsplit"])
def test_conv_act(rng, monkeypatch, n, h, w, c, k, s, relu, activation, pieces):
    """The fused inference convolution: patches gathered piece by piece (bands of output rows, a few
    images, or with BLAS's threads not settable, the same pieces on one thread), the GEMM into y,
    then bias, ReLU, affine and activation; equal to the reference, which is the Conv2D formula."""
    if pieces == "bands":
        monkeypatch.setattr(schedule, "PIECE_COLS_BYTES", 1)  # one output row a piece
    elif pieces == "images":
        monkeypatch.setattr(schedule, "TASKS_PER_CORE", 1)  # pieces of several whole images
    elif pieces == "unsplit":
        monkeypatch.setattr(threads, "on_each_core", lambda fn, workers: False)
    o = 4
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    kernel = rng.standard_normal((k, k, c, o)).astype(F32)
    bias, scale, shift = (rng.standard_normal(o).astype(F32) for _ in range(3))
    ho, pt = same_padding(h, k, s)
    wo, pl = same_padding(w, k, s)
    y = np.full((n, ho, wo, o), np.nan, F32)
    ref, fast = both("conv_act", [y], x, kernel.reshape(-1, o), bias, scale, shift, k, k, s, pt, pl, relu,
                     activation, 0.3)
    assert_close(ref, fast)
    # the reference against the layer's own definition: a 'same' Conv2D, its ReLU, then the affine
    conv = Conv2D(c, o, k, s, activation="relu" if relu else None, dtype=np.float64)
    conv.params["kernel"][...], conv.params["bias"][...] = kernel, bias
    with kernels.using("numpy"):
        pre = conv.forward(x.astype(np.float64), False) * scale + shift
    want = {None: pre, "leaky": np.where(pre > 0, pre, 0.3 * pre), "sigmoid": 1 / (1 + np.exp(-pre))}[activation]
    np.testing.assert_allclose(ref[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", ["conv_transpose_act", "conv_act"])
@pytest.mark.parametrize("n,h,w,c,k,s", GEOMS + [(5, 4, 3, 6, 3, 2), (1, 33, 3, 2, 3, 2), (2, 5, 6, 8, 3, 2)])
@pytest.mark.parametrize("pieces", ["bands", "images", "unsplit"])
def test_fused_convolutions_measure_the_batch_statistics_of_their_output(rng, monkeypatch, kernel, n, h, w, c, k, s,
                                                                          pieces):
    """With stats, conv_transpose_act and conv_act also give y's per-channel mean and biased variance
    (what BatchNorm's bn_stats would read y again for), summed piece by piece whatever the split;
    y itself is the same bits as without; the reference agrees."""
    if pieces == "bands":
        monkeypatch.setattr(schedule, "MIN_BAND_ROWS", 1)
        monkeypatch.setattr(schedule, "PIECE_COLS_BYTES", 1)
    elif pieces == "images":
        monkeypatch.setattr(schedule, "TASKS_PER_CORE", 1)
    else:
        monkeypatch.setattr(threads, "on_each_core", lambda fn, workers: False)
    o = 5
    x = (rng.standard_normal((n, h, w, c)) + 0.5).astype(F32)
    bias = rng.standard_normal(o).astype(F32)
    if kernel == "conv_transpose_act":
        w2 = rng.standard_normal((c, k * k * o + 3)).astype(F32)
        y = np.empty((n, h * s, w * s, o), F32)
        args = (x, w2, bias, k, k, s, same_padding(h * s, k, s)[1], same_padding(w * s, k, s)[1], None, 1.0)
    else:
        wk = rng.standard_normal((k * k * c, o)).astype(F32)
        y = np.empty((n, same_padding(h, k, s)[0], same_padding(w, k, s)[0], o), F32)
        args = (x, wk, bias, np.ones(o, F32), np.zeros(o, F32), k, k, s, same_padding(h, k, s)[1],
                same_padding(w, k, s)[1], True, None, 1.0)
    plain = y.copy()
    getattr(cpu, kernel)(plain, *args)
    stats, ref_stats = np.full((2, o), np.nan, F32), np.full((2, o), np.nan, F32)
    getattr(cpu, kernel)(y, *args, None, stats)
    getattr(reference, kernel)(np.empty_like(y), *args, None, ref_stats)
    assert np.array_equal(y, plain)
    y64 = y.reshape(-1, o).astype(np.float64)
    np.testing.assert_allclose(stats[0], y64.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats[1], y64.var(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats, ref_stats, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the 25-product stride-2 convolutions

WINOGRAD_GEOMS = [  # (batch, small height, small width, small channels, big channels): even small maps
    (2, 4, 6, 3, 5), (3, 8, 8, 4, 6), (1, 16, 12, 5, 3), (5, 2, 2, 2, 2)]


@pytest.fixture(params=["pieces", "bands", "images", "unsplit"])
def winograd_path(request, monkeypatch):
    """The 25-product path taking every stride-2 3x3 convolution between even maps (however few
    channels), cut as by default, in one-tile-row bands (the bands of an image hand a row to each
    other), in pieces of several images, or all on one thread."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_SMALL_PIXELS", 1)
    if request.param == "bands":
        monkeypatch.setattr(schedule, "PIECE_COLS_BYTES", 1)
    elif request.param == "images":
        monkeypatch.setattr(schedule, "TASKS_PER_CORE", 1)
    elif request.param == "unsplit":
        monkeypatch.setattr(threads, "on_each_core", lambda fn, workers: False)
    return request.param


def winograd_calls(monkeypatch):
    """Counts of the path's entry points called (so a test knows it went that way)."""
    calls = {"up": 0, "down": 0, "gemms": 0}
    for name in calls:
        def spy(*args, _run=getattr(winograd, name), _name=name, **kwargs):
            calls[_name] += 1
            return _run(*args, **kwargs)
        monkeypatch.setattr(winograd, name, spy)
    return calls


@pytest.mark.parametrize("n,h,w,cs,cb", WINOGRAD_GEOMS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (F32, None)])
def test_25_products_give_the_transposed_convolution(rng, monkeypatch, winograd_path, n, h, w, cs, cb, dtype, tol):
    """conv_transpose_act on the 25-product path (x small, y twice its size): the reference's y,
    bias, LeakyReLU or sigmoid, and batch statistics; to rounding in float64 (the algorithm is
    exact arithmetic), within the kernels' tolerances in float32."""
    calls = winograd_calls(monkeypatch)
    x = rng.standard_normal((n, h, w, cs)).astype(dtype)
    w2 = rng.standard_normal((cs, 9 * cb + 3)).astype(dtype)
    bias = rng.standard_normal(cb).astype(dtype)
    for activation in ("leaky", "sigmoid", None):
        y, want = np.full((2, n, 2 * h, 2 * w, cb), np.nan, dtype)
        stats, want_stats = np.full((2, 2, cb), np.nan, dtype)
        args = (x, w2, bias, 3, 3, 2, 0, 0, activation, 0.3, None)
        cpu.conv_transpose_act(y, *args, stats)
        reference.conv_transpose_act(want, *args, want_stats)
        for got, ref in ((y, want), (stats, want_stats)):
            if tol:
                np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
            else:
                np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    assert calls["up"] == 3


@pytest.mark.parametrize("n,h,w,cs,cb", WINOGRAD_GEOMS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (F32, None)])
def test_25_products_give_the_stride_2_convolution(rng, monkeypatch, winograd_path, n, h, w, cs, cb, dtype, tol):
    """conv_act on the 25-product path (x big, y half its size): the reference's y with ReLU, the
    affine, the activation and batch statistics."""
    calls = winograd_calls(monkeypatch)
    x = rng.standard_normal((n, 2 * h, 2 * w, cb)).astype(dtype)
    wk = rng.standard_normal((9 * cb, cs)).astype(dtype)
    bias, scale, shift = (rng.standard_normal(cs).astype(dtype) for _ in range(3))
    for relu, activation in ((True, "leaky"), (False, None), (False, "sigmoid")):
        y, want = np.full((2, n, h, w, cs), np.nan, dtype)
        stats, want_stats = np.full((2, 2, cs), np.nan, dtype)
        args = (x, wk, bias, scale, shift, 3, 3, 2, 0, 0, relu, activation, 0.3, None)
        cpu.conv_act(y, *args, stats)
        reference.conv_act(want, *args, want_stats)
        for got, ref in ((y, want), (stats, want_stats)):
            np.testing.assert_allclose(got, ref, rtol=tol or RTOL, atol=tol or ATOL)
    assert calls["down"] == 3


@pytest.mark.parametrize("n,h,w,cs,cb", WINOGRAD_GEOMS)
@pytest.mark.parametrize("outputs", ["both", "dw", "y", "y is t"])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (F32, None)])
def test_25_products_give_the_gemms_of_the_patches(rng, monkeypatch, winograd_path, n, h, w, cs, cb, outputs, dtype,
                                                   tol):
    """conv_gemms on the 25-product path: dw = the patches' transpose times t, and y = the patches
    times w (y may be t: every band reads its rows of t before any band writes them); dw is the
    same bits at every call (each core sums in a fixed order)."""
    calls = winograd_calls(monkeypatch)
    x = rng.standard_normal((n, 2 * h, 2 * w, cb)).astype(dtype)
    wk = rng.standard_normal((9 * cb, cs)).astype(dtype)
    t = rng.standard_normal((n, h, w, cs)).astype(dtype)

    def call(module):
        dw = None if outputs == "y" else np.full((9 * cb, cs), np.nan, dtype)
        y = None if outputs == "dw" else np.full((n, h, w, cs), np.nan, dtype)
        tt = t.copy()
        if outputs == "y is t":
            y = tt
        module.conv_gemms(y, dw, x, wk, tt, 3, 3, 2, 0, 0)
        return [a for a in (y, dw) if a is not None]

    got, again, want = call(cpu), call(cpu), call(reference)
    for a, b, r in zip(got, again, want):
        assert np.array_equal(a, b)
        np.testing.assert_allclose(a, r, rtol=tol or RTOL, atol=tol or 1e-4)
    assert calls["gemms"] == 2


def test_25_products_take_the_seeds_stride_2_blocks_only():
    """fits(): the seed's 128-channel stride-2 blocks at batch 32 go the 25-product way, down to the
    16x16 <-> 32x32 ones; the 8x8 <-> 16x16 ones (too little work a call), the 3-channel first and
    last layers, odd or stride-1 geometry and padding before the map keep the patches' path."""
    for small in (64, 32, 16):
        assert winograd.fits((32, small, small), (32, 2 * small, 2 * small), 128, 128, 3, 3, 2, 0, 0)
    assert not winograd.fits((32, 8, 8), (32, 16, 16), 128, 128, 3, 3, 2, 0, 0)  # too little work
    assert not winograd.fits((32, 64, 64), (32, 128, 128), 128, 3, 3, 3, 2, 0, 0)  # 3 channels
    assert not winograd.fits((32, 31, 32), (32, 62, 64), 128, 128, 3, 3, 2, 0, 0)  # odd small map
    assert not winograd.fits((32, 32, 32), (32, 64, 64), 128, 128, 3, 3, 2, 1, 0)  # padding before
    assert not winograd.fits((32, 32, 32), (32, 64, 64), 128, 128, 5, 5, 2, 0, 0)  # 5x5 kernel
    assert not winograd.fits((32, 32, 32), (32, 32, 32), 128, 128, 3, 3, 1, 1, 1)  # stride 1


def test_25_products_tables_are_the_one_dimensional_identity():
    """The 1-D tables behind the kernels: for any x and taps W0..W2, the output map of the products
    of the input planes and kernel combinations is y[4t+m] of the transposed convolution."""
    rng = np.random.default_rng(0)
    xs, taps = rng.standard_normal(3), rng.standard_normal(3)  # x[2t-1], x[2t], x[2t+1]
    tables = winograd_transforms
    products = (tables.PLANES_1D @ xs)[list(tables.PRODUCT_PLANE_1D)] * (tables.PRODUCT_KERNEL_1D @ taps)
    want = [taps[0] * xs[1] + taps[2] * xs[0], taps[1] * xs[1], taps[0] * xs[2] + taps[2] * xs[1], taps[1] * xs[2]]
    np.testing.assert_allclose(tables.OUTPUT_MAP_1D @ products, want, rtol=1e-14)
    assert len(tables.PRODUCTS) == 25 and tables.PLANE_COUNT.sum() == 25


@pytest.mark.parametrize("n,rows,row_bytes,out_row_bytes,cores", [
    (64, 32, 147456, 16384, 2), (1, 32, 147456, 0, 2), (64, 8, 36864, 0, 2), (3, 7, 100, 0, 4),
    (5, 1, 10 ** 7, 0, 2), (64, 64, 110592, 0, 1), (64, 64, 6912, 32768, 2), (2, 64, 6912, 32768, 2),
    (3, 5, 100, 10 ** 7, 2)])
def test_pieces_cover_each_row_once_within_the_budget(n, rows, row_bytes, out_row_bytes, cores):
    """conv_act's pieces: every (image, row) exactly once, whole images or bands of one image, at
    most PIECE_COLS_BYTES of patches and PIECE_OUT_BYTES of output (one row at least), and enough
    pieces for the cores."""
    pieces = schedule.pieces(n, rows, row_bytes, cores, out_row_bytes)
    seen = np.zeros((n, rows), int)
    for i0, i1, p0, p1 in pieces:
        assert 0 <= i0 < i1 <= n and 0 <= p0 < p1 <= rows
        assert i1 - i0 == 1 or (p0, p1) == (0, rows)
        seen[i0:i1, p0:p1] += 1
        assert (i1 - i0) * (p1 - p0) * row_bytes <= max(schedule.PIECE_COLS_BYTES, row_bytes)
        assert (i1 - i0) * (p1 - p0) * out_row_bytes <= max(schedule.PIECE_OUT_BYTES, out_row_bytes)
    assert (seen == 1).all()
    assert len(pieces) >= min(cores * schedule.TASKS_PER_CORE, n * rows)


@pytest.mark.parametrize("n,h,w,c,k,s", GEOMS + [(5, 4, 3, 6, 3, 2), (1, 33, 3, 2, 3, 2), (2, 5, 6, 8, 3, 2)])
@pytest.mark.parametrize("outputs", ["both", "dw", "y", "y is t"])
@pytest.mark.parametrize("pieces", ["bands", "default", "unsplit"])
def test_conv_gemms(rng, monkeypatch, n, h, w, c, k, s, outputs, pieces):
    """The GEMMs of a convolution's patches (a Conv2D's weight gradient; a transposed convolution's
    weight and input gradients): dw = cols^T @ t and y = cols @ w, piece by piece on the cores,
    equal to the reference; y may be t (each piece reads its rows of t first)."""
    if pieces == "bands":
        monkeypatch.setattr(schedule, "PIECE_COLS_BYTES", 1)  # one output row a piece
    elif pieces == "unsplit":
        monkeypatch.setattr(threads, "on_each_core", lambda fn, workers: False)
    ho, pt = same_padding(h, k, s)
    wo, pl = same_padding(w, k, s)
    o = 4
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    wk = rng.standard_normal((k * k * c, o)).astype(F32)
    t = rng.standard_normal((n, ho, wo, o)).astype(F32)
    dw = None if outputs == "y" else np.full((k * k * c, o), np.nan, F32)
    y = None if outputs == "dw" else np.full((n, ho, wo, o), np.nan, F32)
    outs = [a for a in (y, dw) if a is not None]
    ref = [a.copy() for a in outs]
    fast = [a.copy() for a in outs]
    cols = np.empty((n * ho * wo, k * k * c), F32)
    reference.gather_taps(cols, x, ho, wo, s, np.arange(k) - pt, np.arange(k) - pl)
    want = {"y": (cols @ wk).reshape(n, ho, wo, o), "dw": cols.T @ t.reshape(-1, o)}

    def call(module, arrays):
        it = iter(arrays)
        yy = None if y is None else next(it)
        dd = None if dw is None else next(it)
        tt = t.copy()
        if outputs == "y is t":
            tt = yy  # y overwrites t; t's values must be read first
            tt[...] = t
        module.conv_gemms(yy, dd, x, wk, tt, k, k, s, pt, pl)
        return [a for a in (yy, dd) if a is not None]

    ref, fast = call(reference, ref), call(cpu, fast)
    assert_close(ref, fast)
    got = dict(zip([name for name, a in (("y", y), ("dw", dw)) if a is not None], ref))
    for name, value in got.items():
        np.testing.assert_allclose(value, want[name], rtol=1e-4, atol=1e-4)


def batchnorm_rows(rng, c, dtype=F32):
    """A BatchNorm's mean, invstd, gamma and beta per channel: the kernels' `pre` (4, C)."""
    return np.stack([rng.standard_normal(c) * 0.3, rng.uniform(0.5, 2, c), rng.uniform(0.5, 1.5, c),
                     rng.standard_normal(c) * 0.5]).astype(dtype)


def cut(monkeypatch, pieces):
    """The fused kernels' work in one-row bands, as cut by default, all on one thread, or (where the
    geometry allows) on the 25-product path."""
    if pieces == "bands":
        for name in ("PIECE_COLS_BYTES", "MIN_BAND_ROWS"):
            monkeypatch.setattr(schedule, name, 1)
    elif pieces == "unsplit":
        monkeypatch.setattr(threads, "on_each_core", lambda fn, workers: False)
    elif pieces == "25-products":
        monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
        monkeypatch.setattr(winograd, "MIN_SMALL_PIXELS", 1)


def normalised(a, pre, alpha):
    """a through the BatchNorm pre and LeakyReLU(alpha), as bn_act_forward writes it (float64 math)."""
    v = (a - pre[0]) * pre[1] * pre[2] + pre[3]
    return np.where(v > 0, v, alpha * v)


@pytest.mark.parametrize("n,h,w,c,k,s", [(2, 6, 5, 3, 3, 1), (5, 4, 3, 6, 3, 2), (1, 33, 3, 2, 3, 1),
                                         (2, 4, 4, 5, 3, 2)])
@pytest.mark.parametrize("pieces", ["bands", "default", "unsplit", "25-products"])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (F32, None)])
def test_conv_transpose_act_reads_its_input_through_a_batchnorm(rng, monkeypatch, n, h, w, c, k, s, pieces, dtype,
                                                                 tol):
    """pre: x read as leaky((x - mean) * invstd * gamma + beta), a few rows at a time just before
    their GEMM (or, on the 25-product path, into a buffer first): the reference's y and statistics
    from the normalised x, in pieces, bands (several normalised blocks a band), on one thread."""
    monkeypatch.setattr(fused, "PRE_ROWS", 7)
    cut(monkeypatch, pieces)
    o = 4
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    pre = batchnorm_rows(rng, c, dtype)
    w2 = rng.standard_normal((c, k * k * o + 3)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    pt, pl = same_padding(h * s, k, s)[1], same_padding(w * s, k, s)[1]
    y, want, plain = np.full((3, n, h * s, w * s, o), np.nan, dtype)
    stats, want_stats = np.full((2, 2, o), np.nan, dtype)
    args = (w2, bias, k, k, s, pt, pl, "leaky", 0.3, None)
    cpu.conv_transpose_act(y, x, *args, stats, pre, 0.3)
    reference.conv_transpose_act(want, x, *args, want_stats, pre, 0.3)
    reference.conv_transpose_act(plain, normalised(x, pre, dtype(0.3)).astype(dtype), *args)
    for got, ref in ((y, want), (stats, want_stats), (want, plain)):
        np.testing.assert_allclose(got, ref, rtol=tol or RTOL, atol=tol or ATOL)


@pytest.mark.parametrize("n,h,w,c,k,s", [(2, 6, 5, 3, 3, 1), (1, 33, 3, 2, 3, 1), (2, 8, 8, 3, 3, 2)])
@pytest.mark.parametrize("outputs", ["both", "dw", "y"])
@pytest.mark.parametrize("pieces", ["bands", "default", "unsplit", "25-products"])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (F32, None)])
def test_conv_gemms_read_t_through_a_batchnorm_and_sum_its_gradient(rng, monkeypatch, n, h, w, c, k, s, outputs,
                                                                     pieces, dtype, tol):
    """pre: t read through a BatchNorm + LeakyReLU, each piece's rows normalised before its dw
    product; pre_sums (with y): the BatchNorm's backward sums (bn_act_grad_sums) of y against t,
    taken piece by piece as y is written; y keeps its meaning (t's gradient before the BatchNorm
    is applied). The reference's results, and the same bits at every call."""
    cut(monkeypatch, pieces)
    ho, pt = same_padding(h, k, s)
    wo, pl = same_padding(w, k, s)
    o = 5  # t's and y's channels
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    wk = rng.standard_normal((k * k * c, o)).astype(dtype)
    t = rng.standard_normal((n, ho, wo, o)).astype(dtype)
    pre = batchnorm_rows(rng, o, dtype)

    def call(module, t_in, pre_in):
        y = None if outputs == "dw" else np.full((n, ho, wo, o), np.nan, dtype)
        dw = None if outputs == "y" else np.full((k * k * c, o), np.nan, dtype)
        sums = None if y is None or pre_in is None else np.full((2, o), np.nan, dtype)
        module.conv_gemms(y, dw, x, wk, t_in, k, k, s, pt, pl, None, pre_in, 0.3, sums)
        return [a for a in (y, dw, sums) if a is not None]

    got, again, want = call(cpu, t, pre), call(cpu, t, pre), call(reference, t, pre)
    plain = call(reference, normalised(t, pre, dtype(0.3)).astype(dtype), None)
    if outputs != "dw":  # the sums, as a BatchNorm's backward takes them from its output gradient y
        s1, s2 = np.empty((2, o), dtype)
        reference.bn_act_grad_sums(s1, s2, plain[0].reshape(-1, o), t.reshape(-1, o), *pre, 0.3)
        plain.append(np.stack([s1, s2]))
    assert len(got) == len(want) == len(plain)
    for a, b, r, p in zip(got, again, want, plain):
        assert np.array_equal(a, b)
        np.testing.assert_allclose(a, r, rtol=tol or RTOL, atol=tol or 1e-4)
        np.testing.assert_allclose(r, p, rtol=tol or RTOL, atol=tol or 1e-4)


def test_conv_gemms_refuse_sums_without_a_batchnorm_or_y(rng):
    x, t = rng.standard_normal((1, 4, 4, 2)).astype(F32), rng.standard_normal((1, 4, 4, 3)).astype(F32)
    wk, dw, sums = np.ones((18, 3), F32), np.empty((18, 3), F32), np.empty((2, 3), F32)
    pre = batchnorm_rows(rng, 3)
    for module in (cpu, reference):
        with pytest.raises(ValueError, match="pre_sums needs pre"):
            module.conv_gemms(np.empty_like(t), dw, x, wk, t, 3, 3, 1, 1, 1, None, None, 1.0, sums)
        with pytest.raises(ValueError, match="pre_sums needs pre"):
            module.conv_gemms(None, dw, x, wk, t, 3, 3, 1, 1, 1, None, pre, 1.0, sums)


def test_conv_gemms_weight_gradient_is_the_same_at_every_call(rng, monkeypatch):
    """Each core sums its pieces' dw in a fixed order and the cores' sums are added in order: many
    one-row pieces over the cores give bit-identical dw call after call (training stays repeatable)."""
    monkeypatch.setattr(schedule, "PIECE_COLS_BYTES", 1)
    x = rng.standard_normal((3, 12, 10, 5)).astype(F32)
    t = rng.standard_normal((3, 6, 5, 7)).astype(F32)
    results = []
    for _ in range(5):
        dw = np.full((3 * 3 * 5, 7), np.nan, F32)
        cpu.conv_gemms(None, dw, x, None, t, 3, 3, 2, 0, 1)
        results.append(dw)
    for dw in results[1:]:
        np.testing.assert_array_equal(dw, results[0])
    np.testing.assert_allclose(results[0], want_dw(x, t), rtol=1e-4, atol=1e-4)


def want_dw(x, t):
    cols = np.empty((t.shape[0] * t.shape[1] * t.shape[2], 3 * 3 * x.shape[3]), F32)
    reference.gather_taps(cols, x, t.shape[1], t.shape[2], 2, np.arange(3), np.arange(3) - 1)
    return cols.T @ t.reshape(len(cols), -1)


def test_conv_act_refuses_a_mismatch(rng):
    x = np.zeros((1, 6, 6, 2), F32)
    with pytest.raises(ValueError, match="do not fit"):
        cpu.conv_act(np.zeros((1, 6, 6, 4), F32), x, np.zeros((18, 4), F32), *[np.zeros(4, F32)] * 3,
                     3, 3, 2, 0, 1)


@pytest.mark.parametrize("n,i,o", [(1, 5, 3), (2, 7, 700), (64, 3, 130)])
@pytest.mark.parametrize("activation", [None, "leaky", "sigmoid"])
def test_dense_act(rng, n, i, o, activation):
    x = rng.standard_normal((n, i)).astype(F32)
    w = rng.standard_normal((i, o)).astype(F32)
    bias, scale, shift = (rng.standard_normal(o).astype(F32) for _ in range(3))
    ref, fast = both("dense_act", [np.full((n, o), np.nan, F32)], x, w, bias, scale, shift, activation, 0.3)
    assert_close(ref, fast)
    pre = (x @ w + bias) * scale + shift
    want = {None: pre, "leaky": np.where(pre > 0, pre, 0.3 * pre), "sigmoid": 1 / (1 + np.exp(-pre))}[activation]
    np.testing.assert_allclose(ref[0], want, rtol=1e-5, atol=1e-6)


def test_fold_adjoint_weights(rng):
    """A per-output-channel affine folded into a transposed conv's GEMM weights and bias."""
    scale, shift, bias = rng.uniform(0.5, 2, 4), rng.standard_normal(4), rng.standard_normal(4)
    kernel = rng.standard_normal((3, 2, 4, 5))  # (kh, kw, out, in)
    w2, b2 = np.full((5, 3 * 2 * 4 + 2), np.nan), np.empty(4)
    reference.fold_adjoint_weights(w2, b2, kernel, bias, scale, shift)
    np.testing.assert_array_equal(w2[:, 24:], 0)
    np.testing.assert_allclose(w2[:, :24].reshape(5, 3, 2, 4), kernel.transpose(3, 0, 1, 2) * scale, rtol=1e-12)
    np.testing.assert_allclose(b2, bias * scale + shift, rtol=1e-12)


@pytest.mark.parametrize("n,h,w,c", [(1, 3, 3, 1), (2, 4, 5, 3), (3, 7, 2, 130)])
def test_upsample_nearest_and_its_adjoint(rng, n, h, w, c):
    """Forward is a copy (exact); backward sums four numbers per block (another order: RTOL)."""
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    ref, fast = both("upsample_nearest", [np.full((n, 2 * h, 2 * w, c), np.nan, F32)], x)
    assert np.array_equal(ref[0], fast[0]) and not np.isnan(fast[0]).any()
    dy = rng.standard_normal((n, 2 * h, 2 * w, c)).astype(F32)
    assert_close(*both("upsample_nearest_backward", [np.full((n, h, w, c), np.nan, F32)], dy))
    # adjoint: <up(x), dy> = <x, up^T(dy)>
    dx = fast[0][:, ::2, ::2].copy()
    cpu.upsample_nearest_backward(dx, dy)
    assert np.vdot(fast[0].astype(np.float64), dy) == pytest.approx(np.vdot(x.astype(np.float64), dx), rel=1e-5)


@pytest.mark.parametrize("m,c", [(1, 1), (7, 3), (5000, 4), (64, 128)])
def test_reductions_and_affine(rng, m, c):
    x = (rng.standard_normal((m, c)) * 3 + 1).astype(F32)
    dy = rng.standard_normal((m, c)).astype(F32)
    vec = lambda: rng.uniform(0.5, 1.5, c).astype(F32)  # noqa: E731
    mean, invstd, gamma, beta, b = vec(), vec(), vec(), vec(), vec()
    assert_close(*both("sum_rows", [np.zeros(c, F32)], x))
    assert_close(*both("bn_stats", [np.zeros(c, F32), np.zeros(c, F32)], x))
    assert_close(*both("bn_forward", [np.zeros((m, c), F32)], x, mean, invstd, gamma, beta))
    for alpha in (1.0, 0.3):
        assert_close(*both("bn_act_forward", [np.zeros((m, c), F32)], x, mean, invstd, gamma, beta, alpha))
        # The backward's sums cancel (x - mean sums to about 0): the CPU adds them up in float64, so
        # it is held to the reference evaluated in float64 on the same float32 inputs.
        fast = [np.zeros((m, c), F32), np.zeros(c, F32), np.zeros(c, F32)]
        cpu.bn_act_backward(*fast, dy, x, mean, invstd, gamma, beta, alpha)
        exact = [np.zeros((m, c)), np.zeros(c), np.zeros(c)]
        reference.bn_act_backward(*exact, *(a.astype(np.float64) for a in (dy, x, mean, invstd, gamma, beta)), alpha)
        for f, e in zip(fast, exact):
            np.testing.assert_allclose(f, e, rtol=RTOL, atol=ATOL)
    ref, fast = x.copy(), x.copy()
    reference.add_bias(ref, b), cpu.add_bias(fast, b)
    assert_close([ref], [fast])


@pytest.mark.parametrize("center, spread", [(0.0, 1.0), (1000.0, 0.01), (-3.0, 50.0)])
def test_bn_stats_in_one_pass_holds_the_float64_moments_where_the_spread_is_small(rng, center, spread):
    """The CPU's one-pass statistics (sums about a shift, in float64) against the exact moments,
    also for a map whose mean is 1e5 times its spread (where E[x^2] - E[x]^2 about 0 would lose it),
    over several chunks of rows; the same input gives the same bits."""
    x = (center + spread * rng.standard_normal((5000, 7))).astype(F32)
    x64 = x.astype(np.float64)
    mean, var = np.full(7, np.nan, F32), np.full(7, np.nan, F32)
    cpu.bn_stats(mean, var, x)
    np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-7, atol=1e-7 * spread)
    np.testing.assert_allclose(var, x64.var(axis=0), rtol=1e-6)
    again = np.empty(7, F32), np.empty(7, F32)
    cpu.bn_stats(*again, x)
    assert np.array_equal(again[0], mean) and np.array_equal(again[1], var)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-7), (np.float64, 1e-15)])
def test_the_sigmoid_on_numpys_exp_is_within_rounding_everywhere(dtype, tol):
    """The CPU sigmoid (NumPy's vectorised exp, chunk by chunk, spans over the cores; also the
    fused kernels' last step) against the exact value, from far below -88 (where exp(-x) overflows
    in float32 and 0 comes out) to far above; in [0, 1] and no warnings."""
    x = np.linspace(-120, 120, 3 * cpu_elementwise.SIGMOID_CHUNK + 7).astype(dtype)
    y = np.full_like(x, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cpu.sigmoid_forward(y, x)
    exact = 1 / (1 + np.exp(-x.astype(np.longdouble)))
    assert np.abs(y - exact).max() < tol and y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("shape", [(2,), (3, 5), (2, 4, 4, 3), (70001,)])
def test_elementwise(rng, shape):
    x = (rng.standard_normal(shape) * 4).astype(F32)
    x.reshape(-1)[0] = 90.0  # sigmoid must not overflow at either end
    x.reshape(-1)[-1] = -90.0
    dy = rng.standard_normal(shape).astype(F32)
    out = lambda: np.zeros(shape, F32)  # noqa: E731
    assert_close(*both("leaky_forward", [out()], x, 0.3))
    assert_close(*both("leaky_backward", [out()], dy, x, 0.3))
    assert_close(*both("relu_forward", [out()], x))
    assert_close(*both("relu_backward", [out()], dy, x))
    ref, fast = both("sigmoid_forward", [out()], x)
    assert_close(ref, fast)
    assert np.all(np.isfinite(fast[0])) and fast[0].reshape(-1)[0] == 1.0
    assert_close(*both("sigmoid_backward", [out()], dy, ref[0]))


@pytest.mark.parametrize("ta,tb,acc", [(False, False, False), (True, False, False), (False, True, True),
                                      (True, False, True), (True, True, False)])
@pytest.mark.parametrize("m,n", [(5, 4), (3, 9)])  # (3, 9): the thin a^T b taken the other way round
def test_gemm(rng, ta, tb, acc, m, n):
    a = rng.standard_normal((6, m) if ta else (m, 6)).astype(F32)
    b = rng.standard_normal((n, 6) if tb else (6, n)).astype(F32)
    out = rng.standard_normal((m, n)).astype(F32)
    assert_close(*both("gemm", [out], a, b, ta, tb, acc))


@pytest.mark.parametrize("n,h,w,c,k,s", GEOMS)
def test_layers_match_across_backends(rng, n, h, w, c, k, s):
    """Whole Conv2D / Conv2DTranspose / BatchNorm forward+backward, float32, both backends."""
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    results = {}
    for name in ("numpy", "cpu"):
        with kernels.using(name):
            out = []
            for layer in (Conv2D(c, 3, k, s, activation="relu", rng=np.random.default_rng(0)),
                          Conv2DTranspose(c, 3, k, s, rng=np.random.default_rng(0)), BatchNorm(c)):
                y = layer.forward(x, True)
                dy = np.random.default_rng(1).standard_normal(y.shape).astype(F32)
                out += [y, layer.backward(dy), *layer.grads.values()]
            results[name] = out
    assert_close(results["numpy"], results["cpu"])


def direct_conv_same(x, kernel, stride):
    """Conv2D 'same' written from TensorFlow's definition, independent of im2col."""
    n, h, w, c = x.shape
    k = kernel.shape[0]
    ho, pt = same_padding(h, k, stride)
    wo, pl = same_padding(w, k, stride)
    y = np.zeros((n, ho, wo, kernel.shape[3]))
    for p in range(ho):
        for q in range(wo):
            for i in range(k):
                for j in range(k):
                    hh, ww = p * stride + i - pt, q * stride + j - pl
                    if 0 <= hh < h and 0 <= ww < w:
                        y[:, p, q, :] += x[:, hh, ww, :] @ kernel[i, j]
    return y


def test_same_padding_is_tensorflows():
    # At stride 2 on even sizes TensorFlow pads 0 before and 1 after; on odd sizes 1 and 1.
    assert same_padding(128, 3, 2) == (64, 0)
    assert same_padding(7, 3, 2) == (4, 1)
    assert same_padding(8, 3, 1) == (8, 1)
    assert same_padding(6, 1, 2) == (3, 0)


@pytest.mark.parametrize("n,h,w,c,k,s", GEOMS)
def test_conv2d_matches_direct_definition(backend, rng, n, h, w, c, k, s):
    x = rng.standard_normal((n, h, w, c))
    layer = Conv2D(c, 4, k, s, dtype=np.float64, rng=rng)
    np.testing.assert_allclose(layer.forward(x, False), direct_conv_same(x, layer.params["kernel"], s),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,h,w,c,k,s", GEOMS)
def test_transpose_is_adjoint_of_conv(backend, rng, n, h, w, c, k, s):
    """sum(conv(x) * y) == sum(x * convT(y)) with the same kernel array and zero biases."""
    o = 3
    conv = Conv2D(c, o, k, s, dtype=np.float64, rng=rng)
    convt = Conv2DTranspose(o, c, k, s, dtype=np.float64)
    convt.params["kernel"][...] = conv.params["kernel"]  # (kh, kw, c, o) is convT's (kh, kw, out, in)
    x = rng.standard_normal((n, h, w, c))
    ho, wo = -(-h // s), -(-w // s)
    if (ho * s, wo * s) != (h, w):
        x = rng.standard_normal((n, ho * s, wo * s, c))  # convT's output size is input x stride
    y = rng.standard_normal((n, ho, wo, o))
    lhs = np.sum(conv.forward(x, False) * y)
    rhs = np.sum(x * convt.forward(y, False))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


def test_batchnorm_statistics_closed_form(backend, rng):
    x = rng.standard_normal((4, 3, 3, 2)) * np.array([2.0, 0.5]) + np.array([1.0, -3.0])
    layer = BatchNorm(2, momentum=0.9, epsilon=1e-3, dtype=np.float64)
    layer.params["gamma"][...] = [2.0, 0.5]
    layer.params["beta"][...] = [0.1, -0.2]
    y = layer.forward(x, True)
    flat = x.reshape(-1, 2)
    mean, var = flat.mean(0), flat.var(0)
    np.testing.assert_allclose(layer.state["moving_mean"], 0.9 * 0 + 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.state["moving_variance"], 0.9 * 1 + 0.1 * var, rtol=1e-12)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3) * [2.0, 0.5] + [0.1, -0.2], rtol=1e-10)
    y_inf = layer.forward(x, False)
    mm, mv = 0.1 * mean, 0.9 + 0.1 * var
    np.testing.assert_allclose(y_inf, (x - mm) / np.sqrt(mv + 1e-3) * [2.0, 0.5] + [0.1, -0.2], rtol=1e-10)


def test_dispatch_switches_backend(monkeypatch):
    previous = kernels.active_name()
    seen = []
    monkeypatch.setattr(reference, "gather_taps", lambda *args: seen.append(args))
    with kernels.using("numpy") as active:
        assert active is reference and kernels.backend() is reference and kernels.active_name() == "numpy"
        kernels.gather_taps("cols", "x", 1, 2, 1, [0], [0])
    assert seen == [("cols", "x", 1, 2, 1, [0], [0])]  # the dispatch function called the reference's
    assert kernels.active_name() == previous
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.use("tpu")


def test_workspace_grows_only_when_too_small():
    made = []

    def empty(shape, dtype):
        made.append(shape)
        return np.empty(shape, dtype)

    ws = Workspace(empty)
    a = ws.buffer("cols", (4, 5), F32)
    assert a.shape == (4, 5) and a.dtype == F32 and a.flags.c_contiguous and made == [(20,)]
    b = ws.buffer("cols", (3, 2), F32)  # smaller: a view of the same memory, nothing allocated
    assert made == [(20,)] and np.shares_memory(a, b)
    c = ws.buffer("cols", (7, 3), F32)  # larger: grown once
    assert made == [(20,), (21,)] and not np.shares_memory(a, c)
    other = ws.buffer("other", (2,), F32)
    wide = ws.buffer("cols", (2,), np.float64)  # another key or dtype: a buffer of its own
    assert not np.shares_memory(other, c) and not np.shares_memory(wide, c) and len(made) == 4
    ws.clear()
    ws.buffer("cols", (2,), F32)
    assert len(made) == 5


def test_workspace_without_allocator_uses_the_active_backend():
    ws = Workspace()
    with kernels.using("numpy"):
        a = ws.buffer("k", (3,), F32)
    with kernels.using("cpu"):
        b = ws.buffer("k", (3,), F32)
    assert isinstance(a, np.ndarray) and not np.shares_memory(a, b)  # one buffer per backend's allocator


@pytest.mark.parametrize("n", [1, 9])  # bands of one image; whole images
def test_fused_cpu_ops_take_the_callers_workspace(rng, monkeypatch, n):
    """conv_transpose_act and dense_act take their scratch from the `ws` they are given (else from
    the module's WORKSPACE), with the same result either way."""
    monkeypatch.setattr(schedule, "MIN_BAND_ROWS", 1)
    fallback = []
    monkeypatch.setattr(fused, "WORKSPACE", Workspace(lambda shape, dtype: fallback.append(shape) or
                                                      np.empty(shape, dtype)))
    x = rng.standard_normal((n, 4, 3, 5)).astype(F32)
    w2 = rng.standard_normal((5, 3 * 3 * 4 + 2)).astype(F32)
    bias = rng.standard_normal(4).astype(F32)
    xd, w = rng.standard_normal((n, 6)).astype(F32), rng.standard_normal((6, 200)).astype(F32)
    vecs = [rng.standard_normal(200).astype(F32) for _ in range(3)]
    results = []
    for ws in (None, Workspace(lambda shape, dtype: given.append(shape) or np.empty(shape, dtype))):
        given = []
        y, yd = np.full((n, 8, 6, 4), np.nan, F32), np.full((n, 200), np.nan, F32)
        cpu.conv_transpose_act(y, x, w2, bias, 3, 3, 2, 0, 0, "sigmoid", 1.0, ws=ws)
        convs = len(given)
        cpu.dense_act(yd, xd, w, *vecs, "leaky", 0.3, ws=ws)
        results.append((y, yd))
        if ws is None:
            assert fallback and not given
        else:
            assert convs > 0 and len(given) > convs  # each op took its buffers from ws
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_on_each_core_runs_every_worker_and_restores_blas_threads():
    from scratchvae.kernels import threads
    before = threads._call_first(threads._BLAS_GETTERS)
    seen = []

    def work(k):
        seen.append((k, threads._call_first(threads._BLAS_GETTERS)))
        if k == 1:
            raise ValueError("worker 1 failed")

    if before is None:
        assert threads.on_each_core(work, 2) is False and not seen
        return
    with pytest.raises(ValueError, match="worker 1 failed"):
        threads.on_each_core(work, 2)
    assert sorted(seen) == [(0, 1), (1, 1)]  # both ran, BLAS single-threaded meanwhile
    assert threads._call_first(threads._BLAS_GETTERS) == before


def test_on_each_core_workers_keep_the_callers_numpy_error_state():
    """np.errstate is per thread: the workers run in a copy of the caller's context, so an overflow
    the caller ignores (a diverging step) warns from no worker either, and raises where it raises."""
    import warnings
    from scratchvae.kernels import threads
    big = np.full((4, 4), 3e38, F32)

    def work(k):
        np.matmul(big, big)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="ignore"):
            assert threads.on_each_core(work, 2) in (True, False)
        with np.errstate(over="raise"), pytest.raises(FloatingPointError):
            if not threads.on_each_core(work, 2):
                work(0)


@pytest.mark.parametrize("numpy_first", [True, False])
def test_openblas_gets_scratchvaes_idle_thread_timeout(numpy_first):
    """OpenBLAS runs with OPENBLAS_THREAD_TIMEOUT 16 (its idle workers sleep after 2^16 cycles, not
    ~0.1 s of spinning) whether scratchvae was imported before NumPy (the variable is read when
    OpenBLAS loads) or after it (set_threads makes OpenBLAS re-read it), and the products stay right."""
    import subprocess
    import sys
    first = "import numpy as np; import scratchvae" if numpy_first else "import scratchvae; import numpy as np"
    code = first + "; from scratchvae.kernels import threads; a = np.ones((300, 300), np.float32); a @ a; " \
        "threads.set_threads(2); print(threads._call_first(threads._TIMEOUT_GETTER)); print((a @ a)[0, 0])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["16", "300.0"]
