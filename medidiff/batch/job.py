"""One scan into OUT: shared by medidiff, the baselines and the cluster workers (one job per scan)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..io.content import check_content
from ..io.errors import ScanError
from ..io.naming import safe_join
from ..score.result import RESULT_FILE, ScanRecord, ScanResult, write_scan_outputs


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
    from ..score.calibration import CalibrationCheck

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


def remove_stale_temps(scan_dir: Path) -> None:
    """Temp files left by a run that was killed while writing this scan's outputs."""
    if not scan_dir.is_dir():
        return
    for p in scan_dir.glob(".*.tmp*"):
        try:
            p.unlink()
        except OSError:
            pass
