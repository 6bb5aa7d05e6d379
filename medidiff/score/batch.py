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
import datetime as _dt
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .. import __version__
from ..io.atomic import write_text_atomic
from ..io.content import check_content
from ..io.errors import ScanError
from ..io.naming import safe_join
from ..io.nifti import write_nifti

RESULT_FILE = "result.json"
RUN_FILE = "run.json"
TABLE_COLUMNS = ["scan_id", "source_path", "format", "score", "percentile", "flag", "n_evals", "seconds",
                 "model_hash", "config_hash", "status", "error"]
MODALITY_ALIASES = {"mri": {"MR"}, "ct": {"CT"}}


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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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


def _check_modality(volume, modality: str) -> None:
    scan_mod = (volume.provenance.modality or "").upper()
    allowed = MODALITY_ALIASES.get(modality, set())
    if scan_mod and allowed and scan_mod not in allowed:
        raise ScanError(volume.provenance.source_paths[0] if volume.provenance.source_paths else volume.scan_id,
                        f"scan modality {scan_mod} but the model was trained on {modality.upper()}",
                        "use a model trained for this modality")


def score_folder(model_dir: str | Path, input_path: str | Path, out_dir: str | Path, *,
                 overrides: tuple[str, ...] = (), config_path: str | Path | None = None,
                 shard: str | None = None, limit: int | None = None, overwrite: bool = False,
                 write_reconstruction: bool = False, dicom_outputs: bool = True, device: str = "auto",
                 progress: bool = True, log: Callable[[str], None] = print,
                 cluster: str | None = None) -> RunSummary:
    """Score every scan under ``input_path`` into ``out_dir``; with ``cluster`` (``local[:N]``,
    a scheduler address or scheduler file) scans are scored by Dask workers, see :mod:`.cluster`."""
    import time

    from ..io.discover import discover
    from ..runtime import set_threads

    t_start = time.perf_counter()
    if cluster is not None:  # a bad --cluster value or a missing extra fails before any work
        from .cluster import parse_cluster

        cluster_spec = parse_cluster(cluster)
    set_threads()
    out = Path(out_dir)
    prepare_out(out)
    scorer = load_scorer(model_dir, config_path, overrides, device, log)
    loaded, cfg, calibration = scorer.loaded, scorer.cfg, scorer.calibration
    run_info = {
        "model_hash": loaded.model_hash,
        "config_hash": cfg.hash(),
        "score_config": cfg.to_dict(),
        "calibrated": calibration is not None,
        "calibration": calibration.to_json() if calibration is not None else None,
        "medidiff_version": __version__,
        "model_dir": str(model_dir),
        "input": str(input_path),
        "t_star": [int(round(f * loaded.scheduler_factory.num_train_timesteps)) for f in cfg.t_fractions],
        "started": _now(),
    }
    if run_info["calibration"]:
        run_info["calibration"].pop("healthy_scores", None)
    try:
        _check_run_file(out, run_info, overwrite)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write {RUN_FILE} ({exc.strerror or exc}); choose a writable --out") from exc

    # The output folder is never read as input (it may lie inside the input tree).
    found = discover(input_path, exclude=[out])
    from ..io.discover import group_skipped

    for where, n, reason in group_skipped(found.skipped):
        log(f"skipped: {where}{f' ({n} files)' if n > 1 else ''}: {reason}")
    summary = RunSummary(out_dir=str(out), n_found=len(found.scans),
                         skipped_files=[s.to_dict() for s in found.skipped])
    shard_t = parse_shard(shard)
    todo = [s for s in found.scans if in_shard(s.scan_id, shard_t)]
    if limit is not None:
        todo = todo[:limit]
    summary.n_in_shard = len(todo)
    job = ScanJob(scans_root=out / "scans", model_hash=loaded.model_hash, config_hash=run_info["config_hash"],
                  write_reconstruction=write_reconstruction, dicom_outputs=dicom_outputs)
    engine: dict[str, Any] | None = None
    with _progress_bar(progress, len(todo)) as advance:
        pending = []
        for ref in todo:
            if not overwrite and _complete(safe_join(job.scans_root, ref.scan_id), run_info):
                summary.n_skipped_complete += 1
                advance("")
            else:
                pending.append(ref)

        def done(record: dict[str, Any]) -> None:
            _count(summary, record, log)
            advance(record["scan_id"])

        if cluster is None:
            for ref in pending:
                done(score_one(scorer, job, ref))
        else:
            from .cluster import score_on_cluster

            engine = score_on_cluster(cluster_spec, (model_dir, config_path, overrides, device), job, pending,
                                      on_record=done, log=log)

    summary.seconds = round(time.perf_counter() - t_start, 2)
    write_tables(out)
    summary_dict = dict(summary.__dict__)
    summary_dict.update(model_hash=loaded.model_hash, config_hash=run_info["config_hash"], finished=_now(),
                        calibrated=calibration is not None)
    if engine is not None:
        summary_dict["cluster"] = engine
    write_text_atomic(out / "summary.json", json.dumps(summary_dict, indent=2, default=_json_default))
    return summary


def load_scorer(model_dir: str | Path, config_path: str | Path | None, overrides: tuple[str, ...],
                device: str = "auto", log: Callable[[str], None] = print):
    """The model, its calibration and the scoring settings, exactly as a batch run uses them
    (cluster workers call this too, so every worker scores with the same settings)."""
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
    if calibration is not None and calibration.score_config_hash != cfg.hash():
        log("warning: scoring settings differ from the calibrated ones; thresholds, flags and percentiles "
            "are not valid for these settings (re-run `medidiff calibrate` with the same --set)")
    return Scorer(loaded, cfg, calibration)


@dataclass(frozen=True)
class ScanJob:
    """What scoring one scan needs besides the scorer: small and picklable (sent to cluster workers)."""
    scans_root: Path
    model_hash: str
    config_hash: str
    write_reconstruction: bool = False
    dicom_outputs: bool = True


def score_one(scorer, job: ScanJob, ref) -> dict[str, Any]:
    """Score one scan, write its outputs and then its result.json (last: it marks the scan
    complete), and return that record. Any failure becomes a ``failed`` record."""
    import time

    scan_dir = safe_join(job.scans_root, ref.scan_id)
    t0 = time.perf_counter()
    _remove_stale_temps(scan_dir)
    try:
        volume = ref.load()
        _check_modality(volume, scorer.loaded.preprocess_config.modality)
        check_content(volume)
        result = scorer.score_volume(volume, with_reconstruction=job.write_reconstruction, keep_model_grid=True)
        mg, result.model_grid = result.model_grid, None
        if mg is not None and not mg.mask.any():
            raise ScanError(ref.source, "no foreground found to score (the image is blank or nearly "
                                        "constant after preprocessing)",
                            "check the scan; for CT or unusual contrasts set preprocess.foreground")
        del mg
        outputs = _write_outputs(scan_dir, volume, result, job.model_hash, job.dicom_outputs)
        record = _record(job, ref)
        record.update(status="ok", error="", score=result.score, percentile=result.percentile,
                      flag=result.flag, n_evals=result.n_evals, seconds=round(time.perf_counter() - t0, 3),
                      outputs=outputs, shape=list(volume.shape), affine=volume.affine.tolist(),
                      warnings=result.warnings, finished=_now())
    except Exception as exc:  # recorded, and the batch goes on
        record = failed_record(job, ref, _failure_reason(exc, ref, scan_dir), time.perf_counter() - t0)
    write_result(job, record)
    return record


def _record(job: ScanJob, ref) -> dict[str, Any]:
    return {"scan_id": ref.scan_id, "source_path": ref.source, "format": ref.format,
            "model_hash": job.model_hash, "config_hash": job.config_hash}


def failed_record(job: ScanJob, ref, reason: str, seconds: float = 0.0) -> dict[str, Any]:
    record = _record(job, ref)
    record.update(status="failed", error=reason, score=None, percentile=None, flag=None,
                  n_evals=0, seconds=round(seconds, 3), outputs={}, finished=_now())
    return record


def write_result(job: ScanJob, record: dict[str, Any]) -> None:
    scan_dir = safe_join(job.scans_root, record["scan_id"])
    scan_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(scan_dir / RESULT_FILE, json.dumps(record, indent=2, default=_json_default))


def _failure_reason(exc: Exception, ref, scan_dir: Path) -> str:
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


def _count(summary: RunSummary, record: dict[str, Any], log: Callable[[str], None]) -> None:
    if record["status"] == "ok":
        summary.n_scored += 1
        return
    summary.n_failed += 1
    summary.failures.append({"scan_id": record["scan_id"], "error": record["error"]})
    log(f"failed: {record['error']}")


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[str], None]]:
    """A rich bar with ETA; yields ``advance(scan_id)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[current]}")]
    with Progress(*columns, disable=not enabled, transient=False) as bar:
        task = bar.add_task("score", total=total, current="")
        yield lambda scan_id: bar.update(task, advance=1, current=scan_id)


def _remove_stale_temps(scan_dir: Path) -> None:
    """Temp files left by a run that was killed while writing this scan's outputs."""
    if not scan_dir.is_dir():
        return
    for p in scan_dir.glob(".*.tmp*"):
        try:
            p.unlink()
        except OSError:
            pass


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _write_outputs(scan_dir: Path, volume, result, model_hash: str, dicom_outputs: bool) -> dict[str, str]:
    scan_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"anomaly_map": "anomaly_map.nii.gz"}
    write_nifti(result.anomaly_map, scan_dir / outputs["anomaly_map"], like=volume, dtype=np.float32)
    if result.mask is not None:
        outputs["mask"] = "mask.nii.gz"
        write_nifti(result.mask, scan_dir / outputs["mask"], like=volume, dtype=np.uint8)
    if result.reconstruction is not None:
        outputs["reconstruction"] = "reconstruction.nii.gz"
        write_nifti(result.reconstruction, scan_dir / outputs["reconstruction"], like=volume, dtype=np.float32)
    if dicom_outputs and volume.provenance.format == "dicom":
        from .dicom_out import write_parametric_map, write_segmentation

        outputs["parametric_map"] = "pmap.dcm"
        write_parametric_map(volume, result.anomaly_map, scan_dir / outputs["parametric_map"], model_hash)
        if result.mask is not None:
            outputs["segmentation"] = "seg.dcm"
            write_segmentation(volume, result.mask, scan_dir / outputs["segmentation"], model_hash)
    return outputs


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
    df = pd.DataFrame([{c: r.get(c) for c in TABLE_COLUMNS} for r in rows], columns=TABLE_COLUMNS)
    df = df.sort_values(["status", "score"], ascending=[False, False], na_position="last")
    write_text_atomic(out / "scores.csv", df.to_csv(index=False))
    write_text_atomic(out / "scores.jsonl", "".join(json.dumps(r, default=_json_default) + "\n"
                                                   for r in df.to_dict(orient="records")))
