"""The report's sentence, calibration state, QC comparisons and failure checks (no browser)."""

from __future__ import annotations

import numpy as np
import pytest

from medidiff.report.clusters import find_clusters
from medidiff.report.explain import (Facts, brain_at_edge, calibration_state, failure_checks, pattern, qc_outside,
                                     sentence, short_error, thick_slices)
from medidiff.report.render import prepare, slice_height, thumbnail_shape
from medidiff.score.qc_ranges import qc_ranges, voxel_size_max_mm


def _clusters(sizes_vox, threshold=3.0, peak=5.0, mm=1.0):
    """Lines of the given voxel counts (``mm`` voxels) on a 60³ grid, each peak ``peak``."""
    a = np.zeros((60, 60, 60), np.float32)
    x = 2
    for n in sizes_vox:
        a[x:x + 1, 2:2 + n, 2] = peak
        x += 3
    return find_clusters(a, a > 0, np.diag([mm, mm, mm, 1.0]), threshold=threshold)


def _facts(kind, score, clusters, brain_mm3=None, flag=True, **cal):
    st = calibration_state({"calibrated": True, "calibration": dict(cal)})
    return Facts(status="ok", kind=kind, score_config={"score": kind}, score=score, flag=flag, scan_threshold=1000.0,
                 voxel_threshold=3.0, cal=st, clusters=clusters, brain_mm3=brain_mm3)


def test_sentence_is_true_for_the_score_type():
    c = _clusters([40, 5], mm=2.0)  # 0.32 and 0.04 cm³
    lc = sentence(_facts("largest_cluster", 4200.0, c, brain_mm3=1.2e6))
    assert lc.startswith("Flagged: its largest cluster of voxels above the voxel threshold (3 z) measures 4.2 cm³ "
                         "on the model's grid, above the scan threshold of 1.0 cm³.")
    assert "Focal: cluster 1 below, 0.32 cm³ on this scan's grid" in lc and "brain volume" not in lc
    sv = sentence(_facts("supra_volume", 4200.0, c, brain_mm3=1.2e6))
    assert sv.startswith("Flagged: 4.2 cm³ of brain lies above the voxel threshold (3 z) on the model's grid")
    assert "largest cluster" not in sv.split(".")[0]
    # the cluster named in words is the table's first row, with the same size string
    assert "cluster 1 below, 0.32 cm³" in sv and "0.36 cm³ above the threshold in all (0.03 % of the brain)" in sv
    not_flagged = sentence(_facts("largest_cluster", 400.0, c, flag=False))
    assert not_flagged.startswith("Not flagged:") and "below the scan threshold of 1.0 cm³" in not_flagged
    other = sentence(_facts("topk_mean", 3.2, None))
    assert "3.2 (mean of the top 0.5 % of map values)" in other


def test_widespread_and_focal():
    brain = 1.0e6
    focal = _clusters([50, 3, 3])
    assert pattern(focal, brain) == "focal"
    big = np.zeros((60, 60, 60), np.float32)
    big[:, :, :30] = 5.0  # 108 cm³ of a 1000 cm³ brain: 10.8 %
    wide = find_clusters(big, big > 0, np.eye(4), threshold=3.0)
    assert pattern(wide, brain) == "widespread"
    s = sentence(_facts("largest_cluster", 1.1e5, wide, brain_mm3=brain))
    assert "Widespread, not focal: 108.0 cm³" in s and "(10.8 % of the brain)" in s
    scattered = _clusters([10] * 4)  # 40 voxels in 4 equal pieces of a 1000-voxel brain: 4 %, none half
    assert pattern(scattered, 1000.0) == "widespread"
    assert pattern(_clusters([]), brain) is None


def test_fragments_below_the_threshold_are_not_listed():
    a = np.zeros((20, 20, 20), np.float32)
    a[2:5, 2:5, 2:5] = 6.0
    a[10:12, 10:12, 10] = 2.0  # marked by the mask, but its map values are below the threshold here
    stats = find_clusters(a, a > 0, np.eye(4), threshold=4.0)
    assert stats.n_clusters == 1 and stats.n_fragments == 1
    assert all(c.peak_value >= 4.0 for c in stats.clusters)
    assert stats.total_mm3 == 27 and stats.fragments_mm3 == 4 and stats.mask_mm3 == 31


def test_template_coordinates_are_kept_and_named_from():
    a = np.zeros((20, 20, 20), np.float32)
    a[2:5, 9:12, 9:12] = 5
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20, -20, -20]
    shift = np.eye(4)
    shift[:3, 3] = [30, 0, 0]  # the scan's left (x = -14) is template right (x = +16)
    c = find_clusters(a, a > 0, affine, shift).largest
    assert c.centroid_world[0] == pytest.approx(-14) and c.centroid_template[0] == pytest.approx(16)
    assert c.region.startswith("right") and c.named_from == "template"
    s = sentence(_facts("largest_cluster", 5000.0, find_clusters(a, a > 0, affine, shift)))
    assert "template (MNI) (16, 0, 0) mm, scanner (-14, 0, 0) mm: right" in s


def test_calibration_state_reads_the_keys_defensively():
    old = calibration_state({"calibrated": True, "calibration": {"voxel_threshold": 3.0}})
    assert old.valid and not old.banner and old.warnings == [] and old.qc_ranges == {}
    bad = calibration_state({"calibrated": True, "calibration": {
        "valid": False, "invalid_reason": "calibrated in bf16 on cpu, scored in fp32 on cuda",
        "warnings": ["only 9 healthy scans for a 0.05 scan false-positive rate: at least 20 are needed"],
        "qc_ranges": {"brain_volume_ml": {"min": 1100, "max": 1500, "n": 9}, "junk": "x"}}})
    assert not bad.valid and "scored in fp32 on cuda" in bad.banner and len(bad.warnings) == 1
    assert list(bad.qc_ranges) == ["brain_volume_ml"]
    s = sentence(Facts(status="ok", kind="largest_cluster", score_config={}, score=5000.0, flag=True,
                       scan_threshold=1000.0, voxel_threshold=3.0, cal=bad))
    assert s.startswith("No valid flag (the calibration does not apply to this run)")
    # QC ranges from the model folder's calibration.json when run.json lacks them (same model only)
    model_cal = {"model_hash": "m1", "qc_ranges": {"registration_similarity": {"min": 0.8, "max": 0.95, "n": 20}}}
    assert calibration_state({"model_hash": "m1", "calibration": {}}, model_cal).qc_ranges
    assert not calibration_state({"model_hash": "m2", "calibration": {}}, model_cal).qc_ranges


def test_qc_ranges_and_values_outside_them():
    qcs = [{"brain_volume_ml": 1200.0, "registration_similarity": 0.91, "brain_method": "deepbet",
            "scan_to_template": np.eye(4).tolist()},
           {"brain_volume_ml": 1400.0, "registration_similarity": 0.95},
           {"brain_volume_ml": 1300.0}]
    r = qc_ranges(qcs)
    assert r == {"brain_volume_ml": {"min": 1200.0, "max": 1400.0, "n": 3}}  # similarity: not in every scan
    assert qc_ranges([]) == {}
    out = qc_outside({"brain_volume_ml": 1100.0, "registration_similarity": 0.5}, r)
    assert out == ["brain volume 1100 ml is below the range of the 3 calibration scans (1200 ml – 1400 ml)"]
    assert qc_outside({"brain_volume_ml": 1300.0}, r) == []
    assert voxel_size_max_mm(np.diag([1.0, 1.0, 4.8, 1.0])) == pytest.approx(4.8)


def test_thick_slices_and_brain_cut_off_at_the_edge():
    assert "4.8 mm slices" in thick_slices(np.diag([1.0, 1.0, 4.8, 1.0]), 2.0)
    assert thick_slices(np.diag([2.0, 2.0, 2.0, 1.0]), 2.0) is None and thick_slices(None, 2.0) is None
    brain = np.zeros((40, 40, 40), bool)
    brain[5:35, 5:35, 5:35] = True
    assert brain_at_edge(brain, np.eye(4)) is None
    brain[5:35, 5:35, 30:] = True  # runs off the top (RAS: the last index of the third axis is superior)
    assert "top (superior) edge" in brain_at_edge(brain, np.eye(4))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    side = np.zeros((40, 40, 40), bool)
    side[0:10, 10:30, 10:30] = True  # index 0 of an L-pointing axis is the patient's right
    assert "right edge" in brain_at_edge(side, lps)


def test_failure_checks_and_short_errors():
    err = ("/data/in/head.nii.gz: brain volume 5778 ml outside the plausible adult range 900-2100 ml "
           "(the head may be cut off, a localizer, or not a brain scan)")
    (c,) = failure_checks(err)
    assert (c.what, c.value, c.limit) == ("brain volume", "5778 ml", "900–2100 ml")
    assert short_error(err, "/data/in/head.nii.gz").startswith("brain volume 5778 ml")
    assert short_error(err).startswith("brain volume")  # any path prefix goes
    (c,) = failure_checks("x: registration failed: similarity 0.31 below 0.45 (check the brain mask)")
    assert (c.value, c.limit) == ("0.31", "at least 0.45")
    (c,) = failure_checks("x: only 91.5% of the brain lies inside the model grid (need 97%)")
    assert (c.value, c.limit) == ("91.5 %", "at least 97 %")
    assert failure_checks("something else") == []
    assert short_error("plain reason") == "plain reason"


def test_thumbnails_keep_physical_proportions():
    # an axial slice of a 4.8 mm sagittal series: 256 rows of 1 mm, 35 columns of 4.8 mm (168 mm wide)
    rows, cols = thumbnail_shape(256, 35, 1 / 4.8, 96)
    assert rows == 96 and cols == round(96 * 168 / 256)
    assert thumbnail_shape(10, 10, 1.0, 96) == (96, 96)


def test_slice_heights_are_read_at_the_point_on_oblique_scans():
    a = np.zeros((30, 30, 30), np.float32)
    a[25, 15, 10] = 9.0  # the peak
    theta = np.deg2rad(20)
    rot = np.array([[np.cos(theta), 0, np.sin(theta)], [0, 1, 0], [-np.sin(theta), 0, np.cos(theta)]])
    affine = np.eye(4)
    affine[:3, :3] = 2.0 * rot
    prep = prepare(a, affine)
    assert prep.amap.oblique
    p = prep.planes["axial"]
    peak = prep.peak
    z_at_peak = float((prep.amap.affine @ np.array([*peak, 1.0]))[2])
    assert slice_height(prep, peak[p.slice_axis], peak) == pytest.approx(z_at_peak)
    corner = [0, 0, 0]
    corner[p.slice_axis] = peak[p.slice_axis]
    z_corner = float((prep.amap.affine @ np.array([*corner, 1.0]))[2])
    assert abs(z_corner - z_at_peak) > 5  # what the old title showed, tens of mm off on a tilted scan


@pytest.mark.parametrize("kind, words, never", [
    ("largest_cluster", "their largest cluster of voxels above the voxel threshold (4.37 z) exceeds 1.7 cm³",
     "brain lies above"),
    ("supra_volume", "more than 1.7 cm³ of brain lies above the voxel threshold (4.37 z)", "largest cluster"),
])
def test_the_flag_rule_names_the_run_score_type(tmp_path, kind, words, never):
    from medidiff.report.context import RunContext
    from medidiff.report.wording import rule_text, score_caption

    ctx = RunContext(out=tmp_path, run={"score_config": {"score": kind}}, summary={}, healthy_scores=[],
                     voxel_threshold=4.37, scan_threshold=1700.0, map_label="z", labels=None, show_phi=False)
    assert words in rule_text(ctx) and never not in rule_text(ctx)
    assert never not in score_caption(ctx)
