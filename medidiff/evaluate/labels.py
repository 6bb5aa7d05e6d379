"""Ground-truth tables: one row per scan with a label, optional mask and anomaly types.

Accepted columns (first match wins):

* id: ``scan_id`` | ``name`` | ``id``
* label: ``label`` | ``anomalous`` | ``anomaly`` | ``abnormal`` (1/0, true/false, yes/no, healthy/normal)
* scan path: ``path`` | ``dicom_dir`` | ``source_path`` (relative to the CSV's folder)
* mask: ``mask_path`` | ``mask`` (relative to the CSV's folder); empty for none
* types: ``anomaly_types`` | ``anomaly_type`` | ``kind`` (``;``-separated)
* split: ``split``
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


def _col(header: list[str], options: tuple[str, ...]) -> str | None:
    low = {h.strip().lower(): h for h in header}
    for o in options:
        if o in low:
            return low[o]
    return None


def read_labels(path: str | Path, masks_dir: str | Path | None = None) -> list[LabelRow]:
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: labels file not found")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        header = list(reader.fieldnames or [])
        rows = list(reader)
    id_c, label_c = _col(header, ID_COLS), _col(header, LABEL_COLS)
    if id_c is None or label_c is None:
        raise LabelsError(f"{path}: needs a scan id column ({'/'.join(ID_COLS)}) and a label column "
                          f"({'/'.join(LABEL_COLS)}); found {header}")
    path_c, mask_c, type_c, split_c = (_col(header, PATH_COLS), _col(header, MASK_COLS), _col(header, TYPE_COLS),
                                       _col(header, ("split",)))
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
        out.append(LabelRow(sid, label, scan_path, mask_path, types, split, list(lesions.get(sid, []))))
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
