"""Training: data preparation, the loop, checkpoints (``python -m medidiff.train``)."""

from .checkpoint import CheckpointError, LoadedModel, load_model

__all__ = ["CheckpointError", "LoadedModel", "load_model"]
