"""Shared runner for baselines: calibrate on healthy scans, score a folder, and write
exactly the layout of :func:`medidiff.score.batch.score_folder`::

    OUT/run.json                      method, parameters, calibration thresholds
    OUT/baseline/                     fitted state (statistics / weights) and params.json
    OUT/scans/<scan_id>/anomaly_map.nii.gz, mask.nii.gz, result.json
    OUT/scores.csv, scores.jsonl, summary.json

Calibration (no labels): the voxel threshold is the (1 - voxel_fpr) quantile of
the healthy calibration scans' map values inside each method's scoring region;
the scan score is the mean of the top ``topk_fraction`` of map values in the
region (medidiff's default score type); the scan threshold is the (1 - scan_fpr)
quantile of the healthy calibration scores. Maps are on each scan's own grid.
"""

from __future__ import annotations

import abc
import datetime as _dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..io.atomic import write_text_atomic
from ..io.naming import safe_join
from ..io.nifti import write_nifti

BASELINE_DIR = "baseline"


class BaselineError(Exception):
    pass


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def topk_score(values: np.ndarray, topk_fraction: float) -> float:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return 0.0
    k = max(1, int(round(topk_fraction * values.size)))
    return float(np.partition(values, values.size - k)[-k:].mean())


class BaselineMethod(abc.ABC):
    """Interface: ``fit`` on a healthy training folder (optional), ``map`` a Volume
    → (anomaly map, scoring region), both on the volume's own grid."""

    name = "baseline"

    def params(self) -> dict[str, Any]:
        return {}

    def fit(self, train: str | Path | None, log: Callable[[str], None] = print) -> None:
        return None

    def state_bytes(self) -> bytes:
        """Bytes that identify the fitted state (hashed into model_hash)."""
        return b""

    def save(self, folder: Path) -> None:
        return None

    @abc.abstractmethod
    def map(self, volume) -> tuple[np.ndarray, np.ndarray]:
        """(anomaly map, scoring region) on ``volume``'s own grid."""

    def model_hash(self) -> str:
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update(json.dumps(self.params(), sort_keys=True, default=str).encode())
        h.update(self.state_bytes())
        return h.hexdigest()


def _scans(folder: str | Path, log: Callable[[str], None]):
    from ..io.discover import discover

    found = discover(folder)
    for s in found.skipped:
        log(f"skipped: {s.path}: {s.reason}")
    return found


def calibrate(method: BaselineMethod, calib: str | Path, voxel_fpr: float, scan_fpr: float,
              topk_fraction: float, log: Callable[[str], None] = print) -> dict[str, Any]:
    found = _scans(calib, log)
    pooled, scores, ids = [], [], []
    for ref in found.scans:
        try:
            amap, region = method.map(ref.load())
        except Exception as exc:
            log(f"calibration: failed: {ref.source}: {exc}")
            continue
        vals = amap[region]
        pooled.append(vals.astype(np.float32))
        scores.append(topk_score(vals, topk_fraction))
        ids.append(ref.scan_id)
    if len(scores) < 2:
        raise BaselineError(f"{calib}: calibration needs at least 2 readable healthy scans, got {len(scores)}")
    voxels = np.concatenate(pooled)
    vthr = float(np.quantile(voxels, 1.0 - voxel_fpr))
    sthr = float(np.quantile(scores, 1.0 - scan_fpr))
    return {"n_scans": len(scores), "scan_ids": ids, "voxel_threshold": vthr, "scan_threshold": sthr,
            "voxel_fpr": voxel_fpr, "scan_fpr": scan_fpr, "achieved_voxel_fpr": float((voxels > vthr).mean()),
            "achieved_scan_fpr": float(np.mean(np.asarray(scores) > sthr)), "healthy_scores": scores,
            "note": "in-sample on the calibration scans (baselines fit nothing on them)"}


def run_baseline(method: BaselineMethod, *, calib: str | Path, input: str | Path, out: str | Path,
                 train: str | Path | None = None, voxel_fpr: float = 0.001, scan_fpr: float = 0.05,
                 topk_fraction: float = 0.005, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit (if needed) → calibrate on ``calib`` → score every scan under ``input`` → OUT layout."""
    from ..score.batch import RESULT_FILE, write_tables

    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_fit = time.perf_counter()
    method.fit(train, log)
    fit_seconds = time.perf_counter() - t_fit
    method.save(out / BASELINE_DIR)
    model_hash = method.model_hash()
    cfg = {"method": method.name, "params": method.params(), "voxel_fpr": voxel_fpr, "scan_fpr": scan_fpr,
           "topk_fraction": topk_fraction}
    config_hash = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    run_path = out / "run.json"
    if run_path.is_file() and not overwrite:
        try:
            old = json.loads(run_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("method") != f"baseline:{method.name}" or old.get("config_hash") != config_hash:
            raise BaselineError(f"{out}: holds results of {old.get('method', '?')} / settings {old.get('config_hash')}; "
                                "use another --out, or --overwrite")
    if overwrite:
        import shutil

        shutil.rmtree(out / "scans", ignore_errors=True)
    cal = calibrate(method, calib, voxel_fpr, scan_fpr, topk_fraction, log)
    run_info = {
        "method": f"baseline:{method.name}", "baseline": method.name, "params": method.params(),
        "model_hash": model_hash, "config_hash": config_hash, "score_config": cfg, "calibrated": True,
        "calibration": {k: v for k, v in cal.items() if k != "healthy_scores"},
        "medidiff_version": __version__, "train": str(train) if train else None, "calib": str(calib),
        "input": str(input), "fit_seconds": round(fit_seconds, 2), "started": _now(),
    }
    write_text_atomic(run_path, json.dumps(run_info, indent=2))
    healthy = np.asarray(cal["healthy_scores"])
    found = _scans(input, log)
    n_ok = n_failed = 0
    failures = []
    for ref in found.scans:
        scan_dir = safe_join(out / "scans", ref.scan_id)
        record: dict[str, Any] = {"scan_id": ref.scan_id, "source_path": ref.source, "format": ref.format,
                                  "model_hash": model_hash, "config_hash": config_hash}
        t0 = time.perf_counter()
        try:
            vol = ref.load()
            amap, region = method.map(vol)
            amap = np.where(region, amap, 0.0).astype(np.float32)
            score = topk_score(amap[region], topk_fraction)
            mask = (amap > cal["voxel_threshold"]).astype(np.uint8)
            scan_dir.mkdir(parents=True, exist_ok=True)
            write_nifti(amap, scan_dir / "anomaly_map.nii.gz", like=vol, dtype=np.float32)
            write_nifti(mask, scan_dir / "mask.nii.gz", like=vol, dtype=np.uint8)
            record.update(status="ok", error="", score=score, percentile=float(100.0 * (healthy <= score).mean()),
                          flag=bool(score > cal["scan_threshold"]), n_evals=0,
                          seconds=round(time.perf_counter() - t0, 3),
                          outputs={"anomaly_map": "anomaly_map.nii.gz", "mask": "mask.nii.gz"},
                          shape=list(vol.shape), affine=vol.affine.tolist(), warnings=list(vol.provenance.warnings),
                          finished=_now())
            n_ok += 1
        except Exception as exc:  # one bad scan never stops the run
            reason = f"{ref.source}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            record.update(status="failed", error=reason, score=None, percentile=None, flag=None, n_evals=0,
                          seconds=round(time.perf_counter() - t0, 3), outputs={}, finished=_now())
            n_failed += 1
            failures.append({"scan_id": ref.scan_id, "error": reason})
            log(f"failed: {reason}")
        scan_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(scan_dir / RESULT_FILE, json.dumps(record, indent=2))
    write_tables(out)
    summary = {"out_dir": str(out), "method": f"baseline:{method.name}", "n_found": len(found.scans),
               "n_scored": n_ok, "n_failed": n_failed, "failures": failures,
               "skipped_files": [s.to_dict() for s in found.skipped], "fit_seconds": round(fit_seconds, 2),
               "seconds": round(time.perf_counter() - t_start, 2), "model_hash": model_hash,
               "config_hash": config_hash, "calibrated": True, "finished": _now()}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
