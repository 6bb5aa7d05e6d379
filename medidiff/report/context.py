"""What the report knows about a scoring run: run.json, summary.json, the model folder's
calibration and model.json, the labels; read once, tolerant of missing or unreadable files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunContext:
    out: Path
    run: dict[str, Any]
    summary: dict[str, Any]
    healthy_scores: list[float]
    voxel_threshold: float | None
    scan_threshold: float | None
    map_label: str
    labels: dict[str, int] | None
    show_phi: bool
    gt_masks: dict[str, Path] = field(default_factory=dict)
    phi_strings: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    scale: Any = None  # render.ColourScale, set once for the whole run
    cal_state: Any = None  # explain.CalibrationState
    model: dict[str, Any] = field(default_factory=dict)  # the model folder's model.json (when readable)

    @property
    def score_kind(self) -> str:
        from .explain import score_kind

        return score_kind(self.run.get("score_config") or {}, self.voxel_threshold)

    @property
    def training_max_mm(self) -> float | None:
        """The thickest voxel side among the model's training scans (model.json)."""
        sp = ((self.model.get("training_data") or {}).get("train") or {}).get("source_spacing_mm") or {}
        vals = [finite_float(v) for v in (sp.get("max") or [])]
        vals = [v for v in vals if v is not None]
        return max(vals) if vals else None

    @property
    def template_space(self) -> bool:
        return (self.model.get("preprocess") or {}).get("space") == "template"

    @property
    def calibration(self) -> dict[str, Any]:
        return self.run.get("calibration") or {}

    @property
    def volume_score(self) -> bool:
        """The score is mm³ above the voxel threshold (else a map statistic)."""
        cfg = self.run.get("score_config") or {}
        return cfg.get("score", "supra_volume") in ("supra_volume", "largest_cluster") and self.voxel_threshold is not None


def read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def finite_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _model_calibration(run: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """The model folder's calibration.json when it belongs to this run's model, else {}."""
    model_dir = run.get("model_dir")
    if not model_dir:
        return {}
    cal = read_json(Path(model_dir) / "calibration.json")
    if not cal:
        if run.get("calibrated"):
            notes.append("healthy score distribution unavailable: the model folder's calibration.json is not readable")
        return {}
    if run.get("model_hash") and cal.get("model_hash") not in (None, run.get("model_hash")):
        notes.append("calibration.json in the model folder belongs to another model: healthy distribution not shown")
        return {}
    return cal


def _healthy_scores(cal: dict[str, Any]) -> list[float]:
    return [f for f in (finite_float(v) for v in cal.get("healthy_scores") or []) if f is not None]


def read_label_map(path: str | Path) -> tuple[dict[str, int], dict[str, Path]]:
    """scan_id → 0/1 and scan_id → ground-truth mask path, from a labels CSV (the
    columns ``medidiff evaluate`` reads)."""
    from ..evaluate.labels import read_labels

    rows = read_labels(path)
    return {r.scan_id: int(r.label) for r in rows}, {r.scan_id: r.mask_path for r in rows if r.mask_path}


def run_context(out: Path, labels: str | Path | None, show_phi: bool) -> RunContext:
    run = read_json(out / "run.json")
    summary = read_json(out / "summary.json")
    notes: list[str] = []
    if not run:
        notes.append("run.json missing or unreadable: provenance incomplete")
    cal = run.get("calibration") or {}
    cfg = run.get("score_config") or {}
    calibrated = bool(run.get("calibrated"))
    if calibrated and cfg.get("normalization", "voxelwise") != "none":
        map_label = "anomaly (z: units of healthy variation)"
    elif calibrated:
        map_label = "anomaly (smoothed residual)"
    else:
        map_label = "anomaly (raw residual, uncalibrated)"
    label_map, gt_masks = read_label_map(labels) if labels else (None, {})
    from .explain import calibration_state

    model_cal = _model_calibration(run, notes)
    model = read_json(Path(run["model_dir"]) / "model.json") if run.get("model_dir") else {}
    if run.get("model_hash") and model.get("model_hash") not in (None, run.get("model_hash")):
        model = {}
    return RunContext(out=out, run=run, summary=summary, healthy_scores=_healthy_scores(model_cal),
                      voxel_threshold=finite_float(cal.get("voxel_threshold")), scan_threshold=finite_float(cal.get("scan_threshold")),
                      map_label=map_label, labels=label_map, gt_masks=gt_masks, show_phi=show_phi, notes=notes,
                      cal_state=calibration_state(run, model_cal), model=model)
