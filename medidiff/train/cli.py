"""`medidiff train` and ``python -m medidiff.train``: train a diffusion model on healthy scans.

The one training command lives in the training package (not in :mod:`medidiff.commands`), so the
package's own ``__main__`` (the torchrun entry point) needs nothing above it."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def train(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config (sections preprocess/model/diffusion/train)."),
    data: Optional[Path] = typer.Option(None, "--data", "-d",
                                        help="Folder of healthy scans (NIfTI/DICOM) or CSV manifest with a 'path' "
                                             "column (optional 'split', label columns)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: model.safetensors, model.json, resume state, loss curve."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the resume state in --out (bit-for-bit)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Time budget; stops cleanly and saves."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print resolved config, parameter count and measured "
                                                          "memory/time of one training step; do not train."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Overrides train.seed."),
    set_: List[str] = typer.Option([], "--set", help="Config override key=value, repeatable (e.g. train.lr=1e-4, "
                                                     "'model.channels=[16,32]')."),
    train_split: Optional[str] = typer.Option("train", "--train-split", help="Manifest split used for training."),
    val_split: Optional[str] = typer.Option(None, "--val-split",
                                            help="Manifest split for validation loss (healthy rows only); default: "
                                                 "hold out train.val_fraction of the training scans."),
    val_data: Optional[Path] = typer.Option(None, "--val-data", help="Separate folder/manifest of healthy validation scans."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="torch CPU threads per process (default: cores / local ranks)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from",
                                             help="Warm start: begin from this trained model folder's EMA weights "
                                                  "(same architecture), e.g. the bundled model, then fine-tune on "
                                                  "your own healthy cohort."),
) -> None:
    """Train the 3D diffusion U-Net on healthy scans (single process or under torchrun)."""
    import json
    import logging
    import os

    from rich.console import Console

    from ..model.config import ConfigError, load_config

    console = Console(stderr=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2)
    if seed is not None:
        cfg.train.seed = int(seed)
    if dry_run:
        from .dry_run import dry_run_report

        rep = {"config": cfg.to_dict(), **dry_run_report(cfg, device)}
        if data is not None:
            from ..dataset import list_scans

            is_manifest = data.is_file() and data.suffix.lower() in (".csv", ".tsv")
            rep["training_scans_found"] = len(list_scans(data, [train_split] if is_manifest and train_split else None))
        typer.echo(json.dumps(rep, indent=2, default=str))
        return
    if data is None:
        console.print("[red]--data is required unless --dry-run[/red]")
        raise typer.Exit(2)
    from .checkpoint import CheckpointError
    from .run import run_training

    try:
        res = run_training(cfg, data, out, resume=resume, max_minutes=max_minutes, device=device,
                           seed=cfg.train.seed, train_split=train_split, val_split=val_split, val_data=val_data,
                           progress=progress, threads=threads, init_from=init_from)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]training failed:[/red] {exc}")
        raise typer.Exit(1)
    if int(os.environ.get("RANK", "0")) == 0:
        console.print(f"[green]done[/green] steps={res.steps} train_loss={res.train_loss} val_loss={res.val_loss} "
                      f"stopped={res.stopped} in {res.seconds:.0f}s → {res.run_dir}")
