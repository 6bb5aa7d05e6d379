"""A scored run's scans matched to label rows, and their files read and checked to lie on one grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..io.naming import safe_join
from .labels import LabelRow

AFFINE_TOL = 1e-4


class EvaluationError(Exception):
    pass


class GridMismatch(EvaluationError):
    pass


@dataclass
class MatchedScan:
    row: LabelRow
    result: dict[str, Any]
    scan_dir: Path


def load_nifti(path: Path):
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return data, np.asarray(img.affine, dtype=np.float64)


def check_same_grid(a_shape, a_aff, a_path, b_shape, b_aff, b_path, tol: float = AFFINE_TOL) -> None:
    if tuple(a_shape) != tuple(b_shape):
        raise GridMismatch(f"grid mismatch: {a_path} has shape {tuple(a_shape)} but {b_path} has shape "
                           f"{tuple(b_shape)}; masks must be on the same grid as the maps")
    diff = float(np.abs(np.asarray(a_aff) - np.asarray(b_aff)).max())
    if diff > tol:
        raise GridMismatch(f"grid mismatch: affines of {a_path} and {b_path} differ by up to {diff:.3g} "
                           f"(tolerance {tol:g}); masks must be on the same grid as the maps")


def load_source(row: LabelRow, result: dict[str, Any]):
    """The source scan's array and affine (NIfTI or DICOM), for the foreground."""
    from ..io.nifti import is_nifti_path

    candidates = [p for p in (row.path, Path(result["source_path"]) if result.get("source_path") else None) if p]
    for p in candidates:
        if not p.exists():
            continue
        if p.is_file() and is_nifti_path(p):
            return load_nifti(p) + (p,)
        from ..io.discover import discover

        found = discover(p).scans
        if len(found) == 1:
            vol = found[0].load()
            return vol.array, vol.affine, p
    return None


def result_matcher(run_dir: Path) -> Callable[[LabelRow], dict[str, Any] | None]:
    """A label row -> its result.json in the run (by scan id, else by source path)."""
    from ..batch.output import read_results

    results = read_results(run_dir)
    by_id = {r.get("scan_id"): r for r in results}
    by_src = {str(Path(r["source_path"]).resolve()): r for r in results if r.get("source_path")}

    def match(row: LabelRow):
        r = by_id.get(row.scan_id)
        if r is None and row.path is not None:
            r = by_src.get(str(row.path.resolve()))
        return r
    return match


def matched_scans(run_dir: Path, rows: Sequence[LabelRow], match) -> tuple[list[MatchedScan], list[str], list[dict]]:
    scans: list[MatchedScan] = []
    missing, failed = [], []
    for row in rows:
        r = match(row)
        if r is None:
            missing.append(row.scan_id)
        elif r.get("status") != "ok" or r.get("score") is None:
            failed.append({"scan_id": row.scan_id, "error": r.get("error") or f"status {r.get('status')}"})
        else:
            # result.json lives in the scan folder named by the (sanitized) scan id
            scans.append(MatchedScan(row, r, safe_join(run_dir / "scans", r["scan_id"])))
    return scans, missing, failed
