"""Step 1 — brain extraction, on the scan's own grid.

* ``deepbet``: a CNN for T1 head MRI whose TorchScript weights ship inside its wheel
  (nothing is downloaded). Its input is the scan as stored; it reorients internally.
* ``ct_hu``: head CT. Brain tissue lies between about 0 and 80 HU inside a skull above
  300 HU; the largest such component with its holes filled is the brain.
* ``skull_stripped``: the input already is a brain on a zero background (the foreground
  is found with Otsu's threshold), so nothing is stripped twice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..masks import fill_holes, largest_component, otsu_threshold
from ..volume import Volume


def resolve_method(method: str, volume: Volume, modality: str, max_brain_ml: float) -> str:
    """``auto`` → ``ct_hu`` for CT; ``skull_stripped`` for an MRI that already is a brain, else ``deepbet``.

    An already-stripped brain lies on an exactly-constant background (here: at least 30 % of the
    voxels at the minimum) and its Otsu foreground is brain-sized; a whole head's foreground
    (scalp, skull, neck) is about twice the largest brain, so the two do not overlap."""
    if method != "auto":
        return method
    if modality == "ct":
        return "ct_hu"
    arr = volume.array
    lo, hi = float(arr.min()), float(arr.max())
    at_min = float((arr <= lo + 1e-6 * (hi - lo)).mean())
    if at_min >= 0.3:
        fg_ml = float(largest_component(arr > otsu_threshold(arr)).sum()) * abs(np.linalg.det(volume.affine[:3, :3])) / 1e3
        if fg_ml <= max_brain_ml:
            return "skull_stripped"
    return "deepbet"


def brain_mask(volume: Volume, method: str) -> np.ndarray:
    """Bool mask of the brain on ``volume``'s grid (may be empty: QC reports that)."""
    if method == "deepbet":
        return _deepbet(volume)
    if method == "ct_hu":
        return _ct_brain(volume.array, volume.spacing)
    if method == "skull_stripped":
        arr = volume.array
        mask = arr > otsu_threshold(arr)
        return fill_holes(largest_component(mask)) if mask.any() else mask
    raise ValueError(f"unknown brain extraction method {method!r}")


_BET = None


def _deepbet_model():
    global _BET
    if _BET is None:
        try:
            from deepbet.bet import BrainExtraction
        except ImportError as exc:  # pragma: no cover - deepbet is a core dependency
            raise RuntimeError("brain extraction needs the deepbet package: pip install deepbet") from exc
        import warnings

        with warnings.catch_warnings():  # deepbet ships TorchScript; torch >= 2.10 calls jit.load deprecated
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
            _BET = BrainExtraction(no_gpu=True)
    return _BET


def _deepbet(volume: Volume) -> np.ndarray:
    import nibabel as nib
    import torch

    img = nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32), volume.affine)
    bet = _deepbet_model()
    with torch.inference_mode():
        x = nib.as_closest_canonical(img).get_fdata(dtype=np.float32)
        prob = bet.run_model(x.copy())
        if not np.any(prob > 0.5):
            return np.zeros(volume.shape, dtype=bool)
        mask = bet.postprocess(prob > 0.5)
    # back from the closest canonical (RAS) orientation to the stored one
    canon = nib.as_closest_canonical(img)
    back = nib.orientations.ornt_transform(nib.io_orientation(canon.affine), nib.io_orientation(img.affine))
    return nib.orientations.apply_orientation(mask, back).astype(bool)


def _ct_brain(array: np.ndarray, spacing) -> np.ndarray:
    hu = np.asarray(array, dtype=np.float32)
    skull = hu > 300
    tissue = (hu > -5) & (hu < 90)
    # cut thin bridges to scalp/muscle: open with a ~3 mm ball
    radius = np.maximum(np.round(3.0 / np.asarray(spacing)).astype(int), 1)
    ball = np.ones(tuple(2 * radius + 1), bool)
    tissue = ndimage.binary_opening(tissue & ~ndimage.binary_dilation(skull, iterations=1), structure=ball)
    labels, n = ndimage.label(tissue)
    if n == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    brain = labels == int(np.argmax(sizes))
    brain = ndimage.binary_dilation(brain, structure=ball) & (hu > -50) & ~skull
    return ndimage.binary_fill_holes(brain)
