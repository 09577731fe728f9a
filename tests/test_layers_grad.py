"""Every layer's backward against central finite differences in float64."""

import numpy as np
import pytest

from scratchvae.layers import (BatchNorm, BatchNormLeakyReLU, Conv2D, Conv2DTranspose, DeferredNorm, Dense, Flatten,
                               LeakyReLU, ReLU, Reshape, Sigmoid, UpSampling2D)
from scratchvae.model import Sequential
from tests.gradcheck import check_layer

F64 = np.float64
CONV_CASES = [  # (batch, height, width, in_channels, filters, kernel, stride)
    (1, 5, 5, 1, 2, 3, 1),
    (2, 6, 6, 3, 4, 3, 2),
    (2, 5, 7, 2, 3, 3, 2),
    (3, 4, 4, 3, 1, 3, 1),
    (1, 6, 5, 2, 2, 1, 2),
    (2, 7, 6, 1, 3, 3, 2),
    (2, 8, 8, 3, 2, 3, 2),  # stride 2 between 8x8 and 4x4 maps, both even: the 25-product path can take it
    (1, 4, 8, 2, 3, 3, 2),
]


def away_from_zero(rng, shape, gap=1e-2):
    # Kinks (ReLU, LeakyReLU) need inputs away from 0 for finite differences.
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < gap, np.sign(x + 1e-12) * gap * 2, x)


def cut_work(monkeypatch, how):
    """Cut the convolutions' work as `how` says (see the schedule fixture)."""
    from scratchvae.kernels import threads
    from scratchvae.kernels.cpu import winograd
    from scratchvae.kernels.cpu import schedule as cuts
    if how.startswith("25-products"):
        monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
        monkeypatch.setattr(winograd, "MIN_SMALL_PIXELS", 1)
    if how.endswith("bands"):
        for name in ("PIECE_COLS_BYTES", "LARGE_IMAGE_COLS_BYTES", "MIN_BAND_ROWS"):
            monkeypatch.setattr(cuts, name, 1)
    elif how == "one-thread":
        monkeypatch.setattr(threads, "on_each_core", lambda fn, workers: False)
    return how


@pytest.fixture(params=["pieces", "bands", "one-thread", "25-products", "25-products-bands"])
def schedule(request, monkeypatch):
    """The convolutions' kernels run piece by piece on the cores: as they are cut by default, cut
    into one-row bands (as the big layers are), and all on one thread (BLAS's threads not settable);
    and with the 25-product path (kernels/cpu/winograd.py) taking every stride-2 3x3 convolution
    between even maps, however few channels, in pieces or in bands of one tile row."""
    return cut_work(monkeypatch, request.param)


@pytest.fixture(params=["pieces", "bands", "one-thread"])
def stride_1_schedule(request, monkeypatch):
    """The schedule fixture's cuts that a stride-1 convolution can take (no 25-product path)."""
    return cut_work(monkeypatch, request.param)


@pytest.mark.parametrize("n,h,w,c,o,k,s", CONV_CASES)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_conv2d(backend, schedule, rng, n, h, w, c, o, k, s, activation):
    layer = Conv2D(c, o, kernel_size=k, strides=s, activation=activation, dtype=F64, rng=rng)
    layer.params["bias"][...] = rng.standard_normal(o) * 0.1
    check_layer(layer, rng.standard_normal((n, h, w, c)), rng)


@pytest.mark.parametrize("n,h,w,c,o,k,s", CONV_CASES)
def test_conv2d_transpose(backend, schedule, rng, n, h, w, c, o, k, s):
    layer = Conv2DTranspose(c, o, kernel_size=k, strides=s, dtype=F64, rng=rng)
    layer.params["bias"][...] = rng.standard_normal(o) * 0.1
    check_layer(layer, rng.standard_normal((n, h, w, c)), rng)


@pytest.mark.parametrize("shape", [(2, 3), (5, 4), (2, 3, 3, 2), (1, 4, 5, 3), (3, 5, 4, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm(backend, rng, shape, training):
    layer = BatchNorm(shape[-1], dtype=F64)
    layer.params["gamma"][...] = rng.uniform(0.5, 1.5, shape[-1])
    layer.params["beta"][...] = rng.standard_normal(shape[-1])
    layer.state["moving_mean"][...] = rng.standard_normal(shape[-1])
    layer.state["moving_variance"][...] = rng.uniform(0.5, 2.0, shape[-1])
    check_layer(layer, rng.standard_normal(shape) * 2 + 0.5, rng, training=training)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 3, 2), (1, 5, 4, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_fused_with_leaky_relu(backend, rng, shape, training):
    """BN + LeakyReLU fused into one layer: its own gradients, and equal to the two layers apart."""
    f = shape[-1]
    fused, plain, act = BatchNormLeakyReLU(f, 0.3, dtype=F64), BatchNorm(f, dtype=F64), LeakyReLU(0.3, dtype=F64)
    for layer in (fused, plain):
        layer.params["gamma"][...] = np.linspace(0.5, 1.5, f)
        layer.params["beta"][...] = np.linspace(-0.3, 0.4, f)
        layer.state["moving_variance"][...] = np.linspace(0.5, 2.0, f)
    x = rng.standard_normal(shape) * 2 + 0.3
    y = fused.forward(x, training)
    np.testing.assert_allclose(y, act.forward(plain.forward(x, training), training), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(shape)
    dx = fused.backward(g.copy()).copy()
    np.testing.assert_allclose(dx, plain.backward(act.backward(g)), rtol=1e-10, atol=1e-12)
    for key in fused.grads:
        np.testing.assert_allclose(fused.grads[key], plain.grads[key], rtol=1e-10, atol=1e-12)
    check_layer(fused, x, rng, training=training)


class Chain(Sequential):
    """Layers in a row as one layer for check_layer: params and grads under "layer.name" keys."""

    def __init__(self, *layers):
        super().__init__(list(layers))
        self.name = "+".join(layer.name for layer in layers)
        self.params = {f"{layer.name}.{k}": v for layer in layers for k, v in layer.params.items()}
        self.grads = {f"{layer.name}.{k}": v for layer in layers for k, v in layer.grads.items()}


def batchnorm_then_transposed_conv(rng, c, o, k, deferred):
    """BatchNorm + LeakyReLU, then a stride-1 Conv2DTranspose, as the model builds the seed decoder's
    last two layers: with the BatchNorm's output deferred (a DeferredNorm shared by the two), or
    written out (and then overwritten by the convolution's input gradient)."""
    handoff = DeferredNorm(c, F64) if deferred else None
    bn = BatchNormLeakyReLU(c, 0.3, dtype=F64, name="bn", deferred=handoff)
    conv = Conv2DTranspose(c, o, kernel_size=k, strides=1, dtype=F64, rng=rng, name="conv", overwrite_input=True,
                           deferred=handoff)
    bn.params["gamma"][...] = np.linspace(0.5, 1.5, c)
    bn.params["beta"][...] = np.linspace(-0.3, 0.4, c)
    bn.state["moving_variance"][...] = np.linspace(0.5, 2.0, c)
    conv.params["bias"][...] = np.linspace(-0.1, 0.1, o)
    return Chain(bn, conv)


@pytest.mark.parametrize("n,h,w,c,o,k", [(2, 5, 4, 3, 2, 3), (1, 6, 6, 4, 3, 3), (3, 3, 5, 2, 1, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_deferred_into_the_transposed_convolution(backend, stride_1_schedule, rng, n, h, w, c, o, k,
                                                             training):
    """The decoder's last BatchNorm + LeakyReLU left to the stride-1 Conv2DTranspose after it (the
    convolution normalises as it reads and takes the BatchNorm's backward sums as it writes its input
    gradient): its gradients against finite differences, and the same outputs and gradients as the
    two layers with the BatchNorm's output written out. In inference nothing is deferred."""
    x = rng.standard_normal((n, h, w, c)) * 2 + 0.3
    deferred = batchnorm_then_transposed_conv(np.random.default_rng(7), c, o, k, True)
    written = batchnorm_then_transposed_conv(np.random.default_rng(7), c, o, k, False)
    y = deferred.forward(x.copy(), training)
    np.testing.assert_allclose(y, written.forward(x.copy(), training), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(y.shape)
    dx = deferred.backward(g.copy()).copy()
    np.testing.assert_allclose(dx, written.backward(g.copy()), rtol=1e-10, atol=1e-12)
    for key in deferred.grads:
        np.testing.assert_allclose(deferred.grads[key], written.grads[key], rtol=1e-10, atol=1e-12)
    bn = deferred.layers[0]
    assert (bn.deferred.of is None) and (bn.deferred.sums_of is None)  # both handed over, nothing left
    check_layer(deferred, x, rng, training=training)


@pytest.mark.parametrize("shape", [(1, 5), (3, 2, 3, 4)])
def test_activations(backend, rng, shape):
    for layer in (LeakyReLU(0.3, dtype=F64), ReLU(dtype=F64), Sigmoid(dtype=F64)):
        check_layer(layer, away_from_zero(rng, shape) * 3, rng)


@pytest.mark.parametrize("n,fin,units", [(1, 3, 2), (4, 7, 5), (2, 1, 1)])
def test_dense(backend, rng, n, fin, units):
    layer = Dense(fin, units, dtype=F64, rng=rng)
    layer.params["bias"][...] = rng.standard_normal(units)
    check_layer(layer, rng.standard_normal((n, fin)), rng)


def test_flatten_reshape_roundtrip(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    flat, back = Flatten(dtype=F64), Reshape((3, 4, 5), dtype=F64)
    y = flat.forward(x, True)
    # Keras order: H, then W, then C (C fastest).
    assert y.shape == (2, 60) and y[1, 5 * 1 + 2] == x[1, 0, 1, 2]
    assert np.array_equal(back.forward(y, True), x)
    g = rng.standard_normal((2, 3, 4, 5))
    assert np.array_equal(flat.backward(back.backward(g)), g)
    check_layer(Flatten(dtype=F64), x.copy(), rng)
    check_layer(Reshape((5, 12), dtype=F64), y.copy(), rng)


@pytest.mark.parametrize("shape", [(1, 3, 3, 2), (2, 4, 5, 3), (3, 2, 2, 1), (1, 5, 4, 1)])
def test_upsampling(backend, rng, shape):
    """Nearest upsampling by 2: every pixel fills its 2x2 block; backward sums each block."""
    layer = UpSampling2D(2, dtype=F64)
    x = rng.standard_normal(shape)
    y = layer.forward(x, True)
    n, h, w, c = shape
    assert y.shape == (n, 2 * h, 2 * w, c)
    for a in range(2):
        for b in range(2):
            assert np.array_equal(y[:, a::2, b::2, :], x)
    check_layer(UpSampling2D(2, dtype=F64), x, rng)


def test_upsampling_refuses_other_sizes():
    with pytest.raises(ValueError, match="only 2"):
        UpSampling2D(3)
