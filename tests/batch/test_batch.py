"""Batch scoring end to end with a tiny model: geometry, resume, failures, DICOM outputs, calibration."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from volume_factory import reorient
from dicom_factory import regular_positions, write_series
from typer.testing import CliRunner

from medidiff.cli import app
from medidiff.batch.run import in_shard, score_folder
from medidiff.batch.calibrate import calibrate_model
from medidiff.score.calibration import Calibration

# top-k mean: a continuous scan score, so equal anatomy gives comparable scores
FAST = ("score.n_draws=2", "score.batch_size=4", "score.score=topk_mean")
runner = CliRunner()


def _write_cohort(folder, data, affine, kinds=("RAS", "LPS", "permuted", "oblique"), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for kind in kinds:
        d, a = reorient(data * rng.uniform(0.9, 1.1), affine, kind)
        nib.save(nib.Nifti1Image((d + rng.normal(0, 10, d.shape)).astype(np.int16), a), folder / f"{kind}.nii.gz")


@pytest.fixture(scope="module")
def calibrated_model(tiny_model_dir, mni_small, tmp_path_factory):
    data, affine = mni_small
    healthy = tmp_path_factory.mktemp("healthy")
    for i in range(3):
        _write_cohort(healthy / f"h{i}", data, affine, kinds=("RAS", "LPS"), seed=10 + i)
    cal = calibrate_model(tiny_model_dir, healthy, overrides=FAST + ("score.scan_fpr=0.2", "score.voxel_fpr=0.01"),
                          progress=False, log=lambda m: None)
    return tiny_model_dir, cal, healthy


def test_calibration_reports_leave_one_out_fpr_and_is_used_by_scoring(calibrated_model, tmp_path):
    model_dir, cal, healthy = calibrated_model
    assert cal.n_scans == 6 and len(cal.voxel_fpr_per_scan) == 6
    assert cal.achieved_scan_fpr == pytest.approx(cal.n_false_positive_scans / 6)
    lo, hi = cal.achieved_scan_fpr_ci95
    assert lo <= cal.achieved_scan_fpr <= hi
    assert cal.achieved_voxel_fpr == pytest.approx(np.mean(cal.voxel_fpr_per_scan), rel=0.05)
    assert cal.runtime["precision"] in ("bf16", "fp32") and cal.grid == [16, 16, 16]
    loaded = Calibration.load(model_dir)
    assert loaded.voxel_threshold == pytest.approx(cal.voxel_threshold)
    assert loaded.stats is not None and loaded.stats.mean.shape == (16, 16, 16)
    # re-scoring the calibration scans with the final (in-sample) statistics flags at most the target rate
    summary = score_folder(model_dir, healthy, tmp_path / "out", progress=False, log=lambda m: None)
    df = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert summary.n_scored == 6 and (df.status == "ok").all()
    assert df.flag.astype(bool).mean() <= 0.2 + 1 / 6
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["calibration"]["achieved_scan_fpr_ci95"] == cal.achieved_scan_fpr_ci95


def test_calibrate_cli_prints_what_was_computed(tiny_model_dir, mni_small, tmp_path):
    import shutil

    data, affine = mni_small
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for name in ("calibration.json", "calibration.safetensors"):
        (model / name).unlink(missing_ok=True)
    _write_cohort(tmp_path / "healthy", data, affine, kinds=("RAS", "LPS", "permuted"))
    res = runner.invoke(app, ["calibrate", "--model", str(model), "--healthy", str(tmp_path / "healthy"),
                              "--no-progress", *sum((["--set", s] for s in FAST), [])])
    assert res.exit_code == 0, res.output
    assert "calibrated on 3 healthy scans" in res.output and "leave-one-out achieved" in res.output
    assert "95% CI" in res.output and "at least 20" in res.output  # 3 scans for a 5 % scan threshold
    # a deleted calibration tensor file is refused with what to do, not silently ignored
    (model / "calibration.safetensors").unlink()
    _write_cohort(tmp_path / "in", data, affine, kinds=("RAS",))
    res = runner.invoke(app, ["score", "--model", str(model), "--input", str(tmp_path / "in"), "--out",
                              str(tmp_path / "out"), "--no-progress", "--no-report"])
    assert res.exit_code == 2
    assert "calibration.safetensors: missing" in res.output and "medidiff calibrate" in res.output


def test_maps_on_source_grid_for_every_orientation(calibrated_model, mni_small, tmp_path):
    model_dir, cal, _ = calibrated_model
    data, affine = mni_small
    _write_cohort(tmp_path / "in", data, affine)
    summary = score_folder(model_dir, tmp_path / "in", tmp_path / "out", progress=False, log=lambda m: None)
    assert summary.n_scored == 4 and summary.n_failed == 0
    for kind in ("RAS", "LPS", "permuted", "oblique"):
        src = nib.load(tmp_path / "in" / f"{kind}.nii.gz")
        for name, dtype in (("anomaly_map", np.float32), ("mask", np.uint8)):
            out = nib.load(tmp_path / "out" / "scans" / kind / f"{name}.nii.gz")
            assert out.shape == src.shape
            np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
            assert out.get_data_dtype() == dtype
        amap = np.asarray(nib.load(tmp_path / "out" / "scans" / kind / "anomaly_map.nii.gz").dataobj)
        assert np.isfinite(amap).all() and amap.max() > 0
    # the same anatomy gives nearly the same score however it is stored
    df = pd.read_csv(tmp_path / "out" / "scores.csv").set_index("scan_id")
    assert set(df.columns) >= {"score", "percentile", "flag", "n_evals", "seconds", "model_hash", "config_hash",
                               "status", "error", "source_path"}
    assert (df.n_evals == 2).all()
    scores = df.loc[["RAS", "LPS", "permuted", "oblique"], "score"].to_numpy()
    assert scores.std() / scores.mean() < 0.1, scores


def test_resume_skips_finished_and_failures_are_isolated(calibrated_model, mni_small, tmp_path):
    model_dir, _, _ = calibrated_model
    data, affine = mni_small
    _write_cohort(tmp_path / "in", data, affine, kinds=("RAS", "LPS"))
    good = (tmp_path / "in" / "RAS.nii.gz").read_bytes()
    (tmp_path / "in" / "broken.nii.gz").write_bytes(good[: len(good) // 2])
    res = runner.invoke(app, ["score", "--model", str(model_dir), "--input", str(tmp_path / "in"), "--out",
                              str(tmp_path / "out"), "--no-progress", "--no-report"])
    assert res.exit_code == 1, res.output  # one scan failed
    assert "1 failed" in res.output
    df = pd.read_csv(tmp_path / "out" / "scores.csv").set_index("scan_id")
    assert df.loc["broken", "status"] == "failed" and "broken.nii.gz" in df.loc["broken", "error"]
    assert (df.drop("broken").status == "ok").all()
    stamp = (tmp_path / "out" / "scans" / "RAS" / "result.json").stat().st_mtime_ns
    (tmp_path / "in" / "broken.nii.gz").unlink()
    summary = score_folder(model_dir, tmp_path / "in", tmp_path / "out", progress=False, log=lambda m: None)
    assert summary.n_skipped_complete == 2 and summary.n_scored == 0
    assert (tmp_path / "out" / "scans" / "RAS" / "result.json").stat().st_mtime_ns == stamp


def test_other_model_refused_without_overwrite(calibrated_model, mni_small, tmp_path):
    model_dir, _, _ = calibrated_model
    data, affine = mni_small
    _write_cohort(tmp_path / "in", data, affine, kinds=("RAS",))
    score_folder(model_dir, tmp_path / "in", tmp_path / "out", progress=False, log=lambda m: None)
    res = runner.invoke(app, ["score", "--model", str(model_dir), "--input", str(tmp_path / "in"), "--out",
                              str(tmp_path / "out"), "--set", "score.t_fractions=[0.3]", "--no-progress", "--no-report"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = runner.invoke(app, ["score", "--model", str(model_dir), "--input", str(tmp_path / "in"), "--out",
                              str(tmp_path / "out"), "--set", "score.t_fractions=[0.3]", "--overwrite",
                              "--no-progress", "--no-report"])
    assert res.exit_code == 0, res.output


def test_shards_partition_the_scans():
    ids = [f"scan{i}" for i in range(50)]
    parts = [[s for s in ids if in_shard(s, (i, 3))] for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert all(parts)


def test_dicom_input_gets_seg_and_parametric_map(calibrated_model, mni_small, tmp_path):
    hd = pytest.importorskip("highdicom")
    model_dir, _, _ = calibrated_model
    data, _ = mni_small
    noisy = data * 1.1 + np.random.default_rng(3).normal(0, 10, data.shape)  # like the calibration scans
    stored = np.clip(noisy, 0, None).astype(np.int16)
    iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    pos = regular_positions((-90.0, 120.0, -70.0), iop, 8.0, stored.shape[2])
    rng = np.random.default_rng(0)
    names = [f"x{v}" for v in rng.permutation(stored.shape[2])]
    paths = write_series(tmp_path / "in" / "series", stored, pos, iop, (8.0, 8.0), names=names,
                         patient_id="../../etc/passwd", patient_name="Doe^Jane")
    summary = score_folder(model_dir, tmp_path / "in", tmp_path / "out", progress=False, log=lambda m: None)
    assert summary.n_scored == 1, summary.failures
    (scan_dir,) = list((tmp_path / "out" / "scans").iterdir())
    assert "etc" not in scan_dir.name and (tmp_path / "out") in scan_dir.parents
    result = json.loads((scan_dir / "result.json").read_text())
    src_uids = {pydicom.dcmread(p).SOPInstanceUID for p in paths}
    seg = hd.seg.segread(scan_dir / "seg.dcm")
    refs = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == src_uids
    assert seg.NumberOfFrames == stored.shape[2]
    pm = pydicom.dcmread(scan_dir / "pmap.dcm")
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert pm.NumberOfFrames == stored.shape[2]
    # every frame of the parametric map carries the map of the source slice at the same position
    # (highdicom may reorder frames, so match by ImagePositionPatient, not by index)
    amap = np.asarray(nib.load(scan_dir / "anomaly_map.nii.gz").dataobj)
    assert amap.max() > 0
    frames = pm.pixel_array
    positions = np.array(pos)
    for f, item in enumerate(pm.PerFrameFunctionalGroupsSequence):
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        k = int(np.argmin(np.linalg.norm(positions - ipp, axis=1)))
        np.testing.assert_allclose(ipp, positions[k], atol=1e-4)
        np.testing.assert_allclose(frames[f].T, amap[:, :, k], rtol=1e-4, atol=1e-5)
    assert result["shape"] == list(stored.shape)
    assert "Doe" not in (scan_dir / "result.json").read_text()


def test_refinement_is_calibrated_with_the_rule_it_scores_with(tiny_model_dir, mni_small, tmp_path, monkeypatch):
    import shutil

    from medidiff.score.pipeline import Scorer

    data, affine = mni_small
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _write_cohort(tmp_path / "healthy", data, affine, kinds=("RAS", "LPS", "permuted"))
    _write_cohort(tmp_path / "in", data, affine, kinds=("oblique",), seed=5)
    seen = []
    original = Scorer.refine

    def spy(self, mg, first_map, hole_threshold, seed=None):
        seen.append(hole_threshold)
        return original(self, mg, first_map, hole_threshold, seed)

    monkeypatch.setattr(Scorer, "refine", spy)
    ov = FAST + ("score.refine=true", "score.voxel_fpr=0.05")
    cal = calibrate_model(model, tmp_path / "healthy", overrides=ov, progress=False, log=lambda m: None)
    assert cal.refine_voxel_threshold is not None and cal.refine_stats is not None
    assert seen == [cal.refine_voxel_threshold] * 3  # calibration: holes = first pass above its calibrated threshold
    seen.clear()
    summary = score_folder(model, tmp_path / "in", tmp_path / "out", progress=False, log=lambda m: None)
    assert summary.n_scored == 1
    assert seen == [cal.refine_voxel_threshold]  # scoring: the same rule, the same threshold
    loaded = Calibration.load(model)
    np.testing.assert_array_equal(loaded.refine_stats.mean, cal.refine_stats.mean)


def test_t_star_ensemble_scores_end_to_end(tiny_model_dir, mni_small, tmp_path):
    """Two t* z-scored separately: calibration keeps one statistics map per t*, maps land on the scan grid."""
    import shutil

    data, affine = mni_small
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    healthy = tmp_path / "healthy"
    for i in range(2):
        _write_cohort(healthy / f"h{i}", data, affine, kinds=("RAS", "LPS"), seed=20 + i)
    ens = FAST + ("score.t_fractions=[0.05,0.2]", "score.t_combine=zscore", "score.scan_fpr=0.25")
    cal = calibrate_model(model, healthy, overrides=ens, progress=False, log=lambda m: None)
    assert cal.stats.mean.shape == (2, 16, 16, 16) and cal.grid == [16, 16, 16]
    assert Calibration.load(model).stats.mean.shape == (2, 16, 16, 16)
    target = tmp_path / "in"
    _write_cohort(target, data, affine, kinds=("oblique",), seed=30)
    score_folder(model, target, tmp_path / "out", progress=False, log=lambda m: None)
    df = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert (df.status == "ok").all() and df.n_evals.iloc[0] == 2 * 2  # two t*, two draws each
    src = nib.load(target / "oblique.nii.gz")
    amap = nib.load(tmp_path / "out" / "scans" / df.scan_id.iloc[0] / "anomaly_map.nii.gz")
    assert amap.shape == src.shape and np.allclose(amap.affine, src.affine)
