"""Synthetic anomalies for validation sets: see :mod:`medidiff.lesions.anomalies`."""

from .anomalies import (
    DEFAULT_DIAMETER_MM,
    KINDS,
    WM_LESION_DIAMETER_MM,
    estimate_brain_mask,
    estimate_wm_mask,
    insert_anomalies,
    insert_anomalies_volume,
    insert_anomaly,
    insert_random_anomalies,
)

__all__ = [
    "DEFAULT_DIAMETER_MM",
    "KINDS",
    "WM_LESION_DIAMETER_MM",
    "estimate_brain_mask",
    "estimate_wm_mask",
    "insert_anomalies",
    "insert_anomalies_volume",
    "insert_anomaly",
    "insert_random_anomalies",
]
