"""Detection and segmentation metrics, written out so their definitions are explicit.

* ``auroc`` / ``average_precision`` follow scikit-learn exactly (tested to 1e-9):
  AUROC is the trapezoidal area under the ROC curve built at every distinct score
  (ties handled as one step); AP is ``sum_n (R_n - R_{n-1}) P_n`` over distinct
  thresholds (no interpolation). Both accept sample weights, which voxel-level
  evaluation uses when healthy voxels are subsampled.
* Predictions at a threshold are ``score > threshold`` (strict), the same rule
  the scorer uses for ``flag`` and ``mask``.
* ``best_dice`` is the *oracle* Dice: the best over all thresholds, chosen on
  the labels being evaluated (as papers report ⌈Dice⌉). Never a deployable number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# np.trapezoid is NumPy >= 2.0; NumPy 1.x (allowed by pyproject) calls it trapz.
_trapezoid = getattr(np, "trapezoid", None) or np.trapz
from scipy import ndimage


def _prep(y, s, w=None):
    y = np.asarray(y).astype(bool).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if w is not None:
        w = np.asarray(w, dtype=np.float64).ravel()
        if w.shape != s.shape:
            raise ValueError("weights must have the same length as scores")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN/Inf")
    return y, s, w


def clf_curve(y, s, w=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (weighted) false and true positives at each distinct score,
    from the highest score down: ``(fps, tps, thresholds)``; prediction at
    ``thresholds[i]`` is ``score >= thresholds[i]``."""
    y, s, w = _prep(y, s, w)
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    w = np.ones_like(s) if w is None else w[order]
    distinct = np.where(np.diff(s))[0]
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y * w)[idx]
    fps = np.cumsum((~y) * w)[idx]
    return fps, tps, s[idx]


def _need_both(y) -> bool:
    y = np.asarray(y).astype(bool)
    return bool(y.any() and (~y).any())


def roc_curve(y, s, w=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fps, tps, thr = clf_curve(y, s, w)
    fpr = np.r_[0.0, fps] / max(fps[-1], 1e-300)
    tpr = np.r_[0.0, tps] / max(tps[-1], 1e-300)
    return fpr, tpr, np.r_[np.inf, thr]


def auroc(y, s, w=None) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    if not _need_both(y):
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s, w)
    return float(_trapezoid(tpr, fpr))


def pr_curve(y, s, w=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, thresholds (recall increasing), as scikit-learn."""
    fps, tps, thr = clf_curve(y, s, w)
    ps = tps + fps
    precision = np.divide(tps, ps, out=np.zeros_like(tps), where=ps != 0)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def average_precision(y, s, w=None) -> float:
    """Average precision (step-wise, no interpolation); NaN without positives."""
    y = np.asarray(y).astype(bool)
    if not y.any():
        return float("nan")
    precision, recall, _ = pr_curve(y, s, w)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


ap = average_precision


def dice(pred, gt) -> float:
    """2|A∩B| / (|A| + |B|); 1.0 when both are empty (nothing to find, nothing found)."""
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    denom = int(pred.sum()) + int(gt.sum())
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, gt).sum() / denom)


def dice_curve(y, s, w=None) -> tuple[np.ndarray, np.ndarray]:
    """Dice of ``score >= t`` at every distinct score t: ``(dice, thresholds)``, thresholds descending."""
    fps, tps, thr = clf_curve(y, s, w)
    p = tps[-1]
    return 2.0 * tps / np.maximum(tps + fps + p, 1e-300), thr


def best_dice(y, s, w=None) -> tuple[float, float]:
    """Oracle Dice: max over thresholds of Dice(score > t, y). Returns ``(dice, t)``
    where the prediction is ``score > t`` (t is the next lower distinct score, or
    just below the minimum)."""
    y = np.asarray(y).astype(bool)
    if not y.any():
        return float("nan"), float("nan")
    d, thr = dice_curve(y, s, w)
    i = int(np.argmax(d))
    # score >= thr[i]  <=>  score > (next distinct score below thr[i])
    t = float(thr[i + 1]) if i + 1 < thr.size else float(np.nextafter(thr[i], -np.inf))
    return float(d[i]), t


@dataclass
class SensSpec:
    sensitivity: float
    specificity: float
    threshold: float | None = None
    tp: int = 0
    fn: int = 0
    tn: int = 0
    fp: int = 0


def sens_spec(y, pred) -> SensSpec:
    y = np.asarray(y).astype(bool).ravel()
    pred = np.asarray(pred).astype(bool).ravel()
    tp = int((y & pred).sum())
    fn = int((y & ~pred).sum())
    tn = int((~y & ~pred).sum())
    fp = int((~y & pred).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return SensSpec(sens, spec, None, tp, fn, tn, fp)


def sens_spec_at_threshold(y, s, threshold: float) -> SensSpec:
    out = sens_spec(y, np.asarray(s, dtype=np.float64) > threshold)
    out.threshold = float(threshold)
    return out


def threshold_at_fpr(y, s, fpr: float) -> float:
    """Lowest threshold t with mean(negative scores > t) <= fpr, taken from the
    negatives' own scores. With n negatives, FPR resolution is 1/n: at
    fpr < 1/n the threshold is the highest negative score."""
    y, s, _ = _prep(y, s)
    neg = np.sort(s[~y])[::-1]
    if neg.size == 0:
        return float("nan")
    k = int(np.floor(fpr * neg.size + 1e-12))  # negatives allowed above t
    if k >= neg.size:
        return float(np.nextafter(neg[-1], -np.inf))
    return float(neg[k])


def sensitivity_at_fpr(y, s, fpr: float) -> SensSpec:
    t = threshold_at_fpr(y, s, fpr)
    return sens_spec_at_threshold(y, s, t)


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], y, s, n_resamples: int = 1000,
                 seed: int = 0, alpha: float = 0.05, stratified: bool = True) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric(y, s)``. Stratified: positives and
    negatives are resampled separately so each resample keeps the class counts.
    Resamples where the metric is undefined (NaN) are dropped."""
    y = np.asarray(y).astype(bool).ravel()
    s = np.asarray(s).ravel()
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    vals = np.empty(n_resamples)
    for b in range(n_resamples):
        if stratified:
            idx = np.r_[rng.choice(pos, pos.size, replace=True) if pos.size else pos,
                        rng.choice(neg, neg.size, replace=True) if neg.size else neg].astype(int)
        else:
            idx = rng.integers(0, y.size, y.size)
        vals[b] = metric(y[idx], s[idx])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))


def paired_bootstrap_diff(metric: Callable[[np.ndarray, np.ndarray], float], y, s_a, s_b, n_resamples: int = 2000,
                          seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """metric(y, s_a) - metric(y, s_b) with a paired, stratified percentile bootstrap CI: both
    methods are evaluated on the *same* resampled scans, so scan difficulty cancels out.
    ``p_le_0`` is the share of resamples where A does not beat B."""
    y = np.asarray(y).astype(bool).ravel()
    a, b = np.asarray(s_a, np.float64).ravel(), np.asarray(s_b, np.float64).ravel()
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    diffs = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = np.r_[rng.choice(pos, pos.size, replace=True), rng.choice(neg, neg.size, replace=True)].astype(int)
        diffs[i] = metric(y[idx], a[idx]) - metric(y[idx], b[idx])
    diffs = diffs[np.isfinite(diffs)]
    lo, hi = (np.quantile(diffs, [alpha / 2, 1 - alpha / 2]) if diffs.size else (np.nan, np.nan))
    return {"diff": float(metric(y, a) - metric(y, b)), "ci_low": float(lo), "ci_high": float(hi),
            "p_le_0": float(np.mean(diffs <= 0)) if diffs.size else float("nan"), "n": int(y.size)}


# ----------------------------------------------------------------------------- lesion-wise

STRUCTURE_26 = ndimage.generate_binary_structure(3, 3)


@dataclass
class LesionDetection:
    lesions: list[dict]  # one per ground-truth component: label, n_voxels, volume_mm3, detected, overlap
    n_fp_components: int  # predicted components touching no ground-truth component
    n_pred_components: int

    @property
    def n_detected(self) -> int:
        return sum(1 for les in self.lesions if les["detected"])


def lesion_detection(pred, gt, voxel_volume_mm3: float = 1.0, gt_labels: np.ndarray | None = None) -> LesionDetection:
    """Lesion-wise detection. A ground-truth connected component (26-connectivity)
    is *found* when at least one predicted voxel overlaps it; a predicted
    component is a *false positive* when it overlaps no ground-truth voxel."""
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    if gt_labels is None:
        gt_labels, n_gt = ndimage.label(gt, structure=STRUCTURE_26)
    else:
        n_gt = int(gt_labels.max())
    sizes = np.bincount(gt_labels.ravel(), minlength=n_gt + 1)
    hits = np.bincount(gt_labels[pred].ravel(), minlength=n_gt + 1)
    lesions = [{"label": i, "n_voxels": int(sizes[i]), "volume_mm3": float(sizes[i] * voxel_volume_mm3),
                "detected": bool(hits[i] > 0), "overlap": float(hits[i] / sizes[i])}
               for i in range(1, n_gt + 1)]
    pred_labels, n_pred = ndimage.label(pred, structure=STRUCTURE_26)
    if n_pred:
        touching = np.unique(pred_labels[gt & pred])
        n_fp = n_pred - int((touching > 0).sum())
    else:
        n_fp = 0
    return LesionDetection(lesions=lesions, n_fp_components=int(n_fp), n_pred_components=int(n_pred))


def psnr(image, recon, mask=None, data_range: float | None = None) -> float:
    """PSNR in dB over ``mask`` (all voxels when None); data range defaults to
    the image's range inside the mask."""
    image = np.asarray(image, dtype=np.float64)
    recon = np.asarray(recon, dtype=np.float64)
    m = np.ones(image.shape, bool) if mask is None else np.asarray(mask, bool)
    a, b = image[m], recon[m]
    if a.size == 0:
        return float("nan")
    if data_range is None:
        data_range = float(a.max() - a.min())
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(data_range ** 2 / mse))
