"""Offline HTML report of a scoring run: ``OUT/report/index.html`` + one page per scan.

The report folder is self-contained: inline CSS/JS, PNGs next to the pages,
relative links only, so it opens from disk (or a copied folder) without a
network. Layout::

    OUT/report/index.html               all scans, sortable/filterable; counts; evaluation
    OUT/report/assets/*.png             run-level figures (score histogram, ROC/PR)
    OUT/report/scans/<scan_id>.html     one page per scan
    OUT/report/scans/<scan_id>/*.png    its views

Patient identifiers (DICOM PatientName / PatientID) and DICOM source folders
(often named after the patient) are left out unless ``show_phi=True``; known
identifier strings are also redacted from error and warning texts.

The report is rebuilt from scratch in a staging folder and swapped in, so an
interrupted build never leaves a half-written report behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import numpy as np

REPORT_DIR = "report"
EVAL_DIR = "evaluation"
REDACTED = "[redacted]"
TEMPLATES = Path(__file__).parent / "templates"


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
    phi_strings: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _healthy_scores(run: dict[str, Any], notes: list[str]) -> list[float]:
    model_dir = run.get("model_dir")
    if not model_dir:
        return []
    cal = _read_json(Path(model_dir) / "calibration.json")
    if not cal:
        if run.get("calibrated"):
            notes.append(f"healthy score distribution unavailable: {model_dir}/calibration.json not readable")
        return []
    if run.get("model_hash") and cal.get("model_hash") not in (None, run.get("model_hash")):
        notes.append("calibration.json in the model folder belongs to another model: healthy distribution not shown")
        return []
    return [f for f in (_num(v) for v in cal.get("healthy_scores") or []) if f is not None]


def read_label_map(path: str | Path) -> dict[str, int]:
    """scan_id → 0/1 from a labels CSV (same columns as ``medidiff evaluate``)."""
    try:
        from ..evaluate.labels import read_labels
    except ImportError:  # pragma: no cover - evaluation module absent
        read_labels = None
    if read_labels is not None:
        return {r.scan_id: int(r.label) for r in read_labels(path)}
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for r in rows:
        low = {k.strip().lower(): (v or "").strip().lower() for k, v in r.items() if k}
        sid = next((r[k] for k in r if k and k.strip().lower() in ("scan_id", "name", "id")), None)
        lab = next((low[k] for k in ("label", "anomalous", "anomaly", "abnormal") if k in low), None)
        if sid and lab is not None:
            out[sid.strip()] = 1 if lab in {"1", "true", "yes", "anomalous", "abnormal", "lesion", "1.0"} else 0
    return out


def _context(out: Path, labels: str | Path | None, show_phi: bool) -> RunContext:
    run = _read_json(out / "run.json")
    summary = _read_json(out / "summary.json")
    notes: list[str] = []
    if not run:
        notes.append("run.json missing or unreadable: provenance incomplete")
    cal = run.get("calibration") or {}
    cfg = run.get("score_config") or {}
    calibrated = bool(run.get("calibrated"))
    if calibrated and cfg.get("normalization", "voxelwise") != "none":
        map_label = "anomaly (residual in healthy-variation units)"
    elif calibrated:
        map_label = "anomaly (smoothed residual)"
    else:
        map_label = "anomaly (raw residual, uncalibrated)"
    return RunContext(out=out, run=run, summary=summary, healthy_scores=_healthy_scores(run, notes),
                      voxel_threshold=_num(cal.get("voxel_threshold")), scan_threshold=_num(cal.get("scan_threshold")),
                      map_label=map_label, labels=read_label_map(labels) if labels else None, show_phi=show_phi,
                      notes=notes)


# --------------------------------------------------------------------------------------------
# per scan


@dataclass
class ScanEntry:
    scan_id: str
    result: dict[str, Any]
    scan_dir: Path
    page: str = ""
    status: str = "ok"
    score: float | None = None
    percentile: float | None = None
    flag: bool | None = None
    label: int | None = None
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    source: str = ""
    source_short: str = ""
    render_error: str = ""
    views: Any = None
    phi: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    hist: str | None = None
    render_seconds: float = 0.0


def _is_dicom(fmt: str | None) -> bool:
    return str(fmt or "").lower().startswith("dicom")


def _load_source(entry: ScanEntry):
    """The source scan as a Volume (None when it cannot be read any more)."""
    from ..io.discover import discover

    src = entry.result.get("source_path")
    if not src or not Path(src).exists():
        raise FileNotFoundError("source scan not found at its recorded path")
    found = discover(src)
    refs = [r for r in found.scans if r.scan_id == entry.scan_id] or found.scans
    if not refs:
        raise FileNotFoundError("no scan found at the recorded source path")
    if len(refs) > 1:
        refs = [r for r in refs if str(r.source) == str(src)] or refs
    return refs[0].load()


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    import nibabel as nib

    if not path.is_file():
        return None
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def _render_entry(ctx: RunContext, entry: ScanEntry, page_dir: Path, log: Callable[[str], None]) -> None:
    from .render import render_scan, score_histogram

    t0 = time.perf_counter()
    img_dir = page_dir / entry.scan_id
    if ctx.healthy_scores and entry.score is not None:
        score_histogram(img_dir / "distribution.png", ctx.healthy_scores, marker=entry.score,
                        threshold=ctx.scan_threshold, title="this scan vs healthy calibration scores")
        entry.hist = "distribution.png"
    if entry.status != "ok":
        entry.render_seconds = time.perf_counter() - t0
        return
    outputs = entry.result.get("outputs") or {}
    amap = _load_nifti(entry.scan_dir / outputs.get("anomaly_map", "anomaly_map.nii.gz"))
    if amap is None:
        entry.render_error = "anomaly_map.nii.gz missing"
        return
    amap_arr, affine = amap
    mask = _load_nifti(entry.scan_dir / outputs["mask"]) if outputs.get("mask") else None
    recon = _load_nifti(entry.scan_dir / outputs["reconstruction"]) if outputs.get("reconstruction") else None
    scan_arr = None
    try:
        vol = _load_source(entry)
        if vol.shape != tuple(amap_arr.shape) or not np.allclose(vol.affine, affine, atol=1e-3):
            raise ValueError(f"source scan grid {vol.shape} no longer matches the anomaly map {amap_arr.shape}")
        scan_arr = vol.array
        prov = vol.provenance
        for s in (prov.patient_id, prov.patient_name):
            if s and str(s).strip():
                ctx.phi_strings.add(str(s).strip())
        if ctx.show_phi:
            entry.phi = {"patient name": str(prov.patient_name or ""), "patient ID": str(prov.patient_id or "")}
        d = prov.to_dict(include_phi=False)
        n_files = len(d.pop("source_paths", []) or [])
        d.pop("warnings", None)
        d.pop("scan_id", None)
        d.pop("format", None)
        entry.provenance = {k: v for k, v in d.items() if v not in (None, "", [])}
        entry.provenance["files"] = n_files
        entry.provenance["stored orientation"] = vol.orientation
    except Exception as exc:  # the map is still worth showing
        entry.render_error = f"source scan not shown: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    entry.views = render_scan(img_dir, amap_arr, affine, scan=scan_arr,
                              mask=mask[0] if mask is not None else None,
                              recon=recon[0] if recon is not None else None,
                              threshold=ctx.voxel_threshold, map_label=ctx.map_label)
    entry.render_seconds = time.perf_counter() - t0


def _entries(ctx: RunContext) -> list[ScanEntry]:
    entries = []
    for path in sorted((ctx.out / "scans").glob("*/result.json")):
        res = _read_json(path)
        if not res:
            res = {"scan_id": path.parent.name, "status": "failed", "error": "result.json unreadable"}
        sid = str(res.get("scan_id") or path.parent.name)
        flag = res.get("flag")
        e = ScanEntry(scan_id=path.parent.name, result=res, scan_dir=path.parent,
                      status=str(res.get("status") or "failed"), score=_num(res.get("score")),
                      percentile=_num(res.get("percentile")), flag=None if flag is None else bool(flag),
                      warnings=[str(w) for w in res.get("warnings") or []], error=str(res.get("error") or ""),
                      source=str(res.get("source_path") or ""))
        if ctx.labels is not None:
            e.label = ctx.labels.get(sid, ctx.labels.get(e.scan_id))
        e.page = f"scans/{quote(e.scan_id)}.html"
        entries.append(e)
    # highest score first; failures at the end
    entries.sort(key=lambda e: (e.status != "ok", -(e.score if e.score is not None else -np.inf), e.scan_id))
    return entries


def _shorten(ctx: RunContext, entries: list[ScanEntry]) -> None:
    """Source paths relative to the scored input folder, for the index table."""
    root = str(ctx.run.get("input") or "").rstrip("/")
    for e in entries:
        e.source_short = e.source
        if root and e.source.startswith(root + "/"):
            e.source_short = e.source[len(root) + 1:]


def _redact(ctx: RunContext, entries: list[ScanEntry]) -> None:
    """Hide DICOM source folders and any known identifier strings (unless show_phi)."""
    if ctx.show_phi:
        _shorten(ctx, entries)
        return
    for e in entries:
        texts = [e.error, *e.warnings, e.render_error]
        if _is_dicom(e.result.get("format")) and e.source:
            texts = [t.replace(e.source, "<DICOM series folder>") for t in texts]
            e.source = "DICOM series (folder hidden; --show-phi shows it)"
        for s in sorted(ctx.phi_strings, key=len, reverse=True):
            texts = [t.replace(s, REDACTED) for t in texts]
            e.source = e.source.replace(s, REDACTED)
        e.error, e.render_error, e.warnings = texts[0], texts[-1], texts[1:-1]
        e.provenance = {k: _redact_text(v, ctx.phi_strings) for k, v in e.provenance.items()}
    _shorten(ctx, entries)


def _redact_text(v: Any, phi: set[str]) -> Any:
    if not isinstance(v, str):
        return v
    for s in sorted(phi, key=len, reverse=True):
        v = v.replace(s, REDACTED)
    return v


# --------------------------------------------------------------------------------------------
# run level


def _evaluation(ctx: RunContext, dest: Path, entries: list[ScanEntry]) -> dict[str, Any]:
    """Evaluation module outputs (copied into the report) and label-based curves."""
    ev: dict[str, Any] = {"images": [], "metrics": None, "summary_md": None, "labels": None}
    src = ctx.out / EVAL_DIR
    if src.is_dir():
        for png in sorted(src.glob("*.png")):
            (dest / "evaluation").mkdir(parents=True, exist_ok=True)
            shutil.copy2(png, dest / "evaluation" / png.name)
            ev["images"].append({"src": f"evaluation/{quote(png.name)}", "name": png.stem.replace("_", " ")})
        metrics = src / "metrics.json"
        if metrics.is_file():
            try:
                ev["metrics"] = json.loads(metrics.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                ev["metrics"] = {"error": f"metrics.json unreadable: {exc}"}
        if (src / "summary.md").is_file():
            ev["summary_md"] = (src / "summary.md").read_text(errors="replace")
    if ctx.labels is not None:
        pairs = [(e.label, e.score) for e in entries if e.label is not None and e.score is not None]
        info: dict[str, Any] = {"n_labelled": len(pairs), "n_unlabelled": sum(e.label is None for e in entries)}
        ys = [p[0] for p in pairs]
        if pairs and 0 < sum(ys) < len(ys):
            from .render import curves

            info.update(curves(dest / "assets", ys, [p[1] for p in pairs]))
            info["images"] = [{"src": "assets/roc.png", "name": "ROC (labels)"},
                              {"src": "assets/pr.png", "name": "precision–recall (labels)"}]
        else:
            info["note"] = "curves need scored scans of both classes"
        ev["labels"] = info
    ev["present"] = bool(ev["images"] or ev["metrics"] or ev["summary_md"] or ev["labels"])
    return ev


def _metric_rows(metrics: Any) -> list[tuple[str, str]]:
    """Top-level keys of metrics.json as (name, value-text) rows, generically."""
    if not isinstance(metrics, dict):
        return [("metrics", _fmt_any(metrics))]
    return [(str(k), _fmt_any(v)) for k, v in metrics.items()]


def _fmt_any(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        text = json.dumps(v, indent=1, default=str)
        return text if len(text) < 4000 else text[:4000] + " …"
    return str(v)


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "—" if v is None else format(v, spec)


def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["q"] = quote
    return env


def build_report(out_dir: str | Path, labels: str | Path | None = None, show_phi: bool = False,
                 log: Callable[[str], None] | None = None) -> Path:
    """Build ``OUT/report/`` for the scoring run in ``out_dir``; returns the index.html path."""
    log = log or (lambda m: None)
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: not a scoring output folder")
    ctx = _context(out, labels, show_phi)
    entries = _entries(ctx)
    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        (stage / "scans").mkdir()
        (stage / "assets").mkdir()
        for e in entries:
            try:
                _render_entry(ctx, e, stage / "scans", log)
            except Exception as exc:  # one bad scan never stops the report
                first = str(exc).splitlines()[0] if str(exc) else ""
                e.render_error = f"views not rendered: {type(exc).__name__}: {first}"
                log(f"report: {e.scan_id}: {e.render_error}")
        _redact(ctx, entries)
        run_hist = None
        scores = [e.score for e in entries if e.score is not None]
        if ctx.healthy_scores or scores:
            from .render import score_histogram

            score_histogram(stage / "assets" / "scores.png", ctx.healthy_scores, scores=scores,
                            threshold=ctx.scan_threshold, title="scan scores: this run vs healthy calibration")
            run_hist = "assets/scores.png"
        evaluation = _evaluation(ctx, stage, entries)
        env = _env()
        counts = {
            "total": len(entries),
            "ok": sum(e.status == "ok" for e in entries),
            "failed": sum(e.status != "ok" for e in entries),
            "flagged": sum(bool(e.flag) for e in entries),
            "warnings": sum(bool(e.warnings) for e in entries),
            "skipped_files": len(ctx.summary.get("skipped_files") or []),
        }
        run = ctx.run
        t_star = run.get("t_star")
        provenance = {
            "model hash": str(run.get("model_hash") or "—"),
            "settings hash": str(run.get("config_hash") or "—"),
            "t* (timesteps)": ", ".join(str(t) for t in t_star) if isinstance(t_star, list) else str(t_star or "—"),
            "calibrated": "yes" if run.get("calibrated") else "no (no thresholds, flags or percentiles)",
            "voxel threshold": _fmt(ctx.voxel_threshold),
            "scan threshold": _fmt(ctx.scan_threshold),
            "medidiff version": str(run.get("medidiff_version") or "—"),
            "scoring started": str(run.get("started") or "—"),
            "scoring finished": str(ctx.summary.get("finished") or "—"),
        }
        built = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        common = dict(provenance=provenance, score_config=run.get("score_config") or {}, built=built,
                      show_phi=show_phi, map_label=ctx.map_label, has_labels=ctx.labels is not None)
        for e in entries:
            page = env.get_template("scan.html.j2").render(e=e, ctx=ctx, **common)
            (stage / "scans" / f"{e.scan_id}.html").write_text(page, encoding="utf-8")
        index = env.get_template("index.html.j2").render(
            entries=entries, counts=counts, notes=ctx.notes, run_hist=run_hist, evaluation=evaluation,
            metric_rows=_metric_rows(evaluation["metrics"]) if evaluation["metrics"] is not None else [],
            skipped=ctx.summary.get("skipped_files") or [], **common)
        (stage / "index.html").write_text(index, encoding="utf-8")
        dest = out / REPORT_DIR
        old = None
        if dest.exists():
            old = out / f".report-old-{stage.name}"
            dest.rename(old)
        stage.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log(f"report: {len(entries)} scans → {dest / 'index.html'}")
    return dest / "index.html"
