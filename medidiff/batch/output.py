"""The output folder of a batch run: resumable, idempotent, never mixed between models or settings.

Layout::

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

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.atomic import write_text_atomic
from ..jsonutil import json_default, now_utc
from ..score.result import RESULT_FILE, TABLE_COLUMNS, table_row

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


def write_run_info(out: Path, run_info: dict[str, Any], overwrite: bool) -> None:
    try:
        _check_run_file(out, run_info, overwrite)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write {RUN_FILE} ({exc.strerror or exc}); choose a writable --out") from exc


def finish_run(out: Path, summary: RunSummary, run_info: dict[str, Any], **extra: Any) -> None:
    write_tables(out, full_source_paths=bool(run_info.get("full_source_paths")))
    d = dict(summary.__dict__)
    d.update(model_hash=run_info["model_hash"], config_hash=run_info["config_hash"], finished=now_utc(),
             calibrated=run_info.get("calibrated", False), **extra)
    write_text_atomic(out / "summary.json", json.dumps(d, indent=2, default=json_default))


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
