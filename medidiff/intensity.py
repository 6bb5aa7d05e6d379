"""Intensity normalisation onto the model's units, and back.

MRI is normalised with ``x / p_high`` (or, with ``subtract_low``, ``(x - p_low) / (p_high - p_low)``)
using percentiles inside the foreground, *without clipping the top* (clipping the brightest voxels
erases bright lesions), background set to 0. CT maps a HU window linearly to [0, 1] (clipped to the
window). Template-space MRI is scaled by its white-matter median (:func:`wm_median_normalize`) and
optionally standardised onto the template's intensity landmarks (:func:`template_quantile_map`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .preprocess_config import PreprocessConfig

WM_LEVEL = 0.8  # wm_median: the white-matter median maps here (headroom above it: nothing is clipped)


def denormalize(model_array: np.ndarray, intensity: dict[str, Any]) -> np.ndarray:
    x = np.asarray(model_array, dtype=np.float32)
    if intensity.get("kind") == "template_quantiles":  # undo the piecewise-linear landmark map first
        xs = np.r_[0.0, intensity["landmarks_source"]]
        ys = np.r_[0.0, intensity["landmarks_template"]]
        back = np.interp(x, ys, xs)
        top = x > ys[-1]
        back[top] = xs[-1] + (x[top] - ys[-1]) * (xs[-1] - xs[-2]) / max(ys[-1] - ys[-2], 1e-6)
        x = back.astype(np.float32)
    lo, hi = float(intensity["low"]), float(intensity["high"])
    return x * (hi - lo) + lo


def normalize(image: np.ndarray, fg: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, dict[str, Any]]:
    if cfg.modality == "ct":
        lo, hi = cfg.ct_window
        out = (np.clip(image, lo, hi) - lo) / (hi - lo)
        info = {"kind": "ct_window", "low": float(lo), "high": float(hi)}
    else:
        vals = image[fg] if fg.any() else image.ravel()
        p_lo, hi = (float(v) for v in np.percentile(vals, cfg.percentiles))
        lo = p_lo if cfg.subtract_low else 0.0
        if not hi > lo:
            hi = lo + max(abs(lo), 1.0)
        out = (image - lo) / (hi - lo)  # top NOT clipped: bright lesions must survive
        info = {"kind": "percentile", "low": lo, "high": hi, "p_low_value": p_lo,
                "p_low": cfg.percentiles[0], "p_high": cfg.percentiles[1], "subtract_low": cfg.subtract_low}
    out = np.where(fg, out, 0.0).astype(np.float32)
    return out, info


def wm_median_normalize(image: np.ndarray, fg: np.ndarray, wm_prob: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Scale so the median of white matter (template WM probability > 0.9, inside the brain) is WM_LEVEL."""
    wm = fg & (wm_prob > 0.9)
    vals = image[wm] if wm.sum() >= 100 else image[fg]
    med = float(np.median(vals)) if vals.size else 0.0
    if not med > 0:
        med = float(np.max(image)) or 1.0
    high = med / WM_LEVEL
    out = np.where(fg, image / high, 0.0).astype(np.float32)
    return out, {"kind": "wm_median", "low": 0.0, "high": high, "wm_median": med, "wm_level": WM_LEVEL}


# Landmarks of the standardisation (percentiles inside the brain). Only up to p90: a bright lesion
# of a few % of the brain would move p98/p99 and be squashed onto the template's top.
QUANTILE_LANDMARKS = (2.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)


def template_quantile_map(image: np.ndarray, fg: np.ndarray, template_values: np.ndarray) -> tuple[np.ndarray, dict]:
    """Map the brain's intensity landmarks onto the template's, piecewise-linearly; 0 stays 0 and
    above the last landmark the last segment's slope continues (no clipping)."""
    src = np.percentile(image[fg], QUANTILE_LANDMARKS)
    dst = np.percentile(template_values, QUANTILE_LANDMARKS)
    src = np.maximum.accumulate(src + np.arange(src.size) * 1e-6)  # strictly increasing
    xs, ys = np.r_[0.0, src], np.r_[0.0, dst]
    out = np.interp(image, xs, ys)
    top = image > xs[-1]
    out[top] = ys[-1] + (image[top] - xs[-1]) * (ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-6)
    out = np.where(fg, out, 0.0).astype(np.float32)
    return out, {"landmarks_source": np.round(src, 5).tolist(), "landmarks_template": np.round(dst, 5).tolist()}
