"""The report's wording: one style for numbers, volumes and times, and the score, flag rule and
calibration in words, true for the run's score type."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from .context import RunContext, finite_float
from .explain import cm3  # one volume format everywhere

BORDERLINE = 0.25  # a score within ±25 % of the scan threshold is marked borderline


def stamp(iso: Any) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM UTC' (the one format the report uses)."""
    try:
        t = _dt.datetime.fromisoformat(str(iso))
    except (TypeError, ValueError):
        return "—"
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fmt_value(v: float | None, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def histogram_axis(ctx: RunContext) -> tuple[float, str]:
    """(divisor, x-axis label) of the score histograms: volumes in cm³, as the text says."""
    kind = ctx.score_kind
    if kind == "largest_cluster":
        return 1000.0, "largest cluster above the voxel threshold (cm³)"
    if kind == "supra_volume":
        return 1000.0, "brain volume above the voxel threshold (cm³)"
    from .explain import what_score

    return 1.0, f"scan score: {what_score(kind, ctx.run.get('score_config') or {})}"


def score_phrase(ctx: RunContext, score: float | None) -> str:
    if score is None:
        return "—"
    if ctx.volume_score:
        if (ctx.run.get("score_config") or {}).get("score") == "largest_cluster":
            return f"largest cluster {cm3(score)} cm³ above threshold"
        return f"{cm3(score)} cm³ above threshold"
    return f"{score:.3g}"


def flag_phrase(ctx: RunContext) -> str:
    thr = ctx.scan_threshold
    if thr is None:
        return ""
    return f"flag above {cm3(thr)} cm³" if ctx.volume_score else f"flag above {thr:.3g}"


def score_caption(ctx: RunContext) -> str:
    from .explain import what_score

    kind = ctx.score_kind
    if kind == "largest_cluster":
        return "Score: the largest cluster of voxels above the voxel threshold (cm³, on the model's grid)"
    if kind == "supra_volume":
        return "Score: brain volume above the voxel threshold (cm³, on the model's grid)"
    return f"Score: {what_score(kind, ctx.run.get('score_config') or {})}"


def borderline(ctx: RunContext, score: float | None) -> bool:
    thr = ctx.scan_threshold
    return score is not None and thr is not None and thr > 0 and abs(score - thr) <= BORDERLINE * thr


def rule_text(ctx: RunContext) -> str:
    """The flag rule in words, true for the run's score type."""
    from .explain import what_score

    kind, thr, vthr = ctx.score_kind, ctx.scan_threshold, fmt_value(ctx.voxel_threshold)
    if kind == "largest_cluster":
        return (f"Scans are flagged when their largest cluster of voxels above the voxel threshold ({vthr} z) "
                f"exceeds {cm3(thr)} cm³")
    if kind == "supra_volume":
        return f"Scans are flagged when more than {cm3(thr)} cm³ of brain lies above the voxel threshold ({vthr} z)"
    return f"Scans are flagged when the score ({what_score(kind, ctx.run.get('score_config') or {})}) exceeds {thr:.3g}"


def calibration_text(ctx: RunContext) -> str:
    cal = ctx.calibration
    fpr, target, n = finite_float(cal.get("achieved_scan_fpr")), finite_float(cal.get("scan_fpr")), cal.get("n_scans")
    if ctx.scan_threshold is None:
        return "Uncalibrated run: no scan threshold, no flags."
    what = rule_text(ctx)
    if fpr is None:
        return what + "."
    how = f"it flagged {100 * fpr:.1f} % of n = {n} healthy calibration scans (leave-one-out"
    how += f"; target {100 * target:.1f} %)" if target is not None else ")"
    return f"{what}; {how}. Borderline: within ±{int(100 * BORDERLINE)} % of the threshold."
