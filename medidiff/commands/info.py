"""`medidiff info PATH`: what discovery finds in a file or folder tree."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def info(
    path: Path = typer.Argument(..., help="File or folder tree to inspect."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    quick: bool = typer.Option(False, "--quick", help="Headers only: skip decoding pixel data."),
) -> None:
    """List the scans in PATH (id, format, modality, shape, spacing, orientation,
    description) and every skipped file with its reason."""
    from ..io.discover import Skipped, discover

    found = discover(path)
    if not quick:
        # Decoding catches what headers cannot: broken gzip streams, corrupt pixels.
        good = []
        for ref in found.scans:
            try:
                vol = ref.load()
                ref.warnings.extend(w for w in vol.provenance.warnings if w not in ref.warnings)
                good.append(ref)
            except Exception as exc:
                found.skipped.append(Skipped(ref.source, str(getattr(exc, "reason", exc))))
        found.scans = good
    if as_json:
        typer.echo(json.dumps(found.to_dict(), indent=2))
    else:
        _print_tables(found)
    raise typer.Exit(code=0 if found.scans else 1)


def _print_tables(found) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 160))
    table = Table(title=f"Scans in {found.root} ({len(found.scans)})")
    for col in ("scan id", "format", "modality", "shape", "spacing (mm)", "orient", "description", "files"):
        table.add_column(col, overflow="fold")
    for s in found.scans:
        table.add_row(
            s.scan_id, s.format, s.modality or "-", "×".join(map(str, s.shape)),
            "×".join(f"{v:.3g}" for v in s.spacing), s.orientation,
            (s.series_description or "-") + ("".join(f"\n⚠ {w}" for w in s.warnings)),
            str(len(s.paths)),
        )
    console.print(table)
    if found.skipped:
        sk = Table(title=f"Skipped ({len(found.skipped)})")
        sk.add_column("path", overflow="fold")
        sk.add_column("reason", overflow="fold")
        for s in found.skipped:
            sk.add_row(s.path, s.reason)
        console.print(sk)
