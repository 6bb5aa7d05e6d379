"""The one result contract of a scored scan, for every method (medidiff and the baselines).

* :class:`ScanResult` — in memory: score, flag, percentile and the source-grid arrays.
* :class:`ScanRecord` — on disk: ``OUT/scans/<scan_id>/result.json``, written last.
* :func:`write_scan_outputs` — the only place that turns a ScanResult into files.

Extending the contract (e.g. a brain mask or QC numbers from the front end):
put per-scan numbers in ``ScanResult.qc`` (copied to ``result.json["qc"]``) and
extra source-grid arrays in ``ScanResult.extra_maps`` (written as
``<name>.nii.gz`` with the array's dtype and listed in ``result.json["outputs"]``).
:func:`medidiff.score.postprocess.PostProcessor.finish` fills both from the
``Preprocessed`` object's optional ``qc`` and ``source_maps`` attributes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io.atomic import write_text_atomic
from ..io.nifti import write_nifti
from ..jsonutil import json_default, now_utc

RESULT_FILE = "result.json"


@dataclass
class ScanResult:
    scan_id: str
    score: float
    flag: bool | None  # None when uncalibrated
    percentile: float | None
    anomaly_map: np.ndarray  # source grid, float32 (for display; the decision is ``mask``)
    mask: np.ndarray | None  # source grid, uint8: the model-grid decision resampled nearest-neighbour
    reconstruction: np.ndarray | None  # source grid, source intensity units
    n_evals: int
    seconds: float
    model_grid: Any = None  # ModelGridMap when kept
    warnings: list[str] = field(default_factory=list)
    qc: dict[str, Any] = field(default_factory=dict)
    extra_maps: dict[str, np.ndarray] = field(default_factory=dict)  # name -> source-grid array

    def source_maps(self) -> dict[str, tuple[np.ndarray, Any]]:
        """name -> (array, dtype) of every source-grid NIfTI this result writes."""
        maps: dict[str, tuple[np.ndarray, Any]] = {"anomaly_map": (self.anomaly_map, np.float32)}
        if self.mask is not None:
            maps["mask"] = (self.mask, np.uint8)
        if self.reconstruction is not None:
            maps["reconstruction"] = (self.reconstruction, np.float32)
        for name, arr in self.extra_maps.items():
            if name in maps:
                raise ValueError(f"extra map {name!r} would overwrite a standard output")
            maps[name] = (arr, arr.dtype)
        return maps

    def summary(self) -> dict[str, Any]:
        return {"scan_id": self.scan_id, "score": self.score, "flag": self.flag, "percentile": self.percentile,
                "n_evals": self.n_evals, "seconds": round(self.seconds, 3), "warnings": self.warnings}


@dataclass
class ScanRecord:
    """``result.json``: its presence (status ok, same model and settings, outputs on disk) marks a scan done."""

    scan_id: str
    source_path: str
    format: str
    score: float | None = None
    percentile: float | None = None
    flag: bool | None = None
    n_evals: int = 0
    seconds: float = 0.0
    model_hash: str = ""
    config_hash: str = ""
    # whether the model's calibration was measured with these settings, device and precision
    # (None: the model has none), and in words: "calibrated", "uncalibrated for these settings: <why>", ...
    calibration_valid: bool | None = None
    calibration_status: str = ""
    calibration_id: str | None = None  # which calibration the flags came from (None: none applied)
    status: str = "pending"  # ok | failed
    error: str = ""
    outputs: dict[str, str] = field(default_factory=dict)  # name -> file name in the scan folder
    shape: list[int] | None = None
    affine: list[list[float]] | None = None
    warnings: list[str] = field(default_factory=list)
    qc: dict[str, Any] = field(default_factory=dict)
    finished: str = ""

    def succeeded(self, volume, result: ScanResult, outputs: dict[str, str], seconds: float) -> "ScanRecord":
        self.status, self.error = "ok", ""
        self.score, self.percentile, self.flag = result.score, result.percentile, result.flag
        self.n_evals, self.seconds, self.outputs = result.n_evals, round(seconds, 3), outputs
        self.shape, self.affine = list(volume.shape), volume.affine.tolist()
        self.warnings, self.qc, self.finished = list(result.warnings), dict(result.qc), now_utc()
        return self

    def failed(self, reason: str, seconds: float) -> "ScanRecord":
        self.status, self.error = "failed", reason
        self.score = self.percentile = self.flag = None
        self.n_evals, self.seconds, self.outputs, self.finished = 0, round(seconds, 3), {}, now_utc()
        return self

    def write(self, scan_dir: Path) -> None:
        d = asdict(self)
        for key in ("shape", "affine"):  # a failed scan has no geometry: the keys are absent, not null
            if d[key] is None:
                del d[key]
        scan_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(scan_dir / RESULT_FILE, json.dumps(d, indent=2, default=json_default))


# front-end quality numbers that scores.csv shows next to the score (from result.json["qc"])
QC_COLUMNS = ["brain_volume_ml", "registration_similarity", "brain_inside_grid"]
TABLE_COLUMNS = [f.name for f in fields(ScanRecord) if f.name not in ("outputs", "shape", "affine", "warnings", "qc",
                                                                       "finished", "calibration_id")] + QC_COLUMNS


def table_source(record: dict[str, Any]) -> str:
    """What the tables say about a scan's source: the file name of a NIfTI (made filesystem-safe),
    ``DICOM series <scan_id>`` for a series — never the folders above it, whose names are often
    patient names. result.json in the scan's output folder keeps the full path (the report needs it)."""
    from ..io.naming import sanitize

    src = str(record.get("source_path") or "")
    if not src:
        return ""
    if str(record.get("format") or "").lower().startswith("dicom"):
        return f"DICOM series {record.get('scan_id', '')}"
    return sanitize(Path(src).name)


def table_row(record: dict[str, Any], full_source_paths: bool = False) -> dict[str, Any]:
    """One scores.csv row from a result.json dict (QC numbers flattened in; absent = empty)."""
    qc = record.get("qc") or {}
    row = {c: (qc.get(c) if c in QC_COLUMNS else record.get(c)) for c in TABLE_COLUMNS}
    if not full_source_paths:
        src, short = str(record.get("source_path") or ""), table_source(record)
        row["source_path"] = short
        if src and row.get("error"):  # a failure names its file: by the same short name here
            row["error"] = str(row["error"]).replace(src, short)
    return row


def write_scan_outputs(scan_dir: Path, volume, result: ScanResult, model_hash: str, dicom_outputs: bool,
                       log: Callable[[str], None] = print) -> dict[str, str]:
    """Every source-grid map as NIfTI (exact shape and affine of ``volume``), plus DICOM
    Segmentation + Parametric Map for DICOM input. Returns name -> file name."""
    scan_dir.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for name, (arr, dtype) in result.source_maps().items():
        if tuple(arr.shape) != tuple(volume.shape):
            raise ValueError(f"{name}: shape {arr.shape} is not the scan's {volume.shape}")
        outputs[name] = f"{name}.nii.gz"
        write_nifti(arr, scan_dir / outputs[name], like=volume, dtype=dtype)
    if dicom_outputs and volume.provenance.format == "dicom":
        from .dicom_out import write_parametric_map, write_segmentation

        outputs["parametric_map"] = "pmap.dcm"
        write_parametric_map(volume, result.anomaly_map, scan_dir / outputs["parametric_map"], model_hash)
        if result.mask is not None:
            outputs["segmentation"] = "seg.dcm"
            write_segmentation(volume, result.mask, scan_dir / outputs["segmentation"], model_hash)
    return outputs
