"""Batch scoring of a folder (``medidiff score``): discover the scans, keep this shard, skip
finished ones and score the rest here or on Dask workers; one bad scan never stops the run.
The output folder is described in :mod:`.output`."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Callable

from ..jsonutil import now_utc
from ..score.result import ScanRecord
from ..version import __version__
from .job import ScanJob
from .output import RunSummary, finish_run, prepare_out, write_run_info
from .prefetch import prefetch_cache, prefetching
from .scorer import calibration_fingerprint, calibration_for_run, load_scorer


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


def run_jobs(job: ScanJob, todo, summary: RunSummary, progress: bool = True, label: str = "scoring",
             warm: Callable[[Any], Any] | None = None) -> None:
    """Score ``todo`` one by one with a progress bar; fills ``summary``. With ``warm`` (a scorer's
    front end), the next scan is read and warmed on a background thread while one is scored."""
    with _progress(progress, len(todo), label) as advance:
        pending = []
        for ref in todo:
            if job.is_complete(ref):
                summary.n_skipped_complete += 1
                advance(ref.scan_id)
            else:
                pending.append(ref)
        with prefetch_cache() if warm is not None else contextlib.nullcontext():
            for ref in prefetching(pending, warm) if warm is not None else pending:
                count_record(summary, job.run(ref))
                advance(ref.scan_id)


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


def score_folder(model_dir: str | Path, input_path: str | Path, out_dir: str | Path, *,
                 overrides: tuple[str, ...] = (), config_path: str | Path | None = None,
                 shard: str | None = None, limit: int | None = None, overwrite: bool = False,
                 write_reconstruction: bool = False, dicom_outputs: bool = True, device: str = "auto",
                 progress: bool = True, log: Callable[[str], None] = print,
                 cluster: str | None = None, use_mismatched_calibration: bool = False,
                 full_source_paths: bool = False, prefetch: bool | None = None) -> RunSummary:
    """Score every scan under ``input_path`` into ``out_dir``; with ``cluster`` (``local[:N]``,
    a scheduler address or scheduler file) Dask workers score the scans, see :mod:`.cluster`.
    ``prefetch`` (default: on a GPU only) reads the next scan and runs its front end while the
    network works on the current one (:mod:`.prefetch`)."""
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
        if prefetch is None:
            prefetch = scorer.reconstructor.device.type == "cuda"
        if prefetch:
            log("reading ahead: the next scan's front end runs while the network scores this one")
        run_jobs(job, todo, summary, progress, warm=scorer.warm_front_end if prefetch else None)
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
