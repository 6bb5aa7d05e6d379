"""Checks on a loaded volume's intensities: is there anything to score?

A volume that reads fine can still be unusable: every voxel the same value
(a blank export, a zero-filled placeholder). Preprocessing would find no
foreground and scoring would return a meaningless 0, so such scans are refused
with a one-line reason instead.
"""

from __future__ import annotations

import numpy as np

from .errors import ScanError


def check_content(volume) -> None:
    """Raise :class:`ScanError` when ``volume`` holds no usable intensity variation."""
    arr = np.asarray(volume.array)
    where = volume.provenance.source_paths[0] if volume.provenance.source_paths else volume.scan_id
    if len(volume.provenance.source_paths) > 1:
        import os

        where = os.path.commonpath(volume.provenance.source_paths)
    finite = np.isfinite(arr)
    if not finite.all():  # any reader: NaN/Inf are named, never scored as numbers
        n = int((~finite).sum())
        raise ScanError(where, f"{n:,} voxels ({n / arr.size:.2%}) are NaN/Inf (not a number)",
                        "re-export the scan without NaN/Inf")
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not hi > lo:
        raise ScanError(where, f"constant image (every voxel is {lo:g}): no foreground to score",
                        "the export is blank; check the source scan and export it again")
