"""Batch scoring of a folder: resumable, idempotent, one bad scan never stops the run.

Layout of an output folder::

    OUT/run.json                    model + settings this folder belongs to (never mixed)
    OUT/scans/<scan_id>/            one folder per scan (id sanitized; never patient text)
        anomaly_map.nii.gz          float32, the scan's exact shape and affine
        mask.nii.gz                 uint8 at the calibrated voxel threshold
        reconstruction.nii.gz       optional
        seg.dcm, pmap.dcm           for DICOM input: Segmentation + Parametric Map
        result.json                 written last: its presence marks the scan complete
    OUT/scores.csv, scores.jsonl    one row per scan (rebuilt from result.json files)
    OUT/summary.json                counts, failures, skipped files, thresholds
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..io.atomic import write_text_atomic
from ..io.content import check_content
from ..io.errors import ScanError
from ..io.naming import safe_join
from ..jsonutil import json_default, now_utc
from .result import RESULT_FILE, TABLE_COLUMNS, ScanRecord, ScanResult, table_row, write_scan_outputs

RUN_FILE = "run.json"


class OutputConflict(Exception):
    """OUT already holds results from another model or other settings."""


class OutputError(Exception):
    """OUT cannot be created or written (a file in the way, no permission, disk full)."""


@dataclass
class RunSummary:
    out_dir: str
    n_found: int = 0
    n_in_shard: int = 0
    n_scored: int = 0
    n_skipped_complete: int = 0
    n_failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.n_scored} scored, {self.n_skipped_complete} already complete, {self.n_failed} failed, "
                f"{len(self.skipped_files)} files skipped (not usable scans; reasons in summary.json) — "
                f"results in {self.out_dir}")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/4' → (2, 4): the second of four deterministic shards (1-based)."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise ValueError(f"--shard must look like i/n (e.g. 1/4), got {text!r}") from exc
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text!r}: need 1 <= i <= n")
    return i, n


def in_shard(scan_id: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    i, n = shard
    return int(hashlib.sha1(scan_id.encode()).hexdigest(), 16) % n == i - 1


def prepare_out(out: Path) -> None:
    """Create OUT and prove it is writable, or raise :class:`OutputError` with one line."""
    import tempfile

    try:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"{out}: cannot create or write the output folder ({exc.strerror or exc}); "
                          "choose a writable --out") from exc


def _foreign_results(out: Path, run_info: dict[str, Any]) -> str | None:
    """Without run.json, scan results left by another model/settings still count as a conflict."""
    for path in sorted((out / "scans").glob(f"*/{RESULT_FILE}"))[:1000]:
        try:
            res = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            continue
        if res.get("model_hash") != run_info["model_hash"] or res.get("config_hash") != run_info["config_hash"]:
            return f"{str(res.get('model_hash', '?'))[:12]} / settings {res.get('config_hash', '?')}"
    return None


def _check_run_file(out: Path, run_info: dict[str, Any], overwrite: bool) -> None:
    path = out / RUN_FILE
    if not path.is_file() and (out / "scans").is_dir():
        other = _foreign_results(out, run_info)
        if other and not overwrite:
            raise OutputConflict(
                f"{out}: has no {RUN_FILE} but holds scan results from model {other}; this run uses model "
                f"{run_info['model_hash'][:12]} / settings {run_info['config_hash']}. Use another --out, "
                "or --overwrite to replace them")
        if other and overwrite:
            shutil.rmtree(out / "scans", ignore_errors=True)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        same = old.get("model_hash") == run_info["model_hash"] and old.get("config_hash") == run_info["config_hash"]
        if not same and not overwrite:
            raise OutputConflict(
                f"{out}: holds results from model {str(old.get('model_hash', '?'))[:12]} / settings "
                f"{old.get('config_hash', '?')}; this run uses model {run_info['model_hash'][:12]} / settings "
                f"{run_info['config_hash']}. Use another --out, or --overwrite to replace them")
        if not same and overwrite:
            shutil.rmtree(out / "scans", ignore_errors=True)
    write_text_atomic(path, json.dumps(run_info, indent=2))


def _complete(scan_dir: Path, run_info: dict[str, Any]) -> bool:
    path = scan_dir / RESULT_FILE
    if not path.is_file():
        return False
    try:
        res = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    if res.get("status") != "ok":
        return False
    if res.get("model_hash") != run_info["model_hash"] or res.get("config_hash") != run_info["config_hash"]:
        return False
    return all((scan_dir / rel).is_file() for rel in res.get("outputs", {}).values())


def check_modality(volume, modality: str) -> None:
    """DICOM Modality when present, intensity/header hints otherwise (see :mod:`medidiff.io.modality`)."""
    from ..io.modality import check_modality as _check

    _check(volume, modality)


@dataclass
class ScanJob:
    """Everything needed to score one scan into OUT: shared by medidiff and the baselines
    (and by anything that distributes scans, one job per scan)."""

    out: Path
    run_info: dict[str, Any]
    score_one: Callable[[Any], ScanResult]  # Volume -> ScanResult (the method + the shared post-processor)
    modality: str
    overwrite: bool = False
    dicom_outputs: bool = True
    log: Callable[[str], None] = print

    def scan_dir(self, ref) -> Path:
        return safe_join(self.out / "scans", ref.scan_id)

    def is_complete(self, ref) -> bool:
        return not self.overwrite and _complete(self.scan_dir(ref), self.run_info)

    def run(self, ref) -> ScanRecord:
        """Score ``ref`` and write its outputs and result.json; failures are recorded, never raised."""
        import time

        scan_dir = self.scan_dir(ref)
        record = ScanRecord(scan_id=ref.scan_id, source_path=ref.source, format=ref.format,
                            model_hash=self.run_info["model_hash"], config_hash=self.run_info["config_hash"])
        t0 = time.perf_counter()
        remove_stale_temps(scan_dir)
        try:
            volume = ref.load()
            check_modality(volume, self.modality)
            check_content(volume)
            result = self.score_one(volume)
            outputs = write_scan_outputs(scan_dir, volume, result, self.run_info["model_hash"], self.dicom_outputs,
                                         self.log)
            record.succeeded(volume, result, outputs, time.perf_counter() - t0)
        except Exception as exc:  # recorded, and the batch goes on
            record.failed(failure_reason(exc, ref, scan_dir), time.perf_counter() - t0)
            self.log(f"failed: {record.error}")
        record.write(scan_dir)
        return record


def failure_reason(exc: BaseException, ref, scan_dir: Path) -> str:
    reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    if isinstance(exc, MemoryError):
        return (f"{ref.source}: out of memory while scoring {tuple(ref.shape)} voxels "
                "(score it alone, or lower MEDIDIFF_MAX_VOXELS to skip such scans)")
    if isinstance(exc, OSError) and not isinstance(exc, ScanError):
        return (f"{ref.source}: cannot write outputs to {scan_dir} ({exc.strerror or reason}); "
                "check free space and permissions of --out, then re-run (finished scans are kept)")
    if not isinstance(exc, ScanError):
        return (f"{ref.source}: unexpected {exc.__class__.__name__}: {reason} "
                "(please report this with the scan's header)")
    return reason


def count_record(summary: RunSummary, record: ScanRecord) -> None:
    if record.status == "ok":
        summary.n_scored += 1
    else:
        summary.n_failed += 1
        summary.failures.append({"scan_id": record.scan_id, "error": record.error})


@contextlib.contextmanager
def _progress(enabled: bool, total: int, label: str):
    """A rich progress bar with ETA; yields ``advance(current_text)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[current]}")]
    with Progress(*columns, disable=not enabled, transient=False) as bar:
        task = bar.add_task("score", total=total, current="")
        yield lambda current: bar.update(task, advance=1, current=current)


def run_jobs(job: ScanJob, todo, summary: RunSummary, progress: bool = True, label: str = "scoring") -> None:
    """Score ``todo`` one by one with a progress bar; fills ``summary``."""
    with _progress(progress, len(todo), label) as advance:
        for ref in todo:
            if job.is_complete(ref):
                summary.n_skipped_complete += 1
            else:
                count_record(summary, job.run(ref))
            advance(ref.scan_id)


def finish_run(out: Path, summary: RunSummary, run_info: dict[str, Any], **extra: Any) -> None:
    write_tables(out)
    d = dict(summary.__dict__)
    d.update(model_hash=run_info["model_hash"], config_hash=run_info["config_hash"], finished=now_utc(),
             calibrated=run_info.get("calibrated", False), **extra)
    write_text_atomic(out / "summary.json", json.dumps(d, indent=2, default=json_default))


def discover_todo(input_path, out: Path, shard: str | None, limit: int | None, log: Callable[[str], None]):
    """Scans under ``input_path`` (never inside OUT), in this shard, at most ``limit``."""
    from ..io.discover import discover, group_skipped

    found = discover(input_path, exclude=[out])
    for where, n, reason in group_skipped(found.skipped):
        log(f"skipped: {where}{f' ({n} files)' if n > 1 else ''}: {reason}")
    summary = RunSummary(out_dir=str(out), n_found=len(found.scans), skipped_files=[s.to_dict() for s in found.skipped])
    shard_t = parse_shard(shard)
    todo = [s for s in found.scans if in_shard(s.scan_id, shard_t)]
    if limit is not None:
        todo = todo[:limit]
    summary.n_in_shard = len(todo)
    return todo, summary


def write_run_info(out: Path, run_info: dict[str, Any], overwrite: bool) -> None:
    try:
        _check_run_file(out, run_info, overwrite)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write {RUN_FILE} ({exc.strerror or exc}); choose a writable --out") from exc


def calibration_for_run(calibration) -> dict[str, Any] | None:
    if calibration is None:
        return None
    d = calibration.to_json()
    d.pop("healthy_scores", None)
    d.pop("voxel_fpr_per_scan", None)
    return d


def load_scorer(model_dir: str | Path, config_path: str | Path | None = None, overrides: tuple[str, ...] = (),
                device: str = "auto", log: Callable[[str], None] = print):
    """The model, its calibration and the scoring settings exactly as a batch run uses them
    (Dask workers call this too, so every worker scores with the same settings)."""
    from ..runtime import resolve_device
    from ..train.checkpoint import load_model
    from .calibration import Calibration
    from .config import load_score_config
    from .pipeline import Scorer

    loaded = load_model(model_dir, device=resolve_device(device))
    calibration = Calibration.load(model_dir, model_hash=loaded.model_hash)
    # A calibrated model folder carries the settings its thresholds are valid for.
    base = calibration.score_config if calibration is not None and config_path is None else None
    cfg = load_score_config(config_path, overrides, base=base)
    scorer = Scorer(loaded, cfg, calibration)
    if calibration is not None and calibration.score_config_hash != scorer.settings_hash():
        log("warning: scoring settings differ from the calibrated ones "
            f"({_settings_diff(calibration, cfg, scorer.runtime_settings())}); thresholds, flags and percentiles "
            "are not valid for these settings (re-run `medidiff calibrate` with the same --set on this device)")
    return scorer


def score_folder(model_dir: str | Path, input_path: str | Path, out_dir: str | Path, *,
                 overrides: tuple[str, ...] = (), config_path: str | Path | None = None,
                 shard: str | None = None, limit: int | None = None, overwrite: bool = False,
                 write_reconstruction: bool = False, dicom_outputs: bool = True, device: str = "auto",
                 progress: bool = True, log: Callable[[str], None] = print,
                 cluster: str | None = None) -> RunSummary:
    """Score every scan under ``input_path`` into ``out_dir``; with ``cluster`` (``local[:N]``,
    a scheduler address or scheduler file) Dask workers score the scans, see :mod:`.cluster`."""
    import time

    from ..runtime import set_threads

    t_start = time.perf_counter()
    cluster_spec = None
    if cluster is not None:  # a bad --cluster value or a missing extra fails before any work
        from .cluster import parse_cluster

        cluster_spec = parse_cluster(cluster)
    set_threads()
    out = Path(out_dir)
    prepare_out(out)
    scorer = load_scorer(model_dir, config_path, overrides, device, log)
    loaded, cfg, calibration = scorer.loaded, scorer.cfg, scorer.calibration
    if calibration is not None:
        for w in calibration.warnings:
            log(f"calibration warning: {w}")
    run_info = {
        "method": "medidiff",
        "model_hash": loaded.model_hash,
        "config_hash": scorer.settings_hash(),
        "score_config": cfg.to_dict(),
        "runtime": scorer.runtime_settings(),
        "calibrated": calibration is not None,
        "calibration": calibration_for_run(calibration),
        "medidiff_version": __version__,
        "model_dir": str(model_dir),
        "input": str(input_path),
        "t_star": [int(round(f * loaded.scheduler_factory.num_train_timesteps)) for f in cfg.t_fractions],
        "started": now_utc(),
    }
    write_run_info(out, run_info, overwrite)
    todo, summary = discover_todo(input_path, out, shard, limit, log)
    job = ScanJob(out=out, run_info=run_info, modality=loaded.preprocess_config.modality, overwrite=overwrite,
                  dicom_outputs=dicom_outputs, log=log,
                  score_one=lambda v: scorer.score_volume(v, with_reconstruction=write_reconstruction))
    extra: dict[str, Any] = {}
    if cluster_spec is None:
        run_jobs(job, todo, summary, progress)
    else:
        extra["cluster"] = _run_on_cluster(cluster_spec, job, todo, summary, progress,
                                           (model_dir, config_path, overrides, device), write_reconstruction)
    summary.seconds = round(time.perf_counter() - t_start, 2)
    finish_run(out, summary, run_info, **extra)
    return summary


def _run_on_cluster(spec, job: ScanJob, todo, summary: RunSummary, progress: bool, scorer_args: tuple,
                    write_reconstruction: bool) -> dict[str, Any]:
    """Finished scans are skipped here; the rest go to Dask workers (same ScanJob.run there)."""
    from .cluster import RemoteJob, score_on_cluster

    pending = []
    for ref in todo:
        if job.is_complete(ref):
            summary.n_skipped_complete += 1
        else:
            pending.append(ref)
    remote = RemoteJob(out=job.out, run_info=job.run_info, modality=job.modality, scorer_args=scorer_args,
                       overwrite=job.overwrite, dicom_outputs=job.dicom_outputs,
                       write_reconstruction=write_reconstruction)
    with _progress(progress, len(pending), "scoring") as advance:
        def done(record: ScanRecord) -> None:
            count_record(summary, record)
            advance(record.scan_id)

        return score_on_cluster(spec, remote, pending, on_record=done, log=job.log)


def _settings_diff(calibration, cfg, runtime: dict[str, Any]) -> str:
    now = dict(cfg.to_dict(), **{f"runtime.{k}": v for k, v in runtime.items()})
    then = dict(calibration.score_config, **{f"runtime.{k}": v for k, v in (calibration.runtime or {}).items()})
    keys = sorted(k for k in set(now) | set(then) if k != "batch_size" and now.get(k) != then.get(k))
    return ", ".join(f"{k}: calibrated {then.get(k)!r}, now {now.get(k)!r}" for k in keys) or "settings hash differs"


def remove_stale_temps(scan_dir: Path) -> None:
    """Temp files left by a run that was killed while writing this scan's outputs."""
    if not scan_dir.is_dir():
        return
    for p in scan_dir.glob(".*.tmp*"):
        try:
            p.unlink()
        except OSError:
            pass


def read_results(out_dir: str | Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((Path(out_dir) / "scans").glob(f"*/{RESULT_FILE}")):
        try:
            rows.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, OSError):
            continue
    return rows


def write_tables(out_dir: str | Path) -> None:
    """scores.csv and scores.jsonl: one row per scan result in OUT (all shards)."""
    import pandas as pd

    out = Path(out_dir)
    rows = read_results(out)
    df = pd.DataFrame([table_row(r) for r in rows], columns=TABLE_COLUMNS)
    df = df.sort_values(["status", "score"], ascending=[False, False], na_position="last")
    write_text_atomic(out / "scores.csv", df.to_csv(index=False))
    write_text_atomic(out / "scores.jsonl", "".join(json.dumps(r, default=json_default) + "\n"
                                                   for r in df.to_dict(orient="records")))
