"""End-to-end benchmark of medidiff against simple baselines on sample_data (or any
folder with the same ``labels.csv`` layout), written to ``BENCHMARKS.md``.

1. calibrate the model on the **calib** split (healthy, held out from training);
2. choose scoring settings on the **val** split only: t* x K (K = DDIM steps
   from t* to 0; K=1 is single-step x0 prediction) by val voxel AP, then
   whether the AutoDDPM-style inpainting refinement, the structural term and any
   ``--variant`` help (val voxel AP, greedily), then the scan-score type and minimum
   component size by val sample AUROC. Settings that differ only after the
   reconstruction reuse it (first-pass cache), so only t* x K costs network time;
3. score the **test** split once with the chosen settings (with reconstructions,
   for PSNR/SSIM);
4. baselines fit on **train**; the same post-processor as medidiff (leave-one-out
   calibration on **calib**, scan-score type chosen on **val** by sample AUROC),
   maps for **test**; every held-out split beyond test (e.g. ``cross``: other
   scanners) is scored the same way;
5. **final step, the only one that reads test ground truth**: ``read_test_labels``
   (the single reader of the held-out splits' labels and masks) is called once, after
   every scoring run; everything is evaluated with the same code (``medidiff
   evaluate``), paired CIs are bootstrapped by subject (labels.csv's ``subject``
   column: copies of one head are resampled together; by scan without it),
   lesion-wise detection is reported with its precision and the chance level of a
   random map with the same false-positive components, the verdict compares medidiff
   with the best baseline of each table, and OUT/benchmark.json records the split,
   the machine, the command, what was chosen on val and what was read once.
   BENCHMARKS.md is generated from such JSON files (``benchmark_markdown.render_benchmarks_md``): a
   real-anatomy run (labels with subjects, see ``pipelines/benchmark_real_anatomy.py``)
   is the main table, a sample_data run the secondary one.

    python pipelines/benchmark.py --model models/brain_t1_4mm --data sample_data
    python pipelines/benchmark.py --quick          # smoke run: small grid, few scans, short AE
    python pipelines/benchmark.py --render-md --main-json REAL/real_anatomy.json \
        --secondary-json SAMPLE/benchmark.json    # regenerate BENCHMARKS.md from results

The model folder itself is never modified: each setting is calibrated in a copy
under OUT/models/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_compare import evaluate_table, report_row  # noqa: E402
from benchmark_data import FITTED_SPLITS, TEST_SPLIT, data_info, labels_columns, stage_splits  # noqa: E402
from benchmark_markdown import render_section, section_title, val_table, write_benchmarks_md  # noqa: E402
from benchmark_settings import (benchmarked_config, calibrate_model_folder, choose_baseline_score,  # noqa: E402
                                given_on_val, given_settings, score_setting, search_on_val, write_chosen_method)
from medidiff.evaluate.labels import read_labels  # noqa: E402
from medidiff.io.atomic import write_text_atomic  # noqa: E402
from medidiff.score.cache import first_pass_cache  # noqa: E402

SCORE_TYPES = ("topk_mean", "percentile", "supra_volume", "largest_cluster")


def read_test_labels(labels: Path, splits: tuple[str, ...]):
    """THE reader of held-out ground truth: the label, lesion mask and evaluation-region columns of the test
    split (and of the other held-out splits, e.g. ``cross``). ``main`` calls it once, in its final step,
    after every scan has been scored; nothing before it parses a held-out row's label or opens its mask
    (staging uses ``read_scan_index``, val evaluations ``read_labels(splits=('val',))``)."""
    return read_labels(labels, splits=tuple(splits))


def parse_args(argv=None) -> argparse.Namespace:
    p = _parser()
    given = set(argv if argv is not None else sys.argv[1:])
    a = p.parse_args(argv)
    if a.render_md:
        if not (a.main_json or a.secondary_json):
            p.error("--render-md needs --main-json and/or --secondary-json")
        return a
    return _checked(p, a, given)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_and_output_args(p)
    _add_settings_args(p)
    _add_reference_and_variant_args(p)
    return p


def _add_data_and_output_args(p: argparse.ArgumentParser) -> None:
    """Model, data, outputs and BENCHMARKS.md; what the evaluation covers."""
    p.add_argument("--model", default=str(ROOT / "models" / "brain_t1_4mm"), help="trained medidiff model folder")
    p.add_argument("--data", default=str(ROOT / "sample_data"), help="folder with labels.csv and the split folders")
    p.add_argument("--out", default=str(ROOT / "benchmark_out"), help="working/output folder")
    p.add_argument("--bench-md", default=str(ROOT / "BENCHMARKS.md"),
                   help="where to write the Markdown report ('' or 'none': not written)")
    p.add_argument("--role", choices=("auto", "main", "secondary"), default="auto",
                   help="this run's table in BENCHMARKS.md: main (real anatomy) or secondary (template warps); "
                        "auto: main when labels.csv has a subject column")
    p.add_argument("--other-json", default=None,
                   help="the other table's JSON (a previous run's benchmark.json / real_anatomy.json), so "
                        "BENCHMARKS.md holds both tables")
    p.add_argument("--render-md", action="store_true",
                   help="only regenerate --bench-md from --main-json and --secondary-json (nothing is scored)")
    p.add_argument("--main-json", default=None, help="with --render-md: the main (real-anatomy) table's JSON")
    p.add_argument("--secondary-json", default=None, help="with --render-md: the secondary (sample_data) table's JSON")
    p.add_argument("--foreground", choices=("auto", "nonzero", "brain", "all"), default="auto",
                   help="voxel metrics region: brain = labels.csv's brain_mask_path (the same mask for every "
                        "method); nonzero = source scan nonzero; auto: brain when labels.csv has that column")
    p.add_argument("--chance-draws", type=int, default=200,
                   help="random placements of each test scan's false-positive components (lesion-wise chance level)")
    p.add_argument("--site-calibration", default=None, metavar="SPLIT",
                   help="a held-out split of another scanner (e.g. cross): also report its healthy heads' flag "
                        "rate with a leave-one-out site calibration (pipelines/benchmark_site_calibration.py)")


def _add_settings_args(p: argparse.ArgumentParser) -> None:
    """The val search, budgets, the model folder's method and calibration, what runs."""
    p.add_argument("--t-grid", default="0.1,0.15,0.25", help="t* fractions to try on val")
    p.add_argument("--k-grid", default="1,5", help="DDIM steps K (t* → 0) to try on val")
    p.add_argument("--score-types", default=",".join(SCORE_TYPES), help="scan-score types to try on val")
    p.add_argument("--min-component-grid", default="0,192",
                   help="minimum component sizes (mm³) tried on val with the supra-threshold score types")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra scoring override for every run, e.g. score.steps=1 (repeatable)")
    p.add_argument("--ae-minutes", type=float, default=None, help="autoencoder training budget (minutes; default 10)")
    p.add_argument("--ae-steps", type=int, default=None, help="autoencoder training steps at most (default 3000)")
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default 1000)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots of the test evaluations")
    p.add_argument("--calibrate-model", action="store_true",
                   help="also store the calibration for the chosen settings in --model itself (otherwise the "
                        "model folder is never modified); refused when the model's method.json holds other settings "
                        "than the ones benchmarked (add --write-method)")
    p.add_argument("--write-method", action="store_true",
                   help="store the settings chosen on val as --model's method.json (medidiff.score.method), with "
                        "what they were chosen on; written right after the val search, before test is scored")
    p.add_argument("--use-method", action="store_true",
                   help="no val search: score with --model's method.json (its stored, validated settings) plus --set; "
                        "the model copies keep the method, as `medidiff calibrate` / `score` would")
    p.add_argument("--limit", type=int, default=None,
                   help="at most this many scans per split (train/calib), per label (val), or subjects "
                        "(held-out splits, and val when labels.csv has subjects; held-out splits without "
                        "subjects: 2 x this many scans), chosen without reading held-out labels")
    p.add_argument("--baselines", default="intensity-hyper,intensity-hypo,intensity-abs,normative,autoencoder")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-refine", action="store_true", help="don't try the inpainting refinement on val "
                   "(variants refine=inpainting, ssim=structural term, tens=all t* of the grid z-scored per t* "
                   "are tried greedily on the best t* x K)")
    p.add_argument("--reuse", action="store_true",
                   help="keep medidiff runs already in --out whose calibration was made with the same score "
                        "settings (an interrupted benchmark continues; finished scans are not re-scored)")
    p.add_argument("--no-val-search", action="store_true",
                   help="score test with the --set settings as given (e.g. the ones a previous benchmark chose on "
                        "val for another model) instead of searching t*, K, variants and score types on val")
    p.add_argument("--val-only", action="store_true",
                   help="stop after val: score the given or searched settings (and, with --no-val-search, each "
                        "--variant on top of them) on val, write OUT/benchmark_val.json and print the table; "
                        "test is not touched and BENCHMARKS.md is not written")


def _add_reference_and_variant_args(p: argparse.ArgumentParser) -> None:
    """A reference model, extra val variants, the first-pass cache and the smoke run."""
    p.add_argument("--reference-model", default=None,
                   help="a second medidiff model scored on the same test scans with the same settings and "
                        "post-processing (e.g. the bundled model a new one should replace); paired CIs include it")
    p.add_argument("--reference-set", dest="reference_overrides", action="append", default=None,
                   metavar="KEY=VAL",
                   help="score the reference model with these settings instead of the chosen ones (e.g. the "
                        "settings it ships calibrated with); repeatable")
    p.add_argument("--reference-use-method", action="store_true",
                   help="score the reference model with its own method.json (plus --set) instead of the chosen settings")
    p.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME:KEY=VAL[;KEY=VAL]",
                   help="an extra val variant tried greedily after the built-in ones, e.g. "
                        "'smooth5:score.smoothing_size=5' (repeatable); with --no-val-search each variant is "
                        "scored on val on top of the given settings, next to them, and nothing is chosen from it")
    p.add_argument("--no-first-pass-cache", action="store_true",
                   help="re-run the front end and the reconstruction for every setting (by default settings that "
                        "differ only after the reconstruction reuse it within this run; this holds every "
                        "calib/val scan's model-grid data in memory; the baselines reuse the front ends)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: t* in {0.1, 0.25}, K=1, two score types, <=3 scans per split and label, "
                        "AE 20 steps, 200 bootstrap resamples")


def _checked(p: argparse.ArgumentParser, a: argparse.Namespace, given: set[str]) -> argparse.Namespace:
    """--quick defaults (explicit options win), then the checks between options and the budgets' defaults."""
    if a.quick:  # smoke-run defaults; explicit options still win
        for opt, attr, value in (("--t-grid", "t_grid", "0.1,0.25"), ("--k-grid", "k_grid", "1"),
                                 ("--score-types", "score_types", "topk_mean,percentile")):
            if opt not in given:
                setattr(a, attr, value)
        a.limit = a.limit or 3
    for v in a.variants:
        if ":" not in v or "=" not in v.split(":", 1)[1]:
            p.error(f"--variant {v!r}: expected NAME:KEY=VAL[;KEY=VAL], e.g. smooth5:score.smoothing_size=5")
    if a.use_method:
        a.no_val_search = True
        if a.write_method:
            p.error("--use-method keeps the stored method; --write-method would rewrite it with itself")
    if a.limit is not None and a.limit < 2:
        p.error("--limit must be at least 2: calibration needs two healthy calib scans")
    defaults = (0.5, 20, 200) if a.quick else (10.0, 3000, 1000)
    for attr, value in zip(("ae_minutes", "ae_steps", "n_boot"), defaults):
        if getattr(a, attr) is None:
            setattr(a, attr, value)
    return a


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


def _load_json(path: str | None) -> dict[str, Any] | None:
    return json.loads(Path(path).read_text()) if path else None


def _eval_opts(a: argparse.Namespace, split: str, plots: bool):
    from medidiff.evaluate import EvalOptions

    return EvalOptions(n_boot=a.n_boot, plots=plots, splits=(split,), foreground=a.foreground,
                       chance_draws=a.chance_draws)


def main(argv=None, log: Callable[[str], None] = print) -> dict[str, Any]:
    a = parse_args(argv)
    if a.render_md:
        return _render_only(a, log)
    command = "python pipelines/benchmark.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    from medidiff.batch.output import read_results
    from medidiff.runtime import set_threads

    set_threads()
    t_all = time.perf_counter()
    model, data, out = Path(a.model), Path(a.data), Path(a.out)
    for m in [model] + ([Path(a.reference_model)] if a.reference_model else []):
        if not (m / "model.json").is_file():
            raise SystemExit(f"{m}: not a trained medidiff model folder (train it first)")
    labels = data / "labels.csv"
    out.mkdir(parents=True, exist_ok=True)
    splits, held_out, extra, info = _stage(a, data, out, labels, log)

    # settings that differ only after the reconstruction (structural term, smoothing, score type,
    # minimum component) reuse it: the val search costs one reconstruction per scan and t* x K
    cache_scope = ExitStack()
    cache = None if a.no_first_pass_cache else cache_scope.enter_context(first_pass_cache())
    chosen, final_ov, val_rows, score_rows, types = _settings_on_val(a, model, splits, out, labels, log)
    base = list(a.overrides)
    method_record = None
    if a.write_method:  # a choice made on val: stored before anything held out is scored
        method_record = write_chosen_method(model, final_ov, info, val_rows, score_rows, command, log)
    if a.val_only:
        cache_scope.close()
        if a.calibrate_model:
            calibrate_model_folder(a, model, splits, final_ov, base, log)
        result = {"command": command, "machine": machine(), "chosen": chosen, "final_overrides": final_ov,
                  "val_grid": val_rows, "val_score_types": score_rows, "model": str(model), "data": str(data),
                  "data_info": info, "method_json": method_record, "seconds": round(time.perf_counter() - t_all, 1)}
        return _write_val_only(out, result, log)
    if a.use_method:
        method_record = _used_method(model)
    final_cfg = benchmarked_config(model, final_ov, a.use_method)

    # ---- 3: score the held-out splits once with the chosen settings (no label is read here)
    methods, medidiff_copy = _score_medidiff(a, model, splits, extra, final_ov, base, out, log)
    if a.calibrate_model:
        calibrate_model_folder(a, model, splits, final_ov, base, log)
    # ---- 4: baselines
    baseline_choices = _score_baselines(a, model, methods, splits, held_out, extra, chosen, types, base, out,
                                        labels, log)

    # the baselines reuse each scan's front end from medidiff's runs (the same preprocessing config)
    cache_counts = None if cache is None else {"hits": cache.hits, "misses": cache.misses}
    if cache is not None:
        log(f"first-pass cache: {cache.hits} front ends or reconstructions reused, {cache.misses} computed")
    cache_scope.close()

    # ---- 5: the final step: held-out ground truth is read here, once, and only evaluated
    held_rows, test_rows, table, extra_tables, n_runs_before = _final_step(a, labels, held_out, extra, methods,
                                                                           chosen, out, log)
    site = None
    if a.site_calibration:
        site = run_site_calibration(a, medidiff_copy, final_ov, held_rows, out, splits,
                                    {s["scan_id"]: s for s in read_results(methods["medidiff"]["extra_runs"][a.site_calibration])},
                                    log)
    protocol = _protocol(a, chosen, final_ov, final_cfg, method_record, baseline_choices, held_out, held_rows,
                         test_rows, n_runs_before)
    result = {"kind": "benchmark", "command": command, "machine": machine(), "quick": a.quick, "chosen": chosen,
              "final_overrides": final_ov, "paired": table["paired"], "resampled": table["resampled"],
              "first_pass_cache": cache_counts, "foreground": a.foreground, "data_info": info, "protocol": protocol,
              "reference_overrides": next((v["settings"] for k, v in methods.items() if k.startswith("reference")
                                           and v["settings"] != final_ov), None),
              "val_grid": val_rows, "val_score_types": score_rows, "baseline_choices": baseline_choices,
              "methods": {k: {"run": v["run"], "row": report_row(v["report"]), "ci": table["ci"].get(k),
                              "fit_seconds": v.get("fit_seconds"), "score": v.get("score", chosen.get("score")),
                              "reconstruction": v["report"].get("reconstruction", {}).get("psnr_db")}
                          for k, v in methods.items()},
              "held_out": extra_tables, "site_calibration": site,
              "seconds": round(time.perf_counter() - t_all, 1), "model": str(model), "data": str(data)}
    result = _clean_json(result)
    _write_results(a, out, result, info, log)
    return result


def _stage(a: argparse.Namespace, data: Path, out: Path, labels: Path, log: Callable[[str], None]):
    """(splits staged under OUT/data, the held-out splits with test first, those beyond test, what the
    benchmark runs on); settles ``--foreground auto`` from the labels' columns."""
    splits = stage_splits(data, out, a.limit)
    held_out = [s for s in splits if s not in FITTED_SPLITS]  # test first, then e.g. cross
    held_out.sort(key=lambda s: (s != TEST_SPLIT, s))
    extra = [s for s in held_out if s != TEST_SPLIT]
    cols = labels_columns(labels)
    if a.foreground == "auto":
        a.foreground = "brain" if ("brain_mask_path" in cols or "eval_mask_path" in cols) else "nonzero"
    if a.site_calibration and a.site_calibration not in extra:
        raise SystemExit(f"--site-calibration {a.site_calibration}: not a held-out split of {labels} ({extra})")
    info = data_info(data, splits)
    log(f"splits staged under {out / 'data'}: " + ", ".join(f"{k} {v['scans']} scans / {v['subjects']} subjects"
                                                            for k, v in info["splits"].items()))
    return splits, held_out, extra, info


def _final_step(a: argparse.Namespace, labels: Path, held_out: list[str], extra: list[str],
                methods: dict[str, dict[str, Any]], chosen: dict[str, Any], out: Path, log: Callable[[str], None]):
    """Step 5, after every scoring run: the held-out ground truth read once (``read_test_labels``) and
    only evaluated. Returns (held-out rows, test rows, the test table, the other splits' tables, how many
    scoring runs came before)."""
    n_runs_before = len(list(out.glob("runs/*/run.json"))) + len(list(out.glob("baselines/*/*/run.json")))
    held_rows = read_test_labels(labels, tuple(held_out))
    log(f"final step: ground truth of {', '.join(held_out)} read once ({len(held_rows)} rows), after "
        f"{n_runs_before} scoring runs")
    test_rows = [r for r in held_rows if r.split == TEST_SPLIT]
    table = evaluate_table({k: v["run"] for k, v in methods.items()}, test_rows, _eval_opts(a, TEST_SPLIT, not a.no_plots),
                           a.n_boot, log)
    for k, v in methods.items():
        v["report"] = table["reports"][k]
    extra_tables = _held_out_tables(a, methods, held_rows, extra, chosen, log)
    return held_rows, test_rows, table, extra_tables, n_runs_before


def _render_only(a: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """--render-md: BENCHMARKS.md regenerated from result JSON files (nothing is scored)."""
    main_j, sec_j = _load_json(a.main_json), _load_json(a.secondary_json)
    write_benchmarks_md(Path(a.bench_md), main_j, sec_j)
    log(f"written: {a.bench_md} (from {a.main_json or '-'} and {a.secondary_json or '-'})")
    return {"main": main_j, "secondary": sec_j}


def _settings_on_val(a: argparse.Namespace, model: Path, splits: dict[str, Path], out: Path, labels: Path,
                     log: Callable[[str], None]):
    """Steps 1-2: the settings searched on val, or given (then scored on val only with --variant/--val-only)."""
    if not a.no_val_search:
        return search_on_val(a, model, splits, out, labels, log)
    chosen, final_ov, val_rows, score_rows, types = given_settings(a.overrides, a.score_types, model, a.use_method)
    log(f"settings given, not searched on val: {'method.json + ' if a.use_method else ''}{' '.join(final_ov)}")
    if a.variants or a.val_only:
        val_rows = given_on_val(a, model, splits, out, labels, log)
    return chosen, final_ov, val_rows, score_rows, types


def _write_val_only(out: Path, result: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """--val-only: OUT/benchmark_val.json and the val table; test is not touched."""
    write_text_atomic(out / "benchmark_val.json", json.dumps(result, indent=2, default=str))
    for line in val_table(result):
        log(line)
    log(f"written: {out / 'benchmark_val.json'} ({result['seconds']:.0f} s; test not touched)")
    return result


def _used_method(model: Path) -> dict[str, Any]:
    """--use-method: which stored method the benchmark scored with."""
    from medidiff.score.method import load_method

    m_ = load_method(model)
    if m_ is None:
        raise SystemExit(f"--use-method: {model} has no method.json")
    return {"used": True, "method_hash": m_.settings_hash(), "provenance": m_.provenance}


def _score_medidiff(a: argparse.Namespace, model: Path, splits: dict[str, Path], extra: list[str],
                    final_ov: list[str], base: list[str], out: Path, log: Callable[[str], None]):
    """medidiff (and --reference-model) on test, calibrated on calib with the chosen settings; the same
    calibrated copy scores the other held-out splits. Returns (methods, medidiff's calibrated copy)."""
    from medidiff.batch.run import score_folder

    methods: dict[str, dict[str, Any]] = {}
    r = score_setting(model, "test_medidiff", final_ov, splits["calib"], splits[TEST_SPLIT], out, a.device, log,
                      reconstruction=True, reuse=a.reuse, with_method=a.use_method)
    methods["medidiff"] = {"run": r["run"], "settings": final_ov, "extra_runs": {}}
    medidiff_copy = Path(r["model_copy"])  # calibrated on calib with the chosen settings
    for split in extra:  # the same calibrated copy scores the other held-out splits
        run = out / "runs" / f"{split}_medidiff"
        score_folder(medidiff_copy, splits[split], run, overrides=tuple(final_ov), overwrite=not a.reuse,
                     dicom_outputs=False, device=a.device, progress=False, log=log)
        methods["medidiff"]["extra_runs"][split] = str(run)
    if a.reference_model:  # the model this one should replace: same scans, settings and post-processing
        ref = Path(a.reference_model)
        ref_ov = (base if a.reference_use_method else
                  final_ov if a.reference_overrides is None else base + a.reference_overrides)
        r = score_setting(ref, "test_reference", ref_ov, splits["calib"], splits[TEST_SPLIT], out, a.device, log,
                          reuse=a.reuse, with_method=a.reference_use_method)
        methods[f"reference ({ref.name})"] = {"run": r["run"], "settings": ref_ov, "extra_runs": {}}
    return methods, medidiff_copy


def _score_baselines(a: argparse.Namespace, model: Path, methods: dict[str, dict[str, Any]], splits: dict[str, Path],
                     held_out: list[str], extra: list[str], chosen: dict[str, Any], types: list[str], base: list[str],
                     out: Path, labels: Path, log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Baselines: fit on train, the same post-processing and leave-one-out calibration on calib, the same
    score-type choice on val, then the held-out splits scored once; each is added to ``methods``."""
    from medidiff.baselines import load_preprocess_config, make_baseline, run_baseline

    pcfg = load_preprocess_config(model)
    baseline_choices: dict[str, dict[str, Any]] = {}
    for name in [b for b in a.baselines.split(",") if b]:
        t0 = time.perf_counter()
        kwargs = {"minutes": a.ae_minutes, "max_steps": a.ae_steps} if name == "autoencoder" else {}
        method = make_baseline(name, preprocess=pcfg, **kwargs)
        method.fit(splits["train"], log)
        fit_seconds = time.perf_counter() - t0
        # the same post-processing as medidiff (minimum component size); the score type chosen on val
        bbase = base + [f"score.min_component_mm3={chosen.get('min_component_mm3', 0)}"]
        chosen_type, val_types = choose_baseline_score(method, name, types, bbase, splits, out, labels, a, log)
        baseline_choices[name] = {"score": chosen_type, "val": val_types}
        ov = bbase + ([f"score.score={chosen_type}"] if chosen_type else [])
        runs = {}
        for split in held_out:
            bdir = out / "baselines" / name / split
            run_baseline(method, train=None, calib=splits["calib"], input=splits[split], out=bdir,
                         overrides=tuple(ov), overwrite=True, log=log)
            runs[split] = str(bdir)
        methods[name] = {"run": runs[TEST_SPLIT], "extra_runs": {s: runs[s] for s in extra},
                         "fit_seconds": fit_seconds, "score": chosen_type}
        log(f"  {name} ({chosen_type or 'default score'}): fitted, chosen on val, held-out splits scored "
            f"({time.perf_counter() - t0:.0f} s)")
    return baseline_choices


def _held_out_tables(a: argparse.Namespace, methods: dict[str, dict[str, Any]], held_rows, extra: list[str],
                     chosen: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """The other held-out splits (e.g. cross), each evaluated like test."""
    extra_tables = {}
    for split in extra:
        rows_s = [r for r in held_rows if r.split == split]
        runs = {k: v["extra_runs"][split] for k, v in methods.items() if split in v.get("extra_runs", {})}
        t = evaluate_table(runs, rows_s, _eval_opts(a, split, False), a.n_boot, log)
        extra_tables[split] = {"methods": {k: {"run": runs[k], "row": report_row(t["reports"][k]), "ci": t["ci"].get(k),
                                               "score": methods[k].get("score", chosen.get("score"))}
                                           for k in runs}, "paired": t["paired"], "resampled": t["resampled"]}
    return extra_tables


def _protocol(a: argparse.Namespace, chosen: dict[str, Any], final_ov: list[str], final_cfg, method_record,
              baseline_choices: dict[str, dict[str, Any]], held_out: list[str], held_rows, test_rows,
              n_runs_before: int) -> dict[str, Any]:
    """What was fitted, calibrated and chosen on what, and what was read once (benchmark.json)."""
    n_lesioned = sum(r.label for r in test_rows)
    return {
        "fitted_on": {"baselines": "train", "medidiff": "the model's own training data (its model card)"},
        "calibrated_on": "medidiff for every setting tried and for the final one; each baseline leave-one-out",
        "chosen_on_val": {"medidiff": chosen, "final_overrides": final_ov, "final_config": final_cfg.to_dict(),
                          "method_json": method_record,
                          "how": ("the model's method.json (chosen elsewhere: "
                                  f"{(method_record or {}).get('provenance', {}).get('chosen_on', 'see its provenance')}), "
                                  "not on this val split" if a.use_method else
                                  "given with --no-val-search (chosen elsewhere, not on this val split)"
                                  if chosen.get("variant") == "given" else
                                  "t* x K and variants by val voxel AP (greedy), then score type and minimum "
                                  "component size by val sample AUROC"),
                          "baselines": {k: v["score"] for k, v in baseline_choices.items()}},
        "read_once": {"splits": held_out, "reader": "read_test_labels", "n_rows": len(held_rows),
                      "test_scans": len(test_rows), "test_lesioned": n_lesioned,
                      "test_subjects": len({r.subject or r.scan_id for r in test_rows}),
                      "scoring_runs_before": n_runs_before,
                      "after_reading": "evaluation only: metrics, bootstraps, chance levels, site calibration "
                                       "of the held-out other-scanner heads (nothing chosen)"},
    }


def _write_results(a: argparse.Namespace, out: Path, result: dict[str, Any], info: dict[str, Any],
                   log: Callable[[str], None]) -> None:
    """OUT/benchmark.json, OUT/benchmark.md and (unless --bench-md none) BENCHMARKS.md."""
    write_text_atomic(out / "benchmark.json", json.dumps(result, indent=2))
    write_text_atomic(out / "benchmark.md", render_section(result, section_title(result)))
    if a.bench_md and a.bench_md.lower() != "none":
        role = a.role if a.role != "auto" else ("main" if info["has_subjects"] else "secondary")
        other = _load_json(a.other_json)
        write_benchmarks_md(Path(a.bench_md), result if role == "main" else other,
                            result if role == "secondary" else other)
    log(f"written: {out / 'benchmark.json'}, {out / 'benchmark.md'}"
        + (f" and {a.bench_md}" if a.bench_md and a.bench_md.lower() != "none" else "")
        + f" ({result['seconds']:.0f} s)")


def _clean_json(o):
    """JSON-safe: NaN/Inf -> None, numpy -> python, paths -> text."""
    import math

    if isinstance(o, dict):
        return {str(k): _clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean_json(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(float(o)) else None
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if o is None or isinstance(o, str):
        return o
    if isinstance(o, np.ndarray):
        return _clean_json(o.tolist())
    return str(o)


def run_site_calibration(a: argparse.Namespace, medidiff_copy: Path, final_ov: list[str], held_rows, out: Path,
                         splits: dict[str, Path], shipped: dict[str, Any], log: Callable[[str], None]):
    """The other-scanner split's healthy heads: flag rate with the calibration made on calib (what ships) and
    with a leave-one-out site calibration on the other heads of the split; lesioned copies of each held-out
    subject are scored by its fold."""
    from benchmark_site_calibration import site_calibration

    split = a.site_calibration
    staged = {p.name.split(".nii")[0]: p for p in splits[split].iterdir()}
    rows = [r for r in held_rows if r.split == split and r.scan_id in staged]
    heads = {(r.subject or r.scan_id): staged[r.scan_id] for r in rows if r.label == 0}
    lesioned: dict[str, list[Path]] = {}
    for r in rows:
        if r.label == 1 and (r.subject or r.scan_id) in heads:
            lesioned.setdefault(r.subject or r.scan_id, []).append(staged[r.scan_id])
    res = site_calibration(medidiff_copy, heads, out / "site_calibration", overrides=tuple(final_ov),
                           extra=lesioned, shipped=shipped, device=a.device, log=log)
    res["split"] = split
    return res


if __name__ == "__main__":
    main()
