"""Benchmark evaluation tables (part of ``pipelines/benchmark.py``, not a script): every method's run
evaluated on the same rows, CIs and paired medidiff-minus-method differences bootstrapped by subject
(or by scan), and one evaluation as a table row."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def report_row(rep: dict[str, Any]) -> dict[str, Any]:
    s, v = rep.get("sample") or {}, rep.get("voxel") or {}
    ld = ((v.get("lesion_detection") or {}).get("calibrated") or {})
    cal = s.get("calibrated") or {}
    n_healthy = (cal.get("fp", 0) + cal.get("tn", 0)) if cal else None
    n_lesioned = (cal.get("tp", 0) + cal.get("fn", 0)) if cal else None
    return {"sample_auroc": s.get("auroc"), "sample_auroc_ci": s.get("auroc_ci95"), "sample_ap": s.get("ap"),
            "voxel_auroc": v.get("auroc"), "voxel_ap": v.get("ap"), "best_dice": v.get("best_dice"),
            "calibrated_dice": v.get("calibrated_dice"), "lesion_detection": ld.get("detection_rate"),
            "lesions_found": ld.get("n_detected"), "lesions": ld.get("n_lesions"),
            "lesion_chance": (ld.get("chance") or {}).get("detection_rate"),
            "lesion_chance_expected": (ld.get("chance") or {}).get("expected_detected"),
            "lesion_precision": ld.get("precision"),
            "fp_components": (ld.get("fp_components_per_scan") or {}).get("all"),
            "healthy_flagged": cal.get("fp") if cal else None, "n_healthy": n_healthy,
            "lesioned_flagged": cal.get("tp") if cal else None, "n_lesioned": n_lesioned,
            "seconds_per_scan": rep.get("seconds_per_scan"), "n_missing": len(rep.get("missing") or []),
            "n_failed": len(rep.get("failed") or [])}


def evaluate_table(runs: dict[str, str], rows, opts, n_boot: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Every method's run evaluated on the same rows; CIs and medidiff-minus-method differences bootstrapped by
    subject when the rows have subjects (all copies of a drawn subject enter the resample), else by scan
    (sample level stratified by label, as ``medidiff evaluate``)."""
    from medidiff.evaluate import evaluate_run, voxel_counts_by_scan

    reports = {k: evaluate_run(run, rows, opts=opts, log=log) for k, run in runs.items()}
    counts = {k: voxel_counts_by_scan(run, rows, opts) for k, run in runs.items()}
    subject_of = {r.scan_id: (r.subject or r.scan_id) for r in rows}
    by_subject = any(r.subject for r in rows)
    nb = max(n_boot, 1000)
    ci: dict[str, Any] = {}
    for k, rep in reports.items():
        sc = {x["scan_id"]: x for x in rep.get("scans", [])}
        ids = sorted(sc)
        y = np.array([sc[i]["label"] for i in ids], bool)
        s = np.array([sc[i]["score"] for i in ids], float)
        g = [subject_of[i] for i in ids]
        entry: dict[str, Any] = {"resampled": "subjects" if by_subject else "scans"}
        if y.any() and not y.all():
            if by_subject:
                entry["sample_auroc"] = list(_group_ci(lambda i: _auroc(y[i], s[i]), g, nb))
            else:
                entry["sample_auroc"] = (rep.get("sample") or {}).get("auroc_ci95")
        c = counts[k]
        if c["counts"]:
            cid = sorted(c["counts"])
            P = np.stack([c["counts"][i][0] for i in cid])
            N = np.stack([c["counts"][i][1] for i in cid])
            entry["voxel_ap"] = list(_group_ci(lambda i: _ap_counts(P[i].sum(0), N[i].sum(0)),
                                                [subject_of[i] for i in cid], nb))
            entry["voxel_ap_binned"] = c["ap_binned"]
        ci[k] = entry
    paired: dict[str, Any] = {}
    if "medidiff" in reports:
        paired = paired_comparisons(reports, counts, subject_of, by_subject, n_boot)
    return {"reports": reports, "ci": ci, "paired": paired, "resampled": "subjects" if by_subject else "scans"}


def _group_ci(stat, groups, n):
    from medidiff.evaluate import metrics as M

    return M.group_bootstrap_ci(stat, groups, n)


def _auroc(y, s) -> float:
    from medidiff.evaluate import metrics as M

    return M.auroc(y, s) if y.any() and not y.all() else float("nan")


def _ap_counts(pos, neg) -> float:
    from medidiff.evaluate import metrics as M

    return M.ap_from_counts(pos, neg)


def paired_comparisons(reports: dict[str, Any], counts: dict[str, Any], subject_of: dict[str, str],
                       by_subject: bool, n_boot: int) -> dict[str, Any]:
    """medidiff minus each other method on the same held-out scans: sample AUROC and AP (by subject when the
    labels have subjects, else stratified by label over scans) and pooled voxel AP (subjects or scans
    resampled; AP of a resample from per-scan bin counts, the point difference exact)."""
    from medidiff.evaluate import metrics as M

    nb = max(n_boot, 1000)
    ref = {r["scan_id"]: r for r in reports["medidiff"].get("scans", [])}
    out: dict[str, Any] = {}
    for name, rep in reports.items():
        if name == "medidiff":
            continue
        other = {r["scan_id"]: r for r in rep.get("scans", [])}
        common = sorted(set(ref) & set(other))
        y = np.array([ref[k]["label"] for k in common], dtype=bool)
        d: dict[str, Any] = {}
        if len(common) >= 4 and y.any() and not y.all():
            sa = np.array([ref[k]["score"] for k in common])
            sb = np.array([other[k]["score"] for k in common])
            if by_subject:
                g = [subject_of[k] for k in common]
                d["sample_auroc"] = M.paired_group_bootstrap_diff(M.auroc, y, sa, sb, g, nb)
                d["sample_ap"] = M.paired_group_bootstrap_diff(M.average_precision, y, sa, sb, g, nb)
            else:
                d["sample_auroc"] = M.paired_bootstrap_diff(M.auroc, y, sa, sb, nb)
                d["sample_ap"] = M.paired_bootstrap_diff(M.average_precision, y, sa, sb, nb)
                for v in (d["sample_auroc"], d["sample_ap"]):
                    v["resampled"] = "scans, stratified by label"
        ca, cb = counts["medidiff"]["counts"], counts[name]["counts"]
        cid = sorted(set(ca) & set(cb))
        if cid and any(ca[i][0].sum() for i in cid):
            Pa, Na = np.stack([ca[i][0] for i in cid]), np.stack([ca[i][1] for i in cid])
            Pb, Nb = np.stack([cb[i][0] for i in cid]), np.stack([cb[i][1] for i in cid])
            v = M.group_bootstrap_diff(lambda i: M.ap_from_counts(Pa[i].sum(0), Na[i].sum(0)),
                                       lambda i: M.ap_from_counts(Pb[i].sum(0), Nb[i].sum(0)),
                                       [subject_of[i] for i in cid], nb)
            exact_a = (reports["medidiff"].get("voxel") or {}).get("ap")
            exact_b = (rep.get("voxel") or {}).get("ap")
            v["diff_binned"] = v["diff"]
            if exact_a is not None and exact_b is not None:
                v["diff"] = float(exact_a - exact_b)
            v["resampled"] = "subjects" if by_subject else "scans"
            v["note"] = "CI: AP of each resample from 4000 quantile bins per method; difference: exact pooled AP"
            d["voxel_ap"] = v
        if d:
            out[name] = d
    return out
