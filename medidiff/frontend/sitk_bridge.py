"""numpy (RAS affine) ↔ SimpleITK (LPS origin/direction) conversions.

SimpleITK images live in LPS physical space with origin, spacing and a direction matrix;
medidiff arrays carry a 4x4 voxel → RAS affine. Only these two functions cross the border,
so the sign flip (RAS = diag(-1, -1, 1) · LPS) is written once.
"""

from __future__ import annotations

import numpy as np

FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS (its own inverse)


def to_sitk(array: np.ndarray, affine: np.ndarray):
    import SimpleITK as sitk

    aff_lps = FLIP @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(aff_lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in aff_lps[:3, 3]])
    img.SetDirection([float(d) for d in (aff_lps[:3, :3] / spacing).ravel()])
    return img


def from_sitk(img) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


def transform_matrix_ras(transform) -> np.ndarray:
    """4x4 RAS matrix of an affine SimpleITK transform (any composite of linear transforms).

    Read off by mapping the origin and the three unit points, so it holds for every
    linear transform type SimpleITK composes."""
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mapped = np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in pts])
    m_lps = np.eye(4)
    m_lps[:3, 3] = mapped[0]
    m_lps[:3, :3] = (mapped[1:] - mapped[0]).T
    return FLIP @ m_lps @ FLIP
