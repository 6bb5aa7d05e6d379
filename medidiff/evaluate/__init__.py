"""Evaluation against ground truth: sample-, voxel- and lesion-level metrics (see :mod:`.run`)."""

from .metrics import auroc, average_precision, best_dice, bootstrap_ci, dice, lesion_detection
from .options import EvalOptions
from .run import evaluate_run
from .scans import EvaluationError, GridMismatch
from .voxels import voxel_counts_by_scan

__all__ = ["EvalOptions", "EvaluationError", "GridMismatch", "auroc", "average_precision", "best_dice",
           "bootstrap_ci", "dice", "evaluate_run", "lesion_detection", "voxel_counts_by_scan"]
