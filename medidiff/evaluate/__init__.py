"""Evaluation against ground truth: sample-, voxel- and lesion-level metrics (see :mod:`.run`)."""

from .metrics import auroc, average_precision, best_dice, bootstrap_ci, dice, lesion_detection
from .run import EvalOptions, EvaluationError, GridMismatch, evaluate_run, voxel_counts_by_scan

__all__ = ["EvalOptions", "EvaluationError", "GridMismatch", "auroc", "average_precision", "best_dice",
           "bootstrap_ci", "dice", "evaluate_run", "lesion_detection", "voxel_counts_by_scan"]
