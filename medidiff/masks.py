"""Binary masks on a scan's own grid: Otsu thresholding, the largest connected component, hole
filling and the scan's foreground. Shared by the front end (skull-stripped inputs) and
:mod:`medidiff.preprocess` (scan-space models)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """3D hole filling, then slice-wise along each axis (closes sulci/ventricles open to one side)."""
    out = ndimage.binary_fill_holes(mask)
    for ax in range(3):
        out = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(out, ax, 0)], axis=0)
        out = np.moveaxis(out, 0, ax)
    return out


def source_foreground(array: np.ndarray, mode: str, threshold: float = 0.0) -> np.ndarray:
    """The scan's foreground on its own grid (``mode`` as ``preprocess.foreground``): everything
    ("none"), voxels above ``threshold`` ("threshold") or above Otsu's threshold ("otsu"); the
    largest connected component, holes filled."""
    if mode == "none":
        return np.ones(array.shape, dtype=bool)
    if mode == "threshold":
        mask = array > threshold
    else:
        mask = array > otsu_threshold(array)
    if not mask.any():
        return mask
    return fill_holes(largest_component(mask))
