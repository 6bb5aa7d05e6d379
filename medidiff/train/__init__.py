"""Training: data preparation, the loop, resume state (``python -m medidiff.train``).
Trained models are saved and loaded by :mod:`medidiff.model.store`."""
