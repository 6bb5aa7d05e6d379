"""Scoring settings of a benchmark (part of ``pipelines/benchmark.py``, not a script): each setting is
calibrated in a copy of the model on calib and scored; on val the t* x K grid, greedy variants and the
scan-score type are chosen (medidiff), or the given settings are scored as they are; the baselines
choose their score type on val the same way. ``--write-method`` / ``--calibrate-model`` store the chosen
settings and their calibration in the model folder."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_compare import report_row  # noqa: E402
from benchmark_data import FITTED_SPLITS  # noqa: E402
from benchmark_markdown import fmt_num, fmt_t  # noqa: E402
from medidiff.io.naming import sanitize  # noqa: E402


def float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def copy_model(model: Path, dest: Path, with_method: bool = False) -> Path:
    """Weights and model.json (always: two models of one architecture have the same size), never a
    calibration; the method.json only ``with_method`` (--use-method): otherwise the settings of a copy are
    the defaults plus the benchmark's explicit overrides, whatever method the model ships."""
    from medidiff.score.method import METHOD_FILE
    from medidiff.model.folder import META_FILE, MODEL_FILE

    dest.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, META_FILE):
        shutil.copy2(model / name, dest / name)
    for name in ("calibration.json", "calibration.safetensors", METHOD_FILE):
        (dest / name).unlink(missing_ok=True)
    if with_method and (model / METHOD_FILE).is_file():
        shutil.copy2(model / METHOD_FILE, dest / METHOD_FILE)
    return dest


def benchmarked_config(model: Path, overrides: list[str], with_method: bool):
    """The ScoreConfig a benchmark copy scores with: the model's method (--use-method) or the defaults, plus
    the overrides."""
    from medidiff.score.config import load_score_config
    from medidiff.score.method import load_method

    method = load_method(model) if with_method else None
    return load_score_config(None, tuple(overrides), base=method.score_config if method else None)


def score_setting(model: Path, tag: str, overrides: list[str], calib: Path, target: Path, out: Path, device: str,
                  log: Callable[[str], None], reconstruction: bool = False, reuse: bool = False,
                  with_method: bool = False) -> dict[str, Any]:
    """Calibrate a copy of the model on ``calib`` with these settings and score ``target``: no labels."""
    from medidiff.batch.run import score_folder
    from medidiff.batch.calibrate import calibrate_model

    t0 = time.perf_counter()
    run_dir = out / "runs" / tag
    cal = reusable_calibration(out / "models" / tag, overrides, model, with_method) if reuse else None
    if cal is None:
        mdir = copy_model(model, out / "models" / tag, with_method=with_method)
        cal = calibrate_model(mdir, calib, overrides=tuple(overrides), device=device, progress=False, log=log)
    else:
        mdir = out / "models" / tag
        log(f"  {tag}: calibration reused, unfinished scans only")
    score_folder(mdir, target, run_dir, overrides=tuple(overrides), overwrite=not reuse,
                 write_reconstruction=reconstruction,
                 dicom_outputs=False, device=device, progress=False, log=log)
    return {"tag": tag, "overrides": overrides, "run": str(run_dir), "model_copy": str(mdir),
            "seconds": time.perf_counter() - t0,
            "calibration": {"voxel_threshold": cal.voxel_threshold, "scan_threshold": cal.scan_threshold}}


def run_setting(model: Path, tag: str, overrides: list[str], calib: Path, target: Path, out: Path, labels: Path,
                n_boot: int, device: str, log: Callable[[str], None], reconstruction: bool = False,
                plots: bool = False, reuse: bool = False, split: str = "val",
                foreground: str = "nonzero", with_method: bool = False) -> dict[str, Any]:
    """score_setting, then evaluate on ``split`` (val: a fitted split; never a held-out one)."""
    from medidiff.evaluate import EvalOptions, evaluate_run

    if split not in FITTED_SPLITS:
        raise ValueError(f"run_setting evaluates fitted splits only; {split!r} is read by read_test_labels")
    r = score_setting(model, tag, overrides, calib, target, out, device, log, reconstruction, reuse, with_method)
    rep = evaluate_run(r["run"], labels, opts=EvalOptions(n_boot=n_boot, plots=plots, splits=(split,),
                                                          foreground=foreground, chance_draws=0), log=log)
    log(f"  {tag}: {split} voxel AP {fmt_num(rep.get('voxel', {}).get('ap'))}, sample AUROC "
        f"{fmt_num(rep.get('sample', {}).get('auroc'))} ({r['seconds']:.0f} s)")
    return {**r, "report": rep}


def reusable_calibration(mdir: Path, overrides: list[str], model: Path, with_method: bool = False):
    """The calibration stored in a previous run's model copy, if it was made for these weights
    (the same --out may have seen another --model) and with these score settings."""
    from medidiff.score.calibration import Calibration

    if not (mdir / "model.json").is_file():
        return None
    try:
        cal = Calibration.load(mdir, model_hash=json.loads((model / "model.json").read_text())["model_hash"])
    except Exception:  # noqa: BLE001 - a damaged calibration, or one for other weights, is recomputed
        return None
    from medidiff.score.config import ScoreConfig

    # compared through ScoreConfig so settings added since (at their defaults) still match
    if cal is None or ScoreConfig.from_dict(cal.score_config).to_dict() != benchmarked_config(
            model, overrides, with_method).to_dict():
        return None
    return cal


def given_settings(overrides: list[str], score_types: str, model: Path | None = None, with_method: bool = False):
    """--no-val-search: medidiff's settings exactly as given (--use-method: the model's method.json plus
    --set), reported as such; the baselines still choose their score type on val (they were not part of
    the search the given settings came from)."""
    sc = benchmarked_config(model or Path("."), overrides, with_method and model is not None)
    chosen = {"t": t_of(sc), "k": sc.steps,
              "variant": "given", "score": sc.score, "min_component_mm3": sc.min_component_mm3}
    return chosen, list(overrides), [], [], [s for s in score_types.split(",") if s]


def t_of(sc) -> float | list[float]:
    """t* of a score config as the tables keep it: one level, or the list of an ensemble."""
    return sc.t_fractions[0] if len(sc.t_fractions) == 1 else list(sc.t_fractions)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """--variant 'NAME:KEY=VAL;KEY=VAL' -> (NAME, [KEY=VAL, ...])."""
    name, settings = text.split(":", 1)
    return name, [x.strip() for x in settings.split(";") if x.strip()]


def given_on_val(a: argparse.Namespace, model: Path, splits: dict[str, Path], out: Path, labels: Path,
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    """--no-val-search with --variant: the given settings and each variant on top of them, side by side
    on val (e.g. faster settings against the chosen ones); the given settings stay the ones used."""
    rows = []
    for name, extra in [("given", [])] + [parse_variant(v) for v in a.variants]:
        ov = list(a.overrides) + extra
        r = run_setting(model, f"val_given_{sanitize(name)}", ov, splits["calib"], splits["val"], out, labels,
                        a.n_boot, a.device, log, reuse=a.reuse, foreground=a.foreground,
                        with_method=a.use_method)
        sc = benchmarked_config(model, ov, a.use_method)
        rows.append({"t": t_of(sc), "k": sc.steps, "variant": name, **report_row(r["report"]), "overrides": ov})
    return rows


def search_on_val(a: argparse.Namespace, model: Path, splits: dict[str, Path], out: Path, labels: Path,
                  log: Callable[[str], None]):
    """Steps 1-2: t* x K grid, greedy variants, then the scan-score type, all on val only."""
    val_rows = []
    base = list(a.overrides)
    for t in float_list(a.t_grid):
        for k in [int(x) for x in float_list(a.k_grid)]:
            tag = f"val_t{t:g}_k{k}"
            ov = base + [f"score.t_fractions=[{t}]", f"score.steps={k}"]
            r = run_setting(model, tag, ov, splits["calib"], splits["val"], out, labels, a.n_boot, a.device, log,
                          reuse=a.reuse, foreground=a.foreground)
            val_rows.append({"t": t, "k": k, **report_row(r["report"]), "overrides": ov})
    best = max(val_rows, key=lambda r: -1 if r["voxel_ap"] is None else r["voxel_ap"])
    # variants of the best t* x K, each kept only if it beats the best so far on val voxel AP
    variants = [] if a.no_refine else [("refine", ["score.refine=true"])]
    variants.append(("ssim", ["score.structural_weight=0.5"]))
    variants += [parse_variant(v) for v in a.variants]
    t_levels = sorted({r["t"] for r in val_rows})
    if len(t_levels) > 1:  # every t* of the grid at once, each z-scored against its own healthy spread
        variants.append(("tens", [f"score.t_fractions=[{','.join(f'{t:g}' for t in t_levels)}]",
                                  "score.t_combine=zscore"]))
    base_best = best
    for name, extra in variants:  # greedy: each knob on top of the best so far
        label = f"{best['variant']}+{name}" if best.get("variant") else name
        tag = f"val_t{base_best['t']:g}_k{base_best['k']}_{label.replace('+', '_')}"
        ov = best["overrides"] + extra
        r = run_setting(model, tag, ov, splits["calib"], splits["val"], out, labels, a.n_boot, a.device, log,
                        reuse=a.reuse, foreground=a.foreground)
        row = {"t": base_best["t"], "k": base_best["k"], "variant": label, **report_row(r["report"]), "overrides": ov}
        val_rows.append(row)
        if row["voxel_ap"] is not None and row["voxel_ap"] > (best["voxel_ap"] or -1):
            best = row
    chosen = {"t": best["t"], "k": best["k"], "variant": best.get("variant", "")}
    score_rows = []
    types = [s for s in a.score_types.split(",") if s]
    if any("score.score=" in o for o in base):
        types = []
    from medidiff.score.config import load_score_config

    grid_score = load_score_config(None, tuple(best["overrides"])).score  # what the val grid was scored with
    grid_min = load_score_config(None, tuple(best["overrides"])).min_component_mm3
    for st in types:
        sizes = float_list(a.min_component_grid) if st in ("supra_volume", "largest_cluster") else [grid_min]
        for mc in sizes:
            if st == grid_score and mc == grid_min:
                score_rows.append({"score": st, "min_component_mm3": mc, "sample_auroc": best["sample_auroc"],
                                   "sample_ap": best["sample_ap"], "overrides": []})
                continue
            tag = f"val_t{best['t']:g}_k{best['k']}_{st}_mc{mc:g}"
            extra = [f"score.score={st}", f"score.min_component_mm3={mc}"]
            r = run_setting(model, tag, best["overrides"] + extra, splits["calib"], splits["val"], out, labels,
                            a.n_boot, a.device, log, reuse=a.reuse, foreground=a.foreground)
            score_rows.append({"score": st, "min_component_mm3": mc, **report_row(r["report"]), "overrides": extra})
    final_ov = list(best["overrides"])
    if score_rows:
        bs = max(score_rows, key=lambda r: -1 if r["sample_auroc"] is None else r["sample_auroc"])
        chosen["score"] = bs["score"]
        chosen["min_component_mm3"] = bs["min_component_mm3"]
        final_ov += bs["overrides"]
    log(f"chosen on val: t*={fmt_t(chosen['t'])}, K={chosen['k']}, score={chosen.get('score', 'as --set')}")
    return chosen, final_ov, val_rows, score_rows, types


def choose_baseline_score(method, name: str, types: list[str], base: list[str], splits: dict[str, Path], out: Path,
                          labels: Path, a: argparse.Namespace, log: Callable[[str], None]):
    """The scan-score type for a baseline, chosen on val by sample AUROC exactly as for medidiff."""
    from medidiff.baselines import run_baseline
    from medidiff.evaluate import EvalOptions, evaluate_run

    if not types:
        return None, []
    rows = []
    for st in types:
        bdir = out / "baselines" / name / f"val_{st}"
        run_baseline(method, train=None, calib=splits["calib"], input=splits["val"], out=bdir,
                     overrides=tuple(base) + (f"score.score={st}",), overwrite=True, log=log)
        rep = evaluate_run(bdir, labels, opts=EvalOptions(n_boot=a.n_boot, plots=False, splits=("val",),
                                                          foreground=a.foreground, chance_draws=0), log=log)
        rows.append({"score": st, **report_row(rep)})
    best = max(rows, key=lambda r: -1 if r["sample_auroc"] is None else r["sample_auroc"])
    return best["score"], rows


def calibrate_model_folder(a: argparse.Namespace, model: Path, splits: dict[str, Path], final_ov: list[str],
                           base: list[str], log: Callable[[str], None]) -> None:
    """--calibrate-model: the calibration of the benchmarked settings stored in the model folder itself, on
    the calib split; refused when calibrate_model (which starts from the folder's method.json) would
    calibrate other settings than the benchmarked ones."""
    from medidiff.batch.calibrate import calibrate_model
    from medidiff.score.config import load_score_config
    from medidiff.score.method import load_method

    target = benchmarked_config(model, final_ov, a.use_method) if not a.write_method else benchmarked_config(
        model, [], True)
    stored = load_method(model)
    ov = () if a.write_method else tuple(base if a.use_method else final_ov)
    would = load_score_config(None, ov, base=stored.score_config if stored else None)
    if would.to_dict() != target.to_dict():
        raise SystemExit(f"--calibrate-model: {model}'s method.json holds other settings than the benchmarked "
                         "ones; add --write-method (store the chosen settings as its method) or --use-method")
    cal = calibrate_model(model, splits["calib"], overrides=ov, device=a.device, progress=False, log=log)
    log(f"calibration for the chosen settings stored in {model} ({cal.n_scans} calib scans)")


def write_chosen_method(model: Path, final_ov: list[str], info: dict[str, Any], val_rows, score_rows, command: str,
                        log: Callable[[str], None]) -> dict[str, Any]:
    """--write-method: the settings chosen on val become the model's method.json, with what they were chosen on."""
    from medidiff.score.method import write_method

    cfg = benchmarked_config(model, final_ov, False)
    sp = info["splits"]
    best = max(val_rows, key=lambda r: -1 if r.get("voxel_ap") is None else r["voxel_ap"]) if val_rows else {}
    prov = {"chosen_on": (f"val split of {info['labels']} ({sp['val']['scans']} scans of {sp['val']['subjects']} "
                          f"subjects, lesions inserted); thresholds from its calib split ({sp['calib']['scans']} "
                          "healthy scans)"),
            "by": "pipelines/benchmark.py (t* x K and variants by val voxel AP, score type by val sample AUROC)",
            "command": command, "labels_sha256": info["labels_sha256"],
            "val_voxel_ap": best.get("voxel_ap"), "val_sample_auroc": max(
                [r["sample_auroc"] for r in score_rows if r.get("sample_auroc") is not None] or [None],
                key=lambda x: -1 if x is None else x)}
    model_hash = json.loads((model / "model.json").read_text()).get("model_hash")
    path = write_method(model, cfg, prov, model_hash=model_hash)
    log(f"method chosen on val written to {path}")
    return {"written": str(path), "method_hash": cfg.hash(), "provenance": prov}
