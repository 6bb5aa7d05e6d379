"""`medidiff evaluate` and `medidiff baseline`.

Register with ``app.command("evaluate")(evaluate)`` and ``app.command("baseline")(baseline)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def evaluate(
    run: Path = typer.Option(..., "--run", help="Scored output folder (medidiff score / medidiff baseline)."),
    labels: Path = typer.Option(..., "--labels", help="CSV: scan_id, label[, path, mask_path, anomaly_types, split]."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Folder of ground-truth masks named <scan_id>.nii.gz "
                                         "(wins over the CSV's mask_path where present)."),
    split: List[str] = typer.Option([], "--split", help="Evaluate only these splits (repeatable). Default: the "
                                    "splits with at least one scan in the run."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write (default RUN/evaluation)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the 95% CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    foreground: str = typer.Option("nonzero", "--foreground", help="Voxel-level foreground: nonzero (source scan "
                                   "nonzero ∪ ground truth) | all."),
    max_voxels: int = typer.Option(40_000_000, "--max-voxels", help="Pooled voxel cap; above it healthy-only "
                                   "scans are subsampled deterministically (weighted)."),
    plots: bool = typer.Option(True, "--plots/--no-plots"),
) -> None:
    """Evaluate a scored folder against ground truth: sample level (AUROC, AP, sensitivity/specificity
    with bootstrap CIs), voxel level (pooled AUROC/AP, Dice, lesion-wise detection by size and type),
    reconstruction fidelity. Writes RUN/evaluation/{metrics.json, summary.md, *.png}."""
    from ..evaluate.labels import LabelsError
    from ..evaluate import EvalOptions, EvaluationError, evaluate_run

    if foreground not in ("nonzero", "all"):
        typer.echo("error: --foreground must be nonzero or all", err=True)
        raise typer.Exit(2)
    opts = EvalOptions(n_boot=n_boot, seed=seed, foreground=foreground, max_voxels=max_voxels,
                       splits=tuple(split) or None, plots=plots)
    try:
        rep = evaluate_run(run, labels, masks, opts, out_dir=out, log=lambda m: typer.echo(m, err=True))
    except (EvaluationError, LabelsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    s, v = rep.get("sample", {}), rep.get("voxel") or {}

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    typer.echo(f"{rep['n_evaluated']}/{rep['n_labelled']} labelled scans evaluated "
               f"({len(rep['missing'])} missing, {len(rep['failed'])} failed)")
    typer.echo(f"sample: AUROC {f(s.get('auroc'))}  AP {f(s.get('ap'))}")
    if v.get("available"):
        typer.echo(f"voxel:  AUROC {f(v.get('auroc'))}  AP {f(v.get('ap'))}  best Dice {f(v.get('best_dice'))}  "
                   f"calibrated Dice {f(v.get('calibrated_dice'))}")
    typer.echo(f"written: {(out or run / 'evaluation')}")


def baseline(
    name: str = typer.Argument(..., help="intensity | intensity-hyper | intensity-hypo | intensity-abs | normative | autoencoder"),
    train: Optional[Path] = typer.Option(None, "--train", help="Healthy training scans (normative, autoencoder)."),
    calib: Path = typer.Option(..., "--calib", help="Held-out healthy scans for the thresholds."),
    input: Path = typer.Option(..., "--input", help="Scans to score."),
    out: Path = typer.Option(..., "--out", help="Output folder (same layout as medidiff score)."),
    variant: str = typer.Option("hyper", "--variant", help="intensity: hyper | hypo | abs."),
    preprocess: Optional[Path] = typer.Option(None, "--preprocess", help="YAML with a preprocess: section, or a "
                                              "model folder (default: configs/brain_t1_4mm.yaml's)."),
    minutes: float = typer.Option(10.0, "--minutes", help="autoencoder: training time budget."),
    max_steps: int = typer.Option(2000, "--max-steps", help="autoencoder: training steps at most."),
    reuse: bool = typer.Option(False, "--reuse", help="Reuse a fitted state from OUT/baseline instead of fitting."),
    voxel_fpr: Optional[float] = typer.Option(None, "--voxel-fpr", help="Target voxel false-positive rate "
                                              "(default 0.001, as medidiff)."),
    scan_fpr: Optional[float] = typer.Option(None, "--scan-fpr", help="Target scan false-positive rate (default 0.05)."),
    seed: int = typer.Option(0, "--seed"),
    set_: List[str] = typer.Option([], "--set", help="Post-processing setting, e.g. score.score=topk_mean or "
                                   "score.normalization=voxelwise (repeatable; same options as medidiff score)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results of other settings in OUT."),
) -> None:
    """Run a simple baseline (fit on --train, thresholds on --calib, maps for --input) and write the
    same outputs as `medidiff score`, so `medidiff evaluate` works unchanged."""
    from ..baselines import BASELINE_DIR, BaselineError, load_preprocess_config, make_baseline, run_baseline
    from ..batch.output import OutputConflict, OutputError

    try:
        pcfg = load_preprocess_config(preprocess)
        kwargs = {"minutes": minutes, "max_steps": max_steps, "seed": seed} if name in ("autoencoder", "ae") else {}
        method = make_baseline(name, preprocess=pcfg, variant=variant,
                               state_dir=(out / BASELINE_DIR) if reuse else None, **kwargs)
        if name in ("normative", "autoencoder", "ae") and train is None and not reuse:
            raise BaselineError(f"baseline {name} needs --train (or --reuse of OUT/{BASELINE_DIR})")
        summary = run_baseline(method, calib=calib, input=input, out=out, train=None if reuse else train,
                               voxel_fpr=voxel_fpr, scan_fpr=scan_fpr, overrides=tuple(set_), overwrite=overwrite,
                               log=lambda m: typer.echo(m, err=True))
    except (BaselineError, OutputConflict, OutputError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"{summary['method']}: {summary['n_scored']} scored, {summary['n_failed']} failed — results in {out}")
    raise typer.Exit(1 if summary["n_failed"] else 0)
