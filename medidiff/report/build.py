"""Offline HTML report of a scoring run: ``OUT/report/index.html`` + one page per scan.

The report folder is self-contained: inline CSS/JS, PNGs next to the pages, the
slice scroller's volume embedded in each scan page, relative links only, so it
opens from disk without a network. Layout::

    OUT/report/index.html               all scans, sortable/filterable; counts; evaluation
    OUT/report/assets/*.png             run-level figures (colour scale, score histogram, ROC/PR)
    OUT/report/scans/<scan_id>.html     one page per scan (links to its outputs in OUT/scans/<scan_id>/)
    OUT/report/scans/<scan_id>/*.png    its views and index thumbnail

Every anomaly colour in the report uses one colour scale for the whole run
(``assets/colourbar.png``), so a colour means the same value on every page.

Patient identifiers (DICOM PatientName / PatientID), Study/Series Instance UIDs
and DICOM source folders (often named after the patient) are left out unless
``show_phi=True``; known identifier strings are also redacted from error and
warning texts.

The report is rebuilt from scratch in a staging folder and swapped in, so an
interrupted build never leaves a half-written report behind.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import numpy as np

from .context import RunContext, run_context
from .entries import REPORT_DIR, ScanEntry, explain_scan, redact, scan_entries, scan_links
from .evaluation import evaluation_section
from .explain import SCATTERED_FRACTION, WIDESPREAD_FRACTION, cm3
from .scan_views import load_nifti, render_entry
from .wording import (borderline, calibration_text, flag_phrase, fmt_value, histogram_axis, score_caption,
                      score_phrase, stamp)

TEMPLATES = Path(__file__).parent / "templates"


def _run_scale(ctx: RunContext, entries: list[ScanEntry]):
    """One colour scale for every page. Without a voxel threshold it needs one pass over
    the maps first (the largest per-scan 99.9th percentile)."""
    from .render import run_scale

    tops: list[float] = []
    if ctx.voxel_threshold is None:
        for e in entries:
            name = (e.result.get("outputs") or {}).get("anomaly_map", "anomaly_map.nii.gz")
            m = load_nifti(e.scan_dir / name) if e.status == "ok" else None
            if m is not None:
                a = np.asarray(m[0], np.float32)
                a = a[np.isfinite(a)]
                if a.size:
                    tops.append(float(np.percentile(a, 99.9)))
    return run_scale(ctx.voxel_threshold, ctx.map_label, tops)


def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt_value
    env.filters["q"] = quote
    env.filters["cm3"] = cm3
    env.filters["stamp"] = stamp
    return env


def _run_times(entries: list[ScanEntry]) -> str:
    """When the results were produced: the last scan's finishing time (one run timestamp)."""
    done = [str(e.result.get("finished")) for e in entries if e.result.get("finished")]
    return stamp(max(done, key=lambda s: stamp(s))) if done else "—"


def build_report(out_dir: str | Path, labels: str | Path | None = None, show_phi: bool = False,
                 log: Callable[[str], None] | None = None) -> Path:
    """Build ``OUT/report/`` for the scoring run in ``out_dir``; returns the index.html path."""
    from .render import render_colourbar

    log = log or (lambda m: None)
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: not a scoring output folder")
    ctx = run_context(out, labels, show_phi)
    entries = scan_entries(ctx)
    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        (stage / "scans").mkdir()
        (stage / "assets").mkdir()
        ctx.scale = _run_scale(ctx, entries)
        render_colourbar(stage / "assets" / "colourbar.png", ctx.scale)
        _render_scans(ctx, entries, stage / "scans", log)
        redact(ctx, entries)
        run_hist = _run_histogram(ctx, entries, stage / "assets")
        evaluation = evaluation_section(ctx, stage, entries)
        _write_pages(ctx, entries, stage, run_hist, evaluation)
        dest = out / REPORT_DIR
        _swap_in(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log(f"report: {len(entries)} scans → {dest / 'index.html'}")
    return dest / "index.html"


def _render_scans(ctx: RunContext, entries: list[ScanEntry], page_dir: Path, log: Callable[[str], None]) -> None:
    """Every scan's views, links and sentence; one bad scan never stops the report."""
    for e in entries:
        try:
            render_entry(ctx, e, page_dir)
        except Exception as exc:  # one bad scan never stops the report
            first = str(exc).splitlines()[0] if str(exc) else ""
            e.render_error = f"views not rendered: {type(exc).__name__}: {first}"
            log(f"report: {e.scan_id}: {e.render_error}")
        e.links = scan_links(ctx, e)
        explain_scan(ctx, e)


def _run_histogram(ctx: RunContext, entries: list[ScanEntry], assets: Path) -> str | None:
    """This run's scan scores against the healthy calibration scores (None without either)."""
    from .render import score_histogram

    scores = [e.score for e in entries if e.score is not None]
    if not (ctx.healthy_scores or scores):
        return None
    div, xlabel = histogram_axis(ctx)
    score_histogram(assets / "scores.png", [h / div for h in ctx.healthy_scores],
                    scores=[v / div for v in scores],
                    threshold=ctx.scan_threshold / div if ctx.scan_threshold is not None else None,
                    title="scan scores: this run vs healthy calibration", xlabel=xlabel)
    return "assets/scores.png"


def _counts(ctx: RunContext, entries: list[ScanEntry]) -> dict[str, int]:
    return {
        "total": len(entries),
        "ok": sum(e.status == "ok" for e in entries),
        "failed": sum(e.status != "ok" for e in entries),
        "flagged": sum(bool(e.flag) for e in entries),
        "borderline": sum(borderline(ctx, e.score) for e in entries),
        "warnings": sum(bool(e.all_warnings) for e in entries),
        "focal": sum(e.pattern == "focal" for e in entries),
        "widespread": sum(e.pattern == "widespread" for e in entries),
        "skipped_files": len(ctx.summary.get("skipped_files") or []),
    }


def _provenance(ctx: RunContext, scored: str) -> dict[str, str]:
    """The run's model, settings, thresholds and colour scale, as every page shows them."""
    run = ctx.run
    t_star = run.get("t_star")
    return {
        "model hash": str(run.get("model_hash") or "—"),
        "settings hash": str(run.get("config_hash") or "—"),
        "t* (timesteps)": ", ".join(str(t) for t in t_star) if isinstance(t_star, list) else str(t_star or "—"),
        "calibrated": "yes" if run.get("calibrated") else "no (no thresholds, flags or percentiles)",
        "voxel threshold": f"{fmt_value(ctx.voxel_threshold)} z" if ctx.voxel_threshold is not None else "—",
        "scan threshold": flag_phrase(ctx).replace("flag above ", "") or "—",
        "colour scale": f"0 – {ctx.scale.vmax:g} ({ctx.scale.label}); brighter values clipped, drawn white",
        "medidiff version": str(run.get("medidiff_version") or "—"),
        "results as of": scored,
    }


def _write_pages(ctx: RunContext, entries: list[ScanEntry], stage: Path, run_hist: str | None,
                 evaluation: dict[str, Any]) -> None:
    """One page per scan and the index, from the templates."""
    env = _env()
    counts = _counts(ctx, entries)
    built = stamp(_dt.datetime.now(_dt.timezone.utc).isoformat())
    scored = _run_times(entries)
    provenance = _provenance(ctx, scored)
    common = dict(provenance=provenance, score_config=ctx.run.get("score_config") or {}, built=built, scored=scored,
                  show_phi=ctx.show_phi, map_label=ctx.map_label, has_labels=ctx.labels is not None, ctx=ctx,
                  scale=ctx.scale, score_phrase=lambda s: score_phrase(ctx, s),
                  borderline=lambda s: borderline(ctx, s), flag_phrase=flag_phrase(ctx),
                  calibration_text=calibration_text(ctx), cal_state=ctx.cal_state,
                  score_caption=score_caption(ctx), widespread_fraction=WIDESPREAD_FRACTION,
                  scattered_fraction=SCATTERED_FRACTION)
    for e in entries:
        page = env.get_template("scan.html.j2").render(e=e, **common)
        (stage / "scans" / f"{e.scan_id}.html").write_text(page, encoding="utf-8")
    index = env.get_template("index.html.j2").render(
        entries=entries, counts=counts, notes=ctx.notes, run_hist=run_hist, evaluation=evaluation,
        skipped=ctx.summary.get("skipped_files") or [], **common)
    (stage / "index.html").write_text(index, encoding="utf-8")


def _swap_in(stage: Path, dest: Path) -> None:
    """Replace ``dest`` with the finished ``stage`` (the old report is removed only afterwards)."""
    old = None
    if dest.exists():
        old = dest.parent / f".report-old-{stage.name}"
        dest.rename(old)
    stage.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
