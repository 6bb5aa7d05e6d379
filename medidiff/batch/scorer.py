"""The scorer a batch run uses: the model, its method (method.json), the settings and the
calibration, applied only when it is valid for them (Dask workers build theirs the same way)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable


def resolve_settings(model_dir: str | Path, calibration, config_path: str | Path | None,
                     overrides: tuple[str, ...], log: Callable[[str], None]):
    """(ScoreConfig, Method | None): the model's method (method.json), or ``--config``, plus ``--set``.
    A folder without method.json scores with its calibration's settings, or the defaults without
    one; either is said in one log line."""
    from ..score.config import load_score_config
    from ..score.method import METHOD_FILE, load_method

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
    from ..score.calibration import Calibration
    from ..score.method import format_diff, method_diff
    from ..score.pipeline import Scorer
    from ..score.postprocess import PostProcessor
    from ..model.store import load_model

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
