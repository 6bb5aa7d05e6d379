"""Step 2 — N4 bias-field correction inside the brain (MRI only).

N4 runs on a shrunken copy (the field is smooth) and returns the log field, which is
resampled to whatever grid needs it: the model grid divides by ``exp(log_field)``.
"""

from __future__ import annotations

import numpy as np

from .sitk_bridge import from_sitk, to_sitk


def n4_log_field(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, shrink: int = 2,
                 iterations: tuple[int, ...] = (50, 40, 30)) -> np.ndarray:
    """Log bias field of ``image`` (on ``affine``), estimated inside ``mask``; same shape as ``image``."""
    import SimpleITK as sitk

    img = to_sitk(np.maximum(np.asarray(image, dtype=np.float32), 0.0), affine)
    msk = to_sitk(np.asarray(mask, dtype=np.uint8), affine)
    msk.CopyInformation(img)
    small, small_mask = sitk.Shrink(img, [shrink] * 3), sitk.Shrink(msk, [shrink] * 3)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(iterations))
    n4.Execute(small, small_mask)
    return from_sitk(n4.GetLogBiasFieldAsImage(img)).astype(np.float32)
