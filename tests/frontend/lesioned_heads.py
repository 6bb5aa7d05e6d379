"""Real heads with large inserted lesions, for the front end's registration and QC tests and measurements.

A large mass made of :mod:`medidiff.lesions.anomalies` lesions — ``glioma``: an enhancing rim around a
necrotic core (``ring``) inside a larger dark zone of oedema (``hypo``), as on post-contrast T1;
``ring``, ``hypo``, ``hyper``: one such lesion alone — whose centre is then pushed outwards by a smooth
radial displacement (mass effect): the lesion grows, the tissue around it is compressed and shifted, the
far brain stays where it was.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medidiff.lesions.anomalies import insert_anomaly
from medidiff.volume import Provenance, Volume


def mass_effect(image: np.ndarray, spacing, centre_vox, push_mm: float, sigma_mm: float,
                skull: np.ndarray | None = None, ramp_mm: float = 15.0, order: int = 1) -> np.ndarray:
    """``image`` with its content pushed away from ``centre_vox``: output point x shows input point
    x - w(x), w(x) = push * exp(-|d|^2 / 2 sigma^2) * d / sigma (d = x - centre, mm). The largest shift,
    about 0.6 * push, lies sigma from the centre; it decays to nothing a few sigma away. With ``skull``
    (bool, the brain) the shift also fades to nothing over ``ramp_mm`` towards the brain's outline: the
    skull holds the outline, tissue is compressed against it instead (as a real mass does)."""
    sp = np.asarray(spacing, dtype=np.float64)
    grid = np.indices(image.shape, dtype=np.float64)
    d = (grid - np.asarray(centre_vox, dtype=np.float64)[:, None, None, None]) * sp[:, None, None, None]
    g = push_mm * np.exp(-(d ** 2).sum(0) / (2 * sigma_mm ** 2)) / sigma_mm
    if skull is not None:
        g = g * np.clip(ndimage.distance_transform_edt(skull, sampling=sp) / ramp_mm, 0.0, 1.0)
    src = grid - g * d / sp[:, None, None, None]
    return ndimage.map_coordinates(image, src, order=order, mode="nearest").astype(image.dtype)


def lesioned(volume: Volume, brain: np.ndarray, kind: str, diameter_mm: float, seed: int,
             push_mm: float = 8.0, contrast: tuple[float, float] | None = None,
             name: str | None = None) -> tuple[Volume, np.ndarray, dict]:
    """A copy of ``volume`` with one ``kind`` lesion of about ``diameter_mm`` inside ``brain`` (bool, the
    volume's grid) and a mass effect of ``push_mm`` around it. Returns (volume, lesion mask, info)."""
    sp = np.asarray(volume.spacing, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if kind == "glioma":  # rim + core of 0.6 x the diameter, oedema filling a ball of the diameter around it
        arr, mask, info = insert_anomaly(volume.array, sp, "ring", rng, brain_mask=brain,
                                         diameter_mm=(0.6 * diameter_mm,) * 2, contrast=contrast)
        dist = np.linalg.norm((np.indices(brain.shape) - np.reshape(info["centre_voxel"], (3, 1, 1, 1)))
                              * sp[:, None, None, None], axis=0)
        zone = brain & (dist <= diameter_mm / 2)
        blocked = ndimage.binary_dilation(mask > 0, iterations=1)
        zone_ml = float((zone & ~blocked).sum() * np.prod(sp))
        arr, oedema, _ = insert_anomaly(arr, sp, "hypo", rng, brain_mask=zone, blocked=blocked,
                                        diameter_mm=(np.cbrt(6 * zone_ml / np.pi),) * 2, contrast=(0.3, 0.45))
        mask = (mask > 0) | (oedema > 0)
        # the oedema's contrast is relative to its zone, which holds the bright rim: never darker than the
        # darkest tissue of the brain (CSF), as anomalies.insert_anomaly keeps its own dark lesions
        arr = np.where(mask, np.maximum(arr, np.percentile(volume.array[brain], 1)), arr)
        info = dict(info, kind="glioma", volume_mm3=float(mask.sum() * np.prod(sp)))
    else:
        arr, mask, info = insert_anomaly(volume.array, sp, kind, rng, brain_mask=brain,
                                         diameter_mm=(diameter_mm, diameter_mm), contrast=contrast)
    if push_mm > 0:
        sigma = max(diameter_mm / 2.0, 10.0)
        arr = mass_effect(arr, sp, info["centre_voxel"], push_mm, sigma, skull=brain)
        mask = mass_effect(mask.astype(np.float32), sp, info["centre_voxel"], push_mm, sigma, skull=brain) > 0.5
        info = dict(info, push_mm=push_mm, volume_mm3=float(mask.sum() * np.prod(sp)))
    label = name or f"{volume.scan_id}_{kind}{diameter_mm:.0f}mm.nii.gz"
    out = Volume(arr.astype(np.float32), volume.affine,
                 Provenance(source_paths=[label], format="nifti", scan_id=label.split(".")[0]))
    return out, np.asarray(mask, dtype=bool), info


def skull_stripped(volume: Volume, brain: np.ndarray, name: str | None = None) -> Volume:
    """The brain of ``volume`` on a zero background (as skull-stripped clinical scans arrive)."""
    label = name or f"{volume.scan_id}_stripped.nii.gz"
    return Volume(np.where(brain, volume.array, 0.0).astype(np.float32), volume.affine,
                  Provenance(source_paths=[label], format="nifti", scan_id=label.split(".")[0]))
