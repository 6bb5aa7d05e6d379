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
import json
import math
import os
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
BORDERLINE = 0.25  # a score within ±25 % of the scan threshold is marked borderline
# Files a scan folder may hold, in the order the page lists them, with what they are.
OUTPUT_FILES = {
    "anomaly_map": "anomaly map (NIfTI float32, the scan's grid)",
    "mask": "voxels above the voxel threshold (NIfTI uint8)",
    "brain_mask": "brain mask (NIfTI)",
    "reconstruction": "reconstruction (NIfTI)",
    "segmentation": "DICOM Segmentation of the mask",
    "parametric_map": "DICOM Parametric Map of the anomaly map",
}
QC_KEYS = ("brain_volume_ml", "brain_volume_mm3", "registration_similarity", "registration_ncc")


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
        vals = [_num(v) for v in (sp.get("max") or [])]
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


def _model_calibration(run: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """The model folder's calibration.json when it belongs to this run's model, else {}."""
    model_dir = run.get("model_dir")
    if not model_dir:
        return {}
    cal = _read_json(Path(model_dir) / "calibration.json")
    if not cal:
        if run.get("calibrated"):
            notes.append("healthy score distribution unavailable: the model folder's calibration.json is not readable")
        return {}
    if run.get("model_hash") and cal.get("model_hash") not in (None, run.get("model_hash")):
        notes.append("calibration.json in the model folder belongs to another model: healthy distribution not shown")
        return {}
    return cal


def _healthy_scores(cal: dict[str, Any]) -> list[float]:
    return [f for f in (_num(v) for v in cal.get("healthy_scores") or []) if f is not None]


def read_label_map(path: str | Path) -> tuple[dict[str, int], dict[str, Path]]:
    """scan_id → 0/1 and scan_id → ground-truth mask path, from a labels CSV (the
    columns ``medidiff evaluate`` reads)."""
    from ..evaluate.labels import read_labels

    rows = read_labels(path)
    return {r.scan_id: int(r.label) for r in rows}, {r.scan_id: r.mask_path for r in rows if r.mask_path}


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
        map_label = "anomaly (z: units of healthy variation)"
    elif calibrated:
        map_label = "anomaly (smoothed residual)"
    else:
        map_label = "anomaly (raw residual, uncalibrated)"
    label_map, gt_masks = read_label_map(labels) if labels else (None, {})
    from .explain import calibration_state

    model_cal = _model_calibration(run, notes)
    model = _read_json(Path(run["model_dir"]) / "model.json") if run.get("model_dir") else {}
    if run.get("model_hash") and model.get("model_hash") not in (None, run.get("model_hash")):
        model = {}
    return RunContext(out=out, run=run, summary=summary, healthy_scores=_healthy_scores(model_cal),
                      voxel_threshold=_num(cal.get("voxel_threshold")), scan_threshold=_num(cal.get("scan_threshold")),
                      map_label=map_label, labels=label_map, gt_masks=gt_masks, show_phi=show_phi, notes=notes,
                      cal_state=calibration_state(run, model_cal), model=model)


# --------------------------------------------------------------------------------------------
# formatting: one style for numbers, volumes and times across the report


from .explain import SCATTERED_FRACTION, WIDESPREAD_FRACTION, cm3  # noqa: E402  (one volume format everywhere)


def stamp(iso: Any) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM UTC' (the one format the report uses)."""
    try:
        t = _dt.datetime.fromisoformat(str(iso))
    except (TypeError, ValueError):
        return "—"
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


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
    gt_note: str = ""
    views: Any = None
    clusters: Any = None  # clusters.ClusterStats
    scroller: tuple[str, str] | None = None  # (metadata JSON, base64 volume)
    has_gt: bool = False
    series_description: str = ""
    phi: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    qc: dict[str, Any] = field(default_factory=dict)
    links: list[dict[str, Any]] = field(default_factory=list)
    prev: Any = None
    next: Any = None
    hist: str | None = None
    render_seconds: float = 0.0
    sentence: str = ""
    pattern: str | None = None  # focal | widespread (scans with voxels above the threshold)
    unlike: list[str] = field(default_factory=list)  # what makes the scan unlike the model's data
    brain_mm3: float | None = None  # brain volume on the scan's grid (brain_mask.nii.gz, else QC)
    short_error: str = ""
    checks: list[Any] = field(default_factory=list)  # explain.Check: the failed value against its limit
    failed_view: dict[str, Any] | None = None  # image of a failed scan with its brain mask
    qc_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def all_warnings(self) -> list[str]:
        return [*self.warnings, *self.unlike]

    @property
    def thumb(self) -> str | None:
        if self.views is not None and "thumb" in self.views.files:
            return f"scans/{quote(self.scan_id)}/{self.views.files['thumb']}"
        if self.failed_view and self.failed_view.get("thumb"):
            return f"scans/{quote(self.scan_id)}/{self.failed_view['thumb']}"
        return None


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


def _same_grid(shape: tuple, affine: np.ndarray, arr: np.ndarray, aff: np.ndarray) -> bool:
    return tuple(arr.shape) == tuple(shape) and np.allclose(aff, affine, atol=1e-3)


def _source_info(ctx: RunContext, entry: ScanEntry, shape: tuple, affine: np.ndarray) -> np.ndarray:
    """The source scan's pixels (for display) and its provenance, minus identifiers."""
    vol = _load_source(entry)
    if not _same_grid(shape, affine, vol.array, vol.affine):
        raise ValueError(f"source scan grid {vol.shape} no longer matches the anomaly map {tuple(shape)}")
    prov = vol.provenance
    for s in (prov.patient_id, prov.patient_name, prov.study_uid, prov.series_uid):
        if s and str(s).strip():
            ctx.phi_strings.add(str(s).strip())
    if ctx.show_phi:
        entry.phi = {"patient name": str(prov.patient_name or ""), "patient ID": str(prov.patient_id or "")}
    d = prov.to_dict(include_phi=False)
    n_files = len(d.pop("source_paths", []) or [])
    for k in ("warnings", "scan_id", "format", *(() if ctx.show_phi else ("study_uid", "series_uid"))):
        d.pop(k, None)
    entry.series_description = str(prov.series_description or "")
    entry.provenance = {k: v for k, v in d.items() if v not in (None, "", [])}
    entry.provenance["files"] = n_files
    entry.provenance["stored orientation"] = vol.orientation
    return vol.array


def _ground_truth(ctx: RunContext, entry: ScanEntry, shape: tuple, affine: np.ndarray) -> np.ndarray | None:
    path = ctx.gt_masks.get(entry.scan_id) or ctx.gt_masks.get(str(entry.result.get("scan_id") or ""))
    if path is None:
        return None
    gt = _load_nifti(Path(path))
    if gt is None:
        entry.gt_note = f"ground-truth mask {Path(path).name} not found: contour not drawn"
    elif not _same_grid(shape, affine, gt[0], gt[1]):
        entry.gt_note = (f"ground-truth mask {Path(path).name} is on another grid ({tuple(gt[0].shape)}) than the "
                         f"scan ({tuple(shape)}): contour not drawn")
    else:
        return np.asarray(gt[0]) > 0
    return None


def _histogram_axis(ctx: RunContext) -> tuple[float, str]:
    """(divisor, x-axis label) of the score histograms: volumes in cm³, as the text says."""
    kind = ctx.score_kind
    if kind == "largest_cluster":
        return 1000.0, "largest cluster above the voxel threshold (cm³)"
    if kind == "supra_volume":
        return 1000.0, "brain volume above the voxel threshold (cm³)"
    from .explain import what_score

    return 1.0, f"scan score: {what_score(kind, ctx.run.get('score_config') or {})}"


def _failed_view(ctx: RunContext, entry: ScanEntry, img_dir: Path) -> None:
    """A failed scan's image with the brain mask its front end finds, and that mask's volume."""
    from .render import render_failed

    try:
        vol = _load_source(entry)
    except Exception as exc:
        entry.failed_view = {"note": "The scan could not be read again, so there is no image to show "
                                     f"({type(exc).__name__})."}
        return
    prov = vol.provenance
    for s in (prov.patient_id, prov.patient_name, prov.study_uid, prov.series_uid):
        if s and str(s).strip():
            ctx.phi_strings.add(str(s).strip())
    brain, note, method = None, "", ""
    fe = (ctx.model.get("preprocess") or {}).get("frontend") or {}
    if ctx.template_space:
        try:
            from ..frontend.brain import brain_mask, resolve_method

            method = resolve_method(str(fe.get("brain", "auto")), vol, str(ctx.model["preprocess"].get("modality", "mri")),
                                    float(fe.get("max_brain_ml", 2100.0)))
            brain = np.asarray(brain_mask(vol, method), bool)
        except Exception as exc:  # the image is still worth showing
            note = f"brain mask not recomputed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    else:
        note = "this model scores in scan space: it has no brain-extraction step, so no brain mask is drawn"
    view = render_failed(img_dir, np.asarray(vol.array, np.float32), vol.affine, brain)
    view.update(note=note, method=method)
    if brain is not None:
        ml = float(brain.sum()) * abs(float(np.linalg.det(vol.affine[:3, :3]))) / 1000.0
        view["brain_ml"] = ml
        lo, hi = _num(fe.get("min_brain_ml")), _num(fe.get("max_brain_ml"))
        if lo is not None and hi is not None:
            view["brain_limit"] = f"{lo:.0f}–{hi:.0f} ml"
            view["brain_ok"] = lo <= ml <= hi
    entry.failed_view = view


def _scan_facts(ctx: RunContext, entry: ScanEntry, brain: np.ndarray | None, affine: np.ndarray | None) -> None:
    """What makes the scan unlike the model's data; its brain volume on the scan's grid."""
    from .explain import brain_at_edge, outside_grid, qc_outside, thick_slices

    qc = entry.qc
    unlike = qc_outside(qc, ctx.cal_state.qc_ranges)
    if "voxel_size_max_mm" not in ctx.cal_state.qc_ranges:
        t = thick_slices(entry.result.get("affine"), ctx.training_max_mm)
        if t:
            unlike.append(t)
    if brain is not None and affine is not None:
        entry.brain_mm3 = float(np.count_nonzero(brain)) * abs(float(np.linalg.det(np.asarray(affine)[:3, :3])))
        edge = brain_at_edge(brain, affine)
        if edge:
            unlike.append(edge)
    elif _num(qc.get("brain_volume_ml")) is not None:
        entry.brain_mm3 = 1000.0 * float(qc["brain_volume_ml"])
    g = outside_grid(qc)
    if g:
        unlike.append(g)
    entry.unlike = unlike


def _render_entry(ctx: RunContext, entry: ScanEntry, page_dir: Path) -> None:
    from . import scroller
    from .clusters import find_clusters, supra_threshold
    from .render import render_scan, score_histogram

    t0 = time.perf_counter()
    img_dir = page_dir / entry.scan_id
    if ctx.healthy_scores and entry.score is not None:
        div, xlabel = _histogram_axis(ctx)
        score_histogram(img_dir / "distribution.png", [h / div for h in ctx.healthy_scores], marker=entry.score / div,
                        threshold=ctx.scan_threshold / div if ctx.scan_threshold is not None else None,
                        title="this scan vs healthy calibration scores", xlabel=xlabel)
        entry.hist = "distribution.png"
    if entry.status != "ok":
        _failed_view(ctx, entry, img_dir)
        return
    outputs = entry.result.get("outputs") or {}
    amap = _load_nifti(entry.scan_dir / outputs.get("anomaly_map", "anomaly_map.nii.gz"))
    if amap is None:
        entry.render_error = "anomaly_map.nii.gz missing"
        return
    amap_arr, affine = np.asarray(amap[0], np.float32), amap[1]
    mask = _load_nifti(entry.scan_dir / outputs["mask"]) if outputs.get("mask") else None
    recon = _load_nifti(entry.scan_dir / outputs["reconstruction"]) if outputs.get("reconstruction") else None
    scan_arr = None
    try:
        scan_arr = _source_info(ctx, entry, amap_arr.shape, affine)
    except Exception as exc:  # the map is still worth showing
        entry.render_error = f"source scan not shown: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    gt = _ground_truth(ctx, entry, amap_arr.shape, affine)
    entry.has_gt = gt is not None
    brain_name = outputs.get("brain_mask") or ("brain_mask.nii.gz" if (entry.scan_dir / "brain_mask.nii.gz").is_file()
                                               else None)
    brain = _load_nifti(entry.scan_dir / brain_name) if brain_name else None
    brain_arr = np.asarray(brain[0]) > 0 if brain is not None and _same_grid(amap_arr.shape, affine, *brain) else None
    _scan_facts(ctx, entry, brain_arr, affine)
    supra = supra_threshold(amap_arr, mask[0] if mask is not None else None, ctx.voxel_threshold)
    if supra is not None:
        to_template = (entry.result.get("qc") or {}).get("scan_to_template")  # registered scans: MNI names
        entry.clusters = find_clusters(amap_arr, supra, affine,
                                       np.asarray(to_template) if to_template is not None else None,
                                       threshold=ctx.voxel_threshold)
    worlds = [c.inside_world for c in entry.clusters.clusters] if entry.clusters else []
    entry.views = render_scan(img_dir, amap_arr, affine, ctx.scale, scan=scan_arr,
                              mask=mask[0] if mask is not None else None, gt=gt,
                              recon=recon[0] if recon is not None else None, cluster_worlds=worlds)
    meta, data = scroller.payload(entry.views.prepared, ctx.scale, cluster_worlds=worlds)
    entry.views.prepared = None  # the volumes are not needed any more
    entry.scroller = (scroller.meta_json(meta), data)
    entry.render_seconds = time.perf_counter() - t0


def _links(ctx: RunContext, entry: ScanEntry) -> list[dict[str, Any]]:
    """Every output file of the scan, as links relative to the scan page."""
    outputs = dict(entry.result.get("outputs") or {})
    if (entry.scan_dir / "brain_mask.nii.gz").is_file():
        outputs.setdefault("brain_mask", "brain_mask.nii.gz")
    rel = Path(os.path.relpath(entry.scan_dir, ctx.out / REPORT_DIR / "scans")).as_posix()
    order = [*OUTPUT_FILES, *sorted(k for k in outputs if k not in OUTPUT_FILES)]
    links = []
    for key in order:
        if key in outputs:
            name = str(outputs[key])
            present = (entry.scan_dir / name).is_file()
            links.append({"name": name, "what": OUTPUT_FILES.get(key, key.replace("_", " ")),
                          "href": f"{rel}/{quote(name)}" if present else None})
    links.append({"name": "result.json", "what": "scores, settings and warnings of this scan",
                  "href": f"{rel}/result.json"})
    return links


def _qc(result: dict[str, Any]) -> dict[str, Any]:
    """Per-scan quality-control values, whatever of them the scorer wrote."""
    from .explain import voxel_sizes

    qc = dict(result.get("qc") or {}) if isinstance(result.get("qc"), dict) else {}
    qc.update({k: result[k] for k in QC_KEYS if k in result})
    z = voxel_sizes(result.get("affine"))
    if z is not None and "voxel_size_max_mm" not in qc:
        qc["voxel_size_max_mm"] = round(max(z), 3)  # the slice thickness, compared like the other QC numbers
    return qc


def _qc_value(key: str, v: Any) -> tuple[str, bool]:
    """(text, preformatted) of one QC value: matrices as rows, timings as 'name 1.2 s'."""
    if isinstance(v, list) and v and all(isinstance(r, list) for r in v):
        return "\n".join("  ".join(f"{float(x):9.4f}" if isinstance(x, (int, float)) else str(x) for x in r)
                          for r in v), True
    if isinstance(v, dict):
        unit = " s" if "second" in key else ""
        return " · ".join(f"{k} {_fmt(_num(x), '.3g') if _num(x) is not None else x}{unit}" for k, x in v.items()), False
    if isinstance(v, float):
        return _fmt(v, ".4g"), False
    return str(v), False


def _qc_rows(qc: dict[str, Any], ranges: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from .explain import QC_LABELS, _num as num, qc_range_text

    rows = []
    for k, v in qc.items():
        text, pre = _qc_value(str(k), v)
        rng = ranges.get(k)
        x = num(v)
        outside = bool(rng and x is not None and not rng["min"] <= x <= rng["max"])
        label = QC_LABELS.get(k, (str(k).replace("_", " "),))[0]
        if k == "scan_to_template":
            label = "scanner → template (MNI) matrix"
        rows.append({"key": str(k), "name": label, "value": text, "pre": pre,
                     "range": f"{qc_range_text(k, rng)} (n = {rng.get('n') or '?'})" if rng else "",
                     "outside": outside})
    return rows


def _explain(ctx: RunContext, entry: ScanEntry) -> None:
    """The page's one sentence and the index's focal/widespread marker."""
    from .explain import Facts, failure_checks, pattern, sentence, short_error

    entry.qc_rows = _qc_rows(entry.qc, ctx.cal_state.qc_ranges)
    if entry.status != "ok":
        entry.short_error = short_error(entry.error, entry.source, entry.scan_id)
        entry.checks = failure_checks(entry.error)
    else:
        entry.pattern = pattern(entry.clusters, entry.brain_mm3)
    entry.sentence = sentence(Facts(
        status=entry.status, kind=ctx.score_kind, score_config=ctx.run.get("score_config") or {}, score=entry.score,
        flag=entry.flag, scan_threshold=ctx.scan_threshold, voxel_threshold=ctx.voxel_threshold, cal=ctx.cal_state,
        clusters=entry.clusters, brain_mm3=entry.brain_mm3, unlike=entry.unlike, failure=entry.short_error))


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
                      source=str(res.get("source_path") or ""), qc=_qc(res))
        if ctx.labels is not None:
            e.label = ctx.labels.get(sid, ctx.labels.get(e.scan_id))
        e.page = f"scans/{quote(e.scan_id)}.html"
        entries.append(e)
    # highest score first; failures at the end
    entries.sort(key=lambda e: (e.status != "ok", -(e.score if e.score is not None else -np.inf), e.scan_id))
    for a, b in zip(entries, entries[1:]):
        a.next, b.prev = b, a
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
        texts = [e.error, e.short_error, e.sentence, *e.warnings, e.render_error]
        if _is_dicom(e.result.get("format")) and e.source:
            texts = [t.replace(e.source, "<DICOM series folder>") for t in texts]
            e.source = "DICOM series (folder hidden; --show-phi shows it)"
        texts = [_redact_text(t, ctx.phi_strings) for t in texts]
        e.source = _redact_text(e.source, ctx.phi_strings)
        e.series_description = _redact_text(e.series_description, ctx.phi_strings)
        e.error, e.short_error, e.sentence, e.render_error, e.warnings = (texts[0], texts[1], texts[2], texts[-1],
                                                                          texts[3:-1])
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


def _run_scale(ctx: RunContext, entries: list[ScanEntry]):
    """One colour scale for every page. Without a voxel threshold it needs one pass over
    the maps first (the largest per-scan 99.9th percentile)."""
    from .render import run_scale

    tops: list[float] = []
    if ctx.voxel_threshold is None:
        for e in entries:
            name = (e.result.get("outputs") or {}).get("anomaly_map", "anomaly_map.nii.gz")
            m = _load_nifti(e.scan_dir / name) if e.status == "ok" else None
            if m is not None:
                a = np.asarray(m[0], np.float32)
                a = a[np.isfinite(a)]
                if a.size:
                    tops.append(float(np.percentile(a, 99.9)))
    return run_scale(ctx.voxel_threshold, ctx.map_label, tops)


def _score_phrase(ctx: RunContext, score: float | None) -> str:
    if score is None:
        return "—"
    if ctx.volume_score:
        if (ctx.run.get("score_config") or {}).get("score") == "largest_cluster":
            return f"largest cluster {cm3(score)} cm³ above threshold"
        return f"{cm3(score)} cm³ above threshold"
    return f"{score:.3g}"


def _flag_phrase(ctx: RunContext) -> str:
    thr = ctx.scan_threshold
    if thr is None:
        return ""
    return f"flag above {cm3(thr)} cm³" if ctx.volume_score else f"flag above {thr:.3g}"


def _score_caption(ctx: RunContext) -> str:
    from .explain import what_score

    kind = ctx.score_kind
    if kind == "largest_cluster":
        return "Score: the largest cluster of voxels above the voxel threshold (cm³, on the model's grid)"
    if kind == "supra_volume":
        return "Score: brain volume above the voxel threshold (cm³, on the model's grid)"
    return f"Score: {what_score(kind, ctx.run.get('score_config') or {})}"


def _borderline(ctx: RunContext, score: float | None) -> bool:
    thr = ctx.scan_threshold
    return score is not None and thr is not None and thr > 0 and abs(score - thr) <= BORDERLINE * thr


def _rule_text(ctx: RunContext) -> str:
    """The flag rule in words, true for the run's score type."""
    from .explain import what_score

    kind, thr, vthr = ctx.score_kind, ctx.scan_threshold, _fmt(ctx.voxel_threshold)
    if kind == "largest_cluster":
        return (f"Scans are flagged when their largest cluster of voxels above the voxel threshold ({vthr} z) "
                f"exceeds {cm3(thr)} cm³")
    if kind == "supra_volume":
        return f"Scans are flagged when more than {cm3(thr)} cm³ of brain lies above the voxel threshold ({vthr} z)"
    return f"Scans are flagged when the score ({what_score(kind, ctx.run.get('score_config') or {})}) exceeds {thr:.3g}"


def _calibration_text(ctx: RunContext) -> str:
    cal = ctx.calibration
    fpr, target, n = _num(cal.get("achieved_scan_fpr")), _num(cal.get("scan_fpr")), cal.get("n_scans")
    if ctx.scan_threshold is None:
        return "Uncalibrated run: no scan threshold, no flags."
    what = _rule_text(ctx)
    if fpr is None:
        return what + "."
    how = f"it flagged {100 * fpr:.1f} % of n = {n} healthy calibration scans (leave-one-out"
    how += f"; target {100 * target:.1f} %)" if target is not None else ")"
    return f"{what}; {how}. Borderline: within ±{int(100 * BORDERLINE)} % of the threshold."


_SKIP_METRICS = {"definitions", "options", "scans", "run", "labels", "masks_dir", "missing", "failed", "evaluated",
                 "model_hash", "config_hash", "splits_note"}


def _metric_value(v: Any, ci: Any = None) -> str:
    text = f"{v:.3f}" if isinstance(v, float) else str(v)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def metric_tables(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics.json as titled tables of (name, value [95 % CI]) rows: one per section,
    nested sections flattened with ' › ', lists summarised by their length."""
    tables = []
    top = [(k, v) for k, v in metrics.items() if not isinstance(v, dict) and k not in _SKIP_METRICS]
    sections = [("overview", dict(top))] + [(k, v) for k, v in metrics.items()
                                              if isinstance(v, dict) and k not in _SKIP_METRICS]
    for title, sec in sections:
        rows: list[tuple[str, str]] = []

        def walk(d: dict[str, Any], prefix: str) -> None:
            for k, v in d.items():
                if k.endswith("_ci95"):
                    continue
                name = f"{prefix}{k}".replace("_", " ")
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k} › ")
                elif isinstance(v, list):
                    if v and all(isinstance(x, (int, float, str)) for x in v) and len(v) <= 8:
                        rows.append((name, ", ".join(_metric_value(x) for x in v)))
                    else:
                        rows.append((name, f"{len(v)} entries (see metrics.json)"))
                elif v is not None:
                    rows.append((name, _metric_value(v, d.get(f"{k}_ci95"))))

        walk(sec, "")
        if rows:
            tables.append({"title": title.replace("_", " "), "rows": rows})
    return tables


def _evaluation(ctx: RunContext, dest: Path, entries: list[ScanEntry]) -> dict[str, Any]:
    """`medidiff evaluate` outputs rendered as tables and figures; label-based curves only
    when no evaluation exists (one set of curves, never two)."""
    ev: dict[str, Any] = {"images": [], "tables": [], "note": None, "labels": None}
    src = ctx.out / EVAL_DIR
    metrics_path = src / "metrics.json"
    if src.is_dir():
        for png in sorted(src.glob("*.png")):
            (dest / "evaluation").mkdir(parents=True, exist_ok=True)
            shutil.copy2(png, dest / "evaluation" / png.name)
            ev["images"].append({"src": f"evaluation/{quote(png.name)}", "name": png.stem.replace("_", " ")})
        if metrics_path.is_file():
            metrics = _read_json(metrics_path)
            if metrics:
                ev["tables"] = metric_tables(metrics)
                ev["evaluated"] = stamp(metrics.get("evaluated"))
            else:
                ev["note"] = "evaluation/metrics.json is unreadable: re-run `medidiff evaluate`"
    if ctx.labels is not None:
        pairs = [(e.label, e.score) for e in entries if e.label is not None and e.score is not None]
        info: dict[str, Any] = {"n_labelled": len(pairs), "n_unlabelled": sum(e.label is None for e in entries)}
        ys = [p[0] for p in pairs]
        if pairs and 0 < sum(ys) < len(ys):
            from .render import curves

            info.update(curves(dest / "assets", ys, [p[1] for p in pairs]))
            if not ev["images"]:
                info["images"] = [{"src": "assets/roc.png", "name": "ROC (labels)"},
                                  {"src": "assets/pr.png", "name": "precision–recall (labels)"}]
        else:
            info["note"] = "curves need scored scans of both classes"
        ev["labels"] = info
    ev["present"] = bool(ev["images"] or ev["tables"] or ev["note"] or ev["labels"])
    return ev


def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
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
    from .render import render_colourbar, score_histogram

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
        ctx.scale = _run_scale(ctx, entries)
        render_colourbar(stage / "assets" / "colourbar.png", ctx.scale)
        for e in entries:
            try:
                _render_entry(ctx, e, stage / "scans")
            except Exception as exc:  # one bad scan never stops the report
                first = str(exc).splitlines()[0] if str(exc) else ""
                e.render_error = f"views not rendered: {type(exc).__name__}: {first}"
                log(f"report: {e.scan_id}: {e.render_error}")
            e.links = _links(ctx, e)
            _explain(ctx, e)
        _redact(ctx, entries)
        run_hist = None
        scores = [e.score for e in entries if e.score is not None]
        if ctx.healthy_scores or scores:
            div, xlabel = _histogram_axis(ctx)
            score_histogram(stage / "assets" / "scores.png", [h / div for h in ctx.healthy_scores],
                            scores=[v / div for v in scores],
                            threshold=ctx.scan_threshold / div if ctx.scan_threshold is not None else None,
                            title="scan scores: this run vs healthy calibration", xlabel=xlabel)
            run_hist = "assets/scores.png"
        evaluation = _evaluation(ctx, stage, entries)
        env = _env()
        counts = {
            "total": len(entries),
            "ok": sum(e.status == "ok" for e in entries),
            "failed": sum(e.status != "ok" for e in entries),
            "flagged": sum(bool(e.flag) for e in entries),
            "borderline": sum(_borderline(ctx, e.score) for e in entries),
            "warnings": sum(bool(e.all_warnings) for e in entries),
            "focal": sum(e.pattern == "focal" for e in entries),
            "widespread": sum(e.pattern == "widespread" for e in entries),
            "skipped_files": len(ctx.summary.get("skipped_files") or []),
        }
        run = ctx.run
        t_star = run.get("t_star")
        built = stamp(_dt.datetime.now(_dt.timezone.utc).isoformat())
        scored = _run_times(entries)
        provenance = {
            "model hash": str(run.get("model_hash") or "—"),
            "settings hash": str(run.get("config_hash") or "—"),
            "t* (timesteps)": ", ".join(str(t) for t in t_star) if isinstance(t_star, list) else str(t_star or "—"),
            "calibrated": "yes" if run.get("calibrated") else "no (no thresholds, flags or percentiles)",
            "voxel threshold": f"{_fmt(ctx.voxel_threshold)} z" if ctx.voxel_threshold is not None else "—",
            "scan threshold": _flag_phrase(ctx).replace("flag above ", "") or "—",
            "colour scale": f"0 – {ctx.scale.vmax:g} ({ctx.scale.label}); brighter values clipped, drawn white",
            "medidiff version": str(run.get("medidiff_version") or "—"),
            "results as of": scored,
        }
        common = dict(provenance=provenance, score_config=run.get("score_config") or {}, built=built, scored=scored,
                      show_phi=show_phi, map_label=ctx.map_label, has_labels=ctx.labels is not None, ctx=ctx,
                      scale=ctx.scale, score_phrase=lambda s: _score_phrase(ctx, s),
                      borderline=lambda s: _borderline(ctx, s), flag_phrase=_flag_phrase(ctx),
                      calibration_text=_calibration_text(ctx), cal_state=ctx.cal_state,
                      score_caption=_score_caption(ctx), widespread_fraction=WIDESPREAD_FRACTION,
                      scattered_fraction=SCATTERED_FRACTION)
        for e in entries:
            page = env.get_template("scan.html.j2").render(e=e, **common)
            (stage / "scans" / f"{e.scan_id}.html").write_text(page, encoding="utf-8")
        index = env.get_template("index.html.j2").render(
            entries=entries, counts=counts, notes=ctx.notes, run_hist=run_hist, evaluation=evaluation,
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
