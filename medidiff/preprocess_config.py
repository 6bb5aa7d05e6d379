"""Preprocessing settings (``model.json`` → ``preprocess``): modality, model grid, foreground,
intensity normalisation and, for template space, the front end's settings.

Its own module so the geometry, mask and intensity modules, the front end and
:mod:`medidiff.preprocess` can all read it without importing one another."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .frontend.config import FrontEndConfig

MODALITIES = ("mri", "ct")
FOREGROUND_MODES = ("otsu", "threshold", "none")
SPACES = ("scan", "template")
INTENSITY_MODES = ("percentile", "wm_median", "template_quantiles")


@dataclass
class PreprocessConfig:
    modality: str = "mri"
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    grid: tuple[int, int, int] = (56, 64, 56)
    foreground: str = "otsu"
    # threshold used when foreground == "threshold": voxels strictly above it (source units)
    threshold: float = 0.0
    percentiles: tuple[float, float] = (0.5, 99.5)
    # MRI: subtract the low percentile before scaling? Default off: MRI zero means "no signal" and
    # x / p_high inside the brain mask is what measured best here; the low percentile is
    # still recorded in ``intensity`` for inspection.
    subtract_low: bool = False
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    order: int = 1  # spline order of the single resampling (1 or 3)
    antialias: bool = True
    # "template": the real-scan front end (medidiff.frontend: brain extraction, N4, registration)
    # puts the model grid in MNI152 template space; "scan": the grid is centred on the scan's
    # own foreground (inputs that are already skull-stripped and roughly aligned).
    space: str = "scan"
    frontend: dict[str, Any] | None = None  # medidiff.frontend.FrontEndConfig fields (space == "template")
    # "percentile": x / p_high inside the foreground; "wm_median": x / median of white matter
    # (template WM map inside the brain) — a lesion cannot move it, unlike p99.5;
    # "template_quantiles": wm_median, then the brain's intensity deciles mapped piecewise-linearly
    # onto the template's (Nyúl-Udupa standardisation: vendor/sequence tissue contrast), linear
    # beyond the 90th percentile so bright lesions keep their contrast
    intensity: str = "percentile"

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.grid = tuple(int(g) for g in self.grid)  # type: ignore[assignment]
        self.percentiles = tuple(float(p) for p in self.percentiles)  # type: ignore[assignment]
        self.ct_window = tuple(float(w) for w in self.ct_window)  # type: ignore[assignment]
        if self.space == "template":
            self.frontend = self.frontend_config().to_dict()  # fills defaults, refuses unknown keys
        self.validate()

    def frontend_config(self) -> FrontEndConfig:
        return FrontEndConfig.from_dict(self.frontend)

    def validate(self) -> None:
        errs = []
        if self.modality not in MODALITIES:
            errs.append(f"preprocess.modality must be one of {MODALITIES}, got {self.modality!r}")
        if len(self.spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            errs.append(f"preprocess.spacing must be 3 positive numbers (mm), got {list(self.spacing)}")
        if len(self.grid) != 3 or any(g < 2 for g in self.grid):
            errs.append(f"preprocess.grid must be 3 integers >= 2, got {list(self.grid)}")
        if self.foreground not in FOREGROUND_MODES:
            errs.append(f"preprocess.foreground must be one of {FOREGROUND_MODES}, got {self.foreground!r}")
        if len(self.percentiles) != 2 or not (0 <= self.percentiles[0] < self.percentiles[1] <= 100):
            errs.append(f"preprocess.percentiles must be [low, high] with 0 <= low < high <= 100, got {list(self.percentiles)}")
        if len(self.ct_window) != 2 or not self.ct_window[0] < self.ct_window[1]:
            errs.append(f"preprocess.ct_window must be [low, high] HU with low < high, got {list(self.ct_window)}")
        if self.space not in SPACES:
            errs.append(f"preprocess.space must be one of {SPACES}, got {self.space!r}")
        if self.intensity not in INTENSITY_MODES:
            errs.append(f"preprocess.intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")
        if self.intensity in ("wm_median", "template_quantiles") and self.space != "template":
            errs.append(f"preprocess.intensity={self.intensity} needs preprocess.space=template (it uses the template)")
        if self.frontend is not None and self.space != "template":
            errs.append("preprocess.frontend is only used with preprocess.space=template")
        if self.order not in (0, 1, 3):
            errs.append(f"preprocess.order must be 0, 1 or 3, got {self.order}")
        if errs:
            raise ValueError("; ".join(errs))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "PreprocessConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocess option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**d)
