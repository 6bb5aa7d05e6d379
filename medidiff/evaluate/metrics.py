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
from typing import Any, Callable, Sequence

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


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, median, quartiles and range of the finite values (None and NaN left out)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "q25": float(np.quantile(v, 0.25)), "q75": float(np.quantile(v, 0.75)),
            "min": float(v.min()), "max": float(v.max())}


# ----------------------------------------------------------------------------- subject-level bootstrap

def group_bootstrap_diff(stat_a: Callable[[np.ndarray], float], stat_b: Callable[[np.ndarray], float], groups,
                         n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """``stat_a(idx) - stat_b(idx)`` with a paired *cluster* bootstrap: the groups (subjects) are
    resampled with replacement and every item (scan) of a drawn group enters the resample, as many
    times as its group was drawn. Both statistics see the same indices, so a subject's difficulty
    cancels out; copies of one subject never count as independent evidence. ``groups[i]`` is item
    i's group. Resamples where either statistic is undefined (NaN) are dropped."""
    keys = [str(g) for g in groups]
    uniq = sorted(set(keys))
    members = [np.flatnonzero(np.asarray(keys) == u) for u in uniq]
    everything = np.arange(len(keys))
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    for b in range(n_resamples):
        pick = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([members[k] for k in pick]) if len(uniq) else everything
        diffs[b] = stat_a(idx) - stat_b(idx)
    diffs = diffs[np.isfinite(diffs)]
    lo, hi = (np.quantile(diffs, [alpha / 2, 1 - alpha / 2]) if diffs.size else (np.nan, np.nan))
    return {"diff": float(stat_a(everything) - stat_b(everything)), "ci_low": float(lo), "ci_high": float(hi),
            "p_le_0": float(np.mean(diffs <= 0)) if diffs.size else float("nan"), "n": int(len(keys)),
            "n_groups": int(len(uniq)), "n_resamples_used": int(diffs.size), "resampled": "groups (subjects)"}


def paired_group_bootstrap_diff(metric: Callable[[np.ndarray, np.ndarray], float], y, s_a, s_b, groups,
                                n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """metric(y, s_a) - metric(y, s_b) (e.g. sample AUROC) with subjects, not scans, resampled."""
    y = np.asarray(y).astype(bool).ravel()
    a, b = np.asarray(s_a, np.float64).ravel(), np.asarray(s_b, np.float64).ravel()
    if not (y.size == a.size == b.size == len(groups)):
        raise ValueError("labels, both score vectors and groups must have one entry per scan")
    return group_bootstrap_diff(lambda i: metric(y[i], a[i]), lambda i: metric(y[i], b[i]), groups,
                                n_resamples, seed, alpha)


def group_bootstrap_ci(stat: Callable[[np.ndarray], float], groups, n_resamples: int = 2000, seed: int = 0,
                       alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of one statistic with groups (subjects) resampled, as :func:`group_bootstrap_diff`."""
    d = group_bootstrap_diff(stat, lambda i: 0.0, groups, n_resamples, seed, alpha)
    return d["ci_low"], d["ci_high"]


# ----------------------------------------------------------------------------- pooled AP from per-scan counts

def quantile_edges(values: Sequence[np.ndarray], bins: int = 4000) -> np.ndarray:
    """Score-bin edges shared by all scans of one method: quantiles of the pooled values."""
    pooled = np.concatenate([np.asarray(v, np.float64).ravel() for v in values])
    return np.unique(np.quantile(pooled, np.linspace(0, 1, bins + 1)[1:-1]))


def binned_counts(values: np.ndarray, truth: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lesion and non-lesion voxel counts of one scan per score bin (bin k = edges[k-1] <= v < edges[k]).
    Pooling scans is then a sum of counts, so a bootstrap resample costs O(bins), not O(voxels)."""
    idx = np.searchsorted(edges, np.asarray(values, np.float64).ravel(), side="right")
    t = np.asarray(truth, bool).ravel()
    return (np.bincount(idx[t], minlength=edges.size + 1).astype(np.int64),
            np.bincount(idx[~t], minlength=edges.size + 1).astype(np.int64))


def ap_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """Step-wise AP from per-bin counts (lowest bin first; each bin is one threshold, ties grouped).
    Equals :func:`average_precision` when every bin holds one distinct score."""
    pos, neg = np.asarray(pos, np.float64)[::-1], np.asarray(neg, np.float64)[::-1]
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    if tp.size == 0 or tp[-1] == 0:
        return float("nan")
    precision = tp / np.maximum(tp + fp, 1.0)
    return float(np.sum(pos / tp[-1] * precision))


# ----------------------------------------------------------------------------- lesion-wise chance level

def _component_coords(pred: np.ndarray, gt: np.ndarray) -> list[np.ndarray]:
    """Voxel coordinates of each predicted component (26-connected) that touches no ground truth."""
    pred_labels, n_pred = ndimage.label(pred, structure=STRUCTURE_26)
    if not n_pred:
        return []
    touching = set(np.unique(pred_labels[gt & pred]).tolist()) - {0}
    objs = ndimage.find_objects(pred_labels)
    out = []
    for k, sl in enumerate(objs, start=1):
        if k in touching or sl is None:
            continue
        local = np.argwhere(pred_labels[sl] == k)
        out.append(local + np.array([s.start for s in sl]))
    return out


def random_fp_hits(pred, gt, region, n_draws: int = 200, seed: int = 0,
                   gt_labels: np.ndarray | None = None) -> dict[str, float]:
    """Chance level of lesion-wise detection for one scan.

    A *random map with the same false-positive components*: each predicted component that touches no
    ground-truth lesion keeps its shape and size and is moved so that its central voxel lands on a
    uniformly random voxel of ``region`` (the brain; parts leaving the volume are cut off). A lesion
    counts as found by chance when any moved voxel overlaps it (the same rule as
    :func:`lesion_detection`). Averaged over ``n_draws`` independent placements of all components.
    Returns the expected number of lesions found, each lesion's chance of being found (in the order of
    its 26-connected label), the lesion count and the number of components moved."""
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    region = np.asarray(region).astype(bool)
    if not (pred.shape == gt.shape == region.shape):
        raise ValueError(f"shapes differ: prediction {pred.shape}, ground truth {gt.shape}, region {region.shape}")
    if gt_labels is None:
        gt_labels, n_gt = ndimage.label(gt, structure=STRUCTURE_26)
    else:
        n_gt = int(gt_labels.max())
    comps = _component_coords(pred, gt)
    out = {"n_lesions": int(n_gt), "n_fp_components": len(comps), "n_draws": int(n_draws),
           "expected_detected": 0.0, "per_lesion": [0.0] * int(n_gt)}
    anchors = np.argwhere(region)
    if not n_gt or not comps or not anchors.size or n_draws <= 0:
        return out
    rng = np.random.default_rng(seed)
    shape = np.array(gt.shape)
    flat = gt_labels.ravel()
    hit = np.zeros((n_draws, n_gt + 1), bool)
    for c in comps:
        centre = c[np.argmin(((c - c.mean(0)) ** 2).sum(1))]  # a voxel of the component, nearest its centroid
        rel = (c - centre).astype(np.int64)
        picks = anchors[rng.integers(0, len(anchors), n_draws)]
        step = max(1, int(2_000_000 // max(len(rel), 1)))
        for d0 in range(0, n_draws, step):
            pk = picks[d0:d0 + step]
            xyz = rel[None, :, :] + pk[:, None, :]  # (draws, voxels, 3)
            inside = np.all((xyz >= 0) & (xyz < shape), axis=2)
            draw_idx = np.broadcast_to(np.arange(d0, d0 + len(pk))[:, None], inside.shape)[inside]
            lin = np.ravel_multi_index(tuple(xyz[inside].T), gt.shape)
            labs = flat[lin]
            sel = labs > 0
            hit[draw_idx[sel], labs[sel]] = True
    out["expected_detected"] = float(hit[:, 1:].sum(1).mean())
    out["per_lesion"] = [float(x) for x in hit[:, 1:].mean(0)]  # P(found by chance), lesion label order
    return out
