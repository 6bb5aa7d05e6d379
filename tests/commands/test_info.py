"""`medidiff info` via typer's CliRunner."""

from __future__ import annotations

import json

from dicom_factory import build_messy_folder
from typer.testing import CliRunner

from medidiff.cli import app

runner = CliRunner()


def test_info_json_lists_scans_and_skips(tmp_path):
    root = build_messy_folder(tmp_path / "in")
    res = runner.invoke(app, ["info", str(root), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert len(data["scans"]) == 2
    assert {"scan_id", "format", "modality", "shape", "spacing", "orientation", "series_description"} <= set(data["scans"][0])
    assert any("4D" in s["reason"] for s in data["skipped"])
    # PHI never appears in info output
    assert "Test^Patient" not in res.output and "TEST^ID" not in res.output


def test_info_table_and_exit_code(tmp_path):
    root = build_messy_folder(tmp_path / "in")
    res = runner.invoke(app, ["info", str(root)])
    assert res.exit_code == 0
    assert "lps" in res.output and "LPS" in res.output and "Skipped" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["info", str(empty)]).exit_code == 1


def test_info_deep_check_catches_broken_gzip(tmp_path):
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((30, 30, 30)).astype(np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    blob = (tmp_path / "a.nii.gz").read_bytes()
    (tmp_path / "b.nii.gz").write_bytes(blob[: len(blob) // 2])
    data = json.loads(runner.invoke(app, ["info", str(tmp_path), "--json"]).output)
    assert [s["scan_id"] for s in data["scans"]] == ["a"]
    assert "b.nii.gz" in data["skipped"][0]["path"]
