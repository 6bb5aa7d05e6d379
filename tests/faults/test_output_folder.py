"""Output folder problems: unwritable, odd path names, another model's results."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import pandas as pd
import pytest
from typer.testing import CliRunner

from faults.kit import blob, save_nifti
from medidiff.cli import app
from medidiff.model.store import save_model

runner = CliRunner()
FAST = ["--no-progress", "--no-report", "--set", "score.n_draws=1"]


@pytest.fixture()
def src(tmp_path):
    save_nifti(tmp_path / "in" / "a.nii.gz", blob((18, 18, 18)))
    save_nifti(tmp_path / "in" / "b.nii.gz", blob((18, 20, 16), seed=2))
    return tmp_path / "in"


def _score(model, src, out, *extra):
    return runner.invoke(app, ["score", "--model", str(model), "--input", str(src), "--out", str(out), *FAST, *extra])


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    # the error is one line, and the last; an information line before it is allowed (e.g. that a
    # model folder without method.json scores with the default settings)
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.output
    return errors[0]


def test_output_path_under_a_file(tiny_model_dir, src, tmp_path):
    (tmp_path / "afile").write_text("x")
    line = _one_line_error(_score(tiny_model_dir, src, tmp_path / "afile" / "out"))
    assert "afile" in line and "--out" in line


def test_output_path_is_a_file(tiny_model_dir, src, tmp_path):
    (tmp_path / "out.txt").write_text("x")
    line = _one_line_error(_score(tiny_model_dir, src, tmp_path / "out.txt"))
    assert "not a folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (covered by the two tests above)")
def test_read_only_output_folder(tiny_model_dir, src, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        line = _one_line_error(_score(tiny_model_dir, src, ro / "out"))
        assert "cannot create or write" in line
    finally:
        ro.chmod(0o700)


def test_input_path_missing(tiny_model_dir, tmp_path):
    line = _one_line_error(_score(tiny_model_dir, tmp_path / "nope", tmp_path / "out"))
    assert "does not exist" in line


def test_output_path_with_spaces_and_unicode(tiny_model_dir, src, tmp_path):
    out = tmp_path / "résultats du scan ü 漢字" / "run 1 $(x)"
    res = runner.invoke(app, ["score", "--model", str(tiny_model_dir), "--input", str(src), "--out", str(out),
                              "--no-progress", "--set", "score.n_draws=1"])  # with the HTML report
    assert res.exit_code == 0, res.output
    assert (out / "index.html").is_file() or any(out.rglob("*.html"))
    df = pd.read_csv(out / "scores.csv")
    assert sorted(df.scan_id) == ["a", "b"] and (df.status == "ok").all()
    for f in out.rglob("*.nii.gz"):
        assert nib.load(f).get_fdata().size


def _other_model(tiny_model_dir, tmp_path):
    """Same architecture, different weights: another model hash."""
    from medidiff.model.store import load_model

    loaded = load_model(tiny_model_dir)
    state = {k: v + 0.001 for k, v in loaded.network.state_dict().items()}
    other = tmp_path / "other_model"
    save_model(other, state, loaded.config, metadata={"training": {"steps": 1}})
    return other


def test_existing_output_from_another_model_is_never_mixed(tiny_model_dir, src, tmp_path):
    out = tmp_path / "out"
    assert _score(tiny_model_dir, src, out).exit_code == 0
    first_hash = json.loads((out / "run.json").read_text())["model_hash"]
    other = _other_model(tiny_model_dir, tmp_path)
    line = _one_line_error(_score(other, src, out))
    assert "--overwrite" in line and "another --out" in line
    # run.json deleted by hand: the scan results still identify the other model
    (out / "run.json").unlink()
    line = _one_line_error(_score(other, src, out))
    assert "--overwrite" in line
    res = _score(other, src, out, "--overwrite")
    assert res.exit_code == 0, res.output
    hashes = {json.loads(p.read_text())["model_hash"] for p in out.glob("scans/*/result.json")}
    assert len(hashes) == 1 and hashes != {first_hash}
    df = pd.read_csv(out / "scores.csv")
    assert len(df) == 2 and df.model_hash.nunique() == 1


def test_stale_temp_files_from_a_killed_write_are_cleaned(tiny_model_dir, src, tmp_path):
    out = tmp_path / "out"
    scan_dir = out / "scans" / "a"
    scan_dir.mkdir(parents=True)
    (scan_dir / ".anomaly_map.nii.gz.abc123.tmp.nii.gz").write_bytes(b"\x1f\x8b partial")
    assert _score(tiny_model_dir, src, out).exit_code == 0
    assert not list(scan_dir.glob(".*tmp*"))
    shutil.rmtree(out)
