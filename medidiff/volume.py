"""The one in-memory scan type every stage of medidiff passes around.

A :class:`Volume` is a 3D float32 array plus the 4x4 affine that maps voxel
indices ``(i, j, k)`` to RAS world millimetres (the NIfTI/nibabel convention),
plus provenance describing where it came from. Readers produce Volumes, writers
consume them, and every map medidiff writes for a scan is built from that
scan's own ``shape`` and ``affine`` so it lands exactly on the source grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

# DICOM/ITK patient coordinates are LPS; NIfTI world coordinates are RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Provenance:
    """Where a volume came from. ``source_paths`` for DICOM are sorted along the
    slice normal, so index k of the array corresponds to ``source_paths[k]``
    (single-frame series) — writers of DICOM derived objects rely on that."""

    source_paths: list[str] = field(default_factory=list)
    format: str = "unknown"  # "nifti" | "dicom" | "dicom-enhanced" | "synthetic"
    series_uid: str | None = None
    study_uid: str | None = None
    modality: str | None = None  # DICOM Modality ("MR", "CT") or user-provided
    original_dtype: str | None = None
    series_description: str | None = None
    scan_id: str | None = None  # sanitized, filesystem-safe identifier
    # Patient identifiers are kept only so reports can show them with --show-phi.
    patient_id: str | None = None
    patient_name: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self, include_phi: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not include_phi:
            d.pop("patient_id")
            d.pop("patient_name")
        return d


@dataclass
class Volume:
    array: np.ndarray
    affine: np.ndarray
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise ValueError(f"Volume needs a 3D array, got shape {arr.shape}")
        self.array = arr.astype(np.float32, copy=False)
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise ValueError(f"Volume needs a 4x4 affine, got {aff.shape}")
        if not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise ValueError("Volume affine is singular or not finite")
        self.affine = aff

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Three-letter axis code of the stored orientation, e.g. ``RAS``, ``LPS``."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    @property
    def is_oblique(self) -> bool:
        """True when voxel axes are not aligned with world axes (beyond 1e-4)."""
        rot = self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)
        return bool(np.any(np.abs(np.abs(rot).max(axis=0) - 1.0) > 1e-4))

    @property
    def scan_id(self) -> str:
        return self.provenance.scan_id or "scan"

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new volume on exactly this grid (same affine and provenance)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} differs from volume shape {self.shape}")
        return Volume(np.asarray(array), self.affine.copy(), replace(self.provenance))

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        ijk = np.atleast_2d(ijk)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]
