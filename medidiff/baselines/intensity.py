"""Intensity thresholding baseline (Meissen et al. 2021): how far each voxel's
intensity deviates from the scan's own brain, in robust units.

On the model grid (the same :func:`~medidiff.preprocess.preprocess` as medidiff):
z = (x - median_fg) / (1.4826 * MAD_fg) inside the scan's foreground;
map = max(z, 0) (``hyper``), max(-z, 0) (``hypo``) or |z| (``abs``), median
filtered (3 voxels) and restricted to the foreground eroded by ``erode_mm``
(the same scoring mask medidiff uses). Nothing is learned. Thresholds, score and
source-grid maps come from the shared post-processor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ..preprocess_config import PreprocessConfig
from ..score.cache import preprocessed
from ..score.config import ScoreConfig
from ..score.maps import scoring_mask
from ..score.postprocess import ModelGridMap
from .common import BaselineMethod

VARIANTS = ("hyper", "hypo", "abs")


class IntensityBaseline(BaselineMethod):
    def __init__(self, variant: str = "hyper", median_size: int = 3, erode_mm: float = 3.0,
                 preprocess: PreprocessConfig | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"intensity variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.median_size = int(median_size)
        self.erode_mm = float(erode_mm)
        self.pcfg = preprocess or PreprocessConfig()
        self.name = f"intensity-{variant}"

    def params(self) -> dict[str, Any]:
        return {"variant": self.variant, "median_size": self.median_size, "erode_mm": self.erode_mm,
                "preprocess": self.pcfg.to_dict()}

    def deviation(self, array: np.ndarray, fg: np.ndarray) -> np.ndarray:
        vals = array[fg] if fg.any() else array.ravel()
        med = float(np.median(vals))
        mad = float(np.median(np.abs(vals - med))) * 1.4826
        if not mad > 0:
            mad = float(np.std(vals)) or 1.0
        z = (array.astype(np.float32) - med) / mad
        if self.variant == "hyper":
            return np.maximum(z, 0.0)
        if self.variant == "hypo":
            return np.maximum(-z, 0.0)
        return np.abs(z)

    def model_map(self, volume) -> ModelGridMap:
        pre, _ = preprocessed(volume, self.pcfg)
        region = scoring_mask(pre.foreground, ScoreConfig(erode_mm=self.erode_mm), np.asarray(self.pcfg.spacing))
        d = self.deviation(pre.image, pre.foreground)
        if self.median_size > 1:
            d = ndimage.median_filter(d, size=self.median_size, mode="nearest")
        return ModelGridMap(pre=pre, raw=np.where(region, d, 0.0).astype(np.float32), region=region)
