"""The VAE: parameter counts, whole-model gradient check, loss terms, save/load."""

import numpy as np
import pytest

from scratchvae import losses
from scratchvae.layers import Conv2DTranspose, Dense
from scratchvae.model import VAE, VAEConfig
from scratchvae.run import checkpoint
from tests.gradcheck import numeric_grad, rel_error

TINY = VAEConfig(image_size=8, channels=3, filters=3, blocks=2, z_dim=3, beta=5.0)
ZERO_GRAD = {"decoder.dense.bias", "decoder.conv_t_1.bias", "decoder.conv_t_2.bias"}


def test_default_config_matches_the_seed():
    vae = VAE()
    assert vae.count_params("encoder") == (3_724_560, 1_024)
    assert vae.count_params("decoder") == (2_257_795, 17_408)
    assert sum(vae.count_params("encoder")) == 3_725_584
    assert sum(vae.count_params("decoder")) == 2_275_203
    text = vae.summary()
    assert "Total params: 3,725,584" in text and "Total params: 2,275,203" in text
    assert all(a.dtype == np.float32 for a in vae.params().values())


@pytest.mark.parametrize("config", [VAEConfig(), TINY, VAEConfig(image_size=32, channels=1, filters=5, blocks=3,
                                                                  z_dim=7, encoder_activation=None)])
def test_tensor_elements_counts_without_building(config):
    vae = VAE(config)
    built = sum(a.size for a in vae.params().values()) + sum(a.size for a in vae.state().values())
    assert config.tensor_elements() == built


def test_config_rejects_indivisible_size():
    with pytest.raises(ValueError, match="not divisible by 2\\^blocks = 16"):
        VAEConfig(image_size=100)


def test_params_are_live_views():
    vae = VAE(TINY)
    p = vae.params()
    p["decoder.conv_t_out.bias"][0] = 7.0
    assert vae.decoder.layers[-2].params["bias"][0] == 7.0
    assert set(p) == set(vae.grads())
    assert "encoder.bn_1.moving_mean" in vae.state() and "encoder.conv_1.kernel" in p


RESIZE = dict(decoder="resize")
ZERO_GRAD_RESIZE = {"decoder.dense.bias", "decoder.conv_1.bias", "decoder.conv_2.bias"}
GRAD_CASES = [  # (config, the biases cancelled by the BatchNorm after them, KL weight)
    (TINY, ZERO_GRAD, 1.0),
    (VAEConfig(**{**TINY.to_dict(), **RESIZE}), ZERO_GRAD_RESIZE, 0.3),
    (VAEConfig(**{**TINY.to_dict(), **RESIZE, "recon": "sigma"}), ZERO_GRAD_RESIZE, 1.0),
    (VAEConfig(**{**TINY.to_dict(), "recon": "sigma"}), ZERO_GRAD, 0.3),
]


@pytest.mark.parametrize("config,zero_grad,kl_weight", GRAD_CASES)
def test_whole_model_gradient_check(rng, config, zero_grad, kl_weight):
    """forward_backward's gradients are those of reconstruction + kl_weight * KL, for the seed's
    beta * MSE and the sigma-VAE's likelihood, the transposed and the resize decoder."""
    vae = VAE(config, seed=3, dtype=np.float64)
    for name, a in vae.params().items():  # move away from zero-bias / unit-gamma symmetry
        a += rng.standard_normal(a.shape) * 0.05
    x = rng.uniform(0, 1, (3, 8, 8, 3))
    eps = rng.standard_normal((3, config.z_dim))
    terms = vae.forward_backward(x, eps, kl_weight)
    analytic = {k: g.copy() for k, g in vae.grads().items()}
    assert terms == vae.evaluate(x, eps, training=True)  # reported terms are unweighted

    def loss():
        t = vae.evaluate(x, eps, training=True)
        return t["reconstruction"] + kl_weight * t["kl"]

    for name, p in vae.params().items():
        numeric = numeric_grad(loss, p)
        if name in zero_grad:
            # A bias right before a training-mode BatchNorm is cancelled by the mean subtraction.
            assert np.max(np.abs(analytic[name])) < 1e-12 and np.max(np.abs(numeric)) < 1e-7, name
            continue
        err = rel_error(analytic[name], numeric)
        assert err < 1e-6, f"{name}: relative error {err:.2e}"
    assert zero_grad < set(vae.params())


def test_sigma_vae_terms_closed_form(rng):
    """reconstruction = D/2 (log(2 pi MSE) + 1) nats per image; total adds KL; beta plays no part."""
    x, x_hat = rng.uniform(0, 1, (2, 4, 4, 3)), rng.uniform(0, 1, (2, 4, 4, 3))
    mu, lv = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    mse = np.mean((x - x_hat) ** 2)
    kl = np.mean(-0.5 * np.sum(1 + lv - mu ** 2 - np.exp(lv), axis=1))
    for beta in (2000.0, 1.0):
        t = losses.loss_terms(x, x_hat, mu, lv, beta, recon="sigma")
        assert t["reconstruction"] == pytest.approx(48 / 2 * (np.log(2 * np.pi * mse) + 1), rel=1e-12)
        assert t["total"] == pytest.approx(t["reconstruction"] + kl, rel=1e-12) and t["mse"] == mse
    assert losses.sigma_nll(0.0, 48) == pytest.approx(24 * np.log(2 * np.pi * losses.MIN_SIGMA_SQ), rel=1e-12)


def test_sigma_gradient_over_ranks_is_the_global_batch_gradient(rng):
    """With a reducer (data parallelism), each rank scales by the global batch's MSE and its own
    count, so the mean of the ranks' gradients is the gradient of the global batch's loss."""
    x, x_hat = rng.uniform(0, 1, (4, 3, 3, 2)), rng.uniform(0, 1, (4, 3, 3, 2))
    m, g = losses.sigma_recon_and_grad(x, x_hat)
    np.testing.assert_allclose(g, (x_hat - x) / (4 * np.mean((x - x_hat) ** 2)), rtol=1e-12)
    halves = [(x[:2], x_hat[:2]), (x[2:], x_hat[2:])]
    for rank, (xr, xr_hat) in enumerate(halves):
        other = halves[1 - rank]
        others = np.array([np.sum((other[1] - other[0]) ** 2), other[0].size])

        def reducer(a, others=others):
            a += others
        m_rank, g_rank = losses.sigma_recon_and_grad(xr, xr_hat, reducer)
        assert m_rank == pytest.approx(m, rel=1e-12)
        np.testing.assert_allclose(g_rank / 2, g[2 * rank:2 * rank + 2], rtol=1e-12)


def test_loss_terms_closed_form(rng):
    x = rng.uniform(0, 1, (2, 4, 4, 3))
    x_hat = rng.uniform(0, 1, (2, 4, 4, 3))
    mu = rng.standard_normal((2, 5))
    lv = rng.standard_normal((2, 5))
    t = losses.loss_terms(x, x_hat, mu, lv, 2000.0)
    mse = np.mean((x - x_hat) ** 2)
    kl = np.mean(-0.5 * np.sum(1 + lv - mu ** 2 - np.exp(lv), axis=1))
    assert t["mse"] == pytest.approx(mse, rel=1e-12)
    assert t["kl"] == pytest.approx(kl, rel=1e-12)
    assert t["total"] == pytest.approx(2000 * mse + kl, rel=1e-12)
    assert t["psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-12)


def test_logvar_clamp_keeps_everything_finite():
    mu = np.zeros((2, 3), np.float32)
    lv = np.array([[500.0, -500.0, 0.0], [88.0, 1e30, -1e30]], np.float32)
    z, sigma = losses.reparameterize(mu, lv, np.ones_like(mu))
    assert np.all(np.isfinite(z)) and np.isfinite(losses.kl_divergence(mu, lv))
    d_mean, d_logvar = losses.latent_grads(np.ones_like(mu), mu, lv, np.ones_like(mu), sigma)
    assert np.all(np.isfinite(d_logvar)) and d_logvar[0, 0] == 0.0 and d_logvar[0, 2] != 0.0


def test_save_load_roundtrip(tmp_path, rng):
    vae = VAE(TINY, seed=1)
    x = rng.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
    vae.forward_backward(x, rng.standard_normal((4, 3)))  # moves BN statistics off their init
    path = tmp_path / "c.npz"
    vae.save(path, meta={"epoch": 2})
    back, arrays, meta = VAE.load(path, with_extras=True)
    assert back.config == TINY and meta["epoch"] == 2
    for d1, d2 in ((vae.params(), back.params()), (vae.state(), back.state())):
        assert d1.keys() == d2.keys()
        for k in d1:
            assert np.array_equal(d1[k], d2[k]), k
    z = rng.standard_normal((2, 3)).astype(np.float32)
    assert np.array_equal(vae.decode(z), back.decode(z))


def test_load_rejects_wrong_shapes_and_pickles(tmp_path):
    vae = VAE(TINY)
    good = tmp_path / "good.npz"
    vae.save(good)
    arrays, meta = checkpoint.load(good)
    arrays["param/encoder.conv_1.kernel"] = np.zeros((3, 3, 3, 4), np.float32)
    bad = tmp_path / "bad.npz"
    checkpoint.save(bad, arrays, {k: v for k, v in meta.items() if k not in ("format", "version")})
    with pytest.raises(checkpoint.CheckpointError, match="has shape"):
        VAE.load(bad)
    objects = tmp_path / "obj.npz"
    np.savez(objects, __meta__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(objects)


def test_inference_results_are_not_overwritten_by_later_calls(rng):
    vae = VAE(TINY, seed=2)
    z1, z2 = rng.standard_normal((2, 4, 3)).astype(np.float32)
    a = vae.decode(z1)
    kept = a.copy()
    b = vae.decode(z2)
    assert not np.shares_memory(a, b) and np.array_equal(a, kept)
    x = rng.uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    m1, _ = vae.encode(x)
    m1_kept = m1.copy()
    vae.encode(x[::-1].copy())
    assert np.array_equal(m1, m1_kept)


def test_saved_files_get_the_usual_permissions(tmp_path):
    import os
    mask = os.umask(0o022)
    try:
        VAE(TINY).save(tmp_path / "c.npz")
    finally:
        os.umask(mask)
    assert (tmp_path / "c.npz").stat().st_mode & 0o777 == 0o644


def layer_by_layer(vae, z):
    """decode with every layer running its own inference pass (no BatchNorm folded in)."""
    return vae.decoder.forward(z, training=False).copy()


def moved_off_init(vae, rng):
    """Decoder BN statistics, gammas, betas and biases away from their identity initial values."""
    for name, a in {**vae.params(), **vae.state()}.items():
        if name.endswith(("moving_variance", "gamma")):
            a[...] = rng.uniform(0.5, 2.0, a.shape)
        elif name.endswith(("moving_mean", "beta", "bias")):
            a[...] = rng.standard_normal(a.shape) * 0.3


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
def test_fused_inference_matches_layer_by_layer(backend, rng, dtype, tol):
    """Inference folds each decoder BatchNorm into the Dense or transposed conv before it and
    applies bias + LeakyReLU (Sigmoid last) as the output is written: the same images to
    round-off, and still after the weights and statistics change in place (nothing goes stale)."""
    cfg = VAEConfig(image_size=8, channels=3, filters=5, blocks=2, z_dim=3)
    vae = VAE(cfg, seed=4, dtype=dtype)
    moved_off_init(vae, rng)
    z = rng.standard_normal((3, 3)).astype(dtype)
    assert vae.decoder_plan.describe() == ["dense+bn_0", "reshape", "conv_t_1+bn_1", "conv_t_2+bn_2",
                                           "conv_t_out+sigmoid"]
    fused = vae.decode(z)
    assert fused.dtype == dtype and np.max(np.abs(fused - layer_by_layer(vae, z))) <= tol
    moved_off_init(vae, rng)  # as an optimizer step or a load would
    vae.params()["decoder.conv_t_1.kernel"] *= 1.5
    vae.params()["decoder.dense.kernel"] *= 0.5
    fused = vae.decode(z)
    assert np.max(np.abs(fused - layer_by_layer(vae, z))) <= tol
    # a transposed convolution reuses its fold only while nothing it was made from changed: each one
    # of them, changed alone, is seen
    arrays = {**vae.params(), **vae.state()}
    for name in ("decoder.conv_t_2.kernel", "decoder.conv_t_2.bias", "decoder.bn_2.gamma", "decoder.bn_2.beta",
                 "decoder.bn_2.moving_mean", "decoder.bn_2.moving_variance", "decoder.conv_t_out.bias"):
        before = vae.decode(z).copy()
        arrays[name].reshape(-1)[0] += 0.25
        fused = vae.decode(z)
        assert not np.array_equal(fused, before), name
        assert np.max(np.abs(fused - layer_by_layer(vae, z))) <= tol, name


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
def test_fused_encoder_matches_layer_by_layer(backend, rng, dtype, tol):
    """Inference runs each encoder Conv2D(+ReLU) and the BatchNorm(+LeakyReLU) after it as one pass,
    piece by piece: the same z_mean and z_log_var to round-off, also after the weights and the
    statistics change in place."""
    cfg = VAEConfig(image_size=16, channels=3, filters=5, blocks=2, z_dim=3)
    vae = VAE(cfg, seed=4, dtype=dtype)
    x = rng.uniform(0, 1, (3, 16, 16, 3)).astype(dtype)
    assert vae.trunk_plan.describe() == ["conv_1+bn_1", "conv_2+bn_2", "flatten"]
    for _ in range(2):
        moved_off_init(vae, rng)
        fused = [a.copy() for a in vae.encode(x)]
        h = vae.trunk.forward(x, training=False)
        plain = [head.forward(h, training=False) for head in vae.heads]
        for f, p in zip(fused, plain):
            assert f.dtype == dtype and np.max(np.abs(f - p)) <= tol * max(1.0, np.max(np.abs(p)))
        vae.params()["encoder.conv_1.kernel"] *= 1.5  # as an optimizer step would


def test_training_mode_ignores_the_inference_plan(rng):
    """forward_backward is bit-for-bit the same whether or not inference passes ran before it
    (the plan shares no state with training)."""
    x = rng.uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    eps = rng.standard_normal((3, TINY.z_dim)).astype(np.float32)
    runs = []
    for infer_first in (True, False):
        vae = VAE(TINY, seed=5)
        if infer_first:
            vae.decode(vae.encode(x)[0])
        terms = vae.forward_backward(x, eps)
        runs.append((terms, {k: g.copy() for k, g in vae.grads().items()}, vae.state()))
    (t0, g0, s0), (t1, g1, s1) = runs
    assert t0 == t1
    assert all(np.array_equal(g0[k], g1[k]) for k in g0) and all(np.array_equal(s0[k], s1[k]) for k in s0)


@pytest.mark.parametrize("config", [TINY, VAEConfig(**{**TINY.to_dict(), **RESIZE})])
def test_only_a_batchnorm_read_by_a_stride_1_transposed_convolution_is_deferred(rng, config):
    """The decoder's last BatchNorm leaves its training output to conv_t_out, the stride-1
    transposed convolution after it (DeferredNorm), and holds no output map; no other layer (the
    stride-2 transposed convolutions, the resize decoder's Conv2Ds, the encoder's) takes part."""
    deferred = ["bn_2", "conv_t_out"]
    vae = VAE(config, seed=3)
    layers = [layer for layer in vae.trunk.layers + list(vae.heads) + vae.decoder.layers
              if getattr(layer, "deferred", None) is not None]
    assert [layer.name for layer in layers] == deferred
    assert all(layer in vae.decoder.layers for layer in layers)
    x = rng.uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    vae.forward_backward(x, rng.standard_normal((3, config.z_dim)).astype(np.float32))
    for bn in layers[:1]:
        assert [slot[0] for slot in bn._buffers._buffers if slot[0] == ("out", "y")] == []
