"""Is this scan the modality the model was trained on?

DICOM states its Modality. NIfTI does not, so the check there uses what the
data and header say:

* **CT in Hounsfield units** has air at about -1000 HU: a sizeable share of the
  voxels lies in [-1100, -900] and the minimum is far below zero.
* **MRI** magnitude images are non-negative (a few small negative values from
  interpolation are tolerated); nothing piles up near -1000.
* The NIfTI ``descrip`` field written by dcm2niix for MR carries echo/repetition
  times (``TE=..;TR=..``), a hint of MR.

A scan that looks like the other modality fails with one line saying why.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import ScanError

DICOM_MODALITIES = {"mri": {"MR"}, "ct": {"CT"}}
AIR_HU = (-1100.0, -900.0)
MIN_AIR_FRACTION = 0.05  # share of voxels near -1000 HU that makes a scan look like CT
_MR_DESCRIP = re.compile(r"\b(TE|TR|TI)\s*=\s*\d", re.IGNORECASE)


def intensity_hint(array: np.ndarray) -> tuple[str | None, str]:
    """('ct' | 'mri' | None, the evidence in words) from the intensity distribution."""
    a = np.asarray(array)
    step = max(1, a.size // 2_000_000)  # a subsample is plenty for a share of voxels
    v = a.ravel()[::step].astype(np.float32)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None, "no finite voxels"
    lo, hi = float(v.min()), float(v.max())
    air = float(((v >= AIR_HU[0]) & (v <= AIR_HU[1])).mean())
    if lo < -500 and air >= MIN_AIR_FRACTION:
        return "ct", f"{air:.0%} of voxels near -1000 (air in Hounsfield units), minimum {lo:.0f}"
    neg = float((v < 0).mean())
    if neg < 0.01 or lo > -0.05 * max(abs(hi), 1e-6):
        return "mri", f"non-negative intensities (minimum {lo:.3g}), no air near -1000 HU"
    return None, f"intensity range {lo:.3g}..{hi:.3g}"


def header_hint(volume) -> str | None:
    descrip = volume.provenance.series_description or ""
    return "mri" if _MR_DESCRIP.search(descrip) else None


def check_modality(volume, modality: str) -> None:
    """Raise :class:`ScanError` when ``volume`` looks like another modality than ``modality``."""
    src = volume.provenance.source_paths[0] if volume.provenance.source_paths else volume.scan_id
    todo = "use a model trained for this modality"
    stated = (volume.provenance.modality or "").upper()
    allowed = DICOM_MODALITIES.get(modality, set())
    if stated:
        if allowed and stated not in allowed:
            raise ScanError(src, f"scan modality {stated} but the model was trained on {modality.upper()}", todo)
        return
    hint, evidence = intensity_hint(volume.array)
    if header_hint(volume) == "mri" and hint is None:
        hint, evidence = "mri", "the header describes MR echo/repetition times"
    if hint is not None and hint != modality and modality in DICOM_MODALITIES:
        raise ScanError(src, f"looks like {hint.upper()} ({evidence}) but the model was trained on "
                             f"{modality.upper()}", todo + " (or convert the scan to the model's contrast)")
