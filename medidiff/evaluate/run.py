"""Evaluate a scored output folder (``medidiff score`` or ``medidiff baseline``) against ground truth.

Reads ``OUT/scans/<id>/{result.json, anomaly_map.nii.gz, mask.nii.gz, reconstruction.nii.gz}``
and writes ``OUT/evaluation/{metrics.json, summary.md, *.png}``.

Definitions (also written into metrics.json under ``definitions``):

* Sample level: the per-scan ``score``; the calibrated decision is the run's ``flag``
  (threshold chosen on healthy calibration scans, no test labels). Sensitivity at
  a fixed FPR uses a threshold set on the *evaluated* healthy scans (a metric, not
  a deployable threshold); with n healthy scans the FPR resolution is 1/n.
  95% CIs: stratified percentile bootstrap over scans (seeded).
* Voxel level: pooled over the evaluation foreground of all scans (as MOOD pools
  them). Foreground = voxels where the *source scan* is nonzero, plus every
  ground-truth voxel (``--foreground all`` uses every voxel; ``foreground="brain"`` uses each row's
  ``brain_mask_path`` from the labels, the same region for every method). Healthy scans without
  a mask contribute negatives only; anomalous scans without a mask are left out of
  voxel metrics and listed. When the pooled voxel count exceeds ``max_voxels``,
  voxels of healthy-only scans are subsampled deterministically (every k-th in
  array order) and weighted by k, so AUROC/AP/Dice stay unbiased estimates.
* Best Dice: oracle threshold on the pooled evaluated voxels (as papers report
  ⌈Dice⌉). Calibrated Dice: the run's own ``mask.nii.gz`` (threshold chosen on
  healthy calibration scans at the configured voxel FPR), computed over the whole volume.
* Lesion-wise: ground-truth connected components (26-connectivity) are found
  when the predicted mask overlaps them; predicted components touching no lesion
  are false-positive components. Size strata use each component's own volume.
  Lesion-wise precision: predicted components touching a lesion / all predicted
  components, pooled over every evaluated scan (healthy scans included).
  Chance level (calibrated masks): each scan's false-positive components, shape and
  size kept, moved to uniformly random positions of its evaluation foreground
  (the brain), ``chance_draws`` times; the lesions such a random map would "find"
  by the same overlap rule, averaged over draws and summed over scans.
  Anomaly type per component: the scan's type when it has one; for scans with
  several, the type of the lesion (``lesions.json`` next to the labels) whose
  centre lies in the component, else whose centre is nearest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..io.atomic import write_text_atomic
from ..jsonutil import now_utc as _now
from .labels import LabelRow, read_labels
from .metrics import auroc, average_precision, bootstrap_ci, sens_spec, sensitivity_at_fpr
from .options import EvalOptions
from .reconstruction import reconstruction_fidelity
from .report import markdown_summary, write_plots
from .scans import EvaluationError, MatchedScan, matched_scans, result_matcher
from .voxels import voxel_level

EVAL_DIR = "evaluation"


def _clean(o):
    """JSON-safe: NaN/Inf → None, numpy → python."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if math.isfinite(v) else None
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    return o


def _sample_metrics(y: np.ndarray, s: np.ndarray, flags: np.ndarray | None, opts: EvalOptions) -> dict[str, Any]:
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    out: dict[str, Any] = {"n_scans": int(y.size), "n_anomalous": n_pos, "n_healthy": n_neg}
    if n_pos == 0 or n_neg == 0:
        out["note"] = "needs both healthy and anomalous scans"
        return out
    boot = dict(n_resamples=opts.n_boot, seed=opts.seed)
    out["auroc"] = auroc(y, s)
    out["auroc_ci95"] = bootstrap_ci(auroc, y, s, **boot)
    out["ap"] = average_precision(y, s)
    out["ap_ci95"] = bootstrap_ci(average_precision, y, s, **boot)
    out["prevalence"] = n_pos / y.size
    if flags is not None:
        ss = sens_spec(y, flags)
        f = flags.astype(np.float64)
        out["calibrated"] = {
            "sensitivity": ss.sensitivity, "specificity": ss.specificity, "tp": ss.tp, "fn": ss.fn, "tn": ss.tn,
            "fp": ss.fp,
            "sensitivity_ci95": bootstrap_ci(lambda yy, ff: sens_spec(yy, ff > 0.5).sensitivity, y, f, **boot),
            "specificity_ci95": bootstrap_ci(lambda yy, ff: sens_spec(yy, ff > 0.5).specificity, y, f, **boot),
        }
    else:
        out["calibrated"] = None
    at_fpr = {}
    for fpr in opts.fprs:
        ss = sensitivity_at_fpr(y, s, fpr)
        at_fpr[f"{fpr:g}"] = {
            "threshold": ss.threshold, "sensitivity": ss.sensitivity, "specificity": ss.specificity,
            "fpr_resolution": 1.0 / n_neg,
            "sensitivity_ci95": bootstrap_ci(lambda yy, sc, f=fpr: sensitivity_at_fpr(yy, sc, f).sensitivity,
                                               y, s, **boot),
        }
    out["at_fpr"] = at_fpr
    return out


def evaluate_run(run_dir: str | Path, labels: str | Path | Sequence[LabelRow], masks_dir: str | Path | None = None,
                 opts: EvalOptions | None = None, out_dir: str | Path | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate ``run_dir`` against ``labels`` (a labels file, or rows already read from one, e.g. by a
    benchmark's single test-data reader); writes ``run_dir/evaluation`` (or ``out_dir``). With
    ``opts.splits`` only those splits' rows of a labels file are parsed."""
    opts = opts or EvalOptions()
    run_dir = Path(run_dir)
    if not (run_dir / "scans").is_dir():
        raise EvaluationError(f"{run_dir}: not a scored output folder (no scans/ folder)")
    out = Path(out_dir) if out_dir is not None else run_dir / EVAL_DIR
    rows, labels_desc = _label_rows(labels, masks_dir, opts)
    match = result_matcher(run_dir)
    rows, splits_used, splits_note = _select_splits(rows, opts, match)
    if not rows:
        raise EvaluationError(f"{labels}: no label rows to evaluate (splits {opts.splits})")

    scans, missing, failed = matched_scans(run_dir, rows, match)
    if missing:
        log(f"warning: {len(missing)} labelled scan(s) not in the run (not scored as anything): "
            f"{', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}")
    if failed:
        log(f"warning: {len(failed)} labelled scan(s) failed in the run and are left out: "
            f"{', '.join(f['scan_id'] for f in failed[:10])}")

    run_info = _read_run_info(run_dir)
    report: dict[str, Any] = {
        "run": str(run_dir), "labels": labels_desc, "masks_dir": str(masks_dir) if masks_dir else None,
        "evaluated": _now(), "method": run_info.get("method") or run_info.get("baseline") or "medidiff",
        "model_hash": run_info.get("model_hash"), "config_hash": run_info.get("config_hash"),
        "splits": splits_used, "splits_note": splits_note,
        "n_labelled": len(rows), "n_evaluated": len(scans), "missing": missing, "failed": failed,
        "options": {"n_boot": opts.n_boot, "seed": opts.seed, "fprs": list(opts.fprs), "foreground": opts.foreground,
                    "max_voxels": opts.max_voxels, "size_bins_mm3": list(opts.size_bins)},
        "definitions": (__doc__ or "").split("Definitions (also written into metrics.json under ``definitions``):")[-1].strip(),
    }
    if not scans:
        report["sample"] = {"note": "no labelled scan was scored successfully"}
        _write(out, report, None, opts)
        return report

    curves = _sample_level(report, scans, opts)
    voxel, vcurves = voxel_level(scans, opts, log)
    report["voxel"] = voxel
    curves.update(vcurves)
    report["reconstruction"] = reconstruction_fidelity(scans)
    _write(out, report, curves, opts)
    return report


def _label_rows(labels: str | Path | Sequence[LabelRow], masks_dir: str | Path | None,
                opts: EvalOptions) -> tuple[list[LabelRow], str]:
    """The label rows, and how the report names where they came from."""
    if isinstance(labels, (str, Path)):
        return read_labels(labels, masks_dir, splits=opts.splits), str(labels)
    rows = list(labels)
    return rows, f"{len(rows)} label rows given by the caller"


def _select_splits(rows: list[LabelRow], opts: EvalOptions, match) -> tuple[list[LabelRow], list[str], str | None]:
    """Which splits: explicit, or those with at least one scan in this run; (rows, splits, note)."""
    if opts.splits:
        return [r for r in rows if r.split in opts.splits], list(opts.splits), None
    if not any(r.split for r in rows):
        return rows, [], None
    present = sorted({r.split for r in rows if match(r) is not None and r.split})
    if not present:
        return rows, present, None
    note = f"splits not given: evaluating the split(s) present in the run: {', '.join(present)}"
    return [r for r in rows if r.split in present], present, note


def _read_run_info(run_dir: Path) -> dict[str, Any]:
    """run.json of the scored folder ({} when missing or unreadable)."""
    if (run_dir / "run.json").is_file():
        try:
            return json.loads((run_dir / "run.json").read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def _sample_level(report: dict[str, Any], scans: list[MatchedScan], opts: EvalOptions) -> dict[str, Any]:
    """Fills the report's sample-level sections; returns the sample curve for the plots."""
    y = np.array([sc.row.label for sc in scans], dtype=bool)
    s = np.array([float(sc.result["score"]) for sc in scans])
    flag_vals = [sc.result.get("flag") for sc in scans]
    flags = None if any(f is None for f in flag_vals) else np.array([bool(f) for f in flag_vals])
    report["sample"] = _sample_metrics(y, s, flags, opts)
    secs = [float(sc.result.get("seconds") or 0.0) for sc in scans]
    report["seconds_per_scan"] = float(np.mean(secs)) if secs else None
    report["scans"] = [{"scan_id": sc.row.scan_id, "label": sc.row.label, "score": float(sc.result["score"]),
                        "flag": sc.result.get("flag"), "types": sc.row.types,
                        "subject": sc.row.subject or sc.row.scan_id} for sc in scans]
    return {"sample": (y, s)}


def _write(out: Path, report: dict[str, Any], curves: dict[str, Any] | None, opts: EvalOptions) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(out, curves) if (curves and opts.plots) else []
    report["plots"] = plots
    clean = _clean(report)
    write_text_atomic(out / "metrics.json", json.dumps(clean, indent=2))
    write_text_atomic(out / "summary.md", markdown_summary(clean))
