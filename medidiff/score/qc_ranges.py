"""The calibration scans' range of each front-end QC number, for the report's
"unlike the scans the model knows" warnings.

The calibration code calls :func:`qc_ranges` with the ``qc`` dicts of its healthy
scans (``ModelGridMap.pre.qc``, the same dict a scored scan writes to
``result.json["qc"]``) and stores the result as ``calibration.json["qc_ranges"]``;
``run.json["calibration"]`` copies it. The report reads
``run.json["calibration"]["qc_ranges"]`` (falling back to the model folder's
``calibration.json``) and warns on every scan whose value lies outside the range.

Format: ``{"brain_volume_ml": {"min": 1180.2, "max": 1523.9, "n": 24}, ...}``, one entry
per QC number that every one of those scans reported as a finite number.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

# Front-end numbers worth comparing (others in the qc dict are matrices, timings or names).
QC_RANGE_KEYS = ("brain_volume_ml", "registration_similarity", "brain_inside_grid", "deformable_similarity",
                 "warp_p95_mm", "voxel_size_max_mm")


def voxel_size_max_mm(affine: Any) -> float:
    """The largest voxel side (mm): the slice thickness of a 2D series."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return float(np.linalg.norm(a, axis=0).max())


def qc_ranges(qcs: Iterable[Mapping[str, Any]], keys: Iterable[str] = QC_RANGE_KEYS) -> dict[str, dict[str, Any]]:
    """``{key: {"min", "max", "n"}}`` over the calibration scans' QC dicts.

    A key enters only when every dict holds it as a finite number, so a range always
    covers all the scans it claims (``n``). Pass ``dict(qc, voxel_size_max_mm=...)`` to
    include the slice thickness."""
    rows = [dict(q) for q in qcs]
    out: dict[str, dict[str, Any]] = {}
    if not rows:
        return out
    for key in keys:
        vals = []
        for q in rows:
            v = q.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                break
            vals.append(float(v))
        else:
            out[key] = {"min": min(vals), "max": max(vals), "n": len(vals)}
    return out
