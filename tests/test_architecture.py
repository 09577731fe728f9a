"""The one description of the network: specs against built models, geometry, the dead-bias rule,
precise BatchNorm statistics, and checkpoints written before the specs existed."""

import os

import numpy as np
import pytest

from scratchvae import architecture
from scratchvae.geometry import same_pads, transpose_geometry
from scratchvae.layers import BatchNorm, Conv2D, Conv2DTranspose, Dense
from scratchvae.layers.norm import BatchStats
from scratchvae.model import VAE, VAEConfig, dead_biases

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CONFIGS = [VAEConfig(image_size=16, filters=4, blocks=2, z_dim=4),
           VAEConfig(image_size=24, channels=1, filters=3, blocks=3, z_dim=5, encoder_activation=None)]
RESIZE = VAEConfig(image_size=16, filters=4, blocks=2, z_dim=4, decoder="resize")


@pytest.mark.parametrize("config", CONFIGS + [RESIZE])
def test_the_spec_names_and_shapes_every_tensor_of_the_built_model(config):
    vae = VAE(config)
    built = {k: v.shape for k, v in {**vae.params(), **vae.state()}.items()}
    assert architecture.tensor_shapes(config) == built
    for part in ("encoder", "decoder"):
        n = sum(v.size for k, v in {**vae.params(), **vae.state()}.items() if k.startswith(part + "."))
        assert sum(architecture.count_params(config, part)) == n


def test_the_summary_lists_the_keras_layers_even_where_the_model_fuses_them():
    text = architecture.summary(VAEConfig())
    assert "bn_1 (BatchNormalization)" in text and "leaky_1 (LeakyReLU)" in text
    assert "conv_t_out (Conv2DTranspose)        (None, 128, 128, 3)" in text
    vae = VAE(CONFIGS[0])
    kinds = [layer.kind for layer in vae.decoder.layers]
    assert "LeakyReLU" not in kinds and kinds.count("BatchNormalization+LeakyReLU") == 3


def test_the_resize_decoder_replaces_each_stride_2_transpose_by_upsampling_and_a_conv():
    specs = architecture.decoder(VAEConfig(decoder="resize"))
    seed = architecture.decoder(VAEConfig())
    assert [s.name for s in specs[4:]] == ["up_1", "conv_1", "bn_1", "leaky_1", "up_2", "conv_2", "bn_2", "leaky_2",
                                           "up_3", "conv_3", "bn_3", "leaky_3", "up_4", "conv_4", "bn_4", "leaky_4",
                                           "conv_t_out", "sigmoid"]
    assert specs[:4] == seed[:4] and specs[-2:] == seed[-2:]  # Dense block and output layer unchanged
    conv = specs[5]
    assert conv.kind == "Conv2D" and conv.args == {"in_channels": 128, "filters": 128, "kernel_size": 3,
                                                   "strides": 1, "activation": None}
    assert specs[4].kind == "UpSampling2D" and specs[4].args == {"size": 2}
    assert "up_4 (UpSampling2D)                 (None, 128, 128, 128)" in architecture.summary(VAEConfig(decoder="resize"))
    assert dead_biases(specs) == {"dense", "conv_1", "conv_2", "conv_3", "conv_4"}
    # the same trainable numbers: a 3x3 Conv2D kernel and a 3x3 Conv2DTranspose kernel of 128 -> 128
    assert architecture.count_params(VAEConfig(decoder="resize"), "decoder") == \
        architecture.count_params(VAEConfig(), "decoder")


def test_the_resize_decoder_fuses_each_conv_with_its_batchnorm_in_inference(rng):
    vae = VAE(RESIZE, seed=1)
    x = rng.uniform(0, 1, (3, 16, 16, 3)).astype(np.float32)
    vae.forward_backward(x, rng.standard_normal((3, 4)).astype(np.float32))  # BN statistics off their init
    assert vae.decoder_plan.describe() == ["dense+bn_0", "reshape", "up_1", "conv_1+bn_1", "up_2",
                                           "conv_2+bn_2", "conv_t_out+sigmoid"]
    z = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(vae.decode(z), vae.decoder.forward(z, training=False), rtol=1e-5, atol=2e-6)
    assert not vae.grads()["decoder.conv_1.bias"].any() and vae.grads()["decoder.conv_t_out.bias"].any()


@pytest.mark.parametrize("field,value", [("decoder", "deconv"), ("recon", "bce"), ("decoder", None)])
def test_the_config_refuses_unknown_decoders_and_reconstructions(field, value):
    with pytest.raises(ValueError, match=f"{field} {value!r} is not one of"):
        VAEConfig(**{field: value})


def test_output_shape_refuses_a_mismatch():
    spec = architecture.encoder_heads(VAEConfig())[0]
    with pytest.raises(ValueError, match="z_mean"):
        architecture.output_shape(spec, (100,))


@pytest.mark.parametrize("size,k,stride,want", [(128, 3, 2, (64, 0, 1)), (7, 3, 2, (4, 1, 1)), (8, 3, 1, (8, 1, 1)),
                                                (6, 1, 2, (3, 0, 0)), (5, 4, 1, (5, 1, 2))])
def test_same_pads_put_the_odd_padding_after(size, k, stride, want):
    assert same_pads(size, k, stride) == want


def test_transpose_geometry_inverts_the_output_size():
    for size in (1, 4, 7):
        for k, stride in ((3, 2), (3, 1), (4, 2), (1, 2)):
            before, after, extra = transpose_geometry(size, k, stride)
            assert stride * (size - 1) + extra + k - before - after == size * stride


def test_dead_biases_are_those_feeding_batchnorm_without_an_activation():
    seed = VAEConfig()
    assert dead_biases(architecture.encoder_trunk(seed)) == set()
    assert dead_biases(architecture.decoder(seed)) == {"dense", "conv_t_1", "conv_t_2", "conv_t_3", "conv_t_4"}
    plain = VAEConfig(encoder_activation=None)
    assert dead_biases(architecture.encoder_trunk(plain)) == {"conv_1", "conv_2", "conv_3", "conv_4"}


def test_the_model_zeroes_dead_bias_gradients_and_reports_each_layer_once(rng):
    seen = []
    vae = VAE(CONFIGS[0], on_grads_ready=lambda name, g: seen.append((name, g.size)))
    x = rng.uniform(0, 1, (4, 16, 16, 3)).astype(np.float32)
    vae.forward_backward(x, rng.standard_normal((4, 4)).astype(np.float32))
    assert not vae.grads()["decoder.conv_t_1.bias"].any() and vae.grads()["decoder.conv_t_out.bias"].any()
    with_params = [name for name, layer in vae.named_layers() if layer.params]
    assert sorted(name for name, _ in seen) == sorted(with_params)
    assert sum(size for _, size in seen) == vae.flat_grads.size
    assert seen[0][0] == "decoder.conv_t_out" and seen[-1][0] == "encoder.conv_1"  # backward order


@pytest.mark.parametrize("config", CONFIGS)
def test_the_model_builds_exactly_the_dead_bias_layers_with_dead_bias(config):
    vae = VAE(config)
    dead = {f"encoder.{n}" for n in dead_biases(architecture.encoder_trunk(config))} | \
           {f"decoder.{n}" for n in dead_biases(architecture.decoder(config))}
    assert dead and {name for name, layer in vae.named_layers() if layer.dead_bias} == dead


@pytest.mark.parametrize("make, shape", [
    (lambda **o: Conv2D(3, 4, 3, 2, rng=np.random.default_rng(1), dtype=np.float64, **o), (2, 6, 6, 3)),
    (lambda **o: Conv2DTranspose(3, 4, 3, 2, rng=np.random.default_rng(1), dtype=np.float64, **o), (2, 3, 3, 3)),
    (lambda **o: Dense(5, 4, rng=np.random.default_rng(1), dtype=np.float64, **o), (3, 5))])
def test_a_dead_bias_gets_zeros_and_every_other_gradient_is_unchanged(make, shape, rng):
    x = rng.standard_normal(shape)
    results = []
    for dead in (False, True):
        layer = make(dead_bias=dead)
        layer.grads["bias"][...] = 7.0  # whatever an earlier step left there
        y = layer.forward(x.copy(), training=True)
        dx = layer.backward(np.linspace(-1, 1, y.size).reshape(y.shape))
        results.append((layer.grads["bias"].copy(), layer.grads["kernel"].copy(), np.array(dx)))
    (bias, kernel, dx), (dead_bias, dead_kernel, dead_dx) = results
    assert np.abs(bias).max() > 0.1 and not dead_bias.any()
    np.testing.assert_array_equal(dead_kernel, kernel)
    np.testing.assert_array_equal(dead_dx, dx)


@pytest.mark.parametrize("config", CONFIGS + [RESIZE])
def test_each_convolution_before_a_batchnorm_measures_its_statistics_in_one_process_only(config, rng):
    """The model shares a BatchStats between each convolution and the BatchNorm right after it; in
    a training step every such BatchNorm normalises with the exact mean and variance of its input,
    as the convolution measured them. A data-parallel model (a reducer) shares none."""
    vae = VAE(config, dtype=np.float64)
    layers = vae.trunk.layers + vae.decoder.layers
    pairs = [(a, b) for a, b in zip(layers, layers[1:]) if isinstance(b, BatchNorm) and
             isinstance(a, (Conv2D, Conv2DTranspose))]
    assert pairs and all(a.batch_stats is not None and b.batch_stats is a.batch_stats for a, b in pairs)
    assert sum(getattr(layer, "batch_stats", None) is not None for layer in layers) == 2 * len(pairs)
    seen = {}
    for _, bn in pairs:
        def recording(x, training, bn=bn, forward=bn.forward):
            given = bn.batch_stats.of is x
            y = forward(x, training)
            seen[id(bn)] = (given, np.array(x).reshape(-1, bn.features), bn.scratch("mean", (bn.features,)).copy(),
                             bn.scratch("var", (bn.features,)).copy())
            return y
        bn.forward = recording
    x = rng.uniform(0, 1, (4, config.image_size, config.image_size, config.channels))
    vae.forward_backward(x, rng.standard_normal((4, config.z_dim)))
    assert len(seen) == len(pairs)
    for name, (given, rows, mean, var) in seen.items():
        assert given, name
        np.testing.assert_allclose(mean, rows.mean(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(var, rows.var(axis=0), rtol=1e-10, atol=1e-12)
    distributed = VAE(config, reducer=lambda a: None)
    assert all(getattr(layer, "batch_stats", None) is None
               for layer in distributed.trunk.layers + distributed.decoder.layers)


def test_a_batchnorm_measures_for_itself_unless_the_stats_describe_its_very_input(rng):
    """BatchStats are used once, and only for the array the convolution returned from a training
    forward: another array, an inference forward in between, or a second use all fall back to
    bn_stats (then the bits equal a BatchNorm that has no BatchStats)."""
    stats = BatchStats(4, np.float64)
    conv = Conv2D(3, 4, 3, 2, batch_stats=stats, dtype=np.float64, rng=np.random.default_rng(2))
    bn, plain = BatchNorm(4, batch_stats=stats, dtype=np.float64), BatchNorm(4, dtype=np.float64)
    x = rng.standard_normal((3, 8, 8, 3))
    y = conv.forward(x, True)
    np.testing.assert_allclose(bn.forward(y, True), plain.forward(y, True), rtol=1e-12, atol=1e-12)
    assert stats.of is None  # taken
    np.testing.assert_array_equal(bn.forward(y, True), plain.forward(y, True))  # a second use: measured again
    y = conv.forward(x, True)
    other = np.array(y) + 1.0
    np.testing.assert_array_equal(bn.forward(other, True), plain.forward(other, True))
    conv.forward(x, True)
    y_inference = conv.forward(x + 1.0, False)
    assert stats.of is None
    np.testing.assert_array_equal(bn.forward(y_inference, True), plain.forward(y_inference, True))


def test_precise_batchnorm_statistics_are_the_exact_mean_and_biased_variance(rng):
    """measure_batchnorm stores, for every BatchNorm, the mean and biased variance of all the
    inputs it saw in the training-mode pass over the batches; nothing else changes."""
    vae = VAE(CONFIGS[0], dtype=np.float64)
    batches = [(rng.uniform(0, 1, (n, 16, 16, 3)), rng.standard_normal((n, 4))) for n in (5, 3, 4)]
    seen = {}
    for layer in vae.batchnorms():
        def recording(x, training, layer=layer, forward=layer.forward):
            seen.setdefault(layer.name + str(id(layer)), []).append(np.array(x).reshape(-1, layer.features))
            return forward(x, training)
        layer.forward = recording
    params = {k: v.copy() for k, v in vae.params().items()}
    assert vae.measure_batchnorm(batches) == 12
    for layer in vae.batchnorms():
        rows = np.concatenate(seen[layer.name + str(id(layer))])
        np.testing.assert_allclose(layer.state["moving_mean"], rows.mean(axis=0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.state["moving_variance"], rows.var(axis=0), rtol=1e-9, atol=1e-12)
    assert all(np.array_equal(params[k], v) for k, v in vae.params().items())
    # and the next measured pass starts afresh rather than averaging with this one
    vae.measure_batchnorm(batches[:1])
    layer = vae.batchnorms()[0]
    rows = seen[layer.name + str(id(layer))][-1]
    np.testing.assert_allclose(layer.state["moving_mean"], rows.mean(axis=0), rtol=1e-10, atol=1e-12)


def test_an_interrupted_measurement_keeps_the_moving_statistics(rng):
    vae = VAE(CONFIGS[0])
    before = {k: v.copy() for k, v in vae.state().items()}

    def batches():
        yield rng.uniform(0, 1, (4, 16, 16, 3)).astype(np.float32), np.zeros((4, 4), np.float32)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        vae.measure_batchnorm(batches())
    assert all(np.array_equal(before[k], v) for k, v in vae.state().items())
    assert all(layer.census is None for layer in vae.batchnorms() if isinstance(layer, BatchNorm))


def test_a_checkpoint_written_before_the_specs_still_loads_and_computes_the_same():
    """tests/fixtures/checkpoint-v0.1.npz was trained (1 epoch, tiny config) by the code before the
    architecture rewrite; its encoder and decoder outputs then are in the -outputs file."""
    vae, arrays, meta = VAE.load(os.path.join(FIXTURES, "checkpoint-v0.1.npz"), with_extras=True)
    want = np.load(os.path.join(FIXTURES, "checkpoint-v0.1-outputs.npz"))
    assert meta["epoch"] == 1 and vae.config == VAEConfig(image_size=16, filters=4, blocks=2, z_dim=4)
    # written before the decoder and recon choices: they load as the seed's
    assert "decoder" not in meta["config"] and "recon" not in meta["config"]
    assert (vae.config.decoder, vae.config.recon) == ("transpose", "mse")
    z_mean, z_log_var = vae.encode(want["x"])
    np.testing.assert_allclose(z_mean, want["z_mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z_log_var, want["z_log_var"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vae.decode(want["z"]), want["image"], rtol=1e-5, atol=1e-6)
