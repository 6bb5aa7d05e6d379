"""Calibrate a model folder (``medidiff calibrate``): score held-out healthy scans with the model's
method and store the calibration (:mod:`medidiff.score.calibration`) next to its weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..score.calibration import Calibration, CalibrationError, calibrate_maps
from ..score.config import ScoreConfig


def collect_maps(scans, make_map: Callable, log: Callable[[str], None], progress: bool = False,
                 label: str = "calibrating"):
    """Model-grid maps of healthy scans; a scan that fails is logged and left out."""
    from rich.progress import Progress

    maps, ids = [], []
    with Progress(disable=not progress) as bar:
        task = bar.add_task(label, total=len(scans))
        for ref in scans:
            try:
                maps.append(make_map(ref.load()))
                ids.append(ref.scan_id)
            except Exception as exc:  # one bad healthy scan must not stop calibration
                log(f"calibration: failed: {ref.source}: {exc}")
            bar.advance(task)
    return maps, ids


def calibration_settings(model_dir: str | Path, config_path: str | Path | None, overrides: tuple[str, ...],
                         log=print) -> tuple[ScoreConfig, Any]:
    """The settings a calibration is made with: the model's method (method.json) plus explicit
    ``--set``/``--config``; every setting that then differs from the method is logged, so a
    recalibration never changes the method silently. A folder without method.json starts from its
    existing calibration's settings, else from the defaults (said in one line)."""
    from ..score.config import load_score_config
    from ..score.method import METHOD_FILE, format_diff, load_method, method_diff

    method = load_method(model_dir)
    base = None
    if method is not None:
        base = method.score_config
    else:
        try:
            old = Calibration.load(model_dir)
        except CalibrationError:
            old = None
        if old is not None and config_path is None:
            base = old.score_config
            log(f"{model_dir}: no {METHOD_FILE}: starting from the settings of its existing calibration")
        elif config_path is None:
            log(f"{model_dir}: no {METHOD_FILE}: starting from the default settings (not a validated method; "
                f"copy the {METHOD_FILE} of the model you started from to keep its method)")
    cfg = load_score_config(config_path, overrides, base=None if config_path is not None else base)
    if method is not None:
        diff = method_diff(method.score_config, cfg)
        if diff:
            sets = " ".join(f"--set score.{k}={json.dumps(b, separators=(',', ':'))}" for k, _, b in diff)
            log(f"settings differ from the model's method ({method.describe()}):\n" + "\n".join(format_diff(diff))
                + f"\n  `medidiff score` uses the method: pass the same {sets} when scoring, or this calibration "
                  "will not apply")
        else:
            log(f"settings: the model's method ({method.describe()})")
    return cfg, method


def calibrate_model(model_dir: str | Path, healthy: str | Path, *, overrides: tuple[str, ...] = (),
                    config_path: str | Path | None = None, device: str = "auto", limit: int | None = None,
                    progress: bool = True, log=print) -> Calibration:
    """Score held-out healthy scans with the model and store the calibration in its folder."""
    from ..io.discover import discover
    from ..runtime import resolve_device, set_threads
    from ..score.pipeline import Scorer
    from ..model.store import load_model

    set_threads(power_of_two=True)
    loaded = load_model(model_dir, device=resolve_device(device))
    cfg, method = calibration_settings(model_dir, config_path, overrides, log)
    found = discover(healthy)
    for s in found.skipped:
        log(f"skipped: {s.path}: {s.reason}")
    scans = found.scans[:limit] if limit else found.scans
    scorer = Scorer(loaded, cfg, calibration=None)
    maps, ids = collect_maps(scans, scorer.first_pass, log, progress)
    cal = calibrate_maps(maps, ids, scorer.post, model_hash=loaded.model_hash, runtime=scorer.runtime_settings(),
                         refine=scorer.refine if cfg.refine else None)
    cal.save(model_dir)
    return cal
