"""`medidiff report`: offline HTML report of a scoring output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def report(
    run: Path = typer.Option(..., "--run", help="Output folder of `medidiff score` (holds run.json, scans/)."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="CSV with scan_id,label (1 = anomalous): adds a label column and ROC/PR curves."),
    show_phi: bool = typer.Option(False, "--show-phi", help="Show DICOM patient name/ID and source folders."),
) -> None:
    """Build RUN/report/: index.html (all scans, sortable and filterable) and one page per
    scan with views through the strongest anomaly. Works offline; open index.html in a browser."""
    from ..report.build import build_report

    if not run.is_dir() or not ((run / "run.json").is_file() or (run / "scans").is_dir()):
        typer.echo(f"error: {run}: not a scoring output folder (no run.json or scans/)", err=True)
        raise typer.Exit(2)
    try:
        index = build_report(run, labels=labels, show_phi=show_phi, log=lambda m: typer.echo(m, err=True))
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"report: {Path(index).resolve()}")
