"""The evaluation measures against closed forms and direct reference implementations on small arrays:
SSIM, blur, checkerboard, Fréchet distance, KID, and the ONNX feature extractor on tiny networks."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from scratchvae import losses
from scratchvae.evaluation import distances, pixels
from scratchvae.evaluation.features import FeatureModel, read_layout, resize_bicubic
from scratchvae.run.errors import UserError


# ------------------------------------------------------------------ SSIM

def ssim_reference(x, y):
    """SSIM by its definition: for every 11x11 window inside the image, Gaussian-weighted statistics."""
    g = pixels.gaussian_taps()
    w = np.outer(g, g)
    n, h, wd, c = x.shape
    out = np.zeros(n)
    for i in range(n):
        values = []
        for ch in range(c):
            for r in range(h - 10):
                for s in range(wd - 10):
                    a, b = x[i, r:r + 11, s:s + 11, ch], y[i, r:r + 11, s:s + 11, ch]
                    ma, mb = (w * a).sum(), (w * b).sum()
                    va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                    cov = (w * (a - ma) * (b - mb)).sum()
                    c1, c2 = 0.01 ** 2, 0.03 ** 2
                    values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
        out[i] = np.mean(values)
    return out


def test_gaussian_window_is_the_standard_one():
    g = pixels.gaussian_taps()
    assert g.shape == (11,) and g.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(g, g[::-1], rtol=0, atol=0)
    assert g[5] / g[6] == pytest.approx(np.exp(1 / (2 * 1.5 ** 2)), rel=1e-14)


def test_ssim_of_identical_images_is_one(rng):
    x = rng.random((3, 16, 12, 3))
    np.testing.assert_allclose(pixels.ssim(x, x), 1.0, rtol=0, atol=1e-12)


def test_ssim_matches_the_per_window_definition(rng):
    x = rng.random((2, 14, 13, 3))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    got = pixels.ssim(x, y)
    np.testing.assert_allclose(got, ssim_reference(x, y), rtol=1e-12, atol=1e-12)
    assert (got < 0.95).all()
    np.testing.assert_allclose(pixels.ssim(y, x), got, rtol=1e-12)  # symmetric


def test_ssim_falls_as_noise_grows(rng):
    x = rng.random((2, 16, 16, 3))
    scores = [pixels.ssim(x, np.clip(x + s * rng.standard_normal(x.shape), 0, 1)).mean() for s in (0.02, 0.1, 0.3)]
    assert scores[0] > scores[1] > scores[2]


def test_ssim_refuses_images_smaller_than_its_window(rng):
    x = rng.random((1, 10, 16, 3))
    with pytest.raises(ValueError, match="11x11"):
        pixels.ssim(x, x)


def test_psnr_is_ten_log10_of_one_over_mse():
    assert losses.psnr(0.01) == pytest.approx(20.0, abs=1e-12)
    assert losses.psnr(1e-4) == pytest.approx(40.0, abs=1e-12)


# ------------------------------------------------------------------ blur and checkerboard

def checkerboard(n, h, w):
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.repeat(((i + j) % 2).astype(np.float64)[None, :, :, None], 3, axis=3).repeat(n, axis=0)


def grey_image(g):
    """(H, W) grey values as a (1, H, W, 3) RGB image with that luma."""
    return np.repeat(np.asarray(g, np.float64)[None, :, :, None], 3, axis=3)


def test_grey_uses_bt601_weights():
    x = np.zeros((1, 2, 2, 3))
    x[0, 0, 0] = (1, 0, 0)
    x[0, 0, 1] = (0, 1, 0)
    x[0, 1, 0] = (0, 0, 1)
    x[0, 1, 1] = (0.5, 0.5, 0.5)
    np.testing.assert_allclose(pixels.grey(x)[0], [[0.299, 0.587], [0.114, 0.5]], rtol=1e-15)


def test_laplacian_variance_on_known_images(rng):
    # A 0/1 checkerboard: every interior pixel's Laplacian is -4 s with s = +-1 the sign of v - 1/2.
    assert pixels.laplacian_variance(checkerboard(2, 8, 10)) == pytest.approx([16.0, 16.0], rel=1e-14)
    ramp = grey_image(np.add.outer(0.03 * np.arange(9), 0.05 * np.arange(7)))
    assert pixels.laplacian_variance(ramp)[0] == pytest.approx(0.0, abs=1e-28)
    g = rng.random((6, 9))
    direct = [g[i - 1, j] + g[i + 1, j] + g[i, j - 1] + g[i, j + 1] - 4 * g[i, j]
              for i in range(1, 5) for j in range(1, 8)]
    assert pixels.laplacian_variance(grey_image(g))[0] == pytest.approx(np.var(direct), rel=1e-12)


def test_blur_lowers_the_laplacian_variance(rng):
    sharp = rng.random((1, 32, 32, 3))
    blurred = (sharp + np.roll(sharp, 1, 1) + np.roll(sharp, 1, 2) + np.roll(sharp, (1, 1), (1, 2))) / 4
    assert pixels.laplacian_variance(blurred)[0] < 0.3 * pixels.laplacian_variance(sharp)[0]


def test_nyquist_share_of_a_checkerboard_is_one_and_of_smooth_images_near_zero():
    np.testing.assert_allclose(pixels.nyquist_share(checkerboard(2, 8, 12)), 1.0, rtol=1e-12)
    stripes = grey_image(np.tile((np.arange(16) % 2)[None, :], (16, 1)))  # period 2 along x: (*, pi)
    assert pixels.nyquist_share(stripes)[0] == pytest.approx(1.0, rel=1e-12)
    i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    wave = grey_image(0.5 + 0.3 * np.cos(2 * np.pi * (i + 2 * j) / 32))
    assert pixels.nyquist_share(wave)[0] < 1e-20
    ramp = grey_image(np.add.outer(np.arange(32) / 31, np.arange(32) / 62))
    assert pixels.nyquist_share(ramp)[0] < 0.01
    assert pixels.nyquist_share(grey_image(np.full((8, 8), 0.4)))[0] == 0.0  # flat: no pattern at all


def test_nyquist_share_of_a_mixture_is_the_energy_ratio():
    # a checkerboard (energy a^2 per pixel) plus a cosine along x (energy b^2 / 2): share a^2 / (a^2 + b^2 / 2)
    i, j = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    a, b = 0.1, 0.2
    g = 0.5 + a * (-1.0) ** (i + j) + b * np.cos(2 * np.pi * j / 16)
    assert pixels.nyquist_share(grey_image(g))[0] == pytest.approx(a * a / (a * a + b * b / 2), rel=1e-12)


def test_nyquist_share_of_white_noise_is_the_share_of_those_frequencies(rng):
    share = pixels.nyquist_share(rng.random((400, 16, 16, 3))).mean()
    assert share == pytest.approx(31 / 255, rel=0.05)


def test_nyquist_share_needs_an_even_size(rng):
    with pytest.raises(ValueError, match="even"):
        pixels.nyquist_share(rng.random((1, 9, 8, 3)))


def test_grid_masks_hold_the_pattern_bins_and_their_neighbours():
    grid, around = pixels.grid_masks(16, 16, 4)  # a period of 4 px: every 4th bin, 15 of them
    u, v = np.nonzero(grid)
    assert grid.sum() == 15 and set(u) == set(v) == {0, 4, 8, 12} and not grid[0, 0]
    assert not (grid & around).any() and not around[0, 0]
    assert around[0, 3] and around[5, 5] and around[13, 15] and not around[2, 2]
    assert not around[15, 15] and not around[0, 1]  # next to the zero frequency only, which is no grid bin
    assert around.sum() == 15 * 8  # each grid bin's 8 neighbours; 4 bins apart, they do not overlap
    for bad in ((16, 16, 16), (16, 12, 8), (16, 16, 1)):
        with pytest.raises(ValueError, match="period"):
            pixels.grid_masks(*bad)


def test_grid_peak_ratio_is_the_mean_power_ratio_of_two_cosines():
    # a cosine on a grid bin (amplitude a) and one on a neighbouring bin (b): each puts (A H W / 2)^2
    # on its two bins, so the ratio is (2 a^2 / #grid) / (2 b^2 / #around)
    i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    a, b = 0.05, 0.2
    g = 0.5 + a * np.cos(2 * np.pi * 4 * j / 32) + b * np.cos(2 * np.pi * 5 * j / 32)
    grid, around = pixels.grid_masks(32, 32, 8)
    expected = (a * a / grid.sum()) / (b * b / around.sum())
    assert pixels.grid_peak_ratio(grey_image(g), 8)[0] == pytest.approx(expected, rel=1e-9)


def test_grid_peak_ratio_sees_a_tiled_pattern_and_not_noise(rng):
    noise = rng.random((200, 32, 32, 3))
    assert pixels.grid_peak_ratio(noise, 8).mean() == pytest.approx(1.0, abs=0.1)
    tile = np.tile(rng.random((8, 8)), (4, 4))  # repeats every 8 px, as a decoder's grid does
    tiled = noise[:20] + 0.3 * tile[None, :, :, None]
    assert pixels.grid_peak_ratio(tiled, 8).mean() > 3  # its grey power, 1/5 of the noise's, all on 63 of 1023 bins
    assert pixels.grid_peak_ratio(grey_image(np.full((16, 16), 0.3)), 4)[0] == 1.0  # flat: no peaks


# ------------------------------------------------------------------ Fréchet distance and KID

def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form(rng):
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    s1, s2 = rng.random(5) + 0.1, rng.random(5) + 0.1
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert distances.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_full_covariances_matches_the_nuclear_norm_form(rng):
    # With S1 = A A^T and S2 = B B^T, Tr (S1 S2)^(1/2) is the sum of the singular values of A^T B.
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 4))  # S2 of rank 4: a singular case
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = a @ a.T, b @ b.T
    nuclear = np.linalg.svd(a.T @ b, compute_uv=False).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * nuclear
    assert distances.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    assert distances.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-10)
    assert distances.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_features_uses_their_mean_and_sample_covariance(rng):
    f = rng.standard_normal((50, 4)) @ rng.standard_normal((4, 4))
    shift = np.array([0.5, -1.0, 2.0, 0.25])
    assert distances.frechet_distance_of_features(f, f + shift) == pytest.approx((shift ** 2).sum(), rel=1e-9)
    g = 2.0 * f  # the same mean times 2, covariance times 4: FD = |mu|^2 + Tr S (1 + 4 - 2 * 2)
    mu, s = f.mean(0), np.cov(f, rowvar=False)
    assert distances.frechet_distance_of_features(f, g) == pytest.approx(mu @ mu + np.trace(s), rel=1e-9)


def mmd2_direct(x, y):
    def k(a, b):
        return (np.dot(a, b) / len(a) + 1) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_the_direct_double_sum(rng):
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((9, 3)) + 0.5
    assert distances.mmd2_unbiased(x, y) == pytest.approx(mmd2_direct(x, y), rel=1e-12)


def test_kid_averages_the_unbiased_mmd_over_seeded_subsets(rng):
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((10, 3)) + 0.3
    mean, std = distances.kid(x, y, subsets=5, subset_size=6, seed=7)
    draw = np.random.default_rng(7)
    values = [mmd2_direct(x[draw.choice(12, 6, replace=False)], y[draw.choice(10, 6, replace=False)])
              for _ in range(5)]
    assert mean == pytest.approx(np.mean(values), rel=1e-12)
    assert std == pytest.approx(np.std(values), rel=1e-10)
    whole = distances.kid(x[:10], y, subsets=5, subset_size=100)
    assert whole == (pytest.approx(mmd2_direct(x[:10], y), rel=1e-12), 0.0)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two(rng):
    x, y = rng.standard_normal((300, 4)), rng.standard_normal((300, 4))
    same, _ = distances.kid(x, y, subsets=10, subset_size=200)
    apart, _ = distances.kid(x, y + 1.0, subsets=10, subset_size=200)
    assert abs(same) < 0.1 and apart > 3.0  # the unbiased estimate: about 0 +- 0.05 here, and ~8 apart


# ------------------------------------------------------------------ ONNX feature networks

MIX = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.25, 0.25], [-0.5, 0.5, 1.0]], np.float32)  # (O, C)
BIAS = np.array([0.1, -0.2, 0.0, 0.3], np.float32)


def tiny_feature_model(path, layout="NCHW", size=None, batch="N", input_type=TensorProto.FLOAT, inputs=1):
    """A 1x1 Conv (MIX, BIAS) + GlobalAveragePool + Flatten: features = MIX @ mean RGB + BIAS.
    NHWC takes (N, H, W, 3) and transposes it first; size fixes H and W (else symbolic)."""
    h, w = size or ("H", "W")
    shape = [batch, 3, h, w] if layout == "NCHW" else [batch, h, w, 3]
    nodes, first = [], "images"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["images"], ["as_float"], to=TensorProto.FLOAT))
        first = "as_float"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [first], ["nchw"], perm=[0, 3, 1, 2]))
        first = "nchw"
    nodes += [helper.make_node("Conv", [first, "mix", "bias"], ["conv"], kernel_shape=[1, 1]),
              helper.make_node("GlobalAveragePool", ["conv"], ["pool"]),
              helper.make_node("Flatten", ["pool"], ["features"], axis=1)]
    graph_inputs = [helper.make_tensor_value_info("images", input_type, shape)]
    graph_inputs += [helper.make_tensor_value_info(f"extra{k}", TensorProto.FLOAT, [1]) for k in range(inputs - 1)]
    graph = helper.make_graph(
        nodes, "tiny_features", graph_inputs,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 4])],
        initializer=[helper.make_tensor("mix", TensorProto.FLOAT, [4, 3, 1, 1], MIX.reshape(-1)),
                     helper.make_tensor("bias", TensorProto.FLOAT, [4], BIAS)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def expected_features(x):
    return x.astype(np.float64).mean(axis=(1, 2)) @ MIX.T.astype(np.float64) + BIAS


@pytest.mark.parametrize("shape, expected", [
    ([None, 3, None, None], ("NCHW", None, None)), (["N", 3, "H", "W"], ("NCHW", None, None)),
    (["N", 299, 299, 3], ("NHWC", (299, 299), None)), ([1, 3, 64, 48], ("NCHW", (64, 48), 1))])
def test_layout_is_read_from_the_input_shape(shape, expected):
    assert read_layout(shape) == expected


@pytest.mark.parametrize("shape", [["N", 3, 64], ["N", 4, "H", "W"], [1, 3, 8, 3], ["N", 3, 64, "W"], None])
def test_unusable_input_shapes_are_refused(shape):
    with pytest.raises(ValueError):
        read_layout(shape)


def test_bicubic_resize_matches_pillow_and_keeps_a_flat_image_flat(rng):
    x = rng.random((2, 12, 10, 3)).astype(np.float32)
    y = resize_bicubic(x, (7, 9))
    assert y.shape == (2, 7, 9, 3) and y.dtype == np.float32
    x8 = np.round(x * 255).astype(np.uint8)
    ref = np.asarray(Image.fromarray(x8[1]).resize((9, 7), Image.BICUBIC)) / 255.0
    np.testing.assert_allclose(resize_bicubic(x8[1:2] / 255.0, (7, 9))[0], ref, atol=1.5 / 255)
    np.testing.assert_allclose(resize_bicubic(np.full((1, 12, 10, 3), 0.3, np.float32), (5, 5)), 0.3, atol=1e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_feature_model_of_either_layout_gives_the_network_output(tmp_path, rng, layout):
    model = FeatureModel(tiny_feature_model(tmp_path / "f.onnx", layout=layout))
    assert model.layout == layout and model.size is None
    x = rng.random((5, 16, 12, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x), expected_features(x), rtol=1e-5, atol=1e-6)


def test_fixed_size_and_fixed_batch_resize_and_pad(tmp_path, rng):
    model = FeatureModel(tiny_feature_model(tmp_path / "f.onnx", size=(8, 8), batch=2))
    assert model.size == (8, 8) and model.batch == 2
    x = rng.random((5, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x), expected_features(resize_bicubic(x, (8, 8))), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "no such file"),
    (lambda p: p.write_bytes(b"not an onnx model at all") and p, "does not load"),
    (lambda p: tiny_feature_model(p, inputs=2), "2 inputs"),
    (lambda p: tiny_feature_model(p, input_type=TensorProto.INT32), "not a float tensor"),
    (lambda p: tiny_feature_model(p, layout="NCHW", size=(3, 3)), "no usable image input")])
def test_feature_model_errors_are_one_clear_line(tmp_path, make, message):
    path = make(tmp_path / "f.onnx")
    with pytest.raises(UserError, match=message) as info:
        FeatureModel(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("input_type", [TensorProto.DOUBLE, TensorProto.FLOAT16])
def test_feature_model_takes_other_float_inputs(tmp_path, rng, input_type):
    model = FeatureModel(tiny_feature_model(tmp_path / "f.onnx", layout="NHWC", input_type=input_type))
    x = rng.random((3, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x), expected_features(x), rtol=2e-3, atol=2e-3)
