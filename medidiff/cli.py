"""Thin typer CLI. Each command lives in ``medidiff.commands.<name>`` (training's in
``medidiff.train.cli``, which ``python -m medidiff.train`` runs too) and does its heavy
imports (torch, monai, pydicom) inside the function, so ``medidiff --help`` stays fast."""

from __future__ import annotations

import typer

from .commands.evaluate import baseline, evaluate
from .commands.info import info
from .commands.report import report
from .commands.score import calibrate, score
from .commands.synthesize import synthesize
from .train.cli import train

app = typer.Typer(
    name="medidiff",
    help="Unsupervised anomaly detection in 3D MRI/CT with diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("info")(info)
app.command("train")(train)
app.command("calibrate")(calibrate)
app.command("score")(score)
app.command("evaluate")(evaluate)
app.command("baseline")(baseline)
app.command("report")(report)
app.command("synthesize")(synthesize)


@app.callback()
def _main() -> None:
    """medidiff: discover → preprocess → reconstruct → score → calibrate → evaluate → report."""


if __name__ == "__main__":  # pragma: no cover
    app()
