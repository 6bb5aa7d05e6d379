"""Subject-level bootstraps, pooled AP from per-scan counts, and the chance level of lesion detection."""

from __future__ import annotations

import numpy as np
import pytest

from medidiff.evaluate import metrics as M


def make_fake_run(root):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_te", Path(__file__).with_name("test_evaluate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_fake_run(root)


def _scores(n_subjects=12, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * n_subjects, bool)
    a = y * 1.0 + rng.normal(0, 0.8, y.size)
    b = y * 0.6 + rng.normal(0, 0.8, y.size)
    subj = np.repeat(np.arange(n_subjects), 2)
    return y, a, b, subj


def test_copies_of_one_subject_are_not_independent_evidence():
    """Four identical copies per subject: resampling subjects gives the CI of one copy per subject;
    resampling scans (each copy its own group) would give a narrower, overconfident one."""
    y, a, b, subj = _scores()
    one = M.paired_group_bootstrap_diff(M.auroc, y, a, b, subj, n_resamples=400, seed=3)
    rep = 4
    y4, a4, b4 = np.repeat(y, rep), np.repeat(a, rep), np.repeat(b, rep)
    subj4 = np.repeat(subj, rep)
    by_subject = M.paired_group_bootstrap_diff(M.auroc, y4, a4, b4, subj4, n_resamples=400, seed=3)
    by_scan = M.paired_group_bootstrap_diff(M.auroc, y4, a4, b4, np.arange(y4.size), n_resamples=400, seed=3)
    assert by_subject["diff"] == pytest.approx(one["diff"])
    assert (by_subject["ci_low"], by_subject["ci_high"]) == pytest.approx((one["ci_low"], one["ci_high"]))
    assert by_subject["n_groups"] == 12 and by_subject["n"] == 96
    width = lambda d: d["ci_high"] - d["ci_low"]  # noqa: E731
    assert width(by_scan) < 0.75 * width(by_subject)


def test_group_bootstrap_is_paired_and_seeded():
    y, a, _, subj = _scores()
    same = M.paired_group_bootstrap_diff(M.auroc, y, a, a, subj, n_resamples=200)
    assert same["diff"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    y, a, b, subj = _scores()
    r1 = M.paired_group_bootstrap_diff(M.auroc, y, a, b, subj, n_resamples=200, seed=1)
    r2 = M.paired_group_bootstrap_diff(M.auroc, y, a, b, subj, n_resamples=200, seed=1)
    assert r1 == r2 and r1["ci_low"] <= r1["diff"] <= r1["ci_high"]
    with pytest.raises(ValueError):
        M.paired_group_bootstrap_diff(M.auroc, y, a, b, subj[:-1])


def test_ap_from_counts_matches_average_precision():
    rng = np.random.default_rng(0)
    y = rng.random(3000) < 0.1
    s = np.round(y * 0.7 + rng.normal(0, 0.5, y.size), 2)  # ties included
    edges = np.unique(s)[1:]  # one bin per distinct score: exact
    pos, neg = M.binned_counts(s, y, edges)
    assert M.ap_from_counts(pos, neg) == pytest.approx(M.average_precision(y, s), abs=1e-12)
    # quantile bins shared by scans; counts of scans add up to the pooled AP
    parts = np.array_split(np.arange(y.size), 5)
    edges = M.quantile_edges([s[p] for p in parts], bins=500)
    cs = [M.binned_counts(s[p], y[p], edges) for p in parts]
    pooled = M.ap_from_counts(sum(c[0] for c in cs), sum(c[1] for c in cs))
    assert pooled == pytest.approx(M.average_precision(y, s), abs=0.01)
    assert np.isnan(M.ap_from_counts(np.zeros(3), np.ones(3)))


def _lesion_scene():
    shape = (30, 30, 30)
    gt = np.zeros(shape, bool)
    gt[5:8, 5:8, 5:8] = True  # 27 voxels
    gt[20:22, 20:22, 20:22] = True  # 8 voxels
    return shape, gt


def test_chance_of_a_single_voxel_false_positive_is_the_lesion_share_of_the_region():
    shape, gt = _lesion_scene()
    pred = np.zeros(shape, bool)
    pred[15, 2, 25] = True  # one false-positive voxel, far from both lesions
    region = np.ones(shape, bool)
    ch = M.random_fp_hits(pred, gt, region, n_draws=20000, seed=0)
    assert ch["n_lesions"] == 2 and ch["n_fp_components"] == 1
    assert ch["expected_detected"] == pytest.approx(35 / 27000, rel=0.35)
    assert ch["per_lesion"][0] > ch["per_lesion"][1]  # the bigger lesion is hit more often
    assert M.random_fp_hits(pred, gt, region, n_draws=500, seed=4) == M.random_fp_hits(pred, gt, region,
                                                                                       n_draws=500, seed=4)


def test_chance_counts_only_false_positive_components_and_grows_with_their_size():
    shape, gt = _lesion_scene()
    region = np.zeros(shape, bool)
    region[2:28, 2:28, 2:28] = True
    tp_only = gt.copy()  # a perfect map has no false-positive component: nothing found by chance
    ch = M.random_fp_hits(tp_only, gt, region, n_draws=100)
    assert ch["n_fp_components"] == 0 and ch["expected_detected"] == 0.0
    small, big = np.zeros(shape, bool), np.zeros(shape, bool)
    small[12:14, 12:14, 12:14] = True
    big[10:18, 10:18, 10:18] = True
    e_small = M.random_fp_hits(small, gt, region, n_draws=3000, seed=1)["expected_detected"]
    e_big = M.random_fp_hits(big, gt, region, n_draws=3000, seed=1)["expected_detected"]
    assert 0 < e_small < e_big <= 2
    # a one-voxel region makes the placement certain: the component's central voxel lands there
    cube = np.zeros(shape, bool)
    cube[20:23, 5:8, 12:15] = True  # touches no lesion
    on_lesion, away = np.zeros(shape, bool), np.zeros(shape, bool)
    on_lesion[6, 6, 6] = True
    away[15, 15, 15] = True
    hit = M.random_fp_hits(cube, gt, on_lesion, n_draws=10)
    assert hit["expected_detected"] == 1.0 and hit["per_lesion"] == [1.0, 0.0]
    assert M.random_fp_hits(cube, gt, away, n_draws=10)["expected_detected"] == 0.0
    with pytest.raises(ValueError):
        M.random_fp_hits(small, gt, region[:-1])


def test_evaluate_run_reports_lesion_precision_and_chance(tmp_path):
    from medidiff.evaluate import EvalOptions, evaluate_run

    run, labels = make_fake_run(tmp_path)
    rep = evaluate_run(run, labels, opts=EvalOptions(n_boot=20, plots=False, chance_draws=50), log=lambda m: None)
    cal = rep["voxel"]["lesion_detection"]["calibrated"]
    assert cal["n_predicted_components"] >= cal["n_true_positive_components"] > 0
    assert cal["precision"] == pytest.approx(cal["n_true_positive_components"] / cal["n_predicted_components"])
    ch = cal["chance"]
    assert ch["n_draws"] == 50 and ch["n_scans"] == sum(1 for s in rep["scans"] if s["label"] == 1)
    assert 0.0 <= ch["detection_rate"] <= 1.0 and ch["expected_detected"] <= cal["n_lesions"]
    assert all("chance_detection_rate" in v for v in cal["by_size"].values() if v["n_lesions"])
    # without draws: no chance level, the rest unchanged
    rep0 = evaluate_run(run, labels, opts=EvalOptions(n_boot=20, plots=False, chance_draws=0), log=lambda m: None)
    assert "chance" not in rep0["voxel"]["lesion_detection"]["calibrated"]
    assert rep0["voxel"]["ap"] == rep["voxel"]["ap"]
