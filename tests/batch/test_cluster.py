"""`medidiff score --cluster`: Dask LocalCluster runs match local runs bit for bit, survive a
killed worker, turn a scan whose workers always die into a `failed` row, and explain a
missing extra. Workers are real processes (2 workers, 1 thread each); the fault tests
join a running scheduler by address and SIGKILL one of its worker processes."""

from __future__ import annotations

import gzip
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from faults.kit import blob, save_nifti, write_dicom_series
from medidiff.cli import app
from medidiff.batch.run import score_folder

pytest.importorskip("distributed")

runner = CliRunner()
FAST = ("score.n_draws=2", "score.batch_size=2")
VOLATILE = {"seconds", "finished"}  # per-run timings; everything else in result.json must match


@pytest.fixture(autouse=True)
def one_thread_per_worker(monkeypatch):
    monkeypatch.setenv("MEDIDIFF_THREADS", "1")  # spawned workers inherit it: 2 workers x 1 thread


def _quiet(_m: str) -> None:
    pass


def _nifti_bytes(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def _results(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "scans").glob("*/result.json")}


def assert_same_outputs(a: Path, b: Path) -> None:
    """Same scans, same records (timings aside), byte-identical maps; DICOM maps pixel-identical."""
    ra, rb = _results(a), _results(b)
    assert ra.keys() == rb.keys()
    for scan_id, rec in ra.items():
        other = rb[scan_id]
        assert {k: v for k, v in rec.items() if k not in VOLATILE} == \
               {k: v for k, v in other.items() if k not in VOLATILE}, scan_id
        for rel in rec["outputs"].values():
            fa, fb = a / "scans" / scan_id / rel, b / "scans" / scan_id / rel
            if rel.endswith(".dcm"):  # new UIDs per write; the pixels must match
                assert np.array_equal(pydicom.dcmread(fa).pixel_array, pydicom.dcmread(fb).pixel_array)
            else:
                assert _nifti_bytes(fa) == _nifti_bytes(fb), f"{scan_id}/{rel} differs"
    cols = ["scan_id", "score", "flag", "status", "error", "n_evals"]
    ta = pd.read_csv(a / "scores.csv")[cols].sort_values("scan_id", ignore_index=True)
    tb = pd.read_csv(b / "scores.csv")[cols].sort_values("scan_id", ignore_index=True)
    pd.testing.assert_frame_equal(ta, tb)


def test_two_workers_match_a_local_run(tiny_model_dir, mni_small, tmp_path):
    data, affine = mni_small
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        noisy = data * rng.uniform(0.9, 1.1) + rng.normal(0, 10, data.shape)
        nib.save(nib.Nifti1Image(noisy.astype(np.int16), affine), src / f"s{i}.nii.gz")
    write_dicom_series(src / "series")  # a DICOM scan travels to a worker and gets pmap.dcm
    good = (src / "s0.nii.gz").read_bytes()
    (src / "broken.nii.gz").write_bytes(good[: len(good) // 2])  # a failed row on both engines

    local = score_folder(tiny_model_dir, src, tmp_path / "local", overrides=FAST, progress=False, log=_quiet)
    dask = score_folder(tiny_model_dir, src, tmp_path / "dask", overrides=FAST, progress=False, log=_quiet,
                        cluster="local:2")
    assert (local.n_scored, local.n_failed) == (dask.n_scored, dask.n_failed) == (4, 1)
    assert_same_outputs(tmp_path / "local", tmp_path / "dask")
    engine = json.loads((tmp_path / "dask" / "summary.json").read_text())["cluster"]
    assert engine["workers_at_start"] == 2 and engine["scans_submitted"] == 5
    assert sum(w["scans"] for w in engine["workers"]) == 5
    assert all(w["scans_per_minute"] > 0 for w in engine["workers"])



# ----------------------------------------------------------------------------- killed workers

N_SCANS = 8


@pytest.fixture(scope="module")
def shared_cluster():
    """A running 2-worker scheduler that runs join by address (as `dask scheduler` + `dask worker`),
    started once for the fault tests; its worker processes are the ones the tests kill."""
    import logging

    from distributed import Client, LocalCluster

    os.environ["MEDIDIFF_THREADS"] = "1"  # read by the spawned workers
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("medidiff.score.pipeline"))  # warm: imports happen once
        yield cluster, client


def _small_scans(src: Path) -> None:
    for i in range(N_SCANS):
        save_nifti(src / f"scan{i}.nii", blob((72, 72, 60), seed=i), spacing=1.5)


def _score_in_background(model, src, out, address):
    box: dict = {}

    def run():
        try:
            box["summary"] = score_folder(model, src, out, overrides=FAST, progress=False, log=_quiet,
                                          cluster=address)
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _kill_one_worker_mid_batch(client, out: Path, thread, victim: int) -> None:
    n_done = lambda: len(list((out / "scans").glob("*/result.json")))  # noqa: E731
    t0 = time.monotonic()
    while (done := n_done()) < 1:
        assert thread.is_alive() and time.monotonic() - t0 < 120, "no scan finished"
        time.sleep(0.01)
    os.kill(victim, signal.SIGKILL)
    assert done <= N_SCANS - 3, "the kill did not land mid-batch"  # both workers still had scans to do


def _finish(thread, box, client):
    thread.join(timeout=180)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    return box["summary"]


def _assert_no_partial_files(out: Path) -> None:
    assert not [p for p in out.rglob(".*") if ".tmp" in p.name], "temp files left behind"
    for d in (out / "scans").iterdir():
        res = json.loads((d / "result.json").read_text())
        for rel in res["outputs"].values():
            assert nib.load(d / rel).shape == (72, 72, 60)


def test_worker_killed_mid_batch_still_completes(shared_cluster, tiny_model_dir, tmp_path):
    cluster, client = shared_cluster
    src, out = tmp_path / "in", tmp_path / "out"
    _small_scans(src)
    victim = min(client.run(os.getpid).values())
    thread, box = _score_in_background(tiny_model_dir, src, out, cluster.scheduler_address)
    _kill_one_worker_mid_batch(client, out, thread, victim)
    summary = _finish(thread, box, client)
    assert victim not in client.run(os.getpid).values()
    assert summary.n_scored == N_SCANS and summary.n_failed == 0
    df = pd.read_csv(out / "scores.csv")
    assert len(df) == N_SCANS and df.scan_id.is_unique and (df.status == "ok").all()
    _assert_no_partial_files(out)
    score_folder(tiny_model_dir, src, tmp_path / "local", overrides=FAST, progress=False, log=_quiet)
    assert_same_outputs(tmp_path / "local", out)


def test_scan_whose_workers_all_die_is_a_failed_row_and_rerun_finishes_it(shared_cluster, tiny_model_dir,
                                                                          tmp_path):
    cluster, client = shared_cluster
    src, out = tmp_path / "in", tmp_path / "out"
    _small_scans(src)
    # no second chance: scans on the killed worker fail at once (Dask's default allows 3 deaths)
    allowed, cluster.scheduler.allowed_failures = cluster.scheduler.allowed_failures, 0
    try:
        victim = min(client.run(os.getpid).values())
        thread, box = _score_in_background(tiny_model_dir, src, out, cluster.scheduler_address)
        _kill_one_worker_mid_batch(client, out, thread, victim)
        summary = _finish(thread, box, client)
    finally:
        cluster.scheduler.allowed_failures = allowed
    df = pd.read_csv(out / "scores.csv")
    assert len(df) == N_SCANS and df.scan_id.is_unique  # failed, not lost
    failed = df[df.status == "failed"]
    assert 1 <= len(failed) == summary.n_failed <= 2
    assert failed.error.str.contains("every Dask worker that scored it died").all()
    _assert_no_partial_files(out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "scans").glob("*/result.json")}

    again = score_folder(tiny_model_dir, src, out, overrides=FAST, progress=False, log=_quiet,
                         cluster=cluster.scheduler_address)
    assert again.n_scored == len(failed) and again.n_skipped_complete == N_SCANS - len(failed)
    kept = [p for p in stamps if p.parent.name not in set(failed.scan_id)]
    assert all(p.stat().st_mtime_ns == stamps[p] for p in kept)  # finished scans untouched
    assert (pd.read_csv(out / "scores.csv").status == "ok").all()


# ----------------------------------------------------------------------------- configuration errors

def test_missing_extra_gives_the_install_hint(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` raises ImportError
    save_nifti(tmp_path / "in" / "a.nii", blob((16, 16, 16)))
    out = tmp_path / "out"
    res = runner.invoke(app, ["score", "--model", str(tiny_model_dir), "--input", str(tmp_path / "in"),
                              "--out", str(out), "--cluster", "local:2", "--no-progress", "--no-report"])
    assert res.exit_code == 2
    assert "pip install 'medidiff[cluster]'" in res.output and "Traceback" not in res.output
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize("value, reason", [("local:0", "whole number"), ("local:x", "whole number"),
                                           ("my-cluster", "scheduler address"),
                                           ("missing.json", "scheduler file not found")])
def test_bad_cluster_value_is_one_line(value, reason, tiny_model_dir, tmp_path):
    save_nifti(tmp_path / "in" / "a.nii", blob((16, 16, 16)))
    res = runner.invoke(app, ["score", "--model", str(tiny_model_dir), "--input", str(tmp_path / "in"),
                              "--out", str(tmp_path / "out"), "--cluster", value, "--no-progress", "--no-report"])
    assert res.exit_code == 2 and reason in res.output and "Traceback" not in res.output


def test_unreachable_scheduler_is_one_line(tiny_model_dir, tmp_path):
    import dask

    save_nifti(tmp_path / "in" / "a.nii", blob((16, 16, 16)))
    t0 = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        res = runner.invoke(app, ["score", "--model", str(tiny_model_dir), "--input", str(tmp_path / "in"),
                                  "--out", str(tmp_path / "out"), "--cluster", "tcp://127.0.0.1:1",
                                  "--no-progress", "--no-report"])
    assert res.exit_code == 2 and "cannot reach the Dask scheduler" in res.output, res.output
    assert time.monotonic() - t0 < 30
