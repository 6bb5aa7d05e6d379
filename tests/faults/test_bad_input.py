"""Bad input: a messy folder through `medidiff info` and `medidiff score`.

Every bad file is reported exactly once with its specific reason, every good
scan is scored, nothing crashes, and no output lands outside the output folder.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest
from typer.testing import CliRunner

from faults.kit import HOSTILE_NIFTI_NAME, blob, build_fault_folder, save_nifti, write_dicom_series
from medidiff.cli import app
from medidiff.io.discover import discover
from medidiff.io.naming import sanitize

runner = CliRunner()
FAST = ["--set", "score.n_draws=1", "--set", "score.batch_size=1"]


@pytest.fixture(scope="module")
def fault_folder(tmp_path_factory):
    return build_fault_folder(tmp_path_factory.mktemp("messy") / "in")


def _assert_every_bad_file_once(skipped: list[dict], ff) -> None:
    counts = Counter(s["path"] for s in skipped)
    dup = {p: n for p, n in counts.items() if n > 1}
    assert not dup, f"reported more than once: {dup}"
    by_path = {s["path"]: s["reason"] for s in skipped}
    for path, why in ff.refused.items():
        assert path in by_path, f"{path} not reported; skipped={sorted(by_path)}"
        assert why.lower() in by_path[path].lower(), (path, by_path[path])


def test_info_reports_every_bad_file_once(fault_folder):
    ff = fault_folder
    res = runner.invoke(app, ["info", str(ff.root), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    _assert_every_bad_file_once(data["skipped"], ff)
    # files that read but cannot be scored are skipped by the deep check, with their reason
    # (a constant image reads fine: it is listed, with a warning that it cannot be scored)
    by_path = {s["path"]: s["reason"] for s in data["skipped"]}
    by_path.update({s["source"]: " ".join(s["warnings"]) for s in data["scans"] if s["scan_id"] == "zeros"})
    for path, why in ff.failing.items():
        assert why.lower() in by_path.get(path, "").lower(), (path, by_path.get(path))
    ids = {s["scan_id"] for s in data["scans"]}
    assert "good" in ids and len(ids) == 5, ids  # good, hostile-named NIfTI, 2 DICOM series, zeros (warned)
    incomplete = [s for s in data["scans"] if s["source"] == str(ff.incomplete_series)]
    assert incomplete and any("incomplete series" in w for w in incomplete[0]["warnings"])
    # a series refused because one of its files is broken says so
    trunc = [s for s in data["skipped"] if "/dcm_trunc/" in s["path"] and "missing slice" in s["reason"]]
    assert trunc and all("refused" in s["reason"] and "truncated" in s["reason"] for s in trunc)
    # no patient text anywhere in the report
    assert "passwd" not in res.output and "Döe" not in res.output


def test_info_table_groups_series_rows(fault_folder):
    res = runner.invoke(app, ["info", str(fault_folder.root)], env={"COLUMNS": "600"})
    assert res.exit_code == 0, res.output
    assert "Skipped" in res.output and "dcm_dup" in res.output
    # one row per refused series, not one per slice
    assert res.output.count("duplicate slice position") == 1, res.output


def test_voxel_limit_is_configurable_and_checked_before_reading(tmp_path, monkeypatch):
    save_nifti(tmp_path / "a.nii.gz", blob((20, 20, 20)))
    write_dicom_series(tmp_path / "dcm", n=8)  # 16*16*8 = 2048 voxels
    found = discover(tmp_path)
    assert len(found.scans) == 2
    monkeypatch.setenv("MEDIDIFF_MAX_VOXELS", "1000")  # read at call time, not import time
    found = discover(tmp_path)
    assert not found.scans
    reasons = " ".join(s.reason for s in found.skipped)
    assert "8,000 voxels" in reasons and "2,048 voxels" in reasons and "MEDIDIFF_MAX_VOXELS" in reasons
    monkeypatch.setenv("MEDIDIFF_MAX_VOXELS", "not-a-number")  # a bad value never breaks discovery
    assert len(discover(tmp_path).scans) == 2


def test_score_messy_folder(fault_folder, tiny_model_dir, tmp_path):
    ff = fault_folder
    out = tmp_path / "out"
    res = runner.invoke(app, ["score", "--model", str(tiny_model_dir), "--input", str(ff.root), "--out", str(out),
                              "--no-progress", "--no-report", *FAST])
    assert res.exit_code == 1, res.output  # some scans failed: non-zero, but the run completed
    assert "Traceback" not in res.output
    summary = json.loads((out / "summary.json").read_text())
    _assert_every_bad_file_once(summary["skipped_files"], ff)
    # every skipped file is also named on the console (grouped per series)
    for path in ff.refused:
        assert Path(path).name in res.output or str(Path(path).parent) in res.output, path

    df = pd.read_csv(out / "scores.csv")
    assert df.scan_id.is_unique
    assert len(df) == summary["n_found"] == 4 + len(ff.failing)
    ok = df[df.status == "ok"]
    assert len(ok) == 4 and "good" in set(ok.scan_id)
    # the tables name a scan's file, never the folders above it (folder names can be patient names);
    # result.json, inside the scan's output folder, keeps the full path for the report
    assert set(ok.source_path) >= {"good.nii.gz", sanitize(HOSTILE_NIFTI_NAME)}
    assert sum(s.startswith("DICOM series ") for s in ok.source_path) == 2
    table = (out / "scores.csv").read_text() + (out / "scores.jsonl").read_text()
    assert str(ff.root) not in table and "nested" not in table and "dcm_good" not in table
    full = {json.loads(p.read_text())["source_path"] for p in (out / "scans").glob("*/result.json")}
    assert str(ff.root / "good.nii.gz") in full and str(ff.root / "dcm_good") in full
    failed = df[df.status == "failed"].set_index("source_path")
    for path, why in ff.failing.items():
        err = failed.loc[Path(path).name, "error"]
        assert Path(path).name in err and why.lower() in err.lower(), err  # names the file and the problem
        assert "\n" not in err and "Warning" not in err
    assert "constant image" in res.output

    # outputs: inside OUT, sanitized names, no patient text, every NIfTI loads
    scans = out / "scans"
    for d in scans.iterdir():
        assert d.resolve().parent == scans.resolve()
        assert all(c.isalnum() or c in "._-" for c in d.name), d.name
        assert "etc" not in d.name and ".." not in d.name
        for f in d.glob("*.nii.gz"):
            assert nib.load(f).get_fdata().size > 0
        assert not list(d.glob(".*tmp*"))
    assert not (ff.root / "pwned").exists() and not Path("pwned").exists()
    all_text = "".join(p.read_text(errors="replace") for p in out.rglob("*.json"))
    assert "passwd" not in all_text and "Döe" not in all_text
    inc = json.loads(next(p for p in scans.glob("MR_s9_*/result.json")).read_text())
    assert any("incomplete series" in w for w in inc["warnings"])


def test_output_inside_input_is_never_read_back(tiny_model_dir, tmp_path):
    src = tmp_path / "data"
    save_nifti(src / "a.nii.gz", blob((18, 18, 18)))
    args = ["score", "--model", str(tiny_model_dir), "--input", str(src), "--out", str(src / "results"),
            "--no-progress", "--no-report", *FAST]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "1 already complete" in res.output and "0 scored" in res.output
    df = pd.read_csv(src / "results" / "scores.csv")
    assert list(df.scan_id) == ["a"]  # its own anomaly_map.nii.gz was not scored as a scan
