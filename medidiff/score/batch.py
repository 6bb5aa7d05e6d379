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
    if res.get("calibration_id") != run_info.get("calibration_id"):  # recalibrated, or applied/not applied
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
        record = new_record(ref, self.run_info)
        t0 = time.perf_counter()
        remove_stale_temps(scan_dir)
        volume = None
        try:
            volume = ref.load()
            check_modality(volume, self.modality)
            check_content(volume)
            result = self.score_one(volume)
            outputs = write_scan_outputs(scan_dir, volume, result, self.run_info["model_hash"], self.dicom_outputs,
                                         self.log)
            record.succeeded(volume, result, outputs, time.perf_counter() - t0)
        except Exception as exc:  # recorded, and the batch goes on
            reason = failure_reason(exc, ref, scan_dir)
            nan = [w for w in (volume.provenance.warnings if volume is not None else []) if "NaN/Inf" in w]
            if nan:  # e.g. registration failed on a scan whose NaN padding was set to 0: name the likely cause
                reason += f"; note: {nan[0]}"
            record.failed(reason, time.perf_counter() - t0)
            self.log(f"failed: {record.error}")
        record.write(scan_dir)
        return record


def calibration_fields(run_info: dict[str, Any]) -> dict[str, Any]:
    """The per-scan calibration state (result.json, scores.csv) from run.json's."""
    cal = run_info.get("calibration")
    if not cal:
        return {"calibration_valid": None, "calibration_status": "uncalibrated: the model has no calibration",
                "calibration_id": None}
    from .calibration import CalibrationCheck

    check = CalibrationCheck(bool(cal.get("valid", True)), cal.get("invalid_reason"))
    return {"calibration_valid": check.valid, "calibration_status": check.status(bool(cal.get("applied", True))),
            "calibration_id": run_info.get("calibration_id")}


def new_record(ref, run_info: dict[str, Any]) -> ScanRecord:
    """A pending result.json for ``ref`` (its full source path stays inside OUT, next to the maps;
    the tables carry only the file name, see :func:`medidiff.score.result.table_row`)."""
    return ScanRecord(scan_id=ref.scan_id, source_path=ref.source, format=ref.format,
                      model_hash=run_info["model_hash"], config_hash=run_info["config_hash"],
                      **calibration_fields(run_info))


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
    write_tables(out, full_source_paths=bool(run_info.get("full_source_paths")))
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


def calibration_for_run(calibration, check=None, applied: bool | None = None) -> dict[str, Any] | None:
    """``run.json["calibration"]``: the calibration summary, plus ``valid`` (its thresholds were
    measured with these settings, device and precision), ``invalid_reason`` (None when valid) and
    ``applied`` (flags, masks and percentiles come from it: when valid, or when the user opted in
    with --use-mismatched-calibration). Without ``check`` the calibration is the run's own (valid)."""
    if calibration is None:
        return None
    d = calibration.to_json()
    d.pop("healthy_scores", None)
    d.pop("voxel_fpr_per_scan", None)
    valid = True if check is None else bool(check.valid)
    d["valid"] = valid
    d["invalid_reason"] = None if check is None or check.valid else check.reason
    d["applied"] = valid if applied is None else bool(applied)
    return d


def calibration_fingerprint(calibration) -> str | None:
    """Identifies one calibration (its thresholds and statistics): a result made with another is not reused."""
    if calibration is None:
        return None
    d = calibration.to_json()
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_settings(model_dir: str | Path, calibration, config_path: str | Path | None,
                     overrides: tuple[str, ...], log: Callable[[str], None]):
    """(ScoreConfig, Method | None): the model's method (method.json), or ``--config``, plus ``--set``.
    A folder without method.json scores with its calibration's settings, or the defaults without
    one; either is said in one log line."""
    from .config import load_score_config
    from .method import METHOD_FILE, load_method

    method = load_method(model_dir)
    base = None
    if config_path is None:
        if method is not None:
            base = method.score_config
        elif calibration is not None:
            base = calibration.score_config
            log(f"{model_dir}: no {METHOD_FILE}: scoring with the settings its calibration was made with")
        else:
            log(f"{model_dir}: no {METHOD_FILE} and no calibration: scoring with the default settings "
                "(not a validated method)")
    return load_score_config(config_path, overrides, base=base), method


def load_scorer(model_dir: str | Path, config_path: str | Path | None = None, overrides: tuple[str, ...] = (),
                device: str = "auto", log: Callable[[str], None] = print, *,
                use_mismatched_calibration: bool = False, precision: str | None = None):
    """The model, its method, its calibration and the scoring settings exactly as a batch run uses
    them (Dask workers call this too, with the client's resolved ``precision``, so every worker
    computes as the client would).

    The calibration is applied only when it is valid for these settings, device and precision
    (``scorer.calibration_check``); otherwise the scorer is uncalibrated — no masks, flags or
    percentiles — unless ``use_mismatched_calibration``. ``scorer.calibration_record`` is the
    folder's calibration either way (run.json describes it)."""
    from ..runtime import resolve_device
    from ..model.store import load_model
    from .calibration import Calibration
    from .method import format_diff, method_diff
    from .pipeline import Scorer
    from .postprocess import PostProcessor

    loaded = load_model(model_dir, device=resolve_device(device))
    calibration = Calibration.load(model_dir, model_hash=loaded.model_hash)
    cfg, method = resolve_settings(model_dir, calibration, config_path, overrides, log)
    scorer = Scorer(loaded, cfg, calibration, precision=precision)
    scorer.method = method
    scorer.calibration_record = calibration
    if method is not None:
        diff = method_diff(method.score_config, cfg)
        if diff:
            log(f"settings differ from the model's method ({method.describe()}):\n" + "\n".join(format_diff(diff)))
        if method.model_hash and method.model_hash != loaded.model_hash:
            log(f"warning: {method.path} was chosen for weights {method.model_hash[:19]}, these are "
                f"{loaded.model_hash[:19]}: the method was not validated for these weights")
    check = scorer.check_calibration()
    scorer.calibration_check = check
    scorer.calibration_applied = calibration is not None and (check.valid or use_mismatched_calibration)
    if check is not None and not check.valid:
        if use_mismatched_calibration:
            log(f"warning: applying a calibration that does not match these settings ({check.reason}) because "
                "--use-mismatched-calibration was given: flags, masks and percentiles are not at the calibrated "
                "false-positive rates")
        else:
            log(f"uncalibrated for these settings: {check.reason}; no masks, flags or percentiles. Re-run "
                "`medidiff calibrate` on this device with the same settings, or pass --use-mismatched-calibration "
                "to apply it anyway")
            if cfg.refine:
                raise ValueError("score.refine=true needs a calibration valid for these settings (the inpainting "
                                 f"holes use its threshold), and this one is not ({check.reason}); re-run "
                                 "`medidiff calibrate --set score.refine=true` on this device")
            scorer.calibration = None
            scorer.post = PostProcessor(cfg, scorer.spacing, None,
                                        uncalibrated_reason=f"uncalibrated for these settings: {check.reason}")
    return scorer


def score_folder(model_dir: str | Path, input_path: str | Path, out_dir: str | Path, *,
                 overrides: tuple[str, ...] = (), config_path: str | Path | None = None,
                 shard: str | None = None, limit: int | None = None, overwrite: bool = False,
                 write_reconstruction: bool = False, dicom_outputs: bool = True, device: str = "auto",
                 progress: bool = True, log: Callable[[str], None] = print,
                 cluster: str | None = None, use_mismatched_calibration: bool = False,
                 full_source_paths: bool = False) -> RunSummary:
    """Score every scan under ``input_path`` into ``out_dir``; with ``cluster`` (``local[:N]``,
    a scheduler address or scheduler file) Dask workers score the scans, see :mod:`.cluster`."""
    import time

    from ..runtime import set_threads

    t_start = time.perf_counter()
    cluster_spec = None
    if cluster is not None:  # a bad --cluster value or a missing extra fails before any work
        from .cluster import parse_cluster

        cluster_spec = parse_cluster(cluster)
    set_threads(power_of_two=True)  # maps must not depend on the thread count (see set_threads)
    out = Path(out_dir)
    prepare_out(out)
    scorer = load_scorer(model_dir, config_path, overrides, device, log,
                         use_mismatched_calibration=use_mismatched_calibration)
    loaded, cfg, calibration = scorer.loaded, scorer.cfg, scorer.calibration_record
    if calibration is not None and scorer.calibration_applied:
        for w in calibration.warnings:
            log(f"calibration warning: {w}")
    run_info = {
        "method": "medidiff",
        "model_hash": loaded.model_hash,
        "config_hash": scorer.settings_hash(),
        "score_config": cfg.to_dict(),
        "runtime": scorer.runtime_settings(),
        "scoring_method": None if scorer.method is None else scorer.method.for_run(cfg),
        "calibrated": bool(scorer.calibration_applied),
        "calibration": calibration_for_run(calibration, scorer.calibration_check, scorer.calibration_applied),
        "calibration_id": calibration_fingerprint(calibration) if scorer.calibration_applied else None,
        "medidiff_version": __version__,
        "model_dir": str(model_dir),
        "input": str(input_path),
        "t_star": [int(round(f * loaded.scheduler_factory.num_train_timesteps)) for f in cfg.t_fractions],
        "full_source_paths": bool(full_source_paths),
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
        # workers compute on the client's device kind and precision, and apply the calibration as it does
        extra["cluster"] = _run_on_cluster(cluster_spec, job, todo, summary, progress,
                                           (model_dir, config_path, overrides, scorer.reconstructor.device.type),
                                           write_reconstruction,
                                           {"precision": scorer.reconstructor.precision,
                                            "use_mismatched_calibration": use_mismatched_calibration})
    summary.seconds = round(time.perf_counter() - t_start, 2)
    finish_run(out, summary, run_info, **extra)
    return summary


def _run_on_cluster(spec, job: ScanJob, todo, summary: RunSummary, progress: bool, scorer_args: tuple,
                    write_reconstruction: bool, scorer_options: dict[str, Any] | None = None) -> dict[str, Any]:
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
                       write_reconstruction=write_reconstruction, scorer_options=dict(scorer_options or {}))
    with _progress(progress, len(pending), "scoring") as advance:
        def done(record: ScanRecord) -> None:
            count_record(summary, record)
            advance(record.scan_id)

        return score_on_cluster(spec, remote, pending, on_record=done, log=job.log)


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


def write_tables(out_dir: str | Path, full_source_paths: bool = False) -> None:
    """scores.csv and scores.jsonl: one row per scan result in OUT (all shards). ``source_path`` is
    the file name only unless ``full_source_paths`` (folder names can be patient names)."""
    import pandas as pd

    out = Path(out_dir)
    rows = read_results(out)
    df = pd.DataFrame([table_row(r, full_source_paths) for r in rows], columns=TABLE_COLUMNS)
    df = df.sort_values(["status", "score"], ascending=[False, False], na_position="last")
    write_text_atomic(out / "scores.csv", df.to_csv(index=False))
    write_text_atomic(out / "scores.jsonl", "".join(json.dumps(r, default=json_default) + "\n"
                                                   for r in df.to_dict(orient="records")))
