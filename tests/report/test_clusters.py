"""Clusters of supra-threshold voxels and their coarse location names."""

from __future__ import annotations

import numpy as np

from medidiff.report.clusters import find_clusters, supra_threshold
from medidiff.report.regions import hemisphere, region_name


def test_clusters_sizes_order_and_location():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-40.0, -40.0, -20.0)  # voxel (20, 20, 10) is the origin
    amap = np.zeros((40, 40, 30), np.float32)
    amap[5:9, 25:29, 20:24] = 5.0  # 64 voxels, x = -30 mm: left, y = +14: frontal
    amap[30:32, 22:24, 20:22] = 7.0  # 8 voxels, x = +21 mm: right
    amap[31, 23, 21] = 9.0
    stats = find_clusters(amap, supra_threshold(amap, None, 4.0), affine)
    assert stats.n_clusters == 2
    big, small = stats.clusters
    assert (big.n_voxels, small.n_voxels) == (64, 8)
    assert np.isclose(big.size_mm3, 64 * 8.0) and np.isclose(stats.total_mm3, 72 * 8.0)
    assert big.region == "left frontal lobe" and small.region.startswith("right")
    assert small.peak_value == 9.0 and big.peak_value == 5.0
    np.testing.assert_allclose(big.centroid_world, (-40 + 2 * 6.5, -40 + 2 * 26.5, -20 + 2 * 21.5))
    # the written mask wins over the threshold; nothing above → no cluster
    mask = np.zeros(amap.shape, np.uint8)
    assert find_clusters(amap, supra_threshold(amap, mask, 4.0), affine).n_clusters == 0
    assert supra_threshold(amap, None, None) is None


def test_ring_cluster_centre_lies_inside_it():
    ring = np.zeros((21, 21, 3), bool)
    yy, xx = np.mgrid[:21, :21]
    r = np.hypot(yy - 10, xx - 10)
    ring[..., 1] = (r > 6) & (r < 8)
    c = find_clusters(ring.astype(np.float32), ring, np.eye(4)).largest
    assert ring[c.centroid_ijk]


def test_region_names_for_mni_points():
    assert region_name((-40, 20, 30)) == "left frontal lobe"
    assert region_name((0, -30, -30)) == "midline brainstem"
    assert region_name((30, -85, 5)) == "right occipital lobe"
    assert region_name((20, -60, -35)) == "right cerebellum"
    assert region_name((-50, -20, -10)) == "left temporal lobe"
    assert region_name((40, -50, 45)) == "right parietal lobe"
    assert hemisphere(2.0) == "midline" and hemisphere(-10) == "left"
    # a template atlas, when given, names the point instead of the boxes
    assert region_name((-40, 20, 30), atlas=lambda p: "middle frontal gyrus") == "left middle frontal gyrus"
    assert region_name((-40, 20, 30), atlas=lambda p: None) == "left frontal lobe"


def test_registered_scans_name_regions_from_template_coordinates():
    import numpy as np

    from medidiff.report.clusters import find_clusters

    amap = np.zeros((20, 20, 20), np.float32)
    amap[2:5, 9:12, 9:12] = 5
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20, -20, -20]  # the cluster's centre sits at x = -14 mm (left) in scanner RAS
    plain = find_clusters(amap, amap > 1, affine)
    assert plain.largest.region.startswith("left")
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # a registration that mirrors x: in MNI the centre is on the right
    registered = find_clusters(amap, amap > 1, affine, flip)
    assert registered.largest.region.startswith("right")
    assert registered.largest.centroid_world == plain.largest.centroid_world  # shown in the scan's own RAS
