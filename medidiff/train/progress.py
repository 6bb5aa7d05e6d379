"""What a training run shows while it runs (a progress bar on rank 0) and leaves behind (the loss
curve, ``loss_curve.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TrainProgress:
    """rich progress bar (loss, steps/s, ETA) on rank 0; silent otherwise."""

    def __init__(self, total: int, start: int, enabled: bool, budget: float | None):
        self.enabled = enabled
        self.p = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
                          TextColumn("{task.fields[sps]} step/s"), TimeElapsedColumn(), TextColumn("ETA"),
                          TimeRemainingColumn(), console=Console(stderr=True), refresh_per_second=2)
        self.p.start()
        self.budget = budget
        self.task = self.p.add_task("train", total=total, completed=start, loss="-", val="-", sps="-")

    def update(self, step: int, loss: float, sps: float, val: float | None) -> None:
        if self.p is None:
            return
        self.p.update(self.task, completed=step, loss=f"{loss:.4f}", sps=f"{sps:.2f}",
                      val="-" if val is None else f"{val:.4f}")

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()


def plot_loss_curve(history: list[dict[str, Any]], path: Path) -> None:
    """The train (window mean) and validation losses of ``history`` on a log scale, written
    atomically to ``path``; nothing without history or matplotlib."""
    if not history:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # pragma: no cover
        return
    tr = [(h["step"], h["loss"]) for h in history if h.get("loss") is not None]
    va = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if tr:
        ax.plot(*zip(*tr), label="train (window mean)", lw=1)
    if va:
        ax.plot(*zip(*va), "o-", label="validation (EMA, fixed noise)", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
