"""Anatomy-like augmentation: moves structures, changes sharpness and tissue contrast, keeps the background."""

from __future__ import annotations

import numpy as np

from medidiff.model.config import AugmentConfig
from medidiff.train.data import augment, blur_or_sharpen, contrast_curve, elastic_warp


def brain_like(shape=(32, 36, 30)) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    r = np.sqrt((idx ** 2).sum(-1))
    x = np.where(r < 0.8, 0.6 + 0.2 * np.sin(12 * idx[..., 0]) * np.cos(9 * idx[..., 1]), 0.0)  # "sulci"
    return x.astype(np.float32)


def test_elastic_warp_moves_sulci_by_at_most_the_setting():
    x = brain_like()
    rng = np.random.default_rng(0)
    y = elastic_warp(x, rng.normal(size=(3, 5, 5, 5)), max_voxels=2.0)
    assert y.shape == x.shape and np.abs(y - x).mean() > 0.01  # structures moved
    # nothing moved further than 2 voxels: every output value exists within 2 voxels in the input
    from scipy import ndimage

    hi = ndimage.maximum_filter(x, size=5)
    lo = ndimage.minimum_filter(x, size=5)
    assert np.all(y <= hi + 1e-4) and np.all(y >= lo - 1e-4)


def test_blur_sharpen_and_contrast_curve_keep_background_and_order():
    x = brain_like()
    for amount in (-0.8, 0.8):
        y = blur_or_sharpen(x, amount)
        assert np.all(y[x == 0] == 0) and np.all(y >= 0)
    grad = lambda a: np.abs(np.diff(a, axis=0))[x[1:] > 0].mean()  # noqa: E731
    assert grad(blur_or_sharpen(x, 0.8)) > grad(x) > grad(blur_or_sharpen(x, -0.8))
    v = np.linspace(0, 1.6, 200, dtype=np.float32)
    for seed in range(5):
        knots = np.random.default_rng(seed).uniform(-1, 1, 4)
        c = contrast_curve(v, knots, 0.4)
        assert np.all(np.diff(c) > 0) and c[0] == 0  # monotone: a bright lesion stays brightest


def test_augment_is_deterministic_and_the_anatomy_terms_change_the_image():
    x = brain_like()
    old = AugmentConfig()
    new = AugmentConfig(elastic=1.5, sharpness=0.5, contrast_curve=0.2)
    a = augment(x, x > 0, new, np.random.default_rng(3))
    assert np.array_equal(a, augment(x, x > 0, new, np.random.default_rng(3)))
    # the anatomy terms are drawn after the older ones, so they add to (not replace) the old ones
    b = augment(x, x > 0, old, np.random.default_rng(3))
    assert not np.array_equal(a, b)

