"""Interruption: SIGKILL `medidiff score` / `medidiff train` mid-run, then re-run.

The re-run completes, skips what was finished, and nothing written is partial:
every NIfTI loads, the scores table has one row per scan, resumed training
ends with weights that load. (Synthesis is not covered here: it is being
rewritten at the time of writing.)
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
from medidiff.score.batch import score_folder
from medidiff.train.checkpoint import load_model, read_metadata

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
