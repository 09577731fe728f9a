"""Per-image quality measures on NHWC float images in [0, 1], in float64 NumPy: SSIM, the variance
of the Laplacian (blur) and the share of spectral energy on the Nyquist row and column
(checkerboard), and the peaks of the decoder's upsampling grid (grid). Each returns one number per
image, shape (N,); the caller averages.
"""

import numpy as np

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. 2004: an 11x11 Gaussian window, sigma 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 grey, as Pillow's convert("L")


def gaussian_taps(size=SSIM_WINDOW, sigma=SSIM_SIGMA):
    """The 1-D Gaussian of the separable SSIM window, normalised to sum 1: (size,) float64."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-r * r / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x, taps):
    """Separable filtering of (N, H, W, C) over H then W, at the window positions inside the image:
    out[n,i,j,c] = sum_{a,b} taps[a] taps[b] x[n,i+a,j+b,c], shape (N, H-k+1, W-k+1, C)."""
    k = len(taps)
    h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
    rows = sum(taps[a] * x[:, a:a + h] for a in range(k))
    return sum(taps[b] * rows[:, :, b:b + w] for b in range(k))


def ssim(x, y, data_range=1.0):
    """Mean SSIM of each image pair (N,): SSIM maps per channel over every 11x11 window that lies
    inside the image ('valid'), averaged over window positions and channels.

    SSIM = (2 mx my + C1)(2 sxy + C2) / ((mx^2 + my^2 + C1)(sx^2 + sy^2 + C2)), with Gaussian-weighted
    means and (biased) variances/covariance, C1 = (K1 L)^2, C2 = (K2 L)^2, L = data_range.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (N, H, W, C) arrays of one shape; got {x.shape} and {y.shape}")
    if min(x.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels; got {x.shape[1:3]}")
    taps = gaussian_taps()
    mx, my = _filter_valid(x, taps), _filter_valid(y, taps)
    sxx = _filter_valid(x * x, taps) - mx * mx
    syy = _filter_valid(y * y, taps) - my * my
    sxy = _filter_valid(x * y, taps) - mx * my
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    maps = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return maps.mean(axis=(1, 2, 3))


def grey(x):
    """(N, H, W, 3) RGB to (N, H, W) float64 luma with the BT.601 weights."""
    x = np.asarray(x, np.float64)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected RGB images shaped (N, H, W, 3); got {x.shape}")
    return x @ np.array(LUMA)


def laplacian_variance(x):
    """Blur measure per image (N,): the variance, over the interior pixels, of the grey image
    filtered with the 3x3 Laplacian [[0, 1, 0], [1, -4, 1], [0, 1, 0]]. Sharp edges and fine
    texture raise it; a blurred image has little."""
    g = grey(x)
    if min(g.shape[1:]) < 3:
        raise ValueError(f"the Laplacian needs images of at least 3x3 pixels; got {g.shape[1:]}")
    lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:] - 4.0 * g[:, 1:-1, 1:-1]
    return lap.var(axis=(1, 2))


def nyquist_share(x):
    """Checkerboard measure per image (N,): with g the grey image less its mean and
    P[u, v] = |FFT2(g)[u, v]|^2, the share of sum P on the Nyquist row u = H/2 or column v = W/2,
    i.e. at the frequencies (pi, *) and (*, pi) where a stride-2 transposed convolution's uneven
    overlap puts its period-2 pattern. 1 for a pure checkerboard, 0 for a flat image. White noise
    gives about (H + W - 1) / (H W - 1), the share of those frequencies among all."""
    g = grey(x)
    h, w = g.shape[1:]
    if h % 2 or w % 2:
        raise ValueError(f"the Nyquist row and column need an even image size; got {h}x{w}")
    g = g - g.mean(axis=(1, 2), keepdims=True)
    p = np.abs(np.fft.fft2(g)) ** 2  # (N, H, W)
    on = p[:, h // 2, :].sum(axis=1) + p[:, :, w // 2].sum(axis=1) - p[:, h // 2, w // 2]
    total = p.sum(axis=(1, 2))
    return np.divide(on, total, out=np.zeros_like(on), where=total > 1e-300)


def grid_masks(h, w, period):
    """Boolean (H, W) masks of the FFT bins a pattern repeating every `period` pixels can hold: `grid`,
    the bins (k H / period, l W / period) but the zero frequency, and `around`, their eight
    neighbours (cyclically) that are neither grid bins nor the zero frequency."""
    if period < 2 or h % period or w % period or min(h, w) // period < 2:
        raise ValueError(f"a grid period of {period} px needs image sides that are multiples of it, at least "
                         f"twice it; got {h}x{w}")
    grid = np.zeros((h, w), bool)
    grid[::h // period, ::w // period] = True
    grid[0, 0] = False
    around = np.zeros_like(grid)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            around |= np.roll(grid, (dy, dx), axis=(0, 1))
    around &= ~grid
    around[0, 0] = False
    return grid, around


def grid_peak_ratio(x, period):
    """Upsampling-grid measure per image (N,): with P the power spectrum of the grey image less its
    mean, the mean of P on the grid bins of `period` (grid_masks) over its mean on their neighbours.
    A decoder that doubles its maps `blocks` times can leave a pattern repeating every 2**blocks
    pixels (each stride-2 layer's uneven overlap, magnified by the layers after it): it sits exactly on
    those bins, so it raises this ratio; a smooth spectrum (photos, white noise) gives about 1."""
    g = grey(x)
    h, w = g.shape[1:]
    grid, around = grid_masks(h, w, period)
    g = g - g.mean(axis=(1, 2), keepdims=True)
    p = np.abs(np.fft.fft2(g)) ** 2
    on, off = p[:, grid].mean(axis=1), p[:, around].mean(axis=1)
    return np.divide(on, off, out=np.ones_like(on), where=off > 1e-300)
