"""Metric definitions checked against scikit-learn and brute force on random data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medidiff.evaluate import metrics as M


@pytest.mark.parametrize("seed", range(6))
def test_auroc_ap_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = rng.random(n) < rng.uniform(0.05, 0.6)
    y[0], y[1] = True, False
    s = rng.normal(size=n) + y * rng.uniform(0, 2)
    if seed % 2:  # heavy ties
        s = np.round(s, 1)
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert M.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-9)
    w = rng.integers(1, 5, n).astype(float)
    assert M.auroc(y, s, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-9)
    assert M.average_precision(y, s, w) == pytest.approx(average_precision_score(y, s, sample_weight=w), abs=1e-9)


def test_weighted_equals_repeated():
    rng = np.random.default_rng(7)
    y = rng.random(200) < 0.3
    s = np.round(rng.normal(size=200) + y, 1)
    w = rng.integers(1, 4, 200)
    yy, ss = np.repeat(y, w), np.repeat(s, w)
    assert M.average_precision(y, s, w.astype(float)) == pytest.approx(M.average_precision(yy, ss), abs=1e-12)
    assert M.auroc(y, s, w.astype(float)) == pytest.approx(M.auroc(yy, ss), abs=1e-12)
    assert M.best_dice(y, s, w.astype(float))[0] == pytest.approx(M.best_dice(yy, ss)[0], abs=1e-12)


def test_undefined_cases():
    assert np.isnan(M.auroc([1, 1], [0.1, 0.2]))
    assert np.isnan(M.average_precision([0, 0], [0.1, 0.2]))
    assert M.dice(np.zeros(5), np.zeros(5)) == 1.0
    assert M.dice([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(4))
def test_best_dice_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    n = 300
    y = rng.random(n) < 0.2
    s = np.round(rng.normal(size=n) + 1.5 * y, 1 if seed % 2 else 3)
    best, best_t = -1.0, None
    for t in np.r_[np.unique(s), s.min() - 1]:
        d = M.dice(s > t, y)
        if d > best:
            best, best_t = d, t
    d, t = M.best_dice(y, s)
    assert d == pytest.approx(best, abs=1e-12)
    assert M.dice(s > t, y) == pytest.approx(best, abs=1e-12)


def test_sens_spec_and_threshold_at_fpr():
    rng = np.random.default_rng(3)
    neg = rng.normal(size=1000)
    pos = rng.normal(2.0, 1.0, size=300)
    y = np.r_[np.zeros(1000, bool), np.ones(300, bool)]
    s = np.r_[neg, pos]
    for fpr in (0.01, 0.05, 0.2):
        t = M.threshold_at_fpr(y, s, fpr)
        assert (neg > t).mean() <= fpr + 1e-12
        # the next lower negative would exceed the target: t is the lowest valid threshold
        lower = np.sort(neg)[np.sort(neg) < t]
        if lower.size:
            assert (neg > lower[-1]).mean() > fpr
        ss = M.sensitivity_at_fpr(y, s, fpr)
        assert ss.sensitivity == pytest.approx((pos > t).mean())
        assert ss.specificity >= 1 - fpr - 1e-12
    ss = M.sens_spec_at_threshold(y, s, 1.0)
    assert ss.sensitivity == pytest.approx((pos > 1.0).mean()) and ss.specificity == pytest.approx((neg <= 1.0).mean())
    # resolution: with 8 negatives a 1% FPR is the highest negative score
    y8 = np.r_[np.zeros(8, bool), np.ones(8, bool)]
    s8 = np.r_[np.arange(8.0), np.arange(8.0) + 4]
    assert M.threshold_at_fpr(y8, s8, 0.01) == 7.0


def test_bootstrap_ci_seeded_and_brackets():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(40, bool), np.ones(20, bool)]
    s = rng.normal(size=60) + y
    a = M.bootstrap_ci(M.auroc, y, s, n_resamples=300, seed=5)
    b = M.bootstrap_ci(M.auroc, y, s, n_resamples=300, seed=5)
    assert a == b
    assert a[0] < M.auroc(y, s) < a[1]
    assert 0 <= a[0] and a[1] <= 1


def test_lesion_detection():
    gt = np.zeros((20, 20, 20), bool)
    gt[2:5, 2:5, 2:5] = True  # lesion 1 (27 voxels)
    gt[10:12, 10:12, 10:12] = True  # lesion 2 (8 voxels)
    gt[16, 16, 16] = True  # lesion 3 (1 voxel)
    pred = np.zeros_like(gt)
    pred[4, 4, 4] = True  # touches lesion 1
    pred[16, 16, 16] = True  # lesion 3
    pred[7:9, 0:2, 0:2] = True  # false positive component
    pred[0, 19, 19] = True  # another false positive
    det = M.lesion_detection(pred, gt, voxel_volume_mm3=8.0)
    assert [les["detected"] for les in det.lesions] == [True, False, True]
    assert [les["volume_mm3"] for les in det.lesions] == [216.0, 64.0, 8.0]
    assert det.n_fp_components == 2 and det.n_pred_components == 4
    assert det.n_detected == 2
    # diagonal neighbours are one component (26-connectivity)
    d = np.zeros((4, 4, 4), bool)
    d[0, 0, 0] = d[1, 1, 1] = True
    assert len(M.lesion_detection(d, d).lesions) == 1


def test_psnr():
    a = np.ones((4, 4, 4))
    a[0] = 3.0
    assert M.psnr(a, a) == float("inf")
    b = a + 0.1
    assert M.psnr(a, b, data_range=2.0) == pytest.approx(10 * np.log10(4 / 0.01))


def test_paired_bootstrap_resolves_a_real_difference_and_not_a_tie():
    from medidiff.evaluate.metrics import auroc, paired_bootstrap_diff

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30), np.zeros(30)].astype(bool)
    good = y * 2.0 + rng.normal(0, 1, 60)
    weak = y * 0.2 + rng.normal(0, 1, 60)
    d = paired_bootstrap_diff(auroc, y, good, weak, n_resamples=500)
    assert d["diff"] > 0.2 and d["ci_low"] > 0 and d["n"] == 60
    tie = paired_bootstrap_diff(auroc, y, good, good + rng.normal(0, 1e-3, 60), n_resamples=500)
    assert tie["ci_low"] <= 0 <= tie["ci_high"]
