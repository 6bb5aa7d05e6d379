"""Step 4 — quality control: a scan the front end cannot make sense of is failed, never scored.

Each check returns the measured number and, when it fails, a one-line reason that says what
was found and what to do. Typical catches: not a head (abdomen CT, phantom: no brain or an
implausible brain volume), a localizer or half a head (brain volume too small, brain outside
the model grid), a failed registration (low similarity to the template).
"""

from __future__ import annotations

import numpy as np

from ..io.errors import ScanError
from .config import FrontEndConfig


class QCFailed(ScanError):
    """A scan that read fine but failed the front end's quality control."""


def check_brain_volume(ml: float, cfg: FrontEndConfig, where: str) -> None:
    if ml < 1.0:
        raise QCFailed(where, "no brain found", "is this a head scan of the modality the model was trained on?")
    if not cfg.min_brain_ml <= ml <= cfg.max_brain_ml:
        raise QCFailed(where, f"brain volume {ml:.0f} ml outside the plausible adult range "
                              f"{cfg.min_brain_ml:.0f}-{cfg.max_brain_ml:.0f} ml",
                       "the head may be cut off, a localizer, or not a brain scan")


def check_similarity(ncc: float, cfg: FrontEndConfig, where: str) -> None:
    if not np.isfinite(ncc) or ncc < cfg.min_similarity:
        raise QCFailed(where, f"registration failed: similarity {ncc:.2f} below {cfg.min_similarity:.2f}",
                       "check the brain mask and orientation header; the scan may not be a T1 head MRI")


def check_inside(fraction: float, cfg: FrontEndConfig, where: str) -> None:
    if fraction < cfg.min_inside_fraction:
        raise QCFailed(where, f"only {100 * fraction:.1f}% of the brain lies inside the model grid "
                              f"(need {100 * cfg.min_inside_fraction:.0f}%)",
                       "the registration is off or the brain is unusually large")


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    if x.size < 10 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def inside_fraction(mask: np.ndarray, src_affine: np.ndarray, model_affine: np.ndarray, grid) -> float:
    """Share of ``mask`` voxels (source grid) that map inside the model lattice."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return 0.0
    step = max(1, len(idx) // 200_000)  # a subsample is plenty for a fraction
    idx = idx[::step]
    m = np.linalg.inv(model_affine) @ src_affine
    vox = idx @ m[:3, :3].T + m[:3, 3]
    inside = np.all((vox >= -0.5) & (vox <= np.asarray(grid) - 0.5), axis=1)
    return float(inside.mean())
