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
    from ..io.content import check_content
    from ..io.discover import Skipped, discover
    from ..io.errors import ScanError

    found = discover(path)
    if not quick:
        # Decoding catches what headers cannot: broken gzip streams, corrupt pixels, blank images.
        good = []
        for ref in found.scans:
            try:
                vol = ref.load()
                ref.warnings.extend(w for w in vol.provenance.warnings if w not in ref.warnings)
                try:
                    check_content(vol)
                except ScanError as exc:  # readable, listed, but `score` will refuse it
                    ref.warnings.append(f"cannot be scored: {exc.reason}" + (f" ({exc.hint})" if exc.hint else ""))
                good.append(ref)
            except MemoryError:
                found.skipped.append(Skipped(ref.source, f"out of memory decoding {tuple(ref.shape)} voxels",
                                             "lower MEDIDIFF_MAX_VOXELS to skip such scans"))
            except Exception as exc:
                reason = getattr(exc, "reason", None)
                if reason is None:
                    reason = f"unexpected {exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
                found.skipped.append(Skipped(ref.source, reason, getattr(exc, "hint", None)))
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
        from ..io.discover import group_skipped

        sk = Table(title=f"Skipped ({len(found.skipped)} files)")
        sk.add_column("path", overflow="fold")
        sk.add_column("files", justify="right")
        sk.add_column("reason", overflow="fold")
        for where, n, reason in group_skipped(found.skipped):
            sk.add_row(where, str(n), reason)
        console.print(sk)
