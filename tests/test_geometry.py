"""Resampling between grids: filtering only what the interpolation reads gives exactly the numbers
of filtering the whole array; the median inside the scoring mask equals scipy's whole-grid filter."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medidiff.geometry import GridMapping, antialias_sigma, model_affine, resample
from medidiff.score.maps import median_inside


def _whole_array_resample(array, src_affine, dst_affine, dst_shape, order=1, fill=0.0):
    """The reference: anti-alias every voxel, then one interpolation."""
    sigma = antialias_sigma(src_affine, dst_affine)
    src = ndimage.gaussian_filter(array, sigma=sigma, mode="nearest", truncate=3.0) if np.any(sigma > 0.05) else array
    m = np.linalg.inv(src_affine) @ dst_affine
    return ndimage.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=dst_shape, order=order,
                                    mode="constant", cval=fill).astype(np.float32)


def _oblique(spacing, angle_deg, origin):
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


@pytest.mark.parametrize("angle, centre, order, fill", [
    (0.0, (0.0, 0.0, 0.0), 1, 0.0),      # the model box well inside a larger head
    (17.0, (10.0, -20.0, 5.0), 1, 0.0),  # oblique head
    (33.0, (60.0, 40.0, -30.0), 1, -1.0),  # the box partly outside the head (fill)
    (17.0, (10.0, -20.0, 5.0), 0, 0.0),  # nearest (masks)
])
def test_filtering_only_what_is_read_changes_no_number(angle, centre, order, fill):
    rng = np.random.default_rng(0)
    head = rng.random((70, 64, 58)).astype(np.float32)
    src = _oblique((1.1, 0.9, 1.3), angle, (-38.0, -30.0, -36.0))
    dst = model_affine((2.5, 2.5, 2.5), (14, 12, 10), centre)
    got = resample(head, src, dst, (14, 12, 10), order=order, fill=fill)
    assert np.array_equal(got, _whole_array_resample(head, src, dst, (14, 12, 10), order, fill))


def test_a_bent_mapping_reads_the_same_numbers():
    rng = np.random.default_rng(1)
    head = rng.random((60, 66, 54)).astype(np.float32)
    src = _oblique((1.0, 1.0, 1.2), 9.0, (-30.0, -33.0, -32.0))
    dst = model_affine((3.0, 3.0, 3.0), (10, 12, 9), (2.0, -1.0, 3.0))
    disp = (rng.normal(0, 0.4, (3, 10, 12, 9))).astype(np.float32)
    mapping = GridMapping(head.shape, src, (10, 12, 9), dst, disp)
    got = mapping.to_model(head)
    sigma = antialias_sigma(src, dst)
    smooth = ndimage.gaussian_filter(head, sigma=sigma, mode="nearest", truncate=3.0)
    m = np.linalg.inv(src) @ dst
    pts = np.indices((10, 12, 9), dtype=np.float32) + disp
    coords = np.einsum("ij,j...->i...", m[:3, :3], pts) + m[:3, 3].reshape(3, 1, 1, 1)
    want = ndimage.map_coordinates(smooth, coords, order=1, mode="constant", cval=0.0).astype(np.float32)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("shape, size", [((20, 24, 18), 5), ((9, 10, 11), 3), ((8, 9, 10), 4)])
def test_median_inside_the_mask_is_scipys_median(shape, size):
    rng = np.random.default_rng(2)
    res = rng.random(shape).astype(np.float32)
    res[rng.random(shape) < 0.2] = 0.5  # ties
    mask = rng.random(shape) < 0.4
    mask[0], mask[:, -1] = True, True  # the grid's borders: scipy's "nearest" extension
    want = np.where(mask, ndimage.median_filter(res, size=size, mode="nearest"), 0.0).astype(np.float32)
    assert np.array_equal(median_inside(res, size, mask), want)
    assert not median_inside(res, size, np.zeros(shape, bool)).any()
