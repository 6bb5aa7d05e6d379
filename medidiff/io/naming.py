"""Filesystem-safe names for outputs. Output paths are never built from raw
DICOM text (PatientName, PatientID, SeriesDescription): names are reduced to a
small safe alphabet and, when that loses information, suffixed with a hash."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_LEN = 80


def sanitize(text: str, max_len: int = MAX_LEN) -> str:
    """Map arbitrary text to ``[A-Za-z0-9._-]``; never empty, never '.'/'..'."""
    cleaned = _SAFE.sub("_", text)
    cleaned = re.sub(r"\.{2,}", "_", cleaned)  # no '..' anywhere, even inside a name
    cleaned = re.sub(r"_+", "_", cleaned).strip("._-")
    if not cleaned or cleaned != text or len(cleaned) > max_len:
        digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        cleaned = f"{(cleaned or 'scan')[: max_len - 9]}-{digest}"
    return cleaned


def scan_id_for_path(path: Path, root: Path | None = None, with_parents: bool = False) -> str:
    """Id for a file-based scan: the file name without NIfTI extensions
    (``sub-01_T1w.nii.gz`` → ``sub-01_T1w``); with ``with_parents`` (used when two
    files share a name) the path relative to the discovery root, ``/`` → ``__``."""
    stem = strip_nifti_suffix(Path(path).name)
    if not with_parents:
        return sanitize(stem)
    rel = Path(path).relative_to(root) if root is not None and Path(path) != root else Path(Path(path).name)
    parts = [sanitize(p) for p in rel.parent.parts] + [sanitize(stem)]
    return "__".join(parts)


def scan_id_for_series(series_uid: str, modality: str | None, series_number: object | None) -> str:
    """Id for a DICOM series from its UID (not patient text): modality, series
    number and a short hash of the UID make it readable and unique."""
    digest = hashlib.sha1(series_uid.encode()).hexdigest()[:10]
    parts = [sanitize(str(modality or "DICOM"), 8)]
    if series_number not in (None, ""):
        parts.append(f"s{sanitize(str(series_number), 8)}")
    parts.append(digest)
    return "_".join(parts)


def strip_nifti_suffix(name: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def safe_join(root: Path, *parts: str) -> Path:
    """Join sanitized parts under ``root`` and verify the result stays inside."""
    root = Path(root).resolve()
    out = root.joinpath(*[sanitize(p) if p not in ("",) else "_" for p in parts]).resolve()
    if root != out and root not in out.parents:
        raise ValueError(f"refusing output path outside {root}: {out}")
    return out
