"""Interruption: SIGKILL `medidiff score` / `medidiff train` mid-run, then re-run.

The re-run completes, skips what was finished, and nothing written is partial:
every NIfTI loads, the scores table has one row per scan, resumed training
ends with weights that load, and a resumed synthesis keeps finished samples and
regenerates only the missing ones.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import nibabel as nib
import pandas as pd
from typer.testing import CliRunner

from faults.kit import ROOT, blob, save_nifti, start_cli, wait_for
from medidiff.cli import app
from medidiff.batch.run import score_folder
from medidiff.model.store import load_model, read_metadata

runner = CliRunner()
N_SCANS = 8


def _results(out: Path) -> list[Path]:
    return sorted((out / "scans").glob("*/result.json"))


def _kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_score_killed_mid_batch_resumes_cleanly(tiny_model_dir, tmp_path):
    src = tmp_path / "in"
    for i in range(N_SCANS):  # big enough that a scan takes a noticeable time to score
        save_nifti(src / f"scan{i}.nii", blob((72, 72, 60), seed=i), spacing=1.5)
    out = tmp_path / "out"
    log = tmp_path / "score.log"
    proc = start_cli(["score", "--model", str(tiny_model_dir), "--input", str(src), "--out", str(out),
                      "--no-progress", "--no-report", "--set", "score.n_draws=2"], log)
    wait_for(lambda: len(_results(out)) >= 1, proc, timeout=120, log=log)
    _kill(proc)
    done = _results(out)
    assert 1 <= len(done) < N_SCANS, "the kill did not land mid-batch"
    stamps = {p: p.stat().st_mtime_ns for p in done}

    summary = score_folder(tiny_model_dir, src, out, overrides=("score.n_draws=2",), progress=False,
                           log=lambda m: None)
    assert summary.n_skipped_complete == len(done)
    assert summary.n_scored == N_SCANS - len(done) and summary.n_failed == 0
    assert all(p.stat().st_mtime_ns == stamps[p] for p in done)  # finished scans untouched
    df = pd.read_csv(out / "scores.csv")
    assert len(df) == N_SCANS and df.scan_id.is_unique and (df.status == "ok").all()
    for d in (out / "scans").iterdir():
        res = json.loads((d / "result.json").read_text())
        for rel in res["outputs"].values():
            img = nib.load(d / rel)
            assert img.shape == (72, 72, 60) and img.get_fdata().size
    assert not [p for p in out.rglob(".*") if ".tmp" in p.name], "temp files left behind"


def test_train_killed_after_checkpoint_resumes(tmp_path):
    data = tmp_path / "data"
    for i in range(4):
        save_nifti(data / f"h{i}.nii.gz", blob((24, 24, 24), value=600, seed=i))
    run = tmp_path / "run"
    args = ["train", "-c", str(ROOT / "configs" / "tiny.yaml"), "-d", str(data), "-o", str(run), "--no-progress",
            "--threads", "1", "--set", "train.max_steps=30", "--set", "train.checkpoint_every=5"]
    log = tmp_path / "train.log"
    proc = start_cli(args, log)
    wait_for(lambda: (run / "train_state.json").is_file(), proc, timeout=180, log=log)
    _kill(proc)
    step_at_kill = json.loads((run / "train_state.json").read_text())["step"]
    assert 5 <= step_at_kill < 30
    res = runner.invoke(app, args + ["--resume"])
    assert res.exit_code == 0, res.output
    meta = read_metadata(run)
    assert meta["steps"] == 30 and meta["stopped"] == "max_steps"
    loaded = load_model(run)  # hash verified, config matches, weights fit
    assert loaded.model_hash == meta["model_hash"]
    assert not [p for p in run.iterdir() if ".tmp" in p.name]


def test_synthesize_killed_mid_run_continues(tiny_model_dir, tmp_path):
    out = tmp_path / "synth"
    n = 10
    args = ["synthesize", "--model", str(tiny_model_dir), "--n", str(n), "--out", str(out), "--steps", "60",
            "--batch-size", "1", "--no-quality", "--no-progress"]
    log = tmp_path / "synth.log"
    proc = start_cli(args, log)
    sidecars = lambda: sorted((out / "samples").glob("synth_*.json")) if (out / "samples").is_dir() else []  # noqa: E731
    wait_for(lambda: len(sidecars()) >= 1, proc, timeout=180, log=log)
    _kill(proc)
    done = sidecars()
    assert 1 <= len(done) < n, "the kill did not land mid-run"
    stamps = {p: p.stat().st_mtime_ns for p in done}

    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"{n - len(done)} generated, {len(done)} kept" in res.output
    assert all(p.stat().st_mtime_ns == stamps[p] for p in done)  # finished samples untouched
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == n and manifest.scan_id.is_unique
    for rel in manifest.file:
        assert nib.load(out / rel).get_fdata().shape == (16, 16, 16)
    assert not [p for p in out.rglob(".*") if ".tmp" in p.name], "temp files left behind"
