"""The scans of a run as report entries: what result.json says, QC values, links to the outputs,
the one-sentence explanation, and identifiers redacted (unless ``show_phi``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from .context import RunContext, finite_float, read_json
from .wording import fmt_value

REPORT_DIR = "report"
REDACTED = "[redacted]"
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
        return " · ".join(f"{k} {fmt_value(finite_float(x), '.3g') if finite_float(x) is not None else x}{unit}" for k, x in v.items()), False
    if isinstance(v, float):
        return fmt_value(v, ".4g"), False
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


def scan_links(ctx: RunContext, entry: ScanEntry) -> list[dict[str, Any]]:
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


def explain_scan(ctx: RunContext, entry: ScanEntry) -> None:
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


def scan_entries(ctx: RunContext) -> list[ScanEntry]:
    entries = []
    for path in sorted((ctx.out / "scans").glob("*/result.json")):
        res = read_json(path)
        if not res:
            res = {"scan_id": path.parent.name, "status": "failed", "error": "result.json unreadable"}
        sid = str(res.get("scan_id") or path.parent.name)
        flag = res.get("flag")
        e = ScanEntry(scan_id=path.parent.name, result=res, scan_dir=path.parent,
                      status=str(res.get("status") or "failed"), score=finite_float(res.get("score")),
                      percentile=finite_float(res.get("percentile")), flag=None if flag is None else bool(flag),
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


def _is_dicom(fmt: str | None) -> bool:
    return str(fmt or "").lower().startswith("dicom")


def _shorten(ctx: RunContext, entries: list[ScanEntry]) -> None:
    """Source paths relative to the scored input folder, for the index table."""
    root = str(ctx.run.get("input") or "").rstrip("/")
    for e in entries:
        e.source_short = e.source
        if root and e.source.startswith(root + "/"):
            e.source_short = e.source[len(root) + 1:]


def redact(ctx: RunContext, entries: list[ScanEntry]) -> None:
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
