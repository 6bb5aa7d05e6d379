"""Residual → voxel anomaly map → per-scan score, all on the model grid.

The map is |x − x̂| smoothed, restricted to the eroded foreground and, when a
calibration exists, expressed in units of healthy residual variation (a z-like
score per voxel), so maps and scores are comparable across scans.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .config import ScoreConfig


def residual(image: np.ndarray, recon: np.ndarray) -> np.ndarray:
    return np.abs(image.astype(np.float32) - recon.astype(np.float32))


def structural_dissimilarity(image: np.ndarray, recon: np.ndarray, sigma_vox: np.ndarray,
                             data_range: float = 1.0) -> np.ndarray:
    """1 − local SSIM with a Gaussian window: catches texture and contrast changes
    that a plain intensity residual under-weights."""
    x = image.astype(np.float64)
    y = recon.astype(np.float64)
    g = lambda a: ndimage.gaussian_filter(a, sigma_vox, mode="nearest")  # noqa: E731
    mx, my = g(x), g(y)
    vx = g(x * x) - mx * mx
    vy = g(y * y) - my * my
    cxy = g(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return np.clip(1.0 - ssim, 0.0, 2.0).astype(np.float32)


def smooth(res: np.ndarray, cfg: ScoreConfig, spacing_mm: np.ndarray) -> np.ndarray:
    if cfg.smoothing == "median":
        size = max(1, int(round(cfg.smoothing_size)))
        return ndimage.median_filter(res, size=size, mode="nearest") if size > 1 else res
    if cfg.smoothing == "gaussian":
        sigma = cfg.smoothing_size / np.asarray(spacing_mm, dtype=np.float64)
        return ndimage.gaussian_filter(res, sigma=sigma, mode="nearest")
    return res


def median_inside(res: np.ndarray, size: int, mask: np.ndarray) -> np.ndarray:
    """``ndimage.median_filter(res, size, mode="nearest")`` at the ``mask`` voxels, 0 elsewhere.

    The same numbers as filtering the whole grid (a median is one of its window's values, whatever
    the algorithm), computed only where the map is kept: at 2 mm the scoring mask is about a third
    of the grid, and scipy's rank filter was the slowest step of the post-processing."""
    out = np.zeros(res.shape, dtype=res.dtype)
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        return out
    lo = size // 2
    padded = np.pad(res, [(lo, size - 1 - lo)] * res.ndim, mode="edge")  # scipy's "nearest"
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size,) * res.ndim)
    rank = size ** res.ndim // 2  # scipy's median_filter: rank filter at size // 2
    step = 1 << 16  # voxels per chunk: 32 MB of windows at size 5
    for start in range(0, idx[0].size, step):
        sel = tuple(i[start:start + step] for i in idx)
        chunk = windows[sel].reshape(len(sel[0]), -1)
        out[sel] = np.partition(chunk, rank, axis=1)[:, rank]
    return out


def scoring_mask(foreground: np.ndarray, cfg: ScoreConfig, spacing_mm: np.ndarray) -> np.ndarray:
    """Eroded foreground: voxels near the brain/body border are dominated by
    reconstruction noise at the intensity edge, not by anomalies."""
    fg = foreground.astype(bool)
    radius = np.round(cfg.erode_mm / np.asarray(spacing_mm, dtype=np.float64)).astype(int)
    if np.any(radius > 0):
        struct = _ellipsoid(radius)
        eroded = ndimage.binary_erosion(fg, structure=struct, border_value=0)
        if eroded.sum() >= 0.2 * fg.sum():  # never erode a small foreground away
            fg = eroded
    return fg


def _ellipsoid(radius: np.ndarray) -> np.ndarray:
    r = np.maximum(radius, 0)
    grids = np.ogrid[tuple(slice(-int(x), int(x) + 1) for x in r)]
    dist = sum((g / max(x, 1)) ** 2 for g, x in zip(grids, r))
    return dist <= 1.0


def raw_map(image: np.ndarray, recon: np.ndarray, fg_mask: np.ndarray, cfg: ScoreConfig,
            spacing_mm: np.ndarray) -> np.ndarray:
    """Smoothed residual (plus the optional structural term) inside the scoring mask (0 outside)."""
    res = residual(image, recon)
    if cfg.structural_weight > 0:
        sigma = cfg.ssim_sigma_mm / np.asarray(spacing_mm, dtype=np.float64) / 2.355  # FWHM → sigma
        res = res + cfg.structural_weight * structural_dissimilarity(image, recon, sigma)
    size = max(1, int(round(cfg.smoothing_size)))
    if cfg.smoothing == "median" and size > 1:
        return median_inside(res, size, fg_mask).astype(np.float32)
    out = smooth(res, cfg, spacing_mm)
    return np.where(fg_mask, out, 0.0).astype(np.float32)


def normalize_map(raw: np.ndarray, fg_mask: np.ndarray, stats: "NormStats | None", cfg: ScoreConfig) -> np.ndarray:
    """z-like map (negative values cut). A raw map with a leading t* axis (``t_combine=zscore``) is
    z-scored per t* against that t*'s healthy statistics and the z maps are averaged."""
    if stats is None or cfg.normalization == "none":
        return raw.mean(axis=0).astype(np.float32) if raw.ndim == 4 else raw
    if cfg.normalization == "global":
        z = (raw - stats.global_mean) / stats.global_std
    else:
        z = (raw - stats.mean) / stats.std
    if z.ndim == 4:
        z = z.mean(axis=0)
    return np.where(fg_mask, np.maximum(z, 0.0), 0.0).astype(np.float32)


class NormStats:
    """Healthy residual statistics on the model grid (voxel-wise and global)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, global_mean: float, global_std: float):
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)
        self.global_mean = float(global_mean)
        self.global_std = float(global_std)

    @classmethod
    def from_sums(cls, s1: np.ndarray, s2: np.ndarray, count: np.ndarray, g1: float, g2: float, gn: float,
                  smooth_vox: float = 1.5) -> "NormStats":
        """Voxel-wise mean/std from running sums. The voxel-wise std is smoothed
        and floored at half the global std: with a handful of healthy scans a raw
        per-voxel std is too noisy to divide by."""
        gm = g1 / max(gn, 1)
        gs = float(np.sqrt(max(g2 / max(gn, 1) - gm * gm, 1e-12)))
        fill_mean, fill_sd = gm, gs
        if s1.ndim == 4:  # one map per t*: fill and floor with each t*'s own global statistics
            total = max(float(count.sum()), 1.0)
            fill_mean = s1.reshape(len(s1), -1).sum(axis=1) / total
            fill_sd = np.sqrt(np.maximum(s2.reshape(len(s2), -1).sum(axis=1) / total - fill_mean ** 2, 1e-12))
            fill_mean, fill_sd = fill_mean[:, None, None, None], fill_sd[:, None, None, None]
        n = np.maximum(count, 1)
        mean = s1 / n
        var = np.maximum(s2 / n - mean * mean, 0.0)
        mean = np.where(count > 0, mean, fill_mean)
        var = np.where(count > 1, var, fill_sd * fill_sd)
        if smooth_vox > 0:  # spatial axes only: a leading t* axis is never mixed
            sigma = (0.0,) * (mean.ndim - 3) + (smooth_vox,) * 3
            mean = ndimage.gaussian_filter(mean, sigma)
            var = ndimage.gaussian_filter(var, sigma)
        std = np.maximum(np.sqrt(var), 0.5 * fill_sd)
        return cls(mean, std, gm, gs)


def voxel_decision(amap: np.ndarray, fg_mask: np.ndarray, voxel_threshold: float, min_voxels: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Supra-threshold voxels inside the mask, without components smaller than ``min_voxels``.
    Returns (decision, sizes of the kept components in voxels, largest first)."""
    supra = (amap > voxel_threshold) & fg_mask
    if not supra.any():
        return supra, np.zeros(0, dtype=np.int64)
    labels, n = ndimage.label(supra, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= max(1, min_voxels)) + 1
    if len(keep) < n:
        supra = np.isin(labels, keep)
    return supra, np.sort(sizes[keep - 1])[::-1]


def min_component_voxels(cfg: ScoreConfig, voxel_volume_mm3: float) -> int:
    return int(np.ceil(cfg.min_component_mm3 / voxel_volume_mm3)) if cfg.min_component_mm3 > 0 else 0


def scan_score(amap: np.ndarray, fg_mask: np.ndarray, cfg: ScoreConfig, voxel_volume_mm3: float,
               voxel_threshold: float | None = None) -> float:
    vals = amap[fg_mask]
    if vals.size == 0:
        return 0.0
    if cfg.score == "percentile":
        return float(np.percentile(vals, cfg.percentile))
    if cfg.score in ("supra_volume", "largest_cluster") and voxel_threshold is not None:
        _, sizes = voxel_decision(amap, fg_mask, voxel_threshold, min_component_voxels(cfg, voxel_volume_mm3))
        n = sizes.sum() if cfg.score == "supra_volume" else (sizes[0] if sizes.size else 0)
        return float(n * voxel_volume_mm3)
    # topk_mean, and supra_volume / largest_cluster without a calibrated threshold (uncalibrated model)
    k = max(1, int(round(cfg.topk_fraction * vals.size)))
    return float(np.partition(vals, vals.size - k)[-k:].mean())
