"""Evaluation outputs: PNG plots (atomic) and a Markdown summary of metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_path
from .metrics import auroc, average_precision, pr_curve, roc_curve


def _thin(x: np.ndarray, y: np.ndarray, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= n:
        return x, y
    idx = np.unique(np.r_[np.linspace(0, x.size - 1, n).astype(int), x.size - 1])
    return x[idx], y[idx]


def _save(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path.name


def write_plots(out: Path, curves: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written = []
    for level in ("sample", "voxel"):
        if level not in curves:
            continue
        y, s, *rest = curves[level]
        w = rest[0] if rest else None
        y = np.asarray(y, bool)
        if not (y.any() and (~y).any()):
            continue
        fpr, tpr, _ = roc_curve(y, s, w)
        fpr, tpr = _thin(fpr, tpr)
        fig, ax = plt.subplots(figsize=(4.2, 4), layout="constrained")
        ax.plot(fpr, tpr, lw=1.5, label=f"AUROC {auroc(y, s, w):.3f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=f"ROC ({level} level)")
        ax.legend(loc="lower right")
        written.append(_save(fig, out / f"roc_{level}.png"))
        plt.close(fig)
        prec, rec, _ = pr_curve(y, s, w)
        rec, prec = _thin(rec, prec)
        base = float(np.average(y, weights=w))
        fig, ax = plt.subplots(figsize=(4.2, 4), layout="constrained")
        ax.step(rec, prec, where="post", lw=1.5, label=f"AP {average_precision(y, s, w):.3f}")
        ax.axhline(base, color="k", ls=":", lw=0.8, label=f"chance {base:.3g}")
        ax.set(xlabel="recall", ylabel="precision", title=f"Precision–recall ({level} level)", ylim=(0, 1.02))
        ax.legend(loc="upper right")
        written.append(_save(fig, out / f"pr_{level}.png"))
        plt.close(fig)
    if "sample" in curves:
        y, s = curves["sample"]
        y = np.asarray(y, bool)
        s = np.asarray(s, float)
        fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
        bins = np.histogram_bin_edges(s, bins=min(30, max(5, s.size // 2)))
        ax.hist(s[~y], bins=bins, alpha=0.6, label=f"healthy (n={int((~y).sum())})")
        ax.hist(s[y], bins=bins, alpha=0.6, label=f"anomalous (n={int(y.sum())})")
        ax.set(xlabel="scan score", ylabel="scans", title="Scan scores")
        ax.legend()
        written.append(_save(fig, out / "score_hist.png"))
        plt.close(fig)
    if "dice_threshold" in curves:
        thr, d = curves["dice_threshold"]
        thr, d = _thin(np.asarray(thr)[::-1], np.asarray(d)[::-1])
        fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
        ax.plot(thr, d, lw=1.5)
        i = int(np.argmax(d))
        ax.axvline(thr[i], color="k", ls=":", lw=0.8, label=f"best Dice {d[i]:.3f}")
        ax.set(xlabel="voxel threshold (map units)", ylabel="pooled Dice", title="Dice vs threshold")
        ax.legend()
        written.append(_save(fig, out / "dice_threshold.png"))
        plt.close(fig)
    return written


def _f(x, nd: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    try:
        return f"{float(x):.{nd}f}"
    except (TypeError, ValueError):
        return str(x)


def _ci(x, ci) -> str:
    if x is None:
        return "n/a"
    if ci and ci[0] is not None:
        return f"{_f(x)} [{_f(ci[0])}, {_f(ci[1])}]"
    return _f(x)


def markdown_summary(r: dict[str, Any]) -> str:
    """summary.md: what was evaluated, then the sample, voxel and reconstruction sections of metrics.json."""
    L = [f"# Evaluation: {r.get('method')}", "",
         f"- run: `{r['run']}`", f"- labels: `{r['labels']}`" + (f" (splits: {', '.join(r['splits'])})" if r.get("splits") else ""),
         f"- scans evaluated: {r['n_evaluated']} of {r['n_labelled']} labelled"]
    if r.get("splits_note"):
        L.append(f"- {r['splits_note']}")
    if r.get("missing"):
        L.append(f"- **missing from the run (not scored, left out): {len(r['missing'])}** — {', '.join(r['missing'])}")
    if r.get("failed"):
        L.append(f"- **failed in the run (left out): {len(r['failed'])}** — "
                 + "; ".join(f"{f['scan_id']}: {f['error']}" for f in r["failed"]))
    if r.get("seconds_per_scan") is not None:
        L.append(f"- seconds per scan (as recorded by the run): {_f(r['seconds_per_scan'], 2)}")
    L += _sample_lines(r)
    L += _voxel_lines(r.get("voxel") or {})
    L += _reconstruction_lines(r.get("reconstruction") or {})
    if r.get("plots"):
        L += ["", "## Plots", ""] + [f"![{p}]({p})" for p in r["plots"]]
    L += ["", "## Definitions", "", r.get("definitions", "")]
    return "\n".join(L) + "\n"


def _sample_lines(r: dict[str, Any]) -> list[str]:
    L: list[str] = []
    s = r.get("sample", {})
    L += ["", "## Sample level", ""]
    if "auroc" in s:
        L += [f"{s['n_anomalous']} anomalous, {s['n_healthy']} healthy scans. 95% CIs: stratified bootstrap, "
              f"{r['options']['n_boot']} resamples, seed {r['options']['seed']}.", "",
              "| metric | value [95% CI] |", "|---|---|",
              f"| AUROC | {_ci(s['auroc'], s.get('auroc_ci95'))} |",
              f"| AP (prevalence {_f(s['prevalence'], 2)}) | {_ci(s['ap'], s.get('ap_ci95'))} |"]
        cal = s.get("calibrated")
        if cal:
            L += [f"| sensitivity at calibrated threshold (flag) | {_ci(cal['sensitivity'], cal.get('sensitivity_ci95'))} |",
                  f"| specificity at calibrated threshold (flag) | {_ci(cal['specificity'], cal.get('specificity_ci95'))} |"]
        else:
            L.append("| calibrated flag | n/a (uncalibrated run) |")
        for k, v in (s.get("at_fpr") or {}).items():
            L.append(f"| sensitivity at FPR {float(k):.0%} (threshold from the evaluated healthy scans; "
                     f"FPR resolution {_f(v['fpr_resolution'], 3)}) | {_ci(v['sensitivity'], v.get('sensitivity_ci95'))} |")
    else:
        L.append(s.get("note", "n/a"))
    return L


def _voxel_lines(v: dict[str, Any]) -> list[str]:
    """Pooled voxel metrics, size and type strata, lesion detection and per-scan Dice."""
    L: list[str] = []
    L += ["", "## Voxel level", ""]
    if v.get("available"):
        L += [f"Pooled over {v['n_voxels']:,} voxels ({v['n_positive_voxels']:,} anomalous) of {v['n_scans']} scans; "
              f"foreground: {v['foreground']}."
              + (f" Healthy-only scans subsampled every {v['healthy_subsample_stride']}th voxel (weighted)."
                 if v.get("healthy_subsample_stride", 1) > 1 else ""), "",
              "| metric | value |", "|---|---|",
              f"| AUROC | {_f(v['auroc'])} |", f"| AP | {_f(v['ap'])} |",
              f"| best Dice (oracle threshold {_f(v['best_dice_threshold'], 4)}) | {_f(v['best_dice'])} |",
              f"| calibrated Dice (run's mask.nii.gz) | {_f(v.get('calibrated_dice'))} |"]
        if v.get("anomalous_without_mask"):
            L.append(f"\nAnomalous scans without a mask (left out of voxel metrics): {', '.join(v['anomalous_without_mask'])}")
        L += ["", "### By lesion size (component volume) and anomaly type", "",
              "| stratum | lesion voxels | voxel AUROC | voxel AP | lesions found (calibrated) | lesions found (oracle thr.) |",
              "|---|---|---|---|---|---|"]
        ld = v.get("lesion_detection", {})
        cal, orc = ld.get("calibrated") or {}, ld.get("oracle_threshold") or {}

        def det(d, group, name):
            x = (d.get(group) or {}).get(name)
            if not x or not x.get("n_lesions"):
                return "n/a"
            return f"{x['n_detected']}/{x['n_lesions']} ({_f(x['detection_rate'], 2)})"

        for group, key in (("by_size", "size"), ("by_type", "type")):
            for name, m in (v.get(group) or {}).items():
                L.append(f"| {key}: {name} | {m['n_positive_voxels']:,} | {_f(m['auroc'])} | {_f(m['ap'])} | "
                         f"{det(cal, group, name)} | {det(orc, group, name)} |")
        for label, d in (("calibrated mask", cal), ("oracle threshold", orc)):
            if d:
                fp = d.get("fp_components_per_scan", {})
                L.append(f"\nLesion detection ({label}): {d['n_detected']}/{d['n_lesions']} found "
                         f"(rate {_f(d['detection_rate'], 2)}); false-positive components per scan: "
                         f"{_f(fp.get('all'), 2)} (healthy scans {_f(fp.get('healthy_scans'), 2)}, "
                         f"anomalous scans {_f(fp.get('anomalous_scans'), 2)}).")
        pd_ = v.get("per_scan_dice", {})
        L += ["", "### Per-scan Dice (anomalous scans)", "", "| threshold | n | median | IQR | min | max |",
              "|---|---|---|---|---|---|"]
        for label, key in (("calibrated", "calibrated"), ("oracle (pooled best)", "oracle_threshold")):
            d = pd_.get(key)
            if d and d.get("n"):
                L.append(f"| {label} | {d['n']} | {_f(d['median'])} | {_f(d['q25'])}–{_f(d['q75'])} | "
                         f"{_f(d['min'])} | {_f(d['max'])} |")
            else:
                L.append(f"| {label} | n/a | | | | |")
    else:
        L.append(v.get("note", "not available"))
    return L


def _reconstruction_lines(rc: dict[str, Any]) -> list[str]:
    L: list[str] = []
    L += ["", "## Reconstruction fidelity (healthy scans)", ""]
    if rc.get("available"):
        L.append(f"{rc['n_scans']} scans: PSNR median {_f(rc['psnr_db']['median'], 2)} dB "
                 f"(IQR {_f(rc['psnr_db']['q25'], 2)}–{_f(rc['psnr_db']['q75'], 2)}), SSIM median "
                 f"{_f(rc['ssim']['median'])} (IQR {_f(rc['ssim']['q25'])}–{_f(rc['ssim']['q75'])}). {rc['definition']}.")
    else:
        L.append(rc.get("note", "not available"))
    return L
