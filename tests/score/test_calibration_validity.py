"""A calibration is valid for the settings, device and precision it was measured with, or it is not
applied: no masks, flags or percentiles, and run.json, result.json and scores.csv say why. The user
can opt in with --use-mismatched-calibration, and the outputs still say it does not match."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medidiff.cli import app
from medidiff.batch.run import score_folder
from medidiff.batch.calibrate import calibrate_model
from medidiff.score.config import ScoreConfig
from medidiff.score.method import write_method

runner = CliRunner()
METHOD = ScoreConfig(n_draws=2, batch_size=4, score="supra_volume", voxel_fpr=0.01, scan_fpr=0.2)


def _cohort(folder, data, affine, n, seed):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        vol = data * rng.uniform(0.9, 1.1) + rng.normal(0, 10, data.shape)
        nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), folder / f"s{i}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def calibrated(tiny_model_dir, mni_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("validity")
    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    for name in ("calibration.json", "calibration.safetensors", "method.json"):
        (model / name).unlink(missing_ok=True)
    write_method(model, METHOD, {"chosen_on": "test"})
    cal = calibrate_model(model, _cohort(root / "healthy", *mni_small, 5, 0), progress=False, log=lambda m: None)
    return model, cal, _cohort(root / "in", *mni_small, 2, 7)


def _mismatch(cal, monkeypatch) -> tuple[tuple[str, ...], str]:
    """A calibration made in bf16 scored on a CPU without bf16 (the issue's case), where this CPU has
    bf16; otherwise a settings change."""
    if cal.runtime["precision"] == "bf16":
        import medidiff.runtime as rt

        monkeypatch.setattr(rt, "cpu_bf16_supported", lambda: False)
        return (), 'precision: calibrated "bf16", now "fp32"'
    return ("score.seed=1",), "seed: calibrated 0, now 1"


def _read(out):
    run = json.loads((out / "run.json").read_text())
    df = pd.read_csv(out / "scores.csv")
    res = [json.loads(p.read_text()) for p in sorted((out / "scans").glob("*/result.json"))]
    return run, df, res


def test_valid_calibration_is_applied_and_says_so(calibrated, tmp_path):
    model, cal, src = calibrated
    score_folder(model, src, tmp_path / "out", progress=False, log=lambda m: None)
    run, df, res = _read(tmp_path / "out")
    assert run["calibrated"] is True
    assert run["calibration"]["valid"] is True and run["calibration"]["invalid_reason"] is None
    assert run["calibration"]["applied"] is True and "warnings" in run["calibration"]
    assert run["scoring_method"]["differs"] == {} and run["scoring_method"]["provenance"]["chosen_on"] == "test"
    assert df.calibration_valid.all() and (df.calibration_status == "calibrated").all()
    assert df.flag.notna().all() and df.percentile.notna().all()
    assert all("mask" in r["outputs"] for r in res)


def test_mismatched_calibration_gives_no_flags_and_says_why(calibrated, tmp_path, monkeypatch):
    model, cal, src = calibrated
    extra, why = _mismatch(cal, monkeypatch)
    logs = []
    out = tmp_path / "out"
    summary = score_folder(model, src, out, overrides=extra, progress=False, log=logs.append)
    assert summary.n_scored == 2
    run, df, res = _read(out)
    assert run["calibrated"] is False
    c = run["calibration"]
    assert c["valid"] is False and why in c["invalid_reason"] and c["applied"] is False
    assert "warnings" in c  # the report's contract keeps its list
    assert any(m.startswith("uncalibrated for these settings") and "--use-mismatched-calibration" in m for m in logs)
    # no flags, no percentiles, no masks; every table row and result.json says why
    assert df.flag.isna().all() and df.percentile.isna().all()
    assert (~df.calibration_valid.astype(bool)).all()
    assert df.calibration_status.str.startswith(f"uncalibrated for these settings: {why}").all()
    for r in res:
        assert r["flag"] is None and r["percentile"] is None and "mask" not in r["outputs"]
        assert r["calibration_valid"] is False and r["calibration_status"].startswith("uncalibrated for these settings")
        assert any(w.startswith("uncalibrated for these settings") for w in r["warnings"])

    # opting in applies it, and the outputs still say it does not match
    summary = score_folder(model, src, out, overrides=extra, progress=False, log=logs.append,
                           use_mismatched_calibration=True)
    assert summary.n_scored == 2 and summary.n_skipped_complete == 0  # results without flags are not reused
    run, df, res = _read(out)
    assert run["calibrated"] is True and run["calibration"]["valid"] is False and run["calibration"]["applied"]
    assert df.flag.notna().all() and df.percentile.notna().all()
    assert df.calibration_status.str.startswith("mismatched calibration applied (--use-mismatched-calibration)").all()
    assert any("--use-mismatched-calibration was given" in m for m in logs)


def test_cli_flag_names_the_risk(calibrated, tmp_path, monkeypatch):
    model, cal, src = calibrated
    extra, why = _mismatch(cal, monkeypatch)
    args = ["score", "--model", str(model), "--input", str(src), "--out", str(tmp_path / "o"), "--no-progress",
            "--no-report", *sum((["--set", s] for s in extra), [])]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "uncalibrated for these settings" in res.output and why in res.output
    res = runner.invoke(app, args + ["--use-mismatched-calibration"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "run.json").read_text())["calibration"]["applied"] is True
