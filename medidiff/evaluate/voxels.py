"""Voxel level: pooled voxel metrics, size and type strata, and lesion-wise detection with the run's
calibrated masks and at the oracle threshold (definitions: :mod:`.run`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .labels import LabelRow
from .metrics import (STRUCTURE_26, ap_from_counts, auroc, average_precision, best_dice, binned_counts, dice,
                      dice_curve, lesion_detection, quantile_edges, random_fp_hits, summarize)
from .options import EvalOptions
from .scans import (EvaluationError, MatchedScan, check_same_grid, load_nifti, load_source, matched_scans,
                    result_matcher)


@dataclass
class _VoxelPool:
    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    size_code: list[np.ndarray] = field(default_factory=list)  # per voxel: -1 negative, else size-bin index
    type_code: list[np.ndarray] = field(default_factory=list)  # per voxel: -1 negative, else type index


def size_bin_names(bins: Sequence[float]) -> list[str]:
    edges = [float(b) for b in bins]
    names = [f"<{edges[0]:g} mm³"]
    names += [f"{a:g}–{b:g} mm³" for a, b in zip(edges[:-1], edges[1:])]
    names.append(f">{edges[-1]:g} mm³")
    return names


def size_bin(volume_mm3: float, bins: Sequence[float]) -> int:
    return int(np.searchsorted(np.asarray(bins, dtype=np.float64), volume_mm3, side="right"))


def _component_types(gt_labels: np.ndarray, n: int, row: LabelRow, type_names: list[str]) -> np.ndarray:
    """Type index per component (index 0 unused); -1 = unknown."""
    out = np.full(n + 1, -1, dtype=np.int16)
    if not row.types:
        return out
    if len(set(row.types)) == 1 or not row.lesions:
        t = row.types[0] if len(set(row.types)) == 1 else "mixed"
        if t not in type_names:
            type_names.append(t)
        out[1:] = type_names.index(t)
        return out
    from scipy import ndimage

    centroids = np.asarray(ndimage.center_of_mass(np.ones_like(gt_labels), gt_labels, range(1, n + 1)))
    centres, kinds = [], []
    for les in row.lesions:
        c = les.get("centre_voxel")
        k = les.get("kind")
        if c is None or k is None:
            continue
        centres.append(np.asarray(c, dtype=np.float64))
        kinds.append(str(k))
    if not centres:
        return out
    centres_a = np.stack(centres)
    inside: dict[int, str] = {}
    for c, k in zip(centres_a, kinds):
        idx = tuple(int(round(x)) for x in c)
        if all(0 <= i < s for i, s in zip(idx, gt_labels.shape)) and gt_labels[idx] > 0:
            inside[int(gt_labels[idx])] = k
    for comp in range(1, n + 1):
        k = inside.get(comp)
        if k is None:
            d = np.linalg.norm(centres_a - centroids[comp - 1], axis=1)
            k = kinds[int(np.argmin(d))]
        if k not in type_names:
            type_names.append(k)
        out[comp] = type_names.index(k)
    return out


def _scans_with_ground_truth(scans: list[MatchedScan]):
    with_gt = [sc for sc in scans if sc.row.mask_path is not None or sc.row.label == 0]
    no_mask = [sc.row.scan_id for sc in scans if sc.row.mask_path is None and sc.row.label == 1]
    for sc in with_gt:
        if sc.row.mask_path is not None and not sc.row.mask_path.is_file():
            raise EvaluationError(f"{sc.row.scan_id}: mask file {sc.row.mask_path} not found")
    return with_gt, no_mask


def _map_gt_foreground(sc: MatchedScan, opts: EvalOptions):
    """(anomaly map, affine, map path, ground truth, evaluation foreground) on the scan's grid."""
    map_path = sc.scan_dir / sc.result.get("outputs", {}).get("anomaly_map", "anomaly_map.nii.gz")
    if not map_path.is_file():
        raise EvaluationError(f"{sc.row.scan_id}: anomaly map {map_path} missing from the run")
    amap, aff = load_nifti(map_path)
    amap = amap.astype(np.float32)
    gt = np.zeros(amap.shape, bool)
    if sc.row.mask_path is not None:
        gt_raw, gaff = load_nifti(sc.row.mask_path)
        check_same_grid(gt_raw.shape, gaff, sc.row.mask_path, amap.shape, aff, map_path)
        gt = gt_raw > 0
    if opts.foreground == "all":
        return amap, aff, map_path, gt, np.ones(amap.shape, bool)
    if opts.foreground == "brain":
        bpath = sc.row.brain_mask_path
        if bpath is None or not bpath.is_file():
            raise EvaluationError(f"{sc.row.scan_id}: foreground 'brain' needs the labels' brain_mask_path "
                                  f"({bpath or 'empty'})")
        braw, baff = load_nifti(bpath)
        check_same_grid(braw.shape, baff, bpath, amap.shape, aff, map_path)
        return amap, aff, map_path, gt, (braw > 0) | gt
    src = load_source(sc.row, sc.result)
    if src is None:
        raise EvaluationError(f"{sc.row.scan_id}: source scan not found ({sc.row.path or sc.result.get('source_path')}); "
                              "it defines the evaluation foreground (or use --foreground all)")
    sarr, saff, spath = src
    check_same_grid(sarr.shape, saff, spath, amap.shape, aff, map_path)
    return amap, aff, map_path, gt, (sarr != 0) | gt


def _healthy_stride(n_fg: int, with_gt: list[MatchedScan], opts: EvalOptions, log) -> int:
    """Subsampling step for healthy-only scans that keeps the pooled voxels under ``opts.max_voxels``."""
    est_total = n_fg * len(with_gt)
    n_healthy = sum(1 for x in with_gt if x.row.label == 0)
    if not opts.max_voxels or est_total <= opts.max_voxels or not n_healthy:
        return 1
    healthy_total = n_fg * n_healthy
    stride = int(math.ceil(healthy_total / max(healthy_total - (est_total - opts.max_voxels), 1)))
    log(f"voxel level: ~{est_total:,} foreground voxels over the cap {opts.max_voxels:,}: healthy-only "
        f"scans subsampled every {stride}th voxel (weighted)")
    return stride


def _pool_voxels(pool: _VoxelPool, amap, gt, fg, gt_labels, size_code, type_code, subsample: int) -> tuple:
    vals, lab = amap[fg], gt[fg]
    w = np.ones(vals.size, np.float32)
    if subsample > 1:
        vals, lab = vals[::subsample], lab[::subsample]
        w = np.full(vals.size, float(subsample), np.float32)
        size_c = type_c = np.full(vals.size, -1, np.int8)
    else:
        comp_fg = gt_labels[fg]
        size_c = np.where(comp_fg > 0, size_code[comp_fg], -1).astype(np.int8)
        type_c = np.where(comp_fg > 0, type_code[comp_fg], -1).astype(np.int8)
    pool.scores.append(vals.astype(np.float32))
    pool.labels.append(lab)
    pool.weights.append(w)
    pool.size_code.append(size_c)
    pool.type_code.append(type_c)
    return vals, lab


@dataclass
class _CalibratedMasks:
    """Pooled results of the run's own mask.nii.gz (the calibrated decision)."""

    available: bool = True
    tp: int = 0
    fp: int = 0
    fn: int = 0
    lesions: list[dict] = field(default_factory=list)
    fp_components: list[tuple[int, int, int]] = field(default_factory=list)  # (label, n_fp, n_predicted)
    chance: list[dict] = field(default_factory=list)  # per lesioned scan: random_fp_hits

    def dice(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 1.0


def _score_calibrated_mask(sc: MatchedScan, rec: dict[str, Any], acc: _CalibratedMasks, amap, aff, map_path, gt,
                           gt_labels, vox_mm3, size_code, type_code, size_names, type_names,
                           fg=None, opts: EvalOptions | None = None, index: int = 0) -> None:
    mask_rel = sc.result.get("outputs", {}).get("mask")
    mpath = sc.scan_dir / mask_rel if mask_rel else None
    if mpath is None or not mpath.is_file():
        acc.available = False
        return
    pm_raw, paff = load_nifti(mpath)
    check_same_grid(pm_raw.shape, paff, mpath, amap.shape, aff, map_path)
    pm = pm_raw > 0
    fp = int((pm & ~gt).sum())
    acc.tp, acc.fp, acc.fn = acc.tp + int((pm & gt).sum()), acc.fp + fp, acc.fn + int((~pm & gt).sum())
    rec["dice_calibrated"] = dice(pm, gt) if gt.any() else None
    rec["fp_voxels_calibrated"] = fp
    det = lesion_detection(pm, gt, vox_mm3, gt_labels=gt_labels)
    for les in det.lesions:
        les.update(scan_id=sc.row.scan_id, size_bin=size_names[size_code[les["label"]]],
                   type=type_names[type_code[les["label"]]] if type_code[les["label"]] >= 0 else None)
    acc.lesions.extend(det.lesions)
    acc.fp_components.append((sc.row.label, det.n_fp_components, det.n_pred_components))
    rec["lesions_detected_calibrated"] = det.n_detected
    rec["fp_components_calibrated"] = det.n_fp_components
    if det.lesions and fg is not None and opts is not None and opts.chance_draws > 0:
        ch = random_fp_hits(pm, gt, fg, n_draws=opts.chance_draws, seed=opts.seed + 7919 * index,
                              gt_labels=gt_labels)
        for les, p in zip(det.lesions, ch["per_lesion"]):
            les["chance"] = p
        acc.chance.append({"scan_id": sc.row.scan_id, **{k: v for k, v in ch.items() if k != "per_lesion"}})
        rec["lesions_expected_by_chance_calibrated"] = ch["expected_detected"]


def _strata(labels, scores, wts, codes, names) -> dict[str, Any]:
    """Each stratum's positives against all negatives."""
    neg = ~labels
    out = {}
    for k, name in enumerate(names):
        sel = neg | (codes == k)
        n_pos = int((labels & sel).sum())
        w = None if wts is None else wts[sel]
        out[name] = {"n_positive_voxels": n_pos,
                     "auroc": auroc(labels[sel], scores[sel], w) if n_pos else None,
                     "ap": average_precision(labels[sel], scores[sel], w) if n_pos else None}
    return out


def _pooled_metrics(pool: _VoxelPool, stride: int, acc: _CalibratedMasks, size_names, type_names, n_scans: int,
                    no_mask: list[str], opts: EvalOptions) -> tuple[dict[str, Any], dict[str, Any], float]:
    scores, labels = np.concatenate(pool.scores), np.concatenate(pool.labels)
    wts = np.concatenate(pool.weights) if stride > 1 else None
    res: dict[str, Any] = {
        "available": True, "n_scans": n_scans, "n_voxels": int(scores.size),
        "n_positive_voxels": int(labels.sum()), "anomalous_without_mask": no_mask,
        "healthy_subsample_stride": stride,
        "foreground": {"nonzero": "source scan nonzero ∪ ground truth", "all": "all voxels",
                       "brain": "the labels' brain mask ∪ ground truth"}.get(opts.foreground, opts.foreground),
        "auroc": auroc(labels, scores, wts), "ap": average_precision(labels, scores, wts),
    }
    bd, bthr = best_dice(labels, scores, wts)
    res.update(best_dice=bd, best_dice_threshold=bthr, best_dice_note="oracle: threshold chosen on these labels")
    if acc.available:
        res["calibrated_dice"] = acc.dice()
        res["calibrated_dice_note"] = "the run's mask.nii.gz (threshold from healthy calibration scans), pooled over all scans"
    else:
        res["calibrated_dice"] = None
        res["calibrated_dice_note"] = "not available: the run wrote no mask.nii.gz (uncalibrated?)"
    res["by_size"] = _strata(labels, scores, wts, np.concatenate(pool.size_code), size_names)
    res["by_type"] = _strata(labels, scores, wts, np.concatenate(pool.type_code), type_names)
    res["strata_note"] = "each stratum: its lesion voxels against all healthy-tissue voxels"
    dcurve, dthr = dice_curve(labels, scores, wts)
    return res, {"voxel": (labels, scores, wts), "dice_threshold": (dthr, dcurve)}, bthr


def _oracle_pass(per_scan, cache, threshold: float, opts: EvalOptions, size_names, type_names):
    """Second pass: lesion detection and Dice at the oracle threshold."""
    from scipy import ndimage

    lesions, fps = [], []
    for rec, c in zip(per_scan, cache):
        sc = c["sc"]
        amap, _ = load_nifti(c["map_path"])
        gt = (load_nifti(sc.row.mask_path)[0] > 0) if sc.row.mask_path is not None else np.zeros(amap.shape, bool)
        pm = amap > threshold
        rec["dice_oracle_threshold"] = dice(pm, gt) if gt.any() else None
        det = lesion_detection(pm, gt, c["vox_mm3"])
        gt_labels, n_comp = ndimage.label(gt, structure=STRUCTURE_26)
        type_code = _component_types(gt_labels, n_comp, sc.row, type_names)
        for les in det.lesions:
            les.update(scan_id=sc.row.scan_id, size_bin=size_names[size_bin(les["volume_mm3"], opts.size_bins)],
                       type=type_names[type_code[les["label"]]] if type_code[les["label"]] >= 0 else None)
        lesions.extend(det.lesions)
        fps.append((sc.row.label, det.n_fp_components, det.n_pred_components))
        rec["lesions_detected_oracle"] = det.n_detected
        rec["fp_components_oracle"] = det.n_fp_components
    return lesions, fps


def _per_scan_dice(per_scan, calibrated: bool) -> dict[str, Any]:
    anom = [r for r in per_scan if r["label"] == 1 and r["gt_voxels"] > 0]
    return {
        "calibrated": summarize([r.get("dice_calibrated") for r in anom]) if calibrated else None,
        "oracle_threshold": summarize([r.get("dice_oracle_threshold") for r in anom]),
        "by_type": {t: {"calibrated": summarize([r.get("dice_calibrated") for r in anom if r["types"] == [t]]),
                        "oracle_threshold": summarize([r.get("dice_oracle_threshold") for r in anom if r["types"] == [t]])}
                    for t in sorted({r["types"][0] for r in anom if len(r["types"]) == 1})},
        "note": "anomalous scans with a non-empty mask; by_type uses single-type scans only",
    }


def voxel_level(scans: list[MatchedScan], opts: EvalOptions, log) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pooled voxel metrics, strata, calibrated-mask and oracle-threshold lesion detection."""
    from scipy import ndimage

    with_gt, no_mask = _scans_with_ground_truth(scans)
    if not any(sc.row.label == 1 and sc.row.mask_path is not None for sc in with_gt):
        return {"available": False, "note": "no ground-truth masks for anomalous scans",
                "anomalous_without_mask": no_mask}, {}
    size_names, type_names = size_bin_names(opts.size_bins), []
    pool, acc = _VoxelPool(), _CalibratedMasks()
    per_scan: list[dict[str, Any]] = []
    cache: list[dict[str, Any]] = []
    stride = 1
    for i, sc in enumerate(with_gt):
        amap, aff, map_path, gt, fg = _map_gt_foreground(sc, opts)
        vox_mm3 = float(abs(np.linalg.det(aff[:3, :3])))
        gt_labels, n_comp = ndimage.label(gt, structure=STRUCTURE_26)
        comp_sizes = np.bincount(gt_labels.ravel(), minlength=n_comp + 1) * vox_mm3
        size_code = np.array([-1] + [size_bin(v, opts.size_bins) for v in comp_sizes[1:]], dtype=np.int16)
        type_code = _component_types(gt_labels, n_comp, sc.row, type_names)
        if i == 0:
            stride = _healthy_stride(int(fg.sum()), with_gt, opts, log)
        subsample = stride if sc.row.label == 0 and not gt.any() else 1
        vals, lab = _pool_voxels(pool, amap, gt, fg, gt_labels, size_code, type_code, subsample)
        rec: dict[str, Any] = {"scan_id": sc.row.scan_id, "label": sc.row.label, "types": sc.row.types,
                               "gt_voxels": int(gt.sum()), "gt_volume_mm3": float(gt.sum() * vox_mm3),
                               "n_lesions": int(n_comp), "voxel_ap": average_precision(lab, vals) if lab.any() else None}
        _score_calibrated_mask(sc, rec, acc, amap, aff, map_path, gt, gt_labels, vox_mm3, size_code, type_code,
                               size_names, type_names, fg=fg, opts=opts, index=i)
        per_scan.append(rec)
        cache.append({"sc": sc, "map_path": map_path, "fg_count": int(fg.sum()), "vox_mm3": vox_mm3})
    res, vcurves, bthr = _pooled_metrics(pool, stride, acc, size_names, type_names, len(with_gt), no_mask, opts)
    del pool
    lesions_orc, fp_orc = _oracle_pass(per_scan, cache, bthr, opts, size_names, type_names)
    res["lesion_detection"] = {
        "calibrated": (_lesion_summary(acc.lesions, acc.fp_components, size_names, type_names, acc.chance,
                                       opts.chance_draws) if acc.available else None),
        "oracle_threshold": _lesion_summary(lesions_orc, fp_orc, size_names, type_names),
        "rule": "a ground-truth component (26-connected) is found when any predicted voxel overlaps it",
        "chance_rule": ("calibrated: each scan's false-positive components (shape and size kept) moved to uniformly "
                        "random voxels of its evaluation foreground, the lesions they overlap counted, averaged "
                        f"over {opts.chance_draws} draws"),
    }
    res["per_scan_dice"] = _per_scan_dice(per_scan, acc.available)
    res["per_scan"] = per_scan
    return res, vcurves


def _lesion_summary(lesions: list[dict], fps: list[tuple[int, int, int]], size_names: list[str],
                    type_names: list[str], chance: list[dict] | None = None, chance_draws: int = 0) -> dict[str, Any]:
    with_chance = chance is not None and len(chance) > 0

    def rate(items):
        n = len(items)
        d = {"n_lesions": n, "n_detected": sum(1 for x in items if x["detected"]),
             "detection_rate": (sum(1 for x in items if x["detected"]) / n) if n else None}
        if with_chance:
            exp = float(sum(x.get("chance", 0.0) for x in items))
            d.update(chance_expected_detected=exp, chance_detection_rate=exp / n if n else None)
        return d

    out = rate(lesions)
    n_pred = sum(p for _, _, p in fps)
    n_fp = sum(f for _, f, _ in fps)
    out["n_predicted_components"] = n_pred
    out["n_true_positive_components"] = n_pred - n_fp
    out["precision"] = (n_pred - n_fp) / n_pred if n_pred else None
    out["precision_note"] = "predicted components touching a lesion / all predicted components, all evaluated scans"
    if with_chance:
        out["chance"] = {"expected_detected": out["chance_expected_detected"],
                         "detection_rate": out["chance_detection_rate"], "n_draws": chance_draws,
                         "n_scans": len(chance), "per_scan": chance}
    out["by_size"] = {name: rate([x for x in lesions if x["size_bin"] == name]) for name in size_names}
    out["by_type"] = {t: rate([x for x in lesions if x.get("type") == t]) for t in type_names}
    healthy = [n for lab, n, _ in fps if lab == 0]
    anomalous = [n for lab, n, _ in fps if lab == 1]
    out["fp_components_per_scan"] = {
        "all": float(np.mean([n for _, n, _ in fps])) if fps else None,
        "healthy_scans": float(np.mean(healthy)) if healthy else None,
        "anomalous_scans": float(np.mean(anomalous)) if anomalous else None,
    }
    return out


def voxel_counts_by_scan(run_dir: str | Path, rows: Sequence[LabelRow], opts: EvalOptions | None = None,
                         bins: int = 4000) -> dict[str, Any]:
    """Per scan of a run: lesion / non-lesion voxel counts in score bins shared by the run's scans
    (quantiles of its pooled foreground values), on the same foreground as :func:`evaluate_run`. A
    bootstrap over subjects then pools a resample by summing counts (:func:`metrics.ap_from_counts`).
    Returns ``{"edges", "counts": {scan_id: (pos, neg)}, "ap_binned", "ap_exact"}``."""
    opts = opts or EvalOptions()
    run_dir = Path(run_dir)
    scans, _, _ = matched_scans(run_dir, rows, result_matcher(run_dir))
    with_gt, _ = _scans_with_ground_truth(scans)
    values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for sc in with_gt:
        amap, _, _, gt, fg = _map_gt_foreground(sc, opts)
        values[sc.row.scan_id] = (amap[fg].astype(np.float32), gt[fg])
    if not values or not any(t.any() for _, t in values.values()):
        return {"edges": np.zeros(0), "counts": {}, "ap_binned": None, "ap_exact": None}
    edges = quantile_edges([v for v, _ in values.values()], bins)
    counts = {sid: binned_counts(v, t, edges) for sid, (v, t) in values.items()}
    exact = average_precision(np.concatenate([t for _, t in values.values()]),
                                np.concatenate([v for v, _ in values.values()]))
    binned = ap_from_counts(sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values()))
    return {"edges": edges, "counts": counts, "ap_binned": binned, "ap_exact": exact}
