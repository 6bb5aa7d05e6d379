"""End to end on a tiny fake run folder: maps = ground truth + noise."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from medidiff.commands.evaluate import baseline, evaluate
from medidiff.evaluate import EvalOptions, EvaluationError, GridMismatch, evaluate_run

SHAPE = (20, 22, 18)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = [-20, -22, -18]


def _save(arr, path, affine=AFFINE, dtype=np.float32):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(arr).astype(dtype), affine)
    img.set_data_dtype(dtype)
    nib.save(img, str(path))


def make_fake_run(root, n_healthy=4, n_anom=4, seed=0, missing=("gone",), failed=("broken",)):
    """A scored folder + labels.csv. Anomalous scans get 1-2 cubic lesions of
    different sizes; the map is the ground truth plus noise (so AUROC is high)."""
    rng = np.random.default_rng(seed)
    run, data = root / "run", root / "data"
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    brain = ((zz - 10) / 8.5) ** 2 + ((yy - 11) / 9.5) ** 2 + ((xx - 9) / 7.5) ** 2 <= 1
    rows = []
    for i in range(n_healthy + n_anom):
        label = int(i >= n_healthy)
        sid = f"{'a' if label else 'h'}{i:02d}"
        scan = np.where(brain, 100 + rng.normal(0, 5, SHAPE), 0.0)
        gt = np.zeros(SHAPE, np.uint8)
        types = ""
        if label:
            c = rng.integers(6, 12, 3)
            gt[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 1  # 64 voxels = 512 mm³
            types = "hyper"
            if i % 2:
                gt[4:5, 11:12, 9:10] = 1  # 1 voxel = 8 mm³, a second kind
                types = "hyper;wm_cluster"
        amap = np.where(brain, gt * 1.0 + rng.normal(0, 0.25, SHAPE).clip(0), 0.0)
        spath = data / f"{sid}.nii.gz"
        _save(scan, spath, dtype=np.int16)
        mpath = data / "masks" / f"{sid}_mask.nii.gz"
        _save(gt, mpath, dtype=np.uint8)
        d = run / "scans" / sid
        _save(amap, d / "anomaly_map.nii.gz")
        _save(amap > 0.6, d / "mask.nii.gz", dtype=np.uint8)
        score = float(np.sort(amap[brain])[-20:].mean())
        (d / "result.json").write_text(json.dumps({
            "scan_id": sid, "source_path": str(spath), "format": "nifti", "status": "ok", "error": "",
            "score": score, "percentile": 50.0, "flag": bool(score > 0.8), "n_evals": 2, "seconds": 0.5,
            "outputs": {"anomaly_map": "anomaly_map.nii.gz", "mask": "mask.nii.gz"}}))
        rows.append({"scan_id": sid, "split": "test", "path": f"{sid}.nii.gz", "label": label,
                     "mask_path": f"masks/{sid}_mask.nii.gz", "anomaly_types": types})
    for sid in failed:
        d = run / "scans" / sid
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"scan_id": sid, "status": "failed", "error": "unreadable",
                                                   "score": None, "flag": None, "outputs": {}}))
        rows.append({"scan_id": sid, "split": "test", "path": f"{sid}.nii.gz", "label": 1, "mask_path": "",
                     "anomaly_types": ""})
    for sid in missing:
        rows.append({"scan_id": sid, "split": "test", "path": f"{sid}.nii.gz", "label": 0, "mask_path": "",
                     "anomaly_types": ""})
    rows.append({"scan_id": "train_x", "split": "train", "path": "x.nii.gz", "label": 0, "mask_path": "",
                 "anomaly_types": ""})
    (run / "run.json").write_text(json.dumps({"model_hash": "abc", "config_hash": "def",
                                              "calibration": {"voxel_threshold": 0.6, "scan_threshold": 0.8}}))
    labels = data / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return run, labels


FAST = EvalOptions(n_boot=200)


def test_end_to_end_high_auroc_and_outputs(tmp_path):
    run, labels = make_fake_run(tmp_path)
    rep = evaluate_run(run, labels, opts=FAST, log=lambda m: None)
    assert rep["splits"] == ["test"]  # train rows are not "missing": only splits present in the run
    assert rep["n_evaluated"] == 8
    s = rep["sample"]
    assert s["auroc"] == pytest.approx(1.0) and s["ap"] == pytest.approx(1.0)
    assert s["auroc_ci95"][0] <= s["auroc"] <= s["auroc_ci95"][1]
    assert s["calibrated"]["sensitivity"] == 1.0 and set(s["at_fpr"]) == {"0.01", "0.05"}
    v = rep["voxel"]
    assert v["available"] and v["auroc"] > 0.95 and v["ap"] > 0.8
    assert v["best_dice"] > 0.8 and v["calibrated_dice"] > 0.5
    assert v["n_positive_voxels"] == 4 * 64 + 2
    ld = v["lesion_detection"]["oracle_threshold"]
    assert ld["n_lesions"] == 6 and ld["by_size"]["<100 mm³"]["n_lesions"] == 2
    assert set(v["by_type"]) == {"hyper", "mixed"}  # no lesions.json: multi-type scans stay "mixed"
    assert v["per_scan_dice"]["oracle_threshold"]["n"] == 4
    assert rep["reconstruction"]["available"] is False
    out = run / "evaluation"
    m = json.loads((out / "metrics.json").read_text())
    assert m["sample"]["auroc"] == pytest.approx(1.0)
    for name in ("roc_sample.png", "pr_sample.png", "roc_voxel.png", "pr_voxel.png", "score_hist.png",
                 "dice_threshold.png", "summary.md"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_missing_and_failed_scans_are_reported_not_scored(tmp_path):
    run, labels = make_fake_run(tmp_path, n_healthy=2, n_anom=2)
    msgs = []
    rep = evaluate_run(run, labels, opts=EvalOptions(n_boot=50, plots=False), log=msgs.append)
    assert rep["missing"] == ["gone"]
    assert rep["failed"] == [{"scan_id": "broken", "error": "unreadable"}]
    assert rep["n_evaluated"] == 4 and rep["sample"]["n_scans"] == 4  # never scored as zero
    md = (run / "evaluation" / "summary.md").read_text()
    assert "gone" in md and "broken" in md
    assert any("gone" in m for m in msgs)


def test_grid_mismatch_names_both_files(tmp_path):
    run, labels = make_fake_run(tmp_path, n_healthy=1, n_anom=2)
    bad = tmp_path / "data" / "masks" / "a02_mask.nii.gz"
    gt = np.asarray(nib.load(str(bad)).dataobj)
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.01
    _save(gt, bad, affine=shifted, dtype=np.uint8)
    with pytest.raises(GridMismatch) as ei:
        evaluate_run(run, labels, opts=EvalOptions(n_boot=20, plots=False), log=lambda m: None)
    assert str(bad) in str(ei.value) and str(run / "scans" / "a02" / "anomaly_map.nii.gz") in str(ei.value)
    _save(gt[:-1], bad, dtype=np.uint8)  # wrong shape
    with pytest.raises(EvaluationError, match="shape"):
        evaluate_run(run, labels, opts=EvalOptions(n_boot=20, plots=False), log=lambda m: None)


def test_masks_dir_and_healthy_subsampling(tmp_path):
    run, labels = make_fake_run(tmp_path, missing=(), failed=())
    full = evaluate_run(run, labels, opts=EvalOptions(n_boot=20, plots=False), log=lambda m: None)
    sub = evaluate_run(run, labels, tmp_path / "data" / "masks",
                       opts=EvalOptions(n_boot=20, plots=False, max_voxels=12000), log=lambda m: None)
    assert sub["voxel"]["healthy_subsample_stride"] > 1
    assert sub["voxel"]["n_voxels"] < full["voxel"]["n_voxels"]
    assert sub["voxel"]["ap"] == pytest.approx(full["voxel"]["ap"], abs=0.1)
    assert sub["voxel"]["n_positive_voxels"] == full["voxel"]["n_positive_voxels"]


def test_cli_functions_register_on_a_typer_app(tmp_path):
    run, labels = make_fake_run(tmp_path, n_healthy=2, n_anom=2)
    app = typer.Typer()
    app.command("evaluate")(evaluate)
    app.command("baseline")(baseline)
    res = CliRunner().invoke(app, ["evaluate", "--run", str(run), "--labels", str(labels), "--n-boot", "50",
                                   "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "sample: AUROC 1.000" in res.output
    res = CliRunner().invoke(app, ["baseline", "--help"])
    assert res.exit_code == 0 and "--calib" in res.output
