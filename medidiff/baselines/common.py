"""Shared runner for baselines: fit on healthy training scans, calibrate on healthy
calibration scans, score a folder — with exactly medidiff's post-processing and
output layout (:func:`medidiff.batch.run.score_folder`)::

    OUT/run.json                      method, parameters, calibration summary
    OUT/baseline/                     fitted state (statistics / weights), params.json, calibration.*
    OUT/scans/<scan_id>/anomaly_map.nii.gz, mask.nii.gz, result.json
    OUT/scores.csv, scores.jsonl, summary.json

A baseline supplies only a raw map and its scoring region on the model grid
(:meth:`BaselineMethod.model_map`). Normalisation, the leave-one-out calibration
of voxel and scan thresholds, the scan score (any of medidiff's score types),
the source-grid resampling and the result files are the shared
:class:`~medidiff.score.postprocess.PostProcessor`'s, so medidiff and every
baseline are calibrated and scored by the same rules. Baselines default to no
healthy-statistics normalisation (their maps already are deviations in their
own units); ``score.normalization=voxelwise`` gives them medidiff's.
"""

from __future__ import annotations

import abc
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..version import __version__

BASELINE_DIR = "baseline"
BASELINE_SCORE_DEFAULTS = {"normalization": "none"}


class BaselineError(Exception):
    pass


class BaselineMethod(abc.ABC):
    """Interface: ``fit`` on a healthy training folder (optional), ``model_map`` a Volume
    → :class:`~medidiff.score.postprocess.ModelGridMap` (raw map + scoring region on the model grid)."""

    name = "baseline"
    pcfg = None  # PreprocessConfig: the model grid the maps live on

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
    def model_map(self, volume):
        """:class:`ModelGridMap` of ``volume``: raw map and scoring region on the model grid."""

    def map(self, volume) -> tuple[np.ndarray, np.ndarray]:
        """The raw map and its region on ``volume``'s own grid (for inspection; scoring uses
        the post-processor, which decides on the model grid)."""
        mg = self.model_map(volume)
        mapping = mg.pre.mapping
        amap = mapping.to_source(mg.raw, order=1, fill=0.0, antialias=True)
        region = mapping.to_source(mg.region.astype(np.float32), order=0, fill=0.0, antialias=False) > 0.5
        return np.where(region, amap, 0.0).astype(np.float32), region

    def model_hash(self) -> str:
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update(json.dumps(self.params(), sort_keys=True, default=str).encode())
        h.update(self.state_bytes())
        return h.hexdigest()


def baseline_score_config(overrides=(), voxel_fpr: float | None = None, scan_fpr: float | None = None):
    """medidiff's ScoreConfig with the baseline defaults, ``--set score.k=v`` overrides and FPR targets."""
    from ..score.config import load_score_config

    extra = [f"score.voxel_fpr={voxel_fpr}"] if voxel_fpr is not None else []
    extra += [f"score.scan_fpr={scan_fpr}"] if scan_fpr is not None else []
    return load_score_config(None, tuple(overrides) + tuple(extra), base=dict(BASELINE_SCORE_DEFAULTS))


def _post_settings(cfg) -> dict[str, Any]:
    """The ScoreConfig fields the post-processor reads (the rest are diffusion settings)."""
    keys = ("normalization", "score", "topk_fraction", "percentile", "voxel_fpr", "scan_fpr")
    return {k: getattr(cfg, k) for k in keys}


def calibrate(method: BaselineMethod, calib: str | Path, cfg, log: Callable[[str], None] = print):
    """The shared leave-one-out calibration on ``method``'s healthy model-grid maps."""
    from ..io.discover import discover
    from ..batch.calibrate import collect_maps
    from ..score.calibration import CalibrationError, calibrate_maps
    from ..score.postprocess import PostProcessor

    found = discover(calib)
    for s in found.skipped:
        log(f"skipped: {s.path}: {s.reason}")
    maps, ids = collect_maps(found.scans, method.model_map, log)
    post = PostProcessor(cfg, method.pcfg.spacing)
    try:
        return calibrate_maps(maps, ids, post, model_hash=method.model_hash(), runtime={"method": method.name},
                              method=f"baseline:{method.name}")
    except CalibrationError as exc:
        raise BaselineError(f"{calib}: {exc} (readable healthy scans)") from exc


def run_baseline(method: BaselineMethod, *, calib: str | Path, input: str | Path, out: str | Path,
                 train: str | Path | None = None, voxel_fpr: float | None = None, scan_fpr: float | None = None,
                 overrides: tuple[str, ...] = (), overwrite: bool = False, progress: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit (if needed) → calibrate on ``calib`` → score every scan under ``input`` → OUT layout."""
    from ..jsonutil import now_utc
    from ..batch.job import ScanJob
    from ..batch.output import finish_run, prepare_out, write_run_info
    from ..batch.run import discover_todo, run_jobs
    from ..score.postprocess import PostProcessor

    t_start = time.perf_counter()
    out = Path(out)
    prepare_out(out)
    cfg = baseline_score_config(overrides, voxel_fpr, scan_fpr)
    t_fit = time.perf_counter()
    method.fit(train, log)
    fit_seconds = time.perf_counter() - t_fit
    method.save(out / BASELINE_DIR)
    settings = {"method": method.name, "params": method.params(), **_post_settings(cfg)}
    config_hash = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    cal = calibrate(method, calib, cfg, log)
    cal.save(out / BASELINE_DIR)
    for w in cal.warnings:
        log(f"calibration warning: {w}")
    from ..batch.scorer import calibration_for_run

    run_info = {
        "method": f"baseline:{method.name}", "baseline": method.name, "params": method.params(),
        "model_hash": cal.model_hash, "config_hash": config_hash, "score_config": settings, "calibrated": True,
        "calibration": calibration_for_run(cal), "medidiff_version": __version__,
        "train": str(train) if train else None, "calib": str(calib), "input": str(input),
        "fit_seconds": round(fit_seconds, 2), "started": now_utc(),
    }
    write_run_info(out, run_info, overwrite)
    post = PostProcessor(cfg, method.pcfg.spacing, cal)
    todo, summary = discover_todo(input, out, None, None, log)

    def score_one(volume):
        t0 = time.perf_counter()
        return post.finish(volume, method.model_map(volume), t0)

    job = ScanJob(out=out, run_info=run_info, score_one=score_one, modality=method.pcfg.modality,
                  overwrite=True, dicom_outputs=False, log=log)
    run_jobs(job, todo, summary, progress, label=method.name)
    summary.seconds = round(time.perf_counter() - t_start, 2)
    finish_run(out, summary, run_info, method=f"baseline:{method.name}", fit_seconds=round(fit_seconds, 2))
    d = dict(summary.__dict__)
    d.update(method=f"baseline:{method.name}", fit_seconds=round(fit_seconds, 2), model_hash=cal.model_hash,
             config_hash=config_hash, calibration=cal)
    return d
