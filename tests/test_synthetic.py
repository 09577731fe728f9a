"""Tests for scratchvae.data.synthetic: shape, determinism per (seed, index), and variety of the faces."""

import numpy as np
import pytest

from scratchvae.data.synthetic import synthetic_faces


def test_shape_dtype_and_range_use():
    x = synthetic_faces(6, image_size=32, seed=0)
    assert x.shape == (6, 32, 32, 3) and x.dtype == np.uint8
    assert x.min() < 60 and x.max() > 200  # dark features and bright eye whites both present
    assert synthetic_faces(0, 32).shape == (0, 32, 32, 3)


@pytest.mark.parametrize("size", [1, 7, 64])
def test_odd_and_tiny_sizes_render(size):
    assert synthetic_faces(3, image_size=size).shape == (3, size, size, 3)


def test_each_face_depends_only_on_seed_and_index():
    assert np.array_equal(synthetic_faces(10, 32)[:5], synthetic_faces(5, 32))
    # 64 px renders 32 faces per chunk: face 35 sits in a full chunk in one call, alone in the other.
    assert np.array_equal(synthetic_faces(70, 64, seed=4)[35], synthetic_faces(36, 64, seed=4)[35])
    assert np.array_equal(synthetic_faces(4, 48, seed=2), synthetic_faces(4, 48, seed=2))
    assert not np.array_equal(synthetic_faces(4, 48, seed=2), synthetic_faces(4, 48, seed=3))


def test_faces_differ_from_each_other():
    x = synthetic_faces(24, 32, seed=1).astype(np.float32)
    flat = x.reshape(len(x), -1)
    dist = np.abs(flat[:, None] - flat[None]).mean(axis=2)
    assert dist[~np.eye(len(x), dtype=bool)].min() > 5  # no two faces nearly alike
    centre = x[:, 12:20, 12:20].reshape(len(x), -1, 3).mean(axis=1)
    assert centre.std(axis=0).min() > 10  # skin tones vary in every channel


def test_face_sits_in_the_middle_of_the_background():
    x = synthetic_faces(16, 64, seed=0).astype(np.float32)
    centre = x[:, 24:40, 16:48].mean(axis=(1, 2))  # cheeks and eyes
    corner = x[:, :6, :6].mean(axis=(1, 2))
    assert (np.abs(centre - corner).sum(axis=1) > 20).mean() > 0.8


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        synthetic_faces(-1)
    with pytest.raises(ValueError):
        synthetic_faces(2, image_size=0)
