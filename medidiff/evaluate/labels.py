"""Ground-truth tables: one row per scan with a label, optional mask and anomaly types.

Accepted columns (first match wins):

* id: ``scan_id`` | ``name`` | ``id``
* label: ``label`` | ``anomalous`` | ``anomaly`` | ``abnormal`` (1/0, true/false, yes/no, healthy/normal)
* scan path: ``path`` | ``dicom_dir`` | ``source_path`` (relative to the CSV's folder)
* mask: ``mask_path`` | ``mask`` (relative to the CSV's folder); empty for none
* types: ``anomaly_types`` | ``anomaly_type`` | ``kind`` (``;``-separated)
* split: ``split``
* subject: ``subject`` (optional; copies of one head share it, so bootstraps resample subjects)
* evaluation region: ``brain_mask_path`` | ``eval_mask_path`` (optional, relative to the CSV's folder): voxel
  metrics inside it (``EvalOptions.foreground="brain"``), the same region for every method

``read_labels(..., splits=(...))`` parses only the rows of those splits: a row of another split is never
turned into a label or a mask path (a benchmark evaluates val without reading test). ``read_scan_index``
reads ids, splits, paths and subjects only, never a label or a mask.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

ID_COLS = ("scan_id", "name", "id")
LABEL_COLS = ("label", "anomalous", "anomaly", "abnormal")
PATH_COLS = ("path", "dicom_dir", "source_path")
MASK_COLS = ("mask_path", "mask")
TYPE_COLS = ("anomaly_types", "anomaly_type", "kind")
SUBJECT_COLS = ("subject", "subject_id")
BRAIN_COLS = ("brain_mask_path", "eval_mask_path")
HEALTHY = {"0", "false", "no", "healthy", "normal", "control", "0.0"}
ANOMALOUS = {"1", "true", "yes", "anomalous", "abnormal", "lesion", "1.0"}


class LabelsError(ValueError):
    pass


@dataclass
class LabelRow:
    scan_id: str
    label: int
    path: Path | None = None
    mask_path: Path | None = None
    types: list[str] = field(default_factory=list)
    split: str | None = None
    lesions: list[dict] = field(default_factory=list)  # per-lesion info (kind, centre_voxel) when known
    subject: str | None = None
    brain_mask_path: Path | None = None


@dataclass
class ScanEntry:
    """A labels-file row without its ground truth: what staging a split needs."""

    scan_id: str
    split: str | None
    path: Path | None
    subject: str | None


def _col(header: list[str], options: tuple[str, ...]) -> str | None:
    low = {h.strip().lower(): h for h in header}
    for o in options:
        if o in low:
            return low[o]
    return None


def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise LabelsError(f"{path}: labels file not found")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        return list(reader.fieldnames or []), list(reader)


def read_scan_index(path: str | Path) -> list[ScanEntry]:
    """Scan ids, splits, scan paths and subjects of a labels file: never a label, a mask or a type."""
    path = Path(path)
    header, rows = _read_table(path)
    id_c = _col(header, ID_COLS)
    if id_c is None:
        raise LabelsError(f"{path}: needs a scan id column ({'/'.join(ID_COLS)}); found {header}")
    path_c, split_c, subj_c = _col(header, PATH_COLS), _col(header, ("split",)), _col(header, SUBJECT_COLS)
    out = []
    for i, r in enumerate(rows, start=2):
        sid = (r.get(id_c) or "").strip()
        if not sid:
            raise LabelsError(f"{path}:{i}: empty scan id")
        out.append(ScanEntry(sid, ((r.get(split_c) or "").strip() or None) if split_c else None,
                             _rel(path.parent, r.get(path_c)) if path_c else None,
                             ((r.get(subj_c) or "").strip() or None) if subj_c else None))
    return out


def read_labels(path: str | Path, masks_dir: str | Path | None = None,
                splits: tuple[str, ...] | list[str] | None = None) -> list[LabelRow]:
    """Every row of the labels file, or only those of ``splits`` (the others are not parsed)."""
    path = Path(path)
    header, rows = _read_table(path)
    id_c, label_c = _col(header, ID_COLS), _col(header, LABEL_COLS)
    if id_c is None or label_c is None:
        raise LabelsError(f"{path}: needs a scan id column ({'/'.join(ID_COLS)}) and a label column "
                          f"({'/'.join(LABEL_COLS)}); found {header}")
    path_c, mask_c, type_c, split_c = (_col(header, PATH_COLS), _col(header, MASK_COLS), _col(header, TYPE_COLS),
                                       _col(header, ("split",)))
    subj_c, brain_c = _col(header, SUBJECT_COLS), _col(header, BRAIN_COLS)
    if splits is not None:
        if split_c is None:
            raise LabelsError(f"{path}: splits {list(splits)} asked for, but the file has no split column")
        rows = [r for r in rows if (r.get(split_c) or "").strip() in set(splits)]
    base = path.parent
    lesions_json = base / "lesions.json"
    lesions = {}
    if lesions_json.is_file():
        try:
            lesions = json.loads(lesions_json.read_text())
        except (json.JSONDecodeError, OSError):
            lesions = {}
    out: list[LabelRow] = []
    seen: set[str] = set()
    for i, r in enumerate(rows, start=2):
        sid = (r.get(id_c) or "").strip()
        if not sid:
            raise LabelsError(f"{path}:{i}: empty scan id")
        if sid in seen:
            raise LabelsError(f"{path}:{i}: scan id {sid!r} appears twice")
        seen.add(sid)
        lab = (r.get(label_c) or "").strip().lower()
        if lab in HEALTHY:
            label = 0
        elif lab in ANOMALOUS:
            label = 1
        else:
            raise LabelsError(f"{path}:{i}: label {r.get(label_c)!r} for {sid} is not 0/1 (or healthy/anomalous)")
        scan_path = _rel(base, r.get(path_c)) if path_c else None
        mask_path = _rel(base, r.get(mask_c)) if mask_c else None
        if masks_dir is not None:  # an explicit --masks folder wins where it has the scan
            mask_path = find_mask(masks_dir, sid) or mask_path
        types = [t.strip() for t in (r.get(type_c) or "").split(";") if t.strip()] if type_c else []
        split = (r.get(split_c) or "").strip() or None if split_c else None
        subject = ((r.get(subj_c) or "").strip() or None) if subj_c else None
        brain = _rel(base, r.get(brain_c)) if brain_c else None
        out.append(LabelRow(sid, label, scan_path, mask_path, types, split, list(lesions.get(sid, [])),
                            subject, brain))
    return out


def _rel(base: Path, text: str | None) -> Path | None:
    text = (text or "").strip()
    if not text:
        return None
    p = Path(text)
    return p if p.is_absolute() else base / p


def find_mask(masks_dir: str | Path, scan_id: str) -> Path | None:
    """``DIR/<scan_id>.nii.gz`` (or ``_mask``/``.nii`` variants)."""
    d = Path(masks_dir)
    for name in (f"{scan_id}.nii.gz", f"{scan_id}_mask.nii.gz", f"{scan_id}.nii", f"{scan_id}_mask.nii",
                 f"{scan_id}/mask.nii.gz"):
        if (d / name).is_file():
            return d / name
    return None
