"""Behaviour of the synthetic-anomaly generator on a small phantom 'brain':
an ellipsoid with a bright white-matter core inside a darker grey-matter shell."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from medidiff.lesions import KINDS, insert_anomalies_volume, insert_anomaly, insert_random_anomalies
from medidiff.volume import Volume


def _phantom(shape=(48, 56, 48), spacing=(2.0, 2.0, 2.0), scale=1.0, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing)
    c = (np.asarray(shape) - 1) / 2
    grid = np.stack(np.indices(shape), -1).astype(float)
    r = np.sqrt((((grid - c) * sp / (0.42 * np.asarray(shape) * sp)) ** 2).sum(-1))
    brain = r < 1.0
    wm = r < 0.65
    img = np.where(wm, 200.0, np.where(brain, 130.0, 0.0)) + rng.normal(0, 5, shape) * brain
    return (img * scale + offset * brain).astype(np.float32), brain, wm.astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_intensity_inside_mask_only(kind):
    img, brain, wm = _phantom()
    out, mask, info = insert_anomaly(img, (2, 2, 2), kind, np.random.default_rng(1),
                                     brain_mask=brain, wm_prob=wm)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    m = mask.astype(bool)
    assert m.any()
    assert not (m & ~brain).any(), "lesion leaked outside the brain"
    diff = np.abs(out - img)
    assert diff[~brain].max() == 0, "intensity changed outside the brain"
    # Clear changes happen where the mask is (soft edges reach at most ~1 voxel out).
    strong = diff > 0.5 * diff.max()
    near = ndi.binary_dilation(m, iterations=1)
    assert (strong & ~near).sum() <= 0.02 * strong.sum() + 1
    assert diff[m].mean() > 3 * diff[~near].mean() + 1e-6
    assert info["kind"] == kind
    assert info["volume_mm3"] == pytest.approx(m.sum() * 8.0)
    assert info["equivalent_diameter_mm"] == pytest.approx(np.cbrt(6 * info["volume_mm3"] / np.pi))
    assert m[tuple(info["centre_voxel"])] or kind in ("wm_cluster", "ring")


def test_direction_of_contrast():
    img, brain, wm = _phantom()
    for kind, sign in (("hyper", 1), ("hypo", -1)):
        out, mask, info = insert_anomaly(img, (2, 2, 2), kind, 3, brain_mask=brain)
        m = mask.astype(bool)
        assert sign * (out[m] - img[m]).mean() > 0.25 * (200 - 130)
        assert np.sign(info["delta"]) == sign
    out, mask, info = insert_anomaly(img, (2, 2, 2), "ring", 3, brain_mask=brain, diameter_mm=(20, 24))
    m = mask.astype(bool)
    assert (out[m] - img[m]).max() > 0 > (out[m] - img[m]).min()  # bright rim and dark core
    assert info["core_voxels"] > 0


@pytest.mark.parametrize("lo, hi", [(4.0, 6.0), (10.0, 14.0), (25.0, 30.0)])
def test_sizes_follow_requested_mm_range(lo, hi):
    img, brain, _ = _phantom(spacing=(1.0, 1.0, 1.0), shape=(64, 64, 64))
    for seed in range(3):
        _, mask, info = insert_anomaly(img, (1, 1, 1), "hyper", seed, brain_mask=brain, diameter_mm=(lo, hi))
        assert lo <= info["requested_diameter_mm"] <= hi
        assert 0.8 * lo <= info["equivalent_diameter_mm"] <= 1.02 * hi


def test_sizes_are_physical_across_spacings():
    vols = []
    for sp in (1.0, 2.0):
        n = int(96 / sp)
        img, brain, _ = _phantom(shape=(n, n, n), spacing=(sp,) * 3)
        _, _, info = insert_anomaly(img, (sp,) * 3, "hypo", 5, brain_mask=brain, diameter_mm=(16, 16))
        vols.append(info["volume_mm3"])
    assert vols[1] == pytest.approx(vols[0], rel=0.25)


def test_wm_cluster_lesions_are_small_and_in_white_matter():
    img, brain, wm = _phantom(spacing=(1.0, 1.0, 1.0), shape=(64, 64, 64))
    _, mask, info = insert_anomaly(img, (1, 1, 1), "wm_cluster", 11, brain_mask=brain, wm_prob=wm)
    assert (mask.astype(bool) <= (wm > 0.5)).all()
    assert 3 <= info["n_lesions"] <= 8
    assert all(2.0 <= d <= 6.0 for d in info["lesion_diameters_mm"])
    _, n_comp = ndi.label(mask)
    assert n_comp >= 2
    # Without a WM map, WM is the brightest intensity class: still lands in the bright core.
    _, mask2, _ = insert_anomaly(img, (1, 1, 1), "wm_cluster", 11, brain_mask=brain)
    assert (mask2.astype(bool) & (wm > 0.5)).sum() >= 0.9 * mask2.sum()


def test_intensity_change_is_scale_and_offset_invariant():
    img, brain, wm = _phantom()
    out1, m1, _ = insert_anomaly(img, (2, 2, 2), "ring", 4, brain_mask=brain, wm_prob=wm)
    img2 = img * 7.5 - 1000.0 * brain  # e.g. another scanner or a CT-like offset
    out2, m2, _ = insert_anomaly(img2, (2, 2, 2), "ring", 4, brain_mask=brain, wm_prob=wm)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_allclose((out2 - img2)[brain], 7.5 * (out1 - img)[brain], atol=1e-2, rtol=1e-3)


def test_deterministic_and_seed_dependent():
    img, brain, wm = _phantom()
    a = insert_random_anomalies(img, (2, 2, 2), np.random.default_rng(42), brain_mask=brain, wm_prob=wm)
    b = insert_random_anomalies(img, (2, 2, 2), np.random.default_rng(42), brain_mask=brain, wm_prob=wm)
    c = insert_random_anomalies(img, (2, 2, 2), np.random.default_rng(43), brain_mask=brain, wm_prob=wm)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_random_anomalies_count_kinds_and_no_overlap():
    img, brain, wm = _phantom()
    seen = set()
    for seed in range(6):
        out, mask, infos = insert_random_anomalies(img, (2, 2, 2), seed, brain_mask=brain, wm_prob=wm,
                                                   diameter_mm=(6, 14))
        assert 1 <= len(infos) <= 3
        assert mask.sum() == sum(i["n_voxels"] for i in infos), "lesions overlap"
        assert not (mask.astype(bool) & ~brain).any()
        seen.update(i["kind"] for i in infos)
    assert seen <= set(KINDS) and len(seen) >= 3


def test_volume_wrapper_keeps_grid_and_estimates_brain():
    img, brain, _ = _phantom()
    aff = np.diag([-2.0, -2.0, 2.0, 1.0])
    aff[:3, 3] = [50, 60, -40]
    vol = Volume(img, aff)
    out, mvol, infos = insert_anomalies_volume(vol, 0, kinds=["hyper", "hypo"])
    assert out.shape == mvol.shape == vol.shape
    np.testing.assert_array_equal(out.affine, vol.affine)
    np.testing.assert_array_equal(mvol.affine, vol.affine)
    assert [i["kind"] for i in infos] == ["hyper", "hypo"]
    assert not (mvol.array.astype(bool) & ~brain).any()


def test_rejects_bad_input():
    img, brain, _ = _phantom(shape=(16, 16, 16))
    with pytest.raises(ValueError, match="unknown"):
        insert_anomaly(img, (2, 2, 2), "tumour", 0, brain_mask=brain)
    with pytest.raises(ValueError, match="empty"):
        insert_anomaly(img, (2, 2, 2), "hyper", 0, brain_mask=np.zeros_like(brain))
    with pytest.raises(ValueError, match="spacing"):
        insert_anomaly(img, (2, 2), "hyper", 0, brain_mask=brain)
