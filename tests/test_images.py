"""Tests for scratchvae.images: grid and row layouts, pixel values, charts, and atomic writes."""

import numpy as np
import pytest
from PIL import Image

from scratchvae.images import plot_curves, save_grid, save_rows


def opened(path):
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


def test_grid_is_near_square_and_keeps_pixels(tmp_path):
    x = np.random.default_rng(0).random((10, 8, 6, 3)).astype(np.float32)
    x[0, 0, 0] = [-1.0, 0.5, 2.0]  # clipped, then rounded
    save_grid(tmp_path / "g.png", x, pad=2)
    img = np.asarray(opened(tmp_path / "g.png"))
    assert img.shape == (3 * 10 + 2, 4 * 8 + 2, 3)  # 4 columns, 3 rows of 8x6 tiles
    assert img[2, 2].tolist() == [0, 128, 255]
    tile = img[2 + 10:2 + 10 + 8, 2 + 8:2 + 8 + 6]  # image 5: row 1, column 1
    assert np.array_equal(tile, np.round(x[5] * 255).astype(np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]  # no temporary file left


def test_grid_columns_and_grayscale(tmp_path):
    save_grid(tmp_path / "sub" / "row.png", np.zeros((5, 4, 4, 1)), ncols=5, pad=0)
    assert opened(tmp_path / "sub" / "row.png").size == (20, 4)


def test_rows_line_up_with_and_without_labels(tmp_path):
    rows = [np.full((3, 8, 8, 3), v, np.float32) for v in (0.0, 1.0)]
    save_rows(tmp_path / "r.png", rows, pad=2)
    img = np.asarray(opened(tmp_path / "r.png"))
    assert img.shape == (2 * 10 + 2, 3 * 10 + 2, 3)
    assert (img[2:10, 2:10] == 0).all() and (img[12:20, 2:10] == 255).all()
    save_rows(tmp_path / "l.png", rows, labels=["held-out", "reconstruction"], pad=2)
    labelled = opened(tmp_path / "l.png")
    assert labelled.size[1] == 22 and labelled.size[0] > 32 + 40
    left = np.asarray(labelled)[:, :labelled.size[0] - 32]
    assert (left < 128).any()  # text was drawn in the label column


def test_rows_must_match(tmp_path):
    with pytest.raises(ValueError):
        save_rows(tmp_path / "r.png", [np.zeros((3, 8, 8, 3)), np.zeros((2, 8, 8, 3))])
    with pytest.raises(ValueError):
        save_rows(tmp_path / "r.png", [np.zeros((3, 8, 8, 3))], labels=["a", "b"])


def colours(path):
    return {tuple(c) for c in np.asarray(opened(path)).reshape(-1, 3).tolist()}


def test_curves_draw_series_and_legend(tmp_path):
    series = {"train": [5.0, 3.0, 2.0, 1.5], "held-out": [5.5, 3.5, float("nan"), 2.0]}
    plot_curves(tmp_path / "c.png", series, title="loss")
    assert opened(tmp_path / "c.png").size == (640, 400)
    seen = colours(tmp_path / "c.png")
    assert (31, 119, 180) in seen and (255, 127, 14) in seen  # both series' colours


@pytest.mark.parametrize("series,log_y", [
    ({"one": [3.0]}, False),
    ({"flat": [2.0, 2.0, 2.0]}, False),
    ({"nan": [float("nan")], "inf": [float("inf"), 1.0]}, False),
    ({}, False),
    ({"kl": [0.0, 1e-3, 10.0, 1e4]}, True),
    ({"narrow": [3.0, 4.0]}, True),
])
def test_curves_handle_awkward_data(tmp_path, series, log_y):
    plot_curves(tmp_path / "c.png", series, log_y=log_y)
    assert opened(tmp_path / "c.png").size == (640, 400)
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]


def test_curves_take_explicit_x(tmp_path):
    plot_curves(tmp_path / "c.png", {"loss": [3.0, 2.0, 1.0]}, x=[4, 5, 6], xlabel="epoch")
    assert opened(tmp_path / "c.png").size == (640, 400)
    plot_curves(tmp_path / "d.png", {"lr": [1.0, 0.5]}, x=[0.25, 0.75], size=(320, 200))
    assert opened(tmp_path / "d.png").size == (320, 200)
    with pytest.raises(ValueError):
        plot_curves(tmp_path / "e.png", {"loss": [3.0, 2.0]}, x=[1])
