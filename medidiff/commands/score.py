"""`medidiff score` and `medidiff calibrate`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import user_errors


def score(
    model: Path = typer.Option(..., "--model", help="Trained (and ideally calibrated) model folder."),
    input: Path = typer.Option(..., "--input", help="File or folder tree of NIfTI / DICOM scans."),
    out: Path = typer.Option(..., "--out", help="Output folder (resumable: re-runs skip finished scans)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with a `score:` section."),
    set_: List[str] = typer.Option([], "--set", help="Override a setting, e.g. score.steps=1 (repeatable)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: score only the i-th of n deterministic shards."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score at most this many scans."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Re-score finished scans / replace another model's results."),
    reconstruction: bool = typer.Option(False, "--reconstruction", help="Also write the reconstruction."),
    dicom_outputs: bool = typer.Option(True, "--dicom-outputs/--no-dicom-outputs", help="DICOM SEG + Parametric Map for DICOM input."),
    report: bool = typer.Option(True, "--report/--no-report", help="Build the HTML report when done."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    cluster: Optional[str] = typer.Option(
        None, "--cluster", help="Score on Dask workers: local[:N] (N worker processes on this machine), "
        "tcp://HOST:8786 (a running `dask scheduler`) or a scheduler .json file. Needs medidiff[cluster]."),
    use_mismatched_calibration: bool = typer.Option(
        False, "--use-mismatched-calibration", help="Apply the model's calibration even when it was measured with "
        "other settings, device or precision: flags, masks and percentiles are then NOT at the calibrated "
        "false-positive rates (outputs say so). Without it such a run is uncalibrated."),
    full_source_paths: bool = typer.Option(
        False, "--full-source-paths", help="Write each scan's full source path in scores.csv/jsonl (folder names "
        "can be patient names; by default the tables name only the file)."),
) -> None:
    """Score every scan under INPUT: anomaly maps and masks in each scan's own grid,
    a scores table (CSV + JSONL) and a run summary."""
    from ..batch.output import OutputConflict, OutputError
    from ..batch.run import score_folder
    from ..score.calibration import CalibrationError

    if not input.exists():
        typer.echo(f"error: {input}: input path does not exist; check --input", err=True)
        raise typer.Exit(2)
    with user_errors(OutputConflict, OutputError, CalibrationError, ValueError):
        summary = score_folder(model, input, out, overrides=tuple(set_), config_path=config, shard=shard,
                               limit=limit, overwrite=overwrite, write_reconstruction=reconstruction,
                               dicom_outputs=dicom_outputs, device=device, progress=progress,
                               log=lambda m: typer.echo(m, err=True), cluster=cluster,
                               use_mismatched_calibration=use_mismatched_calibration,
                               full_source_paths=full_source_paths)
    typer.echo(summary.line())
    if report:
        from ..report.build import build_report

        try:
            index = build_report(out)
            typer.echo(f"report: {index.resolve()}")
        except Exception as exc:  # scoring results are complete; a report failure must not hide them
            typer.echo(f"warning: report not built ({exc.__class__.__name__}: {exc}); "
                       f"retry with `medidiff report --run {out}`", err=True)
    raise typer.Exit(1 if summary.n_failed else 0)


def calibrate(
    model: Path = typer.Option(..., "--model", help="Trained model folder (calibration is stored in it)."),
    healthy: Path = typer.Option(..., "--healthy", help="Held-out healthy scans (not used in training)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with a `score:` section."),
    set_: List[str] = typer.Option([], "--set", help="Override a setting, e.g. score.voxel_fpr=0.001."),
    limit: Optional[int] = typer.Option(None, "--limit"),
    device: str = typer.Option("auto", "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Score held-out healthy scans and store normalization statistics, voxel and scan
    thresholds at the target false-positive rates, and the healthy score distribution.
    Starts from the model's method (method.json); every setting --set/--config changes is printed."""
    from ..batch.calibrate import calibrate_model
    from ..score.calibration import CalibrationError
    from ..score.method import MethodError

    with user_errors(CalibrationError, MethodError, ValueError):
        cal = calibrate_model(model, healthy, overrides=tuple(set_), config_path=config, device=device, limit=limit,
                              progress=progress, log=lambda m: typer.echo(m, err=True))
    for line in cal.summary_lines():
        typer.echo(line)
