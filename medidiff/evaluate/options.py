"""What an evaluation computes: bootstrap, FPRs, foreground, chance draws, size strata, splits."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SIZE_BINS = (100.0, 1000.0)


@dataclass
class EvalOptions:
    n_boot: int = 1000
    seed: int = 0
    fprs: tuple[float, ...] = (0.01, 0.05)
    foreground: str = "nonzero"  # nonzero | all | brain (the labels' brain_mask_path)
    chance_draws: int = 200  # random placements of the false-positive components per scan (0: none)
    max_voxels: int = 40_000_000
    size_bins: tuple[float, ...] = DEFAULT_SIZE_BINS
    splits: tuple[str, ...] | None = None
    plots: bool = True
