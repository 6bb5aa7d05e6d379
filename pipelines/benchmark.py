"""End-to-end benchmark of medidiff against simple baselines on sample_data (or any
folder with the same ``labels.csv`` layout), written to ``BENCHMARKS.md``.

1. calibrate the model on the **calib** split (healthy, held out from training);
2. choose scoring settings on the **val** split only: t* x K (K = DDIM steps
   from t* to 0; K=1 is single-step x0 prediction) by val voxel AP, then
   whether the AutoDDPM-style inpainting refinement helps (val voxel AP), then
   the scan-score type by val sample AUROC;
3. score the **test** split once with the chosen settings (with reconstructions,
   for PSNR/SSIM);
4. baselines fit on **train**, thresholds on **calib**, maps for **test** — no
   test labels anywhere before evaluation;
5. evaluate everything with the same code (``medidiff evaluate``) and write the
   tables, the machine, the exact command and a plain verdict.

    python pipelines/benchmark.py --model models/sample --data sample_data
    python pipelines/benchmark.py --quick          # smoke run: small grid, few scans, short AE

The model folder itself is never modified: each setting is calibrated in a copy
under OUT/models/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medidiff.io.atomic import write_text_atomic  # noqa: E402

SCORE_TYPES = ("topk_mean", "percentile", "supra_volume")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "sample"), help="trained medidiff model folder")
    p.add_argument("--data", default=str(ROOT / "sample_data"), help="folder with labels.csv and the split folders")
    p.add_argument("--out", default=str(ROOT / "benchmark_out"), help="working/output folder")
    p.add_argument("--bench-md", default=str(ROOT / "BENCHMARKS.md"), help="where to write the Markdown report")
    p.add_argument("--t-grid", default="0.1,0.15,0.25", help="t* fractions to try on val")
    p.add_argument("--k-grid", default="1,5", help="DDIM steps K (t* → 0) to try on val")
    p.add_argument("--score-types", default=",".join(SCORE_TYPES), help="scan-score types to try on val")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra scoring override for every run, e.g. score.steps=1 (repeatable)")
    p.add_argument("--ae-minutes", type=float, default=None, help="autoencoder training budget (minutes; default 10)")
    p.add_argument("--ae-steps", type=int, default=None, help="autoencoder training steps at most (default 3000)")
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default 1000)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots of the test evaluations")
    p.add_argument("--calibrate-model", action="store_true",
                   help="also store the calibration for the chosen settings in --model itself (otherwise the "
                        "model folder is never modified)")
    p.add_argument("--limit", type=int, default=None, help="at most this many scans per split (per label)")
    p.add_argument("--baselines", default="intensity-hyper,intensity-hypo,intensity-abs,normative,autoencoder")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-refine", action="store_true", help="don't try the inpainting refinement on val "
                   "(variants refine=inpainting, ssim=structural term are tried on the best t* x K)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: t* in {0.1, 0.25}, K=1, two score types, <=3 scans per split and label, "
                        "AE 20 steps, 200 bootstrap resamples")
    given = set(argv if argv is not None else sys.argv[1:])
    a = p.parse_args(argv)
    if a.quick:  # smoke-run defaults; explicit options still win
        for opt, attr, value in (("--t-grid", "t_grid", "0.1,0.25"), ("--k-grid", "k_grid", "1"),
                                 ("--score-types", "score_types", "topk_mean,percentile")):
            if opt not in given:
                setattr(a, attr, value)
        a.limit = a.limit or 3
    defaults = (0.5, 20, 200) if a.quick else (10.0, 3000, 1000)
    for attr, value in zip(("ae_minutes", "ae_steps", "n_boot"), defaults):
        if getattr(a, attr) is None:
            setattr(a, attr, value)
    return a


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def stage_splits(data: Path, out: Path, limit: int | None) -> dict[str, Path]:
    """OUT/data/<split>/<scan_id>.nii.gz symlinks to the labelled scans only (never the masks
    that live inside the split folders), so scan ids in every run equal the labels' ids."""
    from medidiff.evaluate.labels import read_labels

    rows = read_labels(data / "labels.csv")
    folders: dict[str, Path] = {}
    counts: dict[tuple[str, int], int] = {}
    for r in rows:
        if not r.split or r.path is None or not r.path.is_file():
            continue
        key = (r.split, r.label)
        if limit is not None and counts.get(key, 0) >= limit:
            continue
        counts[key] = counts.get(key, 0) + 1
        d = out / "data" / r.split
        d.mkdir(parents=True, exist_ok=True)
        suffix = ".nii.gz" if r.path.name.endswith(".nii.gz") else r.path.suffix
        link = d / f"{r.scan_id}{suffix}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(r.path.resolve())
        folders[r.split] = d
    missing = {"train", "calib", "val", "test"} - set(folders)
    if missing:
        raise SystemExit(f"{data}/labels.csv: no scans for split(s) {sorted(missing)}")
    return folders


def copy_model(model: Path, dest: Path) -> Path:
    from medidiff.train.checkpoint import META_FILE, MODEL_FILE

    dest.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, META_FILE):
        if not (dest / name).is_file() or (dest / name).stat().st_size != (model / name).stat().st_size:
            shutil.copy2(model / name, dest / name)
    for name in ("calibration.json", "calibration.safetensors"):
        (dest / name).unlink(missing_ok=True)
    return dest


def run_setting(model: Path, tag: str, overrides: list[str], calib: Path, target: Path, out: Path, labels: Path,
                n_boot: int, device: str, log: Callable[[str], None], reconstruction: bool = False,
                plots: bool = False) -> dict[str, Any]:
    from medidiff.evaluate import EvalOptions, evaluate_run
    from medidiff.score.batch import score_folder
    from medidiff.score.calibration import calibrate_model

    mdir = copy_model(model, out / "models" / tag)
    t0 = time.perf_counter()
    cal = calibrate_model(mdir, calib, overrides=tuple(overrides), device=device, progress=False, log=log)
    run_dir = out / "runs" / tag
    score_folder(mdir, target, run_dir, overrides=tuple(overrides), overwrite=True, write_reconstruction=reconstruction,
                 dicom_outputs=False, device=device, progress=False, log=log)
    rep = evaluate_run(run_dir, labels, opts=EvalOptions(n_boot=n_boot, plots=plots), log=log)
    log(f"  {tag}: val/test voxel AP {_f(rep.get('voxel', {}).get('ap'))}, sample AUROC "
        f"{_f(rep.get('sample', {}).get('auroc'))} ({time.perf_counter() - t0:.0f} s)")
    return {"tag": tag, "overrides": overrides, "run": str(run_dir), "report": rep,
            "calibration": {"voxel_threshold": cal.voxel_threshold, "scan_threshold": cal.scan_threshold}}


def _f(x, nd=3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _row(rep: dict[str, Any]) -> dict[str, Any]:
    s, v = rep.get("sample") or {}, rep.get("voxel") or {}
    ld = ((v.get("lesion_detection") or {}).get("calibrated") or {})
    return {"sample_auroc": s.get("auroc"), "sample_auroc_ci": s.get("auroc_ci95"), "sample_ap": s.get("ap"),
            "voxel_auroc": v.get("auroc"), "voxel_ap": v.get("ap"), "best_dice": v.get("best_dice"),
            "calibrated_dice": v.get("calibrated_dice"), "lesion_detection": ld.get("detection_rate"),
            "fp_components": (ld.get("fp_components_per_scan") or {}).get("all"),
            "seconds_per_scan": rep.get("seconds_per_scan"), "n_missing": len(rep.get("missing") or []),
            "n_failed": len(rep.get("failed") or [])}


def machine() -> dict[str, Any]:
    name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    import torch

    return {"cpu": name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__}


def main(argv=None, log: Callable[[str], None] = print) -> dict[str, Any]:
    a = parse_args(argv)
    command = "python pipelines/benchmark.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    from medidiff.baselines import load_preprocess_config, make_baseline, run_baseline
    from medidiff.evaluate import EvalOptions, evaluate_run
    from medidiff.runtime import set_threads

    set_threads()
    t_all = time.perf_counter()
    model, data, out = Path(a.model), Path(a.data), Path(a.out)
    if not (model / "model.json").is_file():
        raise SystemExit(f"{model}: not a trained medidiff model folder (train it first)")
    labels = data / "labels.csv"
    out.mkdir(parents=True, exist_ok=True)
    splits = stage_splits(data, out, a.limit)
    log(f"splits staged under {out / 'data'}")

    # ---- 1-2: settings on val only
    val_rows = []
    base = list(a.overrides)
    for t in _floats(a.t_grid):
        for k in [int(x) for x in _floats(a.k_grid)]:
            tag = f"val_t{t:g}_k{k}"
            ov = base + [f"score.t_fractions=[{t}]", f"score.steps={k}"]
            r = run_setting(model, tag, ov, splits["calib"], splits["val"], out, labels, a.n_boot, a.device, log)
            val_rows.append({"t": t, "k": k, **_row(r["report"]), "overrides": ov})
    best = max(val_rows, key=lambda r: -1 if r["voxel_ap"] is None else r["voxel_ap"])
    # single-knob variants of the best t* x K, kept only if they beat it on val voxel AP
    variants = [] if a.no_refine else [("refine", ["score.refine=true"])]
    variants.append(("ssim", ["score.structural_weight=0.5"]))
    base_best = best
    for name, extra in variants:
        tag = f"val_t{base_best['t']:g}_k{base_best['k']}_{name}"
        ov = base_best["overrides"] + extra
        r = run_setting(model, tag, ov, splits["calib"], splits["val"], out, labels, a.n_boot, a.device, log)
        row = {"t": base_best["t"], "k": base_best["k"], "variant": name, **_row(r["report"]), "overrides": ov}
        val_rows.append(row)
        if row["voxel_ap"] is not None and row["voxel_ap"] > (best["voxel_ap"] or -1):
            best = row
    chosen = {"t": best["t"], "k": best["k"], "variant": best.get("variant", "")}
    score_rows = []
    types = [s for s in a.score_types.split(",") if s]
    if any("score.score=" in o for o in base):
        types = []
    for st in types:
        if st == "topk_mean":
            score_rows.append({"score": st, "sample_auroc": best["sample_auroc"], "sample_ap": best["sample_ap"]})
            continue
        tag = f"val_t{best['t']:g}_k{best['k']}_{st}"
        ov = best["overrides"] + [f"score.score={st}"]
        r = run_setting(model, tag, ov, splits["calib"], splits["val"], out, labels, a.n_boot, a.device, log)
        score_rows.append({"score": st, **_row(r["report"])})
    if score_rows:
        bs = max(score_rows, key=lambda r: -1 if r["sample_auroc"] is None else r["sample_auroc"])
        chosen["score"] = bs["score"]
    final_ov = best["overrides"] + ([f"score.score={chosen['score']}"] if chosen.get("score") else [])
    log(f"chosen on val: t*={chosen['t']:g}, K={chosen['k']}, score={chosen.get('score', 'as --set')}")

    # ---- 3: test, once
    methods: dict[str, dict[str, Any]] = {}
    r = run_setting(model, "test_medidiff", final_ov, splits["calib"], splits["test"], out, labels, a.n_boot,
                    a.device, log, reconstruction=True, plots=not a.no_plots)
    methods["medidiff"] = {"report": r["report"], "run": r["run"], "settings": final_ov}

    if a.calibrate_model:
        from medidiff.score.calibration import calibrate_model

        calibrate_model(model, splits["calib"], overrides=tuple(final_ov), device=a.device, progress=False, log=log)
        log(f"calibration for the chosen settings stored in {model}")

    # ---- 4: baselines (train/calib only), evaluated on test
    pcfg = load_preprocess_config(model)
    for name in [b for b in a.baselines.split(",") if b]:
        t0 = time.perf_counter()
        kwargs = {"minutes": a.ae_minutes, "max_steps": a.ae_steps} if name == "autoencoder" else {}
        method = make_baseline(name, preprocess=pcfg, **kwargs)
        bdir = out / "baselines" / name
        summ = run_baseline(method, train=splits["train"], calib=splits["calib"], input=splits["test"], out=bdir,
                            overwrite=True, log=log)
        rep = evaluate_run(bdir, labels, opts=EvalOptions(n_boot=a.n_boot, plots=not a.no_plots), log=log)
        methods[name] = {"report": rep, "run": str(bdir), "fit_seconds": summ["fit_seconds"]}
        log(f"  {name}: voxel AP {_f(rep.get('voxel', {}).get('ap'))}, sample AUROC "
            f"{_f(rep.get('sample', {}).get('auroc'))} ({time.perf_counter() - t0:.0f} s)")

    result = {"command": command, "machine": machine(), "quick": a.quick, "chosen": chosen, "final_overrides": final_ov,
              "val_grid": val_rows, "val_score_types": score_rows,
              "methods": {k: {"run": v["run"], "row": _row(v["report"]), "fit_seconds": v.get("fit_seconds"),
                              "reconstruction": v["report"].get("reconstruction", {}).get("psnr_db")}
                          for k, v in methods.items()},
              "seconds": round(time.perf_counter() - t_all, 1), "model": str(model), "data": str(data)}
    write_text_atomic(out / "benchmark.json", json.dumps(result, indent=2, default=str))
    md = render(result, methods)
    write_text_atomic(Path(a.bench_md), md)
    log(f"written: {a.bench_md} and {out / 'benchmark.json'} ({result['seconds']:.0f} s)")
    return result


def verdict(result: dict[str, Any]) -> list[str]:
    m = result["methods"]
    md = m.get("medidiff", {}).get("row", {})
    intens = {k: v["row"] for k, v in m.items() if k.startswith("intensity")}
    if not intens or not md:
        return ["No intensity baseline was run: no verdict."]
    lines = []
    for key, label in (("voxel_ap", "voxel AP"), ("sample_auroc", "sample AUROC")):
        vals = {k: r.get(key) for k, r in intens.items() if r.get(key) is not None}
        if md.get(key) is None or not vals:
            lines.append(f"- {label}: not available.")
            continue
        best_k = max(vals, key=vals.get)
        beats = md[key] > vals[best_k]
        extra = ""
        if key == "sample_auroc" and md.get("sample_auroc_ci") and md["sample_auroc_ci"][0] is not None:
            lo, hi = md["sample_auroc_ci"]
            extra = (f" (medidiff 95% CI [{lo:.3f}, {hi:.3f}]"
                     + ("; the best intensity value lies inside it, so the difference is not resolved by this test set)"
                        if lo <= vals[best_k] <= hi else ")"))
        lines.append(f"- {label}: medidiff {md[key]:.3f} vs best intensity baseline ({best_k}) {vals[best_k]:.3f} — "
                     f"**medidiff {'beats' if beats else 'does NOT beat'} the intensity baseline**{extra}.")
    return lines


def render(result: dict[str, Any], methods: dict[str, Any]) -> str:
    mc = result["machine"]
    L = ["# Benchmarks", "",
         "Unsupervised anomaly detection on the sample_data test split (MNI152-derived T1-like scans, synthetic "
         "anomalies). Settings were chosen on the val split only; thresholds come from the healthy calib split; "
         "no test label is used before evaluation. Metrics: `medidiff evaluate` (definitions in each "
         "`evaluation/summary.md`).", ""]
    if result.get("quick"):
        L += ["> **Quick smoke run** (`--quick`): tiny grid, few scans, short autoencoder training. "
              "These numbers are NOT a benchmark.", ""]
    L += ["## Results on test", "",
          "| method | sample AUROC [95% CI] | sample AP | voxel AUROC | voxel AP | best Dice (oracle) | calibrated Dice | "
          "lesion detection (calibrated) | FP components / scan | seconds / scan |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in result["methods"].items():
        r = v["row"]
        ci = r.get("sample_auroc_ci")
        ci_s = f" [{_f(ci[0])}, {_f(ci[1])}]" if ci and ci[0] is not None else ""
        L.append(f"| {name} | {_f(r['sample_auroc'])}{ci_s} | {_f(r['sample_ap'])} | {_f(r['voxel_auroc'])} | "
                 f"{_f(r['voxel_ap'])} | {_f(r['best_dice'])} | {_f(r['calibrated_dice'])} | "
                 f"{_f(r['lesion_detection'], 2)} | {_f(r['fp_components'], 1)} | {_f(r['seconds_per_scan'], 2)} |")
    notes = [f"{k}: {v['row']['n_missing']} missing / {v['row']['n_failed']} failed test scans"
             for k, v in result["methods"].items() if v["row"]["n_missing"] or v["row"]["n_failed"]]
    fits = [f"{k} {v['fit_seconds']:.0f} s" for k, v in result["methods"].items() if v.get("fit_seconds")]
    L += ["", "Seconds per scan: scoring only, as recorded in each run's result.json (baselines exclude fitting"
          + (f"; fitting took {', '.join(fits)}" if fits else "") + "). Best Dice uses an oracle threshold chosen on "
          "the test labels (as papers report it); calibrated Dice uses the threshold from healthy calib scans."]
    if notes:
        L += ["", "**Incomplete runs:** " + "; ".join(notes)]
    rec = result["methods"].get("medidiff", {}).get("reconstruction")
    if rec and rec.get("n"):
        L += ["", f"medidiff reconstruction fidelity on healthy test scans: PSNR median {rec['median']:.2f} dB."]
    L += ["", "## Verdict", ""] + verdict(result)
    L += ["", "## Settings chosen on val (by voxel AP; score type by sample AUROC)", "",
          "| t* (fraction of T) | K (DDIM steps) | variant | val voxel AP | val voxel AUROC | val best Dice | "
          "val sample AUROC | s/scan |", "|---|---|---|---|---|---|---|---|"]
    ch = result["chosen"]
    for r in result["val_grid"]:
        mark = " ✔" if (r["t"], r["k"], r.get("variant", "")) == (ch["t"], ch["k"], ch.get("variant", "")) else ""
        L.append(f"| {r['t']:g}{mark} | {r['k']} | {r.get('variant') or '-'} | {_f(r['voxel_ap'])} | "
                 f"{_f(r['voxel_auroc'])} | {_f(r['best_dice'])} | {_f(r['sample_auroc'])} | "
                 f"{_f(r.get('seconds_per_scan'), 2)} |")
    if result["val_score_types"]:
        L += ["", "| score type | val sample AUROC | val sample AP |", "|---|---|---|"]
        for r in result["val_score_types"]:
            mark = " ✔" if r["score"] == result["chosen"].get("score") else ""
            L.append(f"| {r['score']}{mark} | {_f(r['sample_auroc'])} | {_f(r['sample_ap'])} |")
    L += ["", f"Final scoring overrides: `{' '.join(result['final_overrides'])}`", "",
          "## Machine and command", "",
          f"- CPU: {mc['cpu']}, {mc['cores']} cores (torch threads {mc['torch_threads']})"
          + (f", GPU: {mc['cuda']}" if mc.get("cuda") else ", no GPU"),
          f"- Python {mc['python']}, torch {mc['torch']}",
          f"- model: `{result['model']}`, data: `{result['data']}`",
          f"- total time: {result['seconds']:.0f} s",
          f"- command: `{result['command']}`", ""]
    return "\n".join(L)


if __name__ == "__main__":
    main()
