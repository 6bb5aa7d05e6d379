"""Score one scan: preprocess → reconstruct → map → score → back onto the source grid.

:class:`ScanResult` is the one result contract (score, flag, map, mask) that
writers, evaluation and reports all bind to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..preprocess import Preprocessed, preprocess
from ..volume import Volume
from .calibration import Calibration
from .config import ScoreConfig
from .maps import normalize_map, raw_map, scan_score, scoring_mask
from .reconstruct import Reconstructor


@dataclass
class ModelGridResult:
    pre: Preprocessed
    recon: np.ndarray
    raw: np.ndarray
    amap: np.ndarray
    mask: np.ndarray  # scoring mask (eroded foreground)
    n_evals: int


@dataclass
class ScanResult:
    scan_id: str
    score: float
    flag: bool | None  # None when uncalibrated
    percentile: float | None
    anomaly_map: np.ndarray  # source grid
    mask: np.ndarray | None  # source grid, uint8; None when uncalibrated
    reconstruction: np.ndarray | None  # source grid, source intensity units
    n_evals: int
    seconds: float
    model_grid: ModelGridResult | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"scan_id": self.scan_id, "score": self.score, "flag": self.flag, "percentile": self.percentile,
                "n_evals": self.n_evals, "seconds": round(self.seconds, 3), "warnings": self.warnings}


class Scorer:
    def __init__(self, loaded, cfg: ScoreConfig, calibration: Calibration | None = None):
        self.loaded = loaded
        self.cfg = cfg
        self.calibration = calibration
        self.reconstructor = Reconstructor(loaded, cfg)
        self.pcfg = loaded.preprocess_config
        self.spacing = np.asarray(self.pcfg.spacing, dtype=np.float64)
        self.voxel_volume = float(np.prod(self.spacing))

    @property
    def stats(self):
        return self.calibration.stats if self.calibration is not None else None

    def model_grid(self, volume: Volume, seed: int | None = None, normalized: bool = True) -> ModelGridResult:
        pre = preprocess(volume, self.pcfg)
        mask = scoring_mask(pre.foreground, self.cfg, self.spacing)
        rec = self.reconstructor.reconstruct(pre.image, seed=seed)
        raw = raw_map(pre.image, rec.mean, mask, self.cfg, self.spacing)
        amap = normalize_map(raw, mask, self.stats, self.cfg) if normalized else raw
        n_evals = rec.n_evals
        if self.cfg.refine:
            recon2, extra = self._refine(pre, amap, mask, seed)
            raw = raw_map(pre.image, recon2, mask, self.cfg, self.spacing)
            amap = normalize_map(raw, mask, self.stats, self.cfg) if normalized else raw
            rec_mean, n_evals = recon2, n_evals + extra
        else:
            rec_mean = rec.mean
        return ModelGridResult(pre=pre, recon=rec_mean, raw=raw, amap=amap, mask=mask, n_evals=n_evals)

    def _refine(self, pre: Preprocessed, amap: np.ndarray, mask: np.ndarray, seed: int | None):
        """AutoDDPM-style: mask first-pass anomalies, re-noise lightly, inpaint
        them from healthy context (known voxels re-imposed at every step)."""
        if self.calibration is not None:
            thr = self.calibration.voxel_threshold
        else:
            vals = amap[mask]
            thr = float(np.quantile(vals, 0.99)) if vals.size else np.inf
        hole = amap > thr
        radius = np.maximum(np.round(self.cfg.refine_dilate_mm / self.spacing).astype(int), 1)
        hole = ndimage.binary_dilation(hole, structure=np.ones(tuple(2 * radius + 1), bool)) & pre.foreground
        if not hole.any():
            return self.reconstructor.reconstruct(pre.image, seed=seed).mean, 0
        steps = max(self.cfg.steps, 5)  # inpainting needs a few steps to harmonise the border
        rec = self.reconstructor.reconstruct(pre.image, seed=seed, fractions=(self.cfg.refine_t_fraction,),
                                             inpaint_mask=hole, steps=steps)
        return rec.mean, rec.n_evals

    def score_volume(self, volume: Volume, seed: int | None = None, keep_model_grid: bool = False,
                     with_reconstruction: bool = False) -> ScanResult:
        t0 = time.perf_counter()
        mg = self.model_grid(volume, seed=seed)
        cal = self.calibration
        vthr = cal.voxel_threshold if cal is not None else None
        score = scan_score(mg.amap, mg.mask, self.cfg, self.voxel_volume, vthr)
        warnings = list(volume.provenance.warnings)
        if vthr is None and self.cfg.score == "supra_volume":
            warnings.append("uncalibrated model: scan score is the top-k mean, not the supra-threshold volume")
        amap_src = mg.pre.mapping.to_source(mg.amap, order=1, fill=0.0, antialias=True).astype(np.float32)
        mask_src = (amap_src > vthr).astype(np.uint8) if vthr is not None else None
        recon_src = None
        if with_reconstruction:
            recon_src = mg.pre.mapping.to_source(mg.pre.denormalize(mg.recon), order=1, fill=0.0).astype(np.float32)
        return ScanResult(
            scan_id=volume.scan_id,
            score=score,
            flag=(score > cal.scan_threshold) if cal is not None else None,
            percentile=cal.percentile_of(score) if cal is not None else None,
            anomaly_map=amap_src,
            mask=mask_src,
            reconstruction=recon_src,
            n_evals=mg.n_evals,
            seconds=time.perf_counter() - t0,
            model_grid=mg if keep_model_grid else None,
            warnings=warnings,
        )
