"""Calibration that says what it achieved: leave-one-out FPRs with exact CIs, sample-size
warnings, hash-linked files, and a post-processor whose mask and score agree."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medidiff.geometry import GridMapping
from medidiff.preprocess import Preprocessed
from medidiff.score.calibration import (CALIBRATION_JSON, CALIBRATION_TENSORS, Calibration, CalibrationError,
                                        calibrate_maps, clopper_pearson)
from medidiff.score.config import ScoreConfig
from medidiff.score.postprocess import ModelGridMap, PostProcessor
from medidiff.volume import Volume

GRID = (12, 12, 12)


def _maps(n, seed=0, shifts=None):
    rng = np.random.default_rng(seed)
    region = np.zeros(GRID, bool)
    region[2:10, 2:10, 2:10] = True
    out = []
    for i in range(n):
        raw = rng.normal(0, 1, GRID).astype(np.float32) + (0.0 if shifts is None else shifts[i])
        mg = ModelGridMap(pre=None, raw=np.where(region, np.abs(raw), 0).astype(np.float32), region=region)
        out.append(mg)
    return out


def _calibrate(maps, **cfg):
    post = PostProcessor(ScoreConfig(**cfg), (2.0, 2.0, 2.0))
    return calibrate_maps(maps, [f"s{i}" for i in range(len(maps))], post, model_hash="m", runtime={})


def test_clopper_pearson_known_values():
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.3085, abs=1e-4)
    lo, hi = clopper_pearson(5, 10)
    assert lo == pytest.approx(0.1871, abs=1e-4) and hi == pytest.approx(0.8129, abs=1e-4)


def test_leave_one_out_fpr_on_exchangeable_scans_is_near_target():
    cal = _calibrate(_maps(30), normalization="none", score="topk_mean", voxel_fpr=0.01, scan_fpr=0.1)
    lo, hi = cal.achieved_voxel_fpr_ci95
    assert lo <= 0.01 <= hi and abs(cal.achieved_voxel_fpr - 0.01) < 0.003
    assert cal.n_false_positive_scans == round(cal.achieved_scan_fpr * 30)
    slo, shi = cal.achieved_scan_fpr_ci95
    assert slo <= cal.achieved_scan_fpr <= shi and shi < 0.5
    assert cal.warnings == []  # 30 >= 1 / 0.1


def test_leave_one_out_exposes_heterogeneous_scans():
    """In-sample the pooled quantile always equals the target; leave-one-out does not when
    scans differ: the brightest scan exceeds thresholds set by the others far more often."""
    shifts = np.linspace(0, 3, 8)
    cal = _calibrate(_maps(8, shifts=shifts), normalization="none", score="topk_mean", voxel_fpr=0.01, scan_fpr=0.05)
    pooled = np.concatenate([m.raw[m.region] for m in _maps(8, shifts=shifts)])
    assert (pooled > cal.voxel_threshold).mean() == pytest.approx(0.01, abs=1e-3)  # in-sample: the target
    assert cal.achieved_voxel_fpr > 0.015  # honest: well above it
    assert cal.voxel_fpr_per_scan[-1] > 10 * cal.voxel_fpr_per_scan[0]
    assert cal.n_false_positive_scans >= 1  # the brightest scan beats a threshold set by the others


def test_too_few_scans_for_the_scan_fpr_warns():
    cal = _calibrate(_maps(8), normalization="none", scan_fpr=0.05)
    assert len(cal.warnings) == 1 and "at least 20" in cal.warnings[0]
    assert any(line.startswith("warning:") for line in cal.summary_lines())
    assert _calibrate(_maps(20), normalization="none", scan_fpr=0.05).warnings == []


def test_calibration_files_are_hash_linked(tmp_path):
    cal = _calibrate(_maps(4), normalization="voxelwise")
    cal.save(tmp_path)
    again = Calibration.load(tmp_path, model_hash="m")
    np.testing.assert_array_equal(again.stats.mean, cal.stats.mean)
    assert again.achieved_voxel_fpr == cal.achieved_voxel_fpr
    with pytest.raises(CalibrationError, match="not this model"):
        Calibration.load(tmp_path, model_hash="other")
    blob = (tmp_path / CALIBRATION_TENSORS).read_bytes()
    (tmp_path / CALIBRATION_TENSORS).write_bytes(blob[:-4] + b"\0\0\0\0")
    with pytest.raises(CalibrationError, match="SHA-256 differs"):
        Calibration.load(tmp_path)
    (tmp_path / CALIBRATION_TENSORS).unlink()
    with pytest.raises(CalibrationError, match="missing.*re-run `medidiff calibrate`"):
        Calibration.load(tmp_path)
    (tmp_path / CALIBRATION_TENSORS).write_bytes(blob)
    (tmp_path / CALIBRATION_JSON).unlink()
    with pytest.raises(CalibrationError, match="without calibration.json"):
        Calibration.load(tmp_path)


def test_old_calibration_format_is_refused(tmp_path):
    cal = _calibrate(_maps(3), normalization="none")
    cal.save(tmp_path)
    d = json.loads((tmp_path / CALIBRATION_JSON).read_text())
    d.pop("format_version")
    (tmp_path / CALIBRATION_JSON).write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="format 1"):
        Calibration.load(tmp_path)


def _oblique_case():
    """A source grid rotated and finer than the model grid, a map with one bright blob."""
    src_shape = (30, 26, 28)
    c, s = np.cos(0.3), np.sin(0.3)
    src_aff = np.array([[1.3 * c, -1.3 * s, 0, -18], [1.3 * s, 1.3 * c, 0, -15], [0, 0, 1.5, -20], [0, 0, 0, 1.0]])
    model_aff = np.diag([3.0, 3.0, 3.0, 1.0])
    model_aff[:3, 3] = -16.5
    mapping = GridMapping(src_shape, src_aff, GRID, model_aff)
    pre = Preprocessed(image=np.zeros(GRID, np.float32), foreground=np.ones(GRID, bool), mapping=mapping,
                       intensity={"low": 0.0, "high": 1.0})
    region = np.ones(GRID, bool)
    zz = np.indices(GRID).astype(np.float32)
    raw = 3.0 * np.exp(-((zz - 6.0) ** 2).sum(0) / 4.0)
    return Volume(np.zeros(src_shape, np.float32), src_aff), ModelGridMap(pre=pre, raw=raw.astype(np.float32),
                                                                          region=region)


def test_mask_is_the_model_grid_decision_and_agrees_with_the_score():
    vol, mg = _oblique_case()
    cal = _calibrate(_maps(3), normalization="none", score="supra_volume")
    cal.voxel_threshold, cal.scan_threshold = 1.0, 0.0
    post = PostProcessor(ScoreConfig(normalization="none", score="supra_volume"), (3.0, 3.0, 3.0), cal)
    res = post.finish(vol, mg)
    decision = (mg.raw > 1.0) & mg.region
    assert res.score == pytest.approx(decision.sum() * 27.0)
    # the source mask is that decision, resampled nearest-neighbour: same volume within a voxel shell
    src_voxel = abs(np.linalg.det(vol.affine[:3, :3]))
    assert res.mask.dtype == np.uint8 and set(np.unique(res.mask)) == {0, 1}
    assert res.mask.sum() * src_voxel == pytest.approx(res.score, rel=0.25)
    assert res.flag is True
    # and every source voxel in the mask maps to a model voxel that was decided anomalous
    idx = np.argwhere(res.mask > 0)
    world = idx @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    model_idx = np.rint((world - mg.pre.mapping.model_affine[:3, 3]) / 3.0).astype(int)
    assert decision[tuple(model_idx.T)].all()


def test_empty_decision_gives_empty_mask_and_zero_volume():
    vol, mg = _oblique_case()
    cal = _calibrate(_maps(3), normalization="none")
    cal.voxel_threshold = 10.0
    res = PostProcessor(ScoreConfig(normalization="none", score="supra_volume"), (3.0, 3.0, 3.0), cal).finish(vol, mg)
    assert res.score == 0.0 and res.mask.sum() == 0 and res.anomaly_map.max() > 0


def test_extra_qc_and_maps_from_preprocessing_reach_the_result():
    vol, mg = _oblique_case()
    mg.pre.qc = {"brain_volume_ml": 1234.5}
    mg.pre.source_maps = {"brain_mask": np.ones(vol.shape, np.uint8)}
    res = PostProcessor(ScoreConfig(normalization="none", score="topk_mean"), (3.0, 3.0, 3.0)).finish(vol, mg)
    assert res.qc == {"brain_volume_ml": 1234.5}
    assert set(res.source_maps()) == {"anomaly_map", "brain_mask"}
    assert res.flag is None and res.mask is None and any("uncalibrated" in w for w in res.warnings)


def test_small_components_are_dropped_from_the_decision_and_the_score():
    from medidiff.score.config import ScoreConfig
    from medidiff.score.maps import scan_score, voxel_decision
    from medidiff.score.postprocess import PostProcessor

    amap = np.zeros((20, 20, 20), np.float32)
    amap[2:5, 2:5, 2:5] = 5.0  # 27 voxels
    amap[10, 10, 10] = 5.0  # 1 voxel: speckle
    amap[14:16, 14:16, 14:16] = 5.0  # 8 voxels
    region = np.ones_like(amap, bool)
    dec, sizes = voxel_decision(amap, region, 1.0, min_voxels=5)
    assert list(sizes) == [27, 8] and dec.sum() == 35 and not dec[10, 10, 10]
    vol = 8.0  # 2 mm voxels
    cfg = ScoreConfig(score="supra_volume", min_component_mm3=40.0)  # = 5 voxels
    assert scan_score(amap, region, cfg, vol, 1.0) == 35 * vol
    cfg = ScoreConfig(score="largest_cluster", min_component_mm3=40.0)
    assert scan_score(amap, region, cfg, vol, 1.0) == 27 * vol
    # the post-processor's decision (the written mask) is exactly what the score counts
    pp = PostProcessor(ScoreConfig(score="supra_volume", min_component_mm3=40.0), (2, 2, 2))
    assert pp.decide(amap, region, 1.0).sum() * vol == scan_score(amap, region, pp.cfg, vol, 1.0)


def test_t_ensemble_is_z_scored_per_t_star_and_averaged():
    """t_combine=zscore: each t* has its own healthy spread (a higher t* has larger residuals);
    z-scoring each against its own statistics puts them on one scale before averaging."""
    rng = np.random.default_rng(3)
    region = np.zeros(GRID, bool)
    region[2:10, 2:10, 2:10] = True
    maps = []
    for _ in range(8):  # t* 1: residual ~1, t* 2: residual ~10 with 5x the spread
        raw = np.stack([1.0 + 0.1 * rng.normal(size=GRID), 10.0 + 0.5 * rng.normal(size=GRID)]).astype(np.float32)
        maps.append(ModelGridMap(pre=None, raw=np.where(region, raw, 0).astype(np.float32), region=region))
    cal = _calibrate(maps, t_fractions=(0.1, 0.3), t_combine="zscore", voxel_fpr=0.01)
    assert cal.stats.mean.shape == (2,) + GRID and cal.grid == list(GRID)
    inside = cal.stats.mean[:, region]
    assert abs(np.median(inside[0]) - 1.0) < 0.05 and abs(np.median(inside[1]) - 10.0) < 0.1  # never mixed
    post = PostProcessor(ScoreConfig(t_fractions=(0.1, 0.3), t_combine="zscore"), (2.0, 2.0, 2.0), cal)
    # a voxel 3 healthy SDs up at t* 1 only: its z is about 3 there, 0 at t* 2, mean 1.5
    probe = np.stack([np.where(region, 1.0, 0), np.where(region, 10.0, 0)]).astype(np.float32)
    probe[0, 6, 6, 6] += 3 * cal.stats.std[0, 6, 6, 6]
    z = post.normalize(probe, region)
    assert z.shape == GRID and z[6, 6, 6] == pytest.approx(1.5 + 0.5 * (1.0 - cal.stats.mean[0, 6, 6, 6])
                                                          / cal.stats.std[0, 6, 6, 6]
                                                          + 0.5 * (10.0 - cal.stats.mean[1, 6, 6, 6])
                                                          / cal.stats.std[1, 6, 6, 6], abs=1e-4)
    with pytest.raises(ValueError, match="t_combine=zscore needs voxelwise"):
        ScoreConfig(t_fractions=(0.1, 0.3), t_combine="zscore", normalization="global")


def test_new_default_setting_keeps_older_calibration_hashes():
    cfg = ScoreConfig()
    d = cfg.to_dict()
    d.pop("t_combine")
    old_style = ScoreConfig.from_dict(d)
    assert old_style.hash({}) == cfg.hash({})
    assert ScoreConfig(t_fractions=(0.1, 0.2), t_combine="zscore").hash({}) != ScoreConfig(t_fractions=(0.1, 0.2)).hash({})
